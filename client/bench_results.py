"""What a load test is asked to do (`BenchConfig`) and what it found (`Sample`, `BenchReport`,
`SweepReport`), plus the answer checker that turns a wrong answer into an error."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from resnest_serving.client.base import DEFAULT_TIMEOUT, is_loopback, parse_endpoint
from resnest_serving.client.codec import Classification
from resnest_serving.client.credentials import Credentials
from resnest_serving.client.factory import PROTOCOLS
from resnest_serving.client.stats import find_knee, latency_summary

__all__ = ["ARRIVALS", "DEFAULT_DURATION", "AnswerChecker", "BenchAborted", "BenchConfig", "BenchReport",
           "RepeatedRun", "Sample", "SweepReport", "figures_from_summary"]

ARRIVALS = ("poisson", "uniform")
"""Open-loop arrival processes (see ``client.bench.arrival_offsets``)."""

DEFAULT_DURATION = 10.0
"""Seconds of load when neither a duration nor a request count is given."""

LATE_START_S = 0.010
"""Open loop: a request sent more than this after its scheduled time counts as a late start (the
in-flight cap was full, or the client could not keep up)."""


class BenchAborted(RuntimeError):
    """Every warm-up request failed: the server is down, wrong or not this service; nothing measured."""


@dataclass
class BenchConfig:
    """One load-test run. ``duration`` and ``requests`` bound it (whichever comes first; with neither,
    ``DEFAULT_DURATION``); ``rate`` switches to open loop with ``concurrency`` as the in-flight cap."""

    protocol: str
    endpoint: str
    images: list[Path]
    service_name: str = "imagenet"
    model_version: str = ""  # Open Inference Protocol only: one version of the model ("" = the server's choice)
    concurrency: int = 1
    rate: float | None = None
    arrivals: str = "poisson"
    latency_bound_ms: float | None = None  # report the share of requests slower than this
    duration: float | None = None
    requests: int | None = None
    images_per_request: int = 1
    warmup: int = 0
    timeout: float = DEFAULT_TIMEOUT
    metrics_url: str | None = None
    allow_remote: bool = False
    check_answers: bool = True
    seed: int = 0
    client_resize: int | None = None  # shrink each image to this short side once, before the load (shrink_image)
    progress: bool = False
    credentials: Credentials | None = None  # TLS CA / client certificate / token (never written to reports)

    def validate(self) -> None:
        """Refuse unbounded, nonsensical or (without ``allow_remote``) non-loopback runs."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        host, _ = parse_endpoint(self.endpoint)
        if self.duration is None and self.requests is None:
            self.duration = DEFAULT_DURATION
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"--duration must be a positive number of seconds, got {self.duration} "
                             "(the load is always bounded)")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"--requests must be >= 1, got {self.requests} (the load is always bounded)")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"--rate must be a positive number of requests/s, got {self.rate}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"--arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}")
        if self.latency_bound_ms is not None and not self.latency_bound_ms > 0:
            raise ValueError(f"--latency-bound-ms must be > 0, got {self.latency_bound_ms}")
        if self.images_per_request < 1:
            raise ValueError(f"--images-per-request must be >= 1, got {self.images_per_request}")
        if self.client_resize is not None and self.client_resize < 1:
            raise ValueError(f"--client-resize must be >= 1, got {self.client_resize}")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if not self.timeout > 0:
            raise ValueError(f"--timeout must be > 0, got {self.timeout}")
        if not self.images:
            raise ValueError("no images to send (the folder has no .jpg/.jpeg/.png/... files)")
        if not self.allow_remote:
            targets = [host] + ([urlsplit(self.metrics_url).hostname or ""] if self.metrics_url else [])
            for target in targets:
                if not is_loopback(target):
                    raise ValueError(f"refusing to load non-loopback host {target!r}; pass --allow-remote "
                                     "if you really mean to load another machine")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        creds = self.credentials
        out["credentials"] = {"tls": creds.tls, "token": bool(creds.token)} if creds is not None else None
        out["images"] = [str(p) for p in self.images]
        out["mode"] = "open" if self.rate else "closed"
        return out


@dataclass
class Sample:
    """One measured request: ``start`` = seconds from the run's start to the send, ``latency`` = send
    to answer (s), ``wait`` = open loop only, scheduled time to send (s, never negative: nothing is sent
    ahead of its schedule), ``error`` = kind or None."""

    start: float
    latency: float
    images: int
    error: str | None = None
    wait: float = 0.0
    image_ids: tuple[int, ...] = ()  # what was sent: indexes into the run's image list (config.images)


class AnswerChecker:
    """Remembers the first top-1 seen per image and flags later answers that disagree."""

    def __init__(self) -> None:
        self.first: dict[int, tuple[str, int | None]] = {}

    def check(self, image_ids: list[int], results: list[Classification]) -> str | None:
        """None if consistent, else a message naming the first image whose top-1 changed."""
        problem = None
        for image_id, result in zip(image_ids, results, strict=True):
            answer = (result.label, result.class_id)
            seen = self.first.setdefault(image_id, answer)
            if seen != answer and problem is None:
                problem = f"image #{image_id}: top-1 {answer} but earlier {seen}"
        return problem


@dataclass
class BenchReport:
    """Outcome of one run; ``to_dict()`` is the JSON report (with raw samples)."""

    config: dict[str, Any]
    started_at: float
    elapsed: float
    samples: list[Sample]
    server: dict[str, Any] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    warmup_errors: int = 0
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the machine, read just before the run

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error is not None)

    @property
    def qps(self) -> float:
        """Successful requests per second."""
        return len(self.ok) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        """Successfully classified images per second."""
        return sum(s.images for s in self.ok) / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": len(self.samples),
            "successes": len(self.ok),
            "errors": sum(self.errors.values()),
            "errors_by_kind": dict(self.errors.most_common()),
            "elapsed_s": self.elapsed,
            "qps": self.qps,
            "images_per_s": self.images_per_s,
            "latency_ms": latency_summary(s.latency for s in self.ok),
        }
        if self.config.get("rate"):
            out["response_time_ms"] = latency_summary(s.wait + s.latency for s in self.ok)
            out["late_starts"] = sum(1 for s in self.samples if s.wait > LATE_START_S)
            out["offered_rate"] = self.config["rate"]
            out["achieved_rate"] = self.qps
        bound = self.config.get("latency_bound_ms")
        if bound and self.samples:  # failed requests count as over the bound
            over = sum(1 for s in self.samples if s.error is not None or (s.wait + s.latency) * 1000 > bound)
            out["over_bound"] = {"bound_ms": bound, "share": over / len(self.samples)}
        return out

    def figures(self) -> dict[str, float]:
        """The headline figures compared across runs (see ``figures_from_summary``)."""
        return figures_from_summary(self.summary())

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        out = {"config": self.config, "fingerprint": self.fingerprint, "started_at": self.started_at,
               "summary": self.summary(), "figures": spread_of([self]), "server": self.server,
               "error_examples": self.error_examples, "warmup_errors": self.warmup_errors}
        if raw:
            out["samples"] = [
                {"t_s": round(s.start, 6), "latency_ms": round(s.latency * 1000, 4), "images": s.images,
                 "error": s.error, "image_ids": list(s.image_ids),
                 **({"wait_ms": round(s.wait * 1000, 4)} if self.config.get("rate") else {})}
                for s in self.samples
            ]
        return out


def figures_from_summary(summary: dict[str, Any]) -> dict[str, float]:
    """images/s, QPS and the p50/p99 latency of a run's summary; in open loop the latency is the response
    time (schedule to answer), what a user waiting on the arrival would see."""
    lat = summary.get("response_time_ms") or summary["latency_ms"]
    return {"images_per_s": summary["images_per_s"], "qps": summary["qps"], "p50_ms": lat.get("p50", math.nan),
            "p99_ms": lat.get("p99", math.nan)}


def spread_of(reports: list[BenchReport]) -> dict[str, dict[str, float]]:
    """Per figure: median, min and max over the repeats, and their number."""
    values = [r.figures() for r in reports]
    return {name: {"median": statistics.median(v[name] for v in values), "min": min(v[name] for v in values),
                   "max": max(v[name] for v in values), "n": len(values)} for name in values[0]}


@dataclass
class RepeatedRun:
    """The same load measured ``len(reports)`` times in a row: the figures as median with min–max."""

    reports: list[BenchReport]

    @property
    def median_report(self) -> BenchReport:
        """The repeat whose images/s is the median (the lower middle one for an even count)."""
        ranked = sorted(self.reports, key=lambda r: r.images_per_s)
        return ranked[(len(ranked) - 1) // 2]

    def figures(self) -> dict[str, dict[str, float]]:
        return spread_of(self.reports)

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        first = self.reports[0]
        return {"config": first.config, "fingerprint": first.fingerprint, "figures": self.figures(),
                "repeats": [r.to_dict(raw) for r in self.reports]}


@dataclass
class SweepReport:
    """One ``BenchReport`` per level of concurrency (closed loop, the knee from ``client.stats.find_knee``)
    or of offered rate (open loop: the best rate is the highest whose p99 response time meets
    ``p99_target_ms`` with no errors). With repeats, ``levels`` holds each level's median repeat and
    ``runs`` all of them."""

    levels: list[tuple[float, BenchReport]]
    knee_fraction: float
    axis: str = "concurrency"
    runs: list[RepeatedRun] = field(default_factory=list)
    p99_target_ms: float | None = None

    @property
    def knee(self) -> int | None:
        if self.axis != "concurrency":
            return None
        return find_knee([(c, r.images_per_s) for c, r in self.levels], self.knee_fraction)

    @property
    def best_rate(self) -> float | None:
        """Open-loop sweeps: the highest offered rate meeting the p99 target without errors."""
        if self.axis != "rate" or self.p99_target_ms is None:
            return None
        good = [rate for rate, r in self.levels
                if not r.errors and r.figures()["p99_ms"] <= self.p99_target_ms]
        return max(good, default=None)

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        runs = self.runs or [RepeatedRun([r]) for _, r in self.levels]
        out: dict[str, Any] = {"axis": self.axis, "fingerprint": self.levels[0][1].fingerprint if self.levels else {}}
        if self.axis == "concurrency":
            out["knee"] = self.knee
            out["knee_rule"] = f"lowest concurrency reaching {self.knee_fraction:.0%} of the best images/s"
        else:
            out["p99_target_ms"] = self.p99_target_ms
            out["best_rate"] = self.best_rate
        out["levels"] = [{self.axis: value, **report.to_dict(raw), "figures": run.figures(),
                          **({"repeats": [r.to_dict(raw) for r in run.reports]} if len(run.reports) > 1 else {})}
                         for (value, report), run in zip(self.levels, runs, strict=True)]
        return out
