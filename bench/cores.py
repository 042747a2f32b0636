"""Are this machine's CPUs independent cores, for a given workload? The workload, single-threaded and pinned to
the first CPU, timed alone and while a pure-arithmetic Python loop (next to no memory traffic) runs pinned to
each other CPU, in alternating blocks: a float32 matrix multiply, or with --model-dir an engine running the
bundle's model at batch 1 (one math thread). On independent cores the neighbour changes nothing; where CPUs
share a physical core (SMT) or its units, the workload slows down. Read served benchmarks with it: a bound
measured with the engine alone assumes the other CPUs' work (front door, load generator) costs the engine
nothing.

    python -m bench.cores [--rounds 4] [--model-dir DIR --engine openvino --precision int8]

Not a test: it reports what this machine does now (shared machines change from minute to minute)."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one BLAS thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench.handoff import median_us  # noqa: E402


def spin(cpu: int, stop) -> None:
    """Integer arithmetic in a loop on `cpu` until `stop` is set."""
    os.sched_setaffinity(0, {cpu})
    x = 1
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def workload(args: argparse.Namespace):
    """(name, a callable doing one unit of work) for the arguments."""
    if args.model_dir is None:
        a = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
        return "384×384 float32 matrix multiply", lambda: a @ a
    from resnest_serving.pipeline.engines import open_runtime
    from resnest_serving.protocol.bundle import ModelBundle
    from resnest_serving.protocol.engine_options import EngineOptions

    bundle = ModelBundle.load(args.model_dir)
    runtime, report = open_runtime(bundle, (args.engine,), EngineOptions(thread_num=1, precision=args.precision), 1)
    size = bundle.meta.crop_size
    pixels = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), np.uint8)
    return f"{report.kind} {report.precision}, batch 1, 1 thread", lambda: runtime.infer(pixels)


def measure(work, rounds: int, calls: int) -> dict[str, list[float]]:
    """{"alone": [...], "CPU n busy": [...]} medians per block of `work` pinned to this process's first CPU, for
    each other CPU it may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("one CPU only: nothing to compare")
    os.sched_setaffinity(0, {cpus[0]})
    median_us(work, 5)
    results: dict[str, list[float]] = {"alone": []} | {f"CPU {cpu} busy": [] for cpu in cpus[1:]}
    for _ in range(rounds):
        results["alone"].append(median_us(work, calls) / 1000)
        for cpu in cpus[1:]:
            stop = mp.Event()
            neighbour = mp.Process(target=spin, args=(cpu, stop), daemon=True)
            neighbour.start()
            time.sleep(0.2)
            results[f"CPU {cpu} busy"].append(median_us(work, calls) / 1000)
            stop.set()
            neighbour.join()
    os.sched_setaffinity(0, set(cpus))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=40, help="calls per block")
    parser.add_argument("--model-dir", type=Path, help="a serving_server bundle: time its engine instead")
    parser.add_argument("--engine", default="openvino")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    first = sorted(os.sched_getaffinity(0))[0]
    name, work = workload(args)
    results = measure(work, args.rounds, args.calls)
    alone = statistics.median(results["alone"])
    for label, blocks in results.items():
        print(f"{name} on CPU {first}, {label:>10}: median {statistics.median(blocks):7.2f} ms "
              f"(blocks {' '.join(f'{b:.2f}' for b in blocks)}), ×{statistics.median(blocks) / alone:.2f} of alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
