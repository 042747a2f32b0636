"""Engine benchmark: every engine and precision this CPU runs, each measured alone in its own process
(one engine's OpenMP threads keep spinning after a run and would slow the next one in the same process),
in alternating rounds so that every alternative sees the same background load.

    python -m bench.engines [--archs ResNeSt50] [--batches 1 4] [--rounds 3] [--seconds 3]

Prints ms/image and images/s per batch size, the share of the machine's fp32 peak that the model's
multiply-adds reach (the peak from a fused-multiply-add loop in its own process, same thread count), the
speed relative to Paddle Inference fp32, and the accuracy checks of bf16/int8 recorded at export: on the
benchmarked (random-weight) model, and on the trained demo model with its held-out digits, where top-1
agreement means something. Models are random-init exports (speed does not depend on the weights), cached
under --out. Not a test: read the ratios; the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from resnest_serving.client.fingerprint import machine_fingerprint

log = logging.getLogger(__name__)

CONFIGS = [("paddle", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("paddle", "bf16"),
           ("openvino", "bf16"), ("onnxruntime", "int8"), ("openvino", "int8")]
BASE = ("paddle", "fp32")


def ensure_export(arch: str, out_dir: Path, calibration: dict[str, bytes], checks: dict[str, dict[str, bytes]]) -> Path:
    """A random-init export with ONNX, int8 and accuracy checks, made once and reused on later runs."""
    from resnest_serving.export.exporter import ExportOptions
    from resnest_serving.export_command import export_model

    target = out_dir / arch
    if not (target / "serving_server" / "inference.int8.onnx").is_file():
        export_model(ExportOptions(arch=arch, out=target, random_init=True, force=True, int8=True,
                                   calibration_images=calibration, check_images=checks))
    return target / "serving_server"


def ensure_demo_export(out_dir: Path, shared_images: dict[str, bytes]) -> Path:
    """The trained demo model with int8 calibrated on 64 held-out digits, checked on the other 296."""
    from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH, load_heldout
    from resnest_serving.export.exporter import ExportOptions
    from resnest_serving.export_command import export_model

    target = out_dir / "demo"
    if not (target / "serving_server" / "inference.int8.onnx").is_file():
        pngs, _ = load_heldout()
        named = {f"digit{i:03d}.png": png for i, png in enumerate(pngs)}
        names = list(named)
        export_model(ExportOptions(arch=ARCH, out=target, checkpoint=CHECKPOINT_PATH, label_file=LABELS_PATH,
                                   force=True, int8=True, calibration_images={n: named[n] for n in names[:64]},
                                   check_images={"digits-heldout": {n: named[n] for n in names[64:]},
                                                 "shared-images": shared_images}))
    return target / "serving_server"


# -- measurements, each in a child process -------------------------------------------------------------


def measure(job: dict) -> dict:
    """In the child: load one engine, warm it up, time each batch size for `seconds` on uint8 pixel batches (the
    server's input form: the engine's own conversion is part of its time); ms per batch (median)."""
    from resnest_serving.pipeline.engines import EngineError, open_runtime
    from resnest_serving.protocol.bundle import ModelBundle
    from resnest_serving.protocol.engine_options import EngineOptions

    bundle = ModelBundle.load(job["model"])
    options = EngineOptions(thread_num=job["threads"], precision=job["precision"])
    try:
        runtime, _ = open_runtime(bundle, (job["engine"],), options, max(job["batches"]))
    except EngineError as exc:
        return {"error": str(exc)}
    size = bundle.meta.crop_size
    result = {}
    for bs in job["batches"]:
        batch = np.random.default_rng(bs).integers(0, 256, (bs, size, size, 3), np.uint8)  # what the server feeds
        runtime.infer(batch)
        samples: list[float] = []
        deadline = time.perf_counter() + job["seconds"]
        while len(samples) < 3 or time.perf_counter() < deadline:
            started = time.perf_counter()
            runtime.infer(batch)
            samples.append(time.perf_counter() - started)
        result[str(bs)] = statistics.median(samples) * 1000
    return {"ms": result}


FMA_KERNEL = r"""
typedef float vf __attribute__((vector_size(64)));
double fma_loop(long iters, float seed) {
    vf a[12], b, c;
    for (int k = 0; k < 12; k++) for (int i = 0; i < 16; i++) a[k][i] = seed * (k + 1) + i;
    for (int i = 0; i < 16; i++) { b[i] = 0.999f; c[i] = seed * 0.001f; }
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; k++) a[k] = a[k] * b + c;
    }
    float t = 0;
    for (int k = 0; k < 12; k++) for (int i = 0; i < 16; i++) t += a[k][i];
    return t;
}
"""
FMA_FLOPS_PER_ITER = 12 * 16 * 2  # 12 independent 16-float fused multiply-adds


def measure_peak(threads: int) -> dict:
    """In the child: fp32 GFLOP/s of `threads` threads each running independent fused multiply-adds
    (compiled here with gcc -march=native, so it uses the widest vectors the CPU has), best of 3; without
    gcc, a 2048x2048 float32 matmul through numpy's BLAS (which stays below the FMA peak)."""
    import ctypes
    import shutil
    import tempfile
    import threading

    if shutil.which("gcc") is None:
        n = 2048
        a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        a @ a
        return {"gflops": 2 * n ** 3 / min(_timed(lambda: a @ a) for _ in range(5)) / 1e9, "probe": "numpy matmul"}
    with tempfile.TemporaryDirectory() as tmp:
        src, lib_path = Path(tmp) / "fma.c", Path(tmp) / "fma.so"
        src.write_text(FMA_KERNEL)
        subprocess.run(["gcc", "-O3", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC", "-o", str(lib_path),
                        str(src)], check=True)
        lib = ctypes.CDLL(str(lib_path))
    lib.fma_loop.restype, lib.fma_loop.argtypes = ctypes.c_double, [ctypes.c_long, ctypes.c_float]
    iters = 20_000_000

    def run_all() -> None:  # ctypes releases the GIL: the threads run on separate cores
        workers = [threading.Thread(target=lib.fma_loop, args=(iters, 0.5)) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    best = min(_timed(run_all) for _ in range(3))
    return {"gflops": threads * iters * FMA_FLOPS_PER_ITER / best / 1e9, "probe": "FMA loop"}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def in_child(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "OPENBLAS_NUM_THREADS": str(job["threads"]),
           "MKL_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run([sys.executable, "-m", "bench.engines", "--job", json.dumps(job)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


# -- the report ----------------------------------------------------------------------------------------


def macs_per_image(arch: str, size: int) -> int:
    from resnest_serving.export.flops import count_macs
    from resnest_serving.export.resnest import build_model

    return count_macs(build_model(arch), size)


def run(args: argparse.Namespace) -> tuple[str, dict]:
    from resnest_serving.pipeline.accuracy import describe_check
    from resnest_serving.pipeline.engines.cpu import describe as describe_cpu
    from resnest_serving.protocol.bundle import ModelBundle

    shared_images = {p.name: p.read_bytes() for p in sorted((args.shared / "data" / "images").iterdir())}
    out_lines = []
    report: dict = {"fingerprint": machine_fingerprint(), "rounds": args.rounds, "threads": args.threads, "rows": []}
    probes = [in_child({"peak": True, "threads": args.threads}) for _ in range(2)]
    peak = max(p["gflops"] for p in probes)
    out_lines.append(f"measured fp32 peak ({args.threads} threads, {probes[0]['probe']}): {peak:.0f} GFLOP/s; "
                     f"CPU: {describe_cpu()}")
    configs = [c for c in CONFIGS if not args.engines or c[0] in args.engines]
    for arch in args.archs:
        model = ensure_export(arch, args.out, shared_images, {"shared-images": shared_images})
        bundle = ModelBundle.load(model)
        gflop = 2 * macs_per_image(arch, bundle.meta.crop_size) / 1e9
        runs: dict[tuple[str, str], list[dict]] = {c: [] for c in configs}
        for r in range(args.rounds):
            for engine, precision in configs:
                job = {"model": str(model), "engine": engine, "precision": precision, "threads": args.threads,
                       "batches": args.batches, "seconds": args.seconds}
                result = in_child(job)
                runs[(engine, precision)].append(result)
                log.info("round %d %s %s %s: %s", r + 1, arch, engine, precision, result.get("ms") or result["error"])
        out_lines.append("")
        lines, rows = table(arch, bundle.meta.crop_size, gflop, peak, args.batches, runs)
        out_lines += lines
        report["rows"] += rows
        out_lines.append("")
        out_lines += [f"- {describe_check(p, k, c)}" for p, entry in bundle.meta.precision_checks.items()
                      for k, c in entry["engines"].items()]
    demo = ModelBundle.load(ensure_demo_export(args.out, shared_images))
    out_lines += ["", "Accuracy of reduced precision on the trained demo model (ResNeSt_tiny, digits):"]
    out_lines += [f"- {describe_check(p, k, c)}" for p, entry in demo.meta.precision_checks.items()
                  for k, c in entry["engines"].items()]
    report["peak_gflops"] = peak
    return "\n".join(out_lines), report


def table(arch: str, size: int, gflop: float, peak: float, batches: list[int],
          runs: dict[tuple[str, str], list[dict]]) -> tuple[list[str], list[dict]]:
    """The Markdown table (median ms/img over the rounds, [min–max], img/s) and the same as JSON rows."""
    ms = {}  # (engine, precision, bs) -> (median, min, max) over rounds of ms per image
    errors = {}
    for key, results in runs.items():
        good = [r["ms"] for r in results if "ms" in r]
        if not good:
            errors[key] = results[0]["error"]
            continue
        for bs in batches:
            per_image = [r[str(bs)] / bs for r in good]
            ms[(*key, bs)] = (statistics.median(per_image), min(per_image), max(per_image))
    head = (f"| {arch} ({size}×{size}, {gflop:.1f} GFLOP/img) | " +
            " | ".join(f"bs={bs}: ms/img [min–max] (img/s)" for bs in batches) + " | % of fp32 peak | × paddle fp32 |")
    lines = [head, "|" + "---|" * (len(batches) + 3)]
    rows = []
    for key in runs:
        name = f"{key[0]} {key[1]}"
        if key in errors:
            lines.append(f"| {name} | " + " | ".join("-" for _ in batches) + f" | not run: {errors[key][:120]} | |")
            rows.append({"arch": arch, "engine": key[0], "precision": key[1], "error": errors[key]})
            continue
        best = min(ms[(*key, bs)][0] for bs in batches)
        base = [ms[(*BASE, bs)][0] for bs in batches if (*BASE, bs) in ms]
        ratio = f"×{min(base) / best:.2f}" if base else "-"
        cells = [f"{m:.1f} [{lo:.1f}–{hi:.1f}] ({1000 / m:.1f})" for m, lo, hi in (ms[(*key, bs)] for bs in batches)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {gflop / (best / 1000) / peak:.0%} | {ratio} |")
        rows.append({"arch": arch, "engine": key[0], "precision": key[1],
                     "ms_per_image": {str(bs): dict(zip(("median", "min", "max"), ms[(*key, bs)], strict=True))
                                      for bs in batches}})
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["ResNeSt50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per batch size and round (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="math threads (default: cores)")
    parser.add_argument("--engines", nargs="+", help="only these engines")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="where exported models are cached")
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    parser.add_argument("--json", type=Path, help="write the figures (median, min, max) and the machine fingerprint")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        sys.stdout.write(json.dumps(measure_peak(job["threads"]) if job.get("peak") else measure(job)) + "\n")
        return 0
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    text, report = run(args)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
