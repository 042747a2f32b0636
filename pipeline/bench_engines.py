"""Engine benchmark: the exported ResNeSt50 and ResNeSt50_fast_1s1x64d (random weights: speed does not
depend on them) under Paddle Inference (oneDNN on/off, 1 and 2 threads) and ONNX Runtime (1 and 2
threads) at batch 1/4/8, side by side in one run, with ratios against Paddle + oneDNN at 2 threads.

    python -m pipeline.bench_engines [--archs ResNeSt50 ...] [--batches 1 4 8] [--runs 5] [--out DIR]

Not a test: machines are shared and noisy, so read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from export.model_files import EngineOptions
from pipeline.bundle import ModelBundle
from pipeline.engines import OnnxEngine, PaddleEngine

log = logging.getLogger(__name__)

CONFIGS = [  # (label, engine class, options)
    ("paddle+onednn 2t", PaddleEngine, EngineOptions(thread_num=2)),
    ("paddle+onednn 1t", PaddleEngine, EngineOptions(thread_num=1)),
    ("paddle native 2t", PaddleEngine, EngineOptions(thread_num=2, use_mkldnn=False)),
    ("paddle native 1t", PaddleEngine, EngineOptions(thread_num=1, use_mkldnn=False)),
    ("onnxruntime 2t", OnnxEngine, EngineOptions(thread_num=2)),
    ("onnxruntime 1t", OnnxEngine, EngineOptions(thread_num=1)),
]


def ensure_export(arch: str, out_dir: Path) -> Path:
    """Export a random-init model with ONNX once; reuse it on later runs."""
    from export.exporter import ExportOptions, export

    target = out_dir / arch
    if not (target / "serving_server" / "inference.onnx").is_file():
        export(ExportOptions(arch=arch, out=target, random_init=True, onnx=True, force=True))
    return target / "serving_server"


def interleaved(engines: dict, batches: dict[int, np.ndarray], runs: int) -> dict[tuple[str, int], list[float]]:
    """Seconds per call of every (engine, batch size), measured round-robin so that every alternative sees
    the same background load (the machines are shared: load drifts over minutes)."""
    for engine in engines.values():
        for batch in batches.values():
            engine.run(batch)  # warm-up: oneDNN builds its primitives per shape
    samples: dict[tuple[str, int], list[float]] = {(k, b): [] for k in engines for b in batches}
    for _ in range(runs):
        for label, engine in engines.items():
            for bs, batch in batches.items():
                started = time.perf_counter()
                engine.run(batch)
                samples[(label, bs)].append(time.perf_counter() - started)
    return samples


def time_engine(engine, batch: np.ndarray, runs: int, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        engine.run(batch)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        engine.run(batch)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["ResNeSt50_fast_1s1x64d", "ResNeSt50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--configs", nargs="+", help="subset of config labels (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="where exported models are cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configs = [c for c in CONFIGS if not args.configs or c[0] in args.configs]
    rows = []
    for arch in args.archs:
        bundle = ModelBundle.load(ensure_export(arch, args.out))
        size = bundle.meta.crop_size
        engines = {label: cls(bundle, options) for label, cls, options in configs}
        batches = {bs: np.random.default_rng(0).standard_normal((bs, 3, size, size)).astype(np.float32)
                   for bs in args.batches}
        samples = interleaved(engines, batches, args.runs)
        for label in engines:
            for bs in args.batches:
                seconds = statistics.median(samples[(label, bs)])
                rows.append((arch, label, bs, seconds))
                log.info("%s %s bs=%d: %.1f ms (%.1f img/s)", arch, label, bs, seconds * 1000, bs / seconds)
        del engines
    print_table(rows, args.batches)
    return 0


def print_table(rows: list[tuple[str, str, int, float]], batches: list[int]) -> None:
    base = {(a, b): s for a, label, b, s in rows if label == CONFIGS[0][0]}
    head = "| model | engine | " + " | ".join(f"bs={b}: ms (img/s) ×base" for b in batches) + " |"
    out = [head, "|" + "---|" * (2 + len(batches))]
    by_key = {(a, label, b): s for a, label, b, s in rows}
    for arch in dict.fromkeys(a for a, *_ in rows):
        for label in dict.fromkeys(label for a, label, *_ in rows if a == arch):
            cells = []
            for b in batches:
                s = by_key.get((arch, label, b))
                ratio = f" ×{base[(arch, b)] / s:.2f}" if s and (arch, b) in base else ""
                cells.append(f"{s * 1000:.0f} ({b / s:.1f}){ratio}" if s else "-")
            out.append(f"| {arch} | {label} | " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(out) + "\n(×base = speed relative to paddle+onednn 2t; >1 is faster)\n")


if __name__ == "__main__":
    raise SystemExit(main())
