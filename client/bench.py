"""Load-test engine behind ``resnest bench``: closed-loop (N concurrent asyncio tasks) or open-loop
(fixed arrival rate, at most N in flight) load over any protocol, always bounded by a duration or a
request count.

Every answer is checked: err_no 0, one parsable result of the right types per image sent, and the same
top-1 for the same image every time (the first answer seen for an image is its reference). Anything
else counts as an error of kind ``err_no <n>``, ``bad_response``, ``wrong_answer`` or the transport
error's kind (``timeout``, ``grpc UNAVAILABLE``, ``http 503``, ``brpc EFAILEDSOCKET``, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from resnest_serving.client.base import AsyncClassifier
from resnest_serving.client.bench_results import (
    DEFAULT_DURATION,
    AnswerChecker,
    BenchAborted,
    BenchConfig,
    BenchReport,
    RepeatedRun,
    Sample,
    SweepReport,
)
from resnest_serving.client.codec import build_request
from resnest_serving.client.credentials import Credentials
from resnest_serving.client.errors import BadResponseError, ClientError
from resnest_serving.client.factory import connect_async
from resnest_serving.client.fingerprint import machine_fingerprint
from resnest_serving.client.images import shrink_image
from resnest_serving.client.stats import find_knee, histogram_totals, stage_means
from resnest_serving.protocol.b64 import encode_text

__all__ = [
    "DEFAULT_DURATION",
    "AnswerChecker",
    "BenchAborted",
    "BenchConfig",
    "BenchReport",
    "RepeatedRun",
    "Sample",
    "SweepReport",
    "arrival_offsets",
    "default_metrics_url",
    "run_bench",
    "run_repeats",
    "run_sweep",
]

log = logging.getLogger(__name__)

STAGE_METRIC = "resnest_stage_seconds"
BATCH_METRIC = "resnest_batch_images"

def default_metrics_url(protocol: str, endpoint: str, scheme: str = "http") -> str | None:
    """``http://<endpoint>/metrics`` for HTTP targets (the REST port serves /metrics), else None."""
    return f"{scheme}://{endpoint}/metrics" if protocol in ("http", "v2-http") else None


class _Load:
    """The client, the encoded images and the per-request check, shared by all tasks of a run."""

    def __init__(self, config: BenchConfig, client: AsyncClassifier, checker: AnswerChecker) -> None:
        self.config = config
        self.client = client
        self.checker = checker
        files = [Path(p).read_bytes() for p in config.images]
        if config.client_resize:  # done once here: the load measures the server, not the client's resizing
            files = [shrink_image(data, config.client_resize) for data in files]
        self.encoded = [encode_text(data) for data in files]
        self.rng = random.Random(config.seed)
        self.log_ids = itertools.count(1)
        self.error_examples: dict[str, str] = {}

    def pick(self) -> list[int]:
        return self.rng.choices(range(len(self.encoded)), k=self.config.images_per_request)

    async def one(self) -> tuple[str | None, list[int]]:
        """Send one request; return (None on a checked success, else the error kind; the images it sent, as
        indexes into config.images)."""
        ids = self.pick()
        request = build_request([(f"image_{j}", self.encoded[i]) for j, i in enumerate(ids)],
                                service_name=self.config.service_name, log_id=next(self.log_ids))
        try:
            results = await self.client.classify_request(request)
            if len(results) != len(ids):
                raise BadResponseError(f"{len(results)} results for {len(ids)} images")
            problem = self.checker.check(ids, results) if self.config.check_answers else None
            if problem is None:
                return None, ids
            kind, message = "wrong_answer", problem
        except ClientError as exc:
            kind, message = exc.kind, str(exc)
        except Exception as exc:  # a client bug must not stop the run; it is counted and shown
            kind, message = f"exception {type(exc).__name__}", repr(exc)
        if kind not in self.error_examples:
            self.error_examples[kind] = message
            log.debug("first %s: %s", kind, message)
        return kind, ids


class _Progress:
    """tqdm bar with live QPS and error count; a no-op when disabled."""

    def __init__(self, enabled: bool, config: BenchConfig, samples: list[Sample]) -> None:
        self.samples = samples
        self.by_time = config.requests is None
        self.bar = None
        if enabled:
            from tqdm import tqdm

            total = config.duration if self.by_time else config.requests
            self.bar = tqdm(total=total, unit="s" if self.by_time else "req", file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}{postfix}]",
                            desc=f"c={config.concurrency}", leave=False)

    def update(self, t0: float) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - t0
        done = len(self.samples)
        errors = sum(1 for s in self.samples if s.error is not None)
        self.bar.n = min(elapsed, self.bar.total) if self.by_time else done
        self.bar.set_postfix(qps=f"{(done - errors) / elapsed:.1f}" if elapsed > 0 else "-", errors=errors,
                             refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def _closed_loop(load: _Load, t0: float, deadline: float, samples: list[Sample]) -> None:
    budget = load.config.requests
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < deadline and (budget is None or issued < budget):
            issued += 1
            start = time.perf_counter()
            error, ids = await load.one()
            samples.append(Sample(start - t0, time.perf_counter() - start, load.config.images_per_request,
                                  error, image_ids=tuple(ids)))

    await asyncio.gather(*(worker() for _ in range(load.config.concurrency)))


def arrival_offsets(rate: float, duration: float | None, requests: int | None, arrivals: str,
                    seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of an open-loop run offering ``rate`` requests/s until
    ``duration`` or ``requests``, whichever comes first. ``uniform``: one every 1/rate s. ``poisson``
    (MLPerf's Server scenario): a Poisson process conditioned on its count, i.e. the N = rate x span arrival
    times drawn uniformly over the span and sorted, so the offered rate is exactly ``rate`` while the gaps
    are exponential (bursts and lulls as from independent users)."""
    span = min(duration if duration is not None else math.inf,
               requests / rate if requests is not None else math.inf)
    count = max(1, round(rate * span))
    if requests is not None:
        count = min(count, requests)
    if arrivals == "uniform":
        return [i / rate for i in range(count)]
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, span) for _ in range(count))


async def _open_loop(load: _Load, t0: float, deadline: float, samples: list[Sample]) -> None:
    config = load.config
    assert config.rate is not None
    slots = asyncio.Semaphore(config.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def fire(scheduled: float) -> None:
        try:
            start = time.perf_counter()
            error, ids = await load.one()
            samples.append(Sample(start - t0, time.perf_counter() - start, config.images_per_request, error,
                                  wait=start - scheduled, image_ids=tuple(ids)))
        finally:
            slots.release()

    for offset in arrival_offsets(config.rate, config.duration, config.requests, config.arrivals, config.seed):
        scheduled = t0 + offset
        while (delay := scheduled - time.perf_counter()) > 0:  # the loop's timer may wake a hair early
            await asyncio.sleep(delay)
        await slots.acquire()
        if time.perf_counter() >= deadline:
            slots.release()
            break
        task = asyncio.create_task(fire(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def _scrape(url: str | None, credentials: Credentials | None = None) -> tuple[str | None, str]:
    """Metrics text (or None) and, when None, why."""
    if not url:
        return None, "no metrics URL (give --metrics-url http://HOST:HTTP_PORT/metrics)"

    credentials = credentials or Credentials()

    def get() -> str:
        handlers = [urllib.request.ProxyHandler({})]
        if credentials.tls:
            handlers.append(urllib.request.HTTPSHandler(context=credentials.ssl_context()))
        request = urllib.request.Request(url, headers=credentials.http_headers())
        with urllib.request.build_opener(*handlers).open(request, timeout=5) as reply:
            return reply.read().decode("utf-8", "replace")

    try:
        return await asyncio.to_thread(get), ""
    except Exception as exc:  # absent or unreachable metrics only lose the server section
        log.warning("cannot read server metrics from %s: %s", url, exc)
        return None, f"cannot read {url}: {exc}"


def _server_section(url: str | None, before: str | None, after: str | None, reason: str) -> dict[str, Any]:
    if before is None or after is None:
        return {"available": False, "url": url, "reason": reason}
    try:
        stages = stage_means(histogram_totals(before, STAGE_METRIC, "stage"),
                             histogram_totals(after, STAGE_METRIC, "stage"))
        batch = stage_means(histogram_totals(before, BATCH_METRIC, ""), histogram_totals(after, BATCH_METRIC, ""))
    except ValueError as exc:
        return {"available": False, "url": url, "reason": f"unparsable metrics: {exc}"}
    if not stages:
        return {"available": False, "url": url, "reason": f"no {STAGE_METRIC} observations in the run"}
    out: dict[str, Any] = {
        "available": True,
        "url": url,
        "stages_ms": {k: {"count": int(v["count"]), "mean_ms": v["mean"] * 1000} for k, v in stages.items()},
    }
    if "" in batch:
        out["batches"] = int(batch[""]["count"])
        out["mean_batch_images"] = batch[""]["mean"]
    return out


async def _measure(load: _Load, config: BenchConfig) -> BenchReport:
    before, reason = await _scrape(config.metrics_url, config.credentials)
    fingerprint = machine_fingerprint()
    samples: list[Sample] = []
    progress = _Progress(config.progress, config, samples)
    started_at = time.time()
    t0 = time.perf_counter()
    deadline = t0 + config.duration if config.duration is not None else math.inf
    runner = _open_loop if config.rate else _closed_loop
    task = asyncio.create_task(runner(load, t0, deadline, samples))
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            progress.update(t0)
        await task
    finally:
        if not task.done():
            task.cancel()
        progress.close()
    elapsed = max((s.start + s.latency for s in samples), default=time.perf_counter() - t0)
    after, reason2 = await _scrape(config.metrics_url, config.credentials) if before is not None else (None, reason)
    samples.sort(key=lambda s: s.start)
    return BenchReport(config.to_dict(), started_at, elapsed, samples,
                       _server_section(config.metrics_url, before, after, reason or reason2),
                       dict(load.error_examples), fingerprint=fingerprint)


async def _warmup(load: _Load, count: int) -> int:
    """Send ``count`` requests (``concurrency`` at a time), not measured; returns how many failed.
    Raises ``BenchAborted`` when all of them fail."""
    if count <= 0:
        return 0
    slots = asyncio.Semaphore(load.config.concurrency)

    async def one() -> str | None:
        async with slots:
            return (await load.one())[0]

    kinds = await asyncio.gather(*(one() for _ in range(count)))
    failed = [k for k in kinds if k is not None]
    if len(failed) == count:
        kind = failed[0]
        raise BenchAborted(f"all {count} warm-up requests failed, not measuring "
                           f"({dict(Counter(failed))}); first: {load.error_examples.get(kind, kind)}")
    if failed:
        log.warning("%d of %d warm-up requests failed: %s", len(failed), count, dict(Counter(failed)))
    load.error_examples.clear()
    return len(failed)


def _client(config: BenchConfig) -> AsyncClassifier:
    return connect_async(config.protocol, config.endpoint, service_name=config.service_name,
                         model_version=config.model_version, timeout=config.timeout, credentials=config.credentials)


async def run_bench(config: BenchConfig) -> BenchReport:
    """Warm up, then load the server as configured and return the report."""
    return (await run_repeats(config, 1)).reports[0]


async def run_repeats(config: BenchConfig, repeats: int) -> RepeatedRun:
    """Warm up once, then load the server as configured ``repeats`` times in a row."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    config.validate()
    client = _client(config)
    try:
        load = _Load(config, client, AnswerChecker())
        warmup_errors = await _warmup(load, config.warmup)
        reports = []
        for _ in range(repeats):
            report = await _measure(load, config)
            report.warmup_errors = warmup_errors
            reports.append(report)
        return RepeatedRun(reports)
    finally:
        await client.close()


async def run_sweep(config: BenchConfig, levels: list[float], knee_fraction: float = 0.95,
                    axis: str = "concurrency", repeats: int = 1, p99_target_ms: float | None = None) -> SweepReport:
    """``run_bench`` at each level of ``axis`` ("concurrency", closed loop; or "rate", open loop), the same
    bounds and ``repeats`` each, one warm-up before the first; all levels share one client and one answer
    checker."""
    if axis not in ("concurrency", "rate"):
        raise ValueError(f"a sweep runs over concurrency or rate, not {axis!r}")
    if not levels or any(x <= 0 for x in levels):
        raise ValueError(f"{axis} levels must be > 0, got {levels}")
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    find_knee([(1, 1.0)], knee_fraction)  # validates the fraction before any load
    config.validate()
    client = _client(config)
    checker = AnswerChecker()
    runs: list[RepeatedRun] = []
    try:
        warm = _with(config, concurrency=max(levels)) if axis == "concurrency" else config
        warmup_errors = await _warmup(_Load(warm, client, checker), config.warmup)
        for level in levels:
            level_config = _with(config, warmup=0, **{axis: int(level) if axis == "concurrency" else level})
            load = _Load(level_config, client, checker)
            reports = []
            for _ in range(repeats):
                report = await _measure(load, level_config)
                report.warmup_errors = warmup_errors
                reports.append(report)
            runs.append(RepeatedRun(reports))
            median = runs[-1].median_report
            log.info("%s %g: %.2f req/s, %.2f images/s, %d errors", axis, level, median.qps, median.images_per_s,
                     sum(median.errors.values()))
    finally:
        await client.close()
    return SweepReport([(level, run.median_report) for level, run in zip(levels, runs, strict=True)], knee_fraction,
                       axis=axis, runs=runs, p99_target_ms=p99_target_ms)


def _with(config: BenchConfig, **changes: Any) -> BenchConfig:
    return replace(config, **changes)
