"""Served-vs-raw benchmark: on the same model and images, in one run,
1. the raw predictor at batch 1/4/8 (its best batch size) and preprocessing alone per image, which give
   the bound "raw predictor + preprocessing" = 1 / (preprocess s/img + engine s/img at the best batch);
2. the in-process pipeline (same code as the server, no network) at concurrency 1 and 8;
3. the server over gRPC, REST and bRPC at concurrency 1 and 8 (a real `resnest serve` child process),
and prints per-stage latency (from the server's /metrics) and the ratios served/bound and the latency
the network front doors add at concurrency 1.

    python -m serving.bench_served [--arch ResNeSt50 | --model-dir DIR] [--seconds 10]

Not a test: the machines are shared and noisy; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from client.images import list_images
from export.model_files import EngineOptions
from pipeline.bench_engines import ensure_export, time_engine
from pipeline.bundle import ModelBundle
from pipeline.engines import ENGINES
from pipeline.pipeline import Pipeline, PipelineSettings
from pipeline.preprocess import Preprocessor, PreprocessSpec
from pipeline.types import Request

log = logging.getLogger(__name__)


def measure_preprocess(bundle: ModelBundle, images: list[bytes], rounds: int = 20) -> float:
    """Seconds per image for decode + preprocessing, one thread."""
    meta = bundle.meta
    pre = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size))
    values = [base64.b64encode(data).decode() for data in images]
    started = time.perf_counter()
    for _ in range(rounds):
        for value in values:
            pre("image", value)
    return (time.perf_counter() - started) / (rounds * len(values))


async def drive_pipeline(pipeline: Pipeline, values: list[str], concurrency: int, seconds: float) -> dict:
    """Closed loop straight into Pipeline.infer: images/s and latency percentiles."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await pipeline.infer(Request(["image"], [values[i % len(values)]]))
            if response.err_no != 0:
                raise RuntimeError(response.err_msg)
            latencies.append(time.perf_counter() - started)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"images_s": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * float(np.percentile(latencies, 99))}


async def run_inprocess(bundle: ModelBundle, settings: PipelineSettings, engine: str, options: EngineOptions,
                        values: list[str], seconds: float) -> dict[int, dict]:
    pipeline = Pipeline(bundle, [ENGINES[engine](bundle, options)], settings)
    await pipeline.start()
    try:
        await drive_pipeline(pipeline, values, 2, 2.0)  # warm-up
        return {c: await drive_pipeline(pipeline, values, c, seconds) for c in (1, 8)}
    finally:
        await pipeline.stop()


def run_served(model_dir: Path, args: argparse.Namespace, image_dir: Path, workdir: Path,
               remote: bool = False) -> dict:
    """Load a real server (with `remote`, a pipeline whose model runs in a separate model server over bRPC)."""
    from client.bench import BenchConfig, run_bench
    from serving.launcher import ServerProcess, write_config

    workdir.mkdir(parents=True, exist_ok=True)
    op = {"batch_size": args.batch_size, "auto_batching_timeout": args.batch_timeout_ms, "engine": args.engine}
    lsc = {"thread_num": args.threads}
    model_server = None
    if remote:
        model_cfg = write_config(workdir / "bench_model_server.yml", model_dir, op=op, lsc=lsc,
                                 top={"rpc_port": None, "http_port": None})
        model_server = ServerProcess(model_cfg, extra_args=["--model-server"])
        op = {"batch_size": args.batch_size, "auto_batching_timeout": args.batch_timeout_ms,
              "server_endpoints": [f"127.0.0.1:{model_server.ports['brpc']}"]}
        lsc = {"client_type": "brpc"}
    config = write_config(workdir / "bench_config.yml", model_dir, op=op, lsc=lsc)
    server = ServerProcess(config)
    results = {}
    try:
        for protocol in ("grpc",) if remote else ("grpc", "http", "brpc"):
            for concurrency in (1, 8):
                bench = BenchConfig(protocol=protocol, endpoint=f"127.0.0.1:{server.ports[protocol]}",
                                    images=sorted(image_dir.iterdir()), concurrency=concurrency,
                                    duration=args.seconds, warmup=4, metrics_url=server.url("/metrics"))
                report = asyncio.run(run_bench(bench)).to_dict()
                results[(protocol, concurrency)] = report
                log.info("%s c=%d: %.2f images/s", protocol, concurrency, report["summary"]["images_per_s"])
    finally:
        server.stop()
        if model_server is not None:
            model_server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ResNeSt50")
    parser.add_argument("--model-dir", type=Path, help="an exported serving_server (default: random-init --arch)")
    parser.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/images")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="paddle")
    parser.add_argument("--threads", type=int, default=2, help="math threads of the predictor")
    parser.add_argument("--batch-size", type=int, default=4, help="server batch_size")
    parser.add_argument("--batch-timeout-ms", type=int, default=2, help="server auto_batching_timeout")
    parser.add_argument("--remote", action="store_true",
                        help="also serve with the model in a separate model server over bRPC (split deployment)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model_dir = args.model_dir or ensure_export(args.arch, args.out)
    bundle = ModelBundle.load(model_dir)
    paths = list_images(args.images)
    images = [p.read_bytes() for p in paths]
    values = [base64.b64encode(data).decode() for data in images]
    options = EngineOptions(thread_num=args.threads)

    engine = ENGINES[args.engine](bundle, options)
    size = bundle.meta.crop_size
    raw = {}
    for bs in (1, 4, 8):
        batch = np.random.default_rng(0).standard_normal((bs, 3, size, size)).astype(np.float32)
        raw[bs] = time_engine(engine, batch, runs=5) / bs
    del engine
    best_bs = min(raw, key=raw.get)
    pre_s = measure_preprocess(bundle, images)
    bound = 1.0 / (pre_s + raw[best_bs])

    settings = PipelineSettings(batch_size=args.batch_size, auto_batching_timeout_ms=args.batch_timeout_ms)
    inproc = asyncio.run(run_inprocess(bundle, settings, args.engine, options, values, args.seconds))
    served = run_served(model_dir, args, args.images, args.out)
    remote = run_served(model_dir, args, args.images, args.out, remote=True) if args.remote else {}

    out = [f"model {bundle.meta.arch or model_dir} input {size}, engine {args.engine}, {args.threads} math threads, "
           f"server batch_size "
           f"{args.batch_size} / auto_batching_timeout {args.batch_timeout_ms} ms, {len(paths)} real images",
           "raw predictor s/img: " + ", ".join(f"bs={b}: {1000 * s:.1f} ms" for b, s in raw.items())
           + f"; preprocessing {1000 * pre_s:.2f} ms/img; bound = {bound:.2f} images/s (best bs {best_bs})", "",
           "| path | concurrency | images/s | × bound | p50 ms | p99 ms |", "|---|---|---|---|---|---|",
           f"| raw predictor (bs={best_bs}), no preprocessing | - | {1 / raw[best_bs]:.2f} | "
           f"{(1 / raw[best_bs]) / bound:.2f} | - | - |"]
    for c, r in inproc.items():
        out.append(f"| in-process pipeline | {c} | {r['images_s']:.2f} | {r['images_s'] / bound:.2f} | "
                   f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    for (protocol, c), report in served.items():
        s = report["summary"]
        out.append(f"| served {protocol} | {c} | {s['images_per_s']:.2f} | {s['images_per_s'] / bound:.2f} | "
                   f"{s['latency_ms']['p50']:.1f} | {s['latency_ms']['p99']:.1f} |")
    for (protocol, c), report in remote.items():
        s = report["summary"]
        out.append(f"| served {protocol}, remote model over bRPC | {c} | {s['images_per_s']:.2f} | "
                   f"{s['images_per_s'] / bound:.2f} | {s['latency_ms']['p50']:.1f} | {s['latency_ms']['p99']:.1f} |")
    out.append("")
    for protocol in ("grpc", "http", "brpc"):
        added = served[(protocol, 1)]["summary"]["latency_ms"]["p50"] - inproc[1]["p50_ms"]
        out.append(f"added p50 latency at concurrency 1, {protocol} vs in-process: {added:+.2f} ms")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
