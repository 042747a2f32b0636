"""`resnest tune`: find the best configuration for this machine by measuring it, each candidate in a real
`resnest serve` under the load generator, within a time budget.

The search, pruned as a person would do it by hand:
1. Every engine × precision that can run here (`Runtime.unavailable`: instructions, model files) and whose
   recorded accuracy check (`resnest export --check-images`) reaches the threshold, each at batch_size 1,
   plus the schema's default config (batching on) as the baseline.
2. The best two (within 80 % of the best) get batch sizes 2, 4, 8 in turn, stopping as soon as a size gains
   under 5 %, and the best of those a split of the cores into two engine instances.
Each candidate is loaded at client concurrency 1, 2, 4 and 2 × (batch_size × instances) (closed loop), then
doubled while images/s still grows 5 % and p99 meets the target (up to 16). Its throughput point is the highest images/s whose p99 meets the target with no errors; its latency point is
concurrency 1. Writes the config of the best throughput point and of the lowest latency, a JSON report with
the machine fingerprint, a Markdown table and a plot (tune_report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from resnest_serving.client.bench import BenchAborted, BenchConfig, run_bench
from resnest_serving.client.bench_cli import default_images_dir
from resnest_serving.client.fingerprint import machine_fingerprint
from resnest_serving.client.images import list_images
from resnest_serving.pipeline.engines.choose import AUTO_ORDER, RUNTIMES
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.serving.launcher import ServerProcess, write_config

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
BATCH_SIZES = (2, 4, 8)
MIN_GAIN = 1.05  # a larger batch size must bring 5 % more images/s to be worth the next one
KEEP_FRACTION = 0.8  # engines within 80 % of the best go on to the batching stage
START_TIMEOUT_S = 300.0
MAX_LEVEL = 16  # most requests in flight tried


@dataclass
class Point:
    """One load level of one candidate."""

    concurrency: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Candidate:
    """A configuration to measure: op keys (`op`) and local_service_conf keys (`lsc`) over the defaults."""

    name: str
    op: dict[str, Any] = field(default_factory=dict)
    lsc: dict[str, Any] = field(default_factory=dict)
    stage: str = "engines"
    status: str = "planned"  # planned | measured | refused | failed | not measured (time budget)
    why: str = ""
    points: list[Point] = field(default_factory=list)
    engine_started: str = ""

    def best(self, p99_ms: float | None) -> Point | None:
        """The highest-throughput point meeting the p99 target (any p99 without one), no errors."""
        good = [p for p in self.points if not p.errors and (p99_ms is None or p.p99_ms <= p99_ms)]
        return max(good, key=lambda p: p.images_per_s, default=None)

    def lowest_latency(self) -> Point | None:
        good = [p for p in self.points if not p.errors]
        return min(good, key=lambda p: p.p99_ms, default=None)


def accuracy_gate(bundle: ModelBundle, engine: str, precision: str, threshold: float) -> str | None:
    """Why a reduced precision may not be chosen on `engine` (no recorded check, or agreement below the
    threshold on any checked set), or None. A threshold of 0 turns the gate off."""
    if precision == "fp32" or threshold <= 0:
        return None
    check = bundle.meta.precision_checks.get(precision, {}).get("engines", {}).get(engine)
    if not check or "skipped" in check or "error" in check:
        return (f"no recorded accuracy check of {precision} on {engine} (export with --check-images to record one)"
                if not check else f"accuracy check not run at export: {check.get('skipped') or check.get('error')}")
    worst = min(c["top1_agreement"] for c in check.values())
    if worst < threshold:
        return f"recorded top-1 agreement {worst:.2%} is below the {threshold:.0%} threshold"
    return None


def engine_candidates(bundle: ModelBundle, threshold: float) -> list[Candidate]:
    """Stage 1: the default config, then every engine × precision, refused ones with their reason."""
    from resnest_serving.protocol.engine_options import EngineOptions

    out = [Candidate("default config (schema defaults)")]
    for precision in PRECISIONS:
        for engine in AUTO_ORDER:
            cand = Candidate(f"{engine} {precision}", op={"engine": engine, "batch_size": 1},
                             lsc={"precision": precision})
            why = RUNTIMES[engine].unavailable(bundle, EngineOptions(precision=precision))
            why = why or accuracy_gate(bundle, engine, precision, threshold)
            if why:
                cand.status, cand.why = "refused", why
            out.append(cand)
    return out


class Tuner:
    """Runs the search; `run()` returns every candidate, measured or not, in the order considered."""

    def __init__(self, model_dir: Path, images: list[Path], protocol: str, p99_ms: float | None,
                 budget_s: float, threshold: float, workdir: Path, cores: int | None = None):
        self.model_dir = model_dir
        self.bundle = ModelBundle.load(model_dir)
        self.images = images
        self.protocol = protocol
        self.p99_ms = p99_ms
        self.budget_s = budget_s
        self.threshold = threshold
        self.workdir = workdir
        self.cores = cores or os.cpu_count() or 1
        self.started = time.monotonic()
        self.candidates: list[Candidate] = []
        self.level_s = 3.0
        self.start_cost_s = 15.0  # learnt from the first start

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def levels(self, cand: Candidate) -> list[int]:
        """The first load levels: 1, 2, 4 and 2 x (batch_size x instances); `next_level` may add more."""
        from resnest_serving.serving.config.schema import OpConfig, default_of  # needs yaml: not at import

        op = {name: default_of(OpConfig, name) for name in ("batch_size", "concurrency")} | cand.op
        per_batch = int(op["batch_size"]) * int(op["concurrency"])
        return sorted({1, 2, 4, min(MAX_LEVEL, 2 * per_batch)})

    def next_level(self, cand: Candidate) -> int | None:
        """Double the load while the last level still gained 5 % images/s and met the p99 target."""
        last, before = cand.points[-1], cand.points[-2]
        if (last.concurrency >= MAX_LEVEL or last.errors or last.images_per_s < MIN_GAIN * before.images_per_s
                or (self.p99_ms is not None and last.p99_ms > self.p99_ms)):
            return None
        return min(MAX_LEVEL, 2 * last.concurrency)

    def _fits(self, cand: Candidate) -> bool:
        cost = self.start_cost_s + len(self.levels(cand)) * (self.level_s + 1.0)
        return self.elapsed() + cost <= self.budget_s

    def measure(self, cand: Candidate) -> Candidate:
        """Start `cand` in a real server, load it at each level, stop it."""
        self.candidates.append(cand)
        if cand.status == "refused":
            log.info("tune: %s refused: %s", cand.name, cand.why)
            return cand
        if not self._fits(cand):
            cand.status, cand.why = "not measured (time budget)", f"{self.elapsed():.0f} s of {self.budget_s:.0f} used"
            log.info("tune: %s not measured: time budget", cand.name)
            return cand
        config = write_config(self.workdir / f"candidate{len(self.candidates)}.yml", self.model_dir, cand.op,
                              lsc=cand.lsc)
        t0 = time.monotonic()
        try:
            server = ServerProcess(config, timeout=START_TIMEOUT_S)
        except RuntimeError as exc:
            cand.status = "failed"
            cand.why = next((line for line in reversed(str(exc).splitlines()) if "ERROR" in line),
                            str(exc).splitlines()[0])[-300:]
            log.warning("tune: %s failed to start: %s", cand.name, cand.why)
            return cand
        self.start_cost_s = max(self.start_cost_s * 0.5, time.monotonic() - t0)
        try:
            cand.engine_started = server.info.get("engine", "")
            port = server.ports["grpc" if self.protocol in ("grpc", "v2-grpc") else
                                "brpc" if self.protocol == "brpc" else "http"]
            levels = self.levels(cand)
            while levels:
                level = levels.pop(0)
                report = asyncio.run(run_bench(BenchConfig(
                    protocol=self.protocol, endpoint=f"127.0.0.1:{port}", images=self.images, concurrency=level,
                    duration=self.level_s, warmup=2 * level)))
                fig = report.figures()
                cand.points.append(Point(level, fig["images_per_s"], fig["p50_ms"], fig["p99_ms"],
                                         sum(report.errors.values())))
                log.info("tune [%3.0f/%.0f s] %s, concurrency %d: %.1f images/s, p99 %.0f ms%s", self.elapsed(),
                         self.budget_s, cand.name, level, fig["images_per_s"], fig["p99_ms"],
                         f", {cand.points[-1].errors} errors" if cand.points[-1].errors else "")
                if not levels and (more := self.next_level(cand)) and self.elapsed() + self.level_s < self.budget_s:
                    levels.append(more)
            cand.status = "measured"
        except BenchAborted as exc:  # the server answered none of the warm-up requests
            cand.status, cand.why = "failed", str(exc)[:300]
            log.warning("tune: %s failed under load: %s", cand.name, cand.why)
        finally:
            server.stop()
        return cand

    def score(self, cand: Candidate) -> float:
        best = cand.best(self.p99_ms)
        return best.images_per_s if best else 0.0

    def run(self) -> list[Candidate]:
        stage1 = engine_candidates(self.bundle, self.threshold)
        runnable = [c for c in stage1 if c.status != "refused"]
        self.level_s = self._level_seconds(len(runnable) + 4)
        for cand in stage1:
            self.measure(cand)
        engines = sorted((c for c in stage1[1:] if c.status == "measured" and self.score(c) > 0),
                         key=self.score, reverse=True)
        top = [c for c in engines[:2] if self.score(c) >= KEEP_FRACTION * self.score(engines[0])]
        best_batched: list[Candidate] = []
        for base in top:
            best = base
            for size in BATCH_SIZES:
                cand = self.measure(Candidate(f"{base.name} batch {size}", op={**base.op, "batch_size": size,
                                                                             "auto_batching_timeout": 2},
                                              lsc=dict(base.lsc), stage="batching"))
                if cand.status != "measured" or self.score(cand) < MIN_GAIN * self.score(best):
                    break
                best = cand
            best_batched.append(best)
        if self.cores >= 2 and best_batched:
            base = max(best_batched, key=self.score)
            self.measure(Candidate(f"{base.name}, 2 instances x {self.cores // 2} threads",
                                   op={**base.op, "concurrency": 2}, lsc={**base.lsc, "thread_num": self.cores // 2},
                                   stage="instances"))
        return self.candidates

    def _level_seconds(self, expected_candidates: int) -> float:
        """Seconds per load level so that the expected candidates fit the budget (2 to 8 s)."""
        per_candidate = self.budget_s / max(1, expected_candidates)
        return max(2.0, min(8.0, (per_candidate - self.start_cost_s) / 4 - 1.0))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="measure engine, precision, batching and instances on this machine and write the best config",
        description="Find the best config.yml for this machine: every candidate runs in a real `resnest serve` "
                    "under the load generator, within --time-budget. Writes config.yml (most images/s meeting "
                    "--p99-ms), config_low_latency.yml, tune_report.json/.md and tune.png into --out.")
    p.add_argument("--model-dir", type=Path, required=True, help="the exported serving_server folder")
    p.add_argument("--p99-ms", type=float, metavar="MS", help="p99 latency target for the throughput choice")
    p.add_argument("--protocol", choices=("grpc", "http", "brpc", "v2-http", "v2-grpc"), default="grpc",
                   help="front door to load (default grpc)")
    p.add_argument("--time-budget", default="10m", metavar="T",
                   help="total time, e.g. 600, 90s, 10m (default 10m); candidates that do not fit are reported")
    p.add_argument("--accuracy-threshold", type=float, default=0.99, metavar="F",
                   help="lowest recorded top-1 agreement with fp32 for bf16/int8 to be chosen (default 0.99; 0 turns "
                        "the gate off, e.g. for random-weight models whose agreement means nothing)")
    p.add_argument("--images", type=Path, metavar="DIR", help="images to send (default ../shared/data/images)")
    p.add_argument("--out", type=Path, default=Path("tune_out"), help="output folder (default tune_out)")
    p.set_defaults(func=run)


def parse_duration(text: str) -> float:
    """'600', '90s', '10m', '1h' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ValueError(f"--time-budget takes seconds or 90s/10m/1h, got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"--time-budget must be > 0, got {text!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    from resnest_serving.serving.tune_report import write_outputs

    budget = parse_duration(args.time_budget)
    if not 0 <= args.accuracy_threshold <= 1:
        raise ValueError(f"--accuracy-threshold must be in [0, 1] (0: no gate), got {args.accuracy_threshold}")
    folder = args.images or default_images_dir()
    if folder is None:
        raise ValueError("no image folder: give --images DIR (../shared/data/images was not found)")
    model_dir = args.model_dir.resolve()
    if (model_dir / "serving_server").is_dir():
        model_dir = model_dir / "serving_server"
    args.out.mkdir(parents=True, exist_ok=True)
    fingerprint = machine_fingerprint()
    tuner = Tuner(model_dir, list_images(folder), args.protocol, args.p99_ms, budget, args.accuracy_threshold,
                  args.out)
    log.info("tune: %s, budget %.0f s, p99 target %s", model_dir, budget,
             f"{args.p99_ms:g} ms" if args.p99_ms else "none (max images/s)")
    candidates = tuner.run()
    paths = write_outputs(args.out, model_dir, candidates, args.p99_ms, fingerprint, tuner.elapsed(), budget)
    for path in paths:
        print(f"wrote {path}")
    return 0 if any(c.status == "measured" for c in candidates) else 1


def as_dict(cand: Candidate, p99_ms: float | None) -> dict[str, Any]:
    """A candidate for the JSON report, with its chosen points."""
    best, low = cand.best(p99_ms), cand.lowest_latency()
    return {**asdict(cand), "best": asdict(best) if best else None, "lowest_latency": asdict(low) if low else None}
