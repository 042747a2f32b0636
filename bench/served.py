"""Served-vs-raw benchmark, per engine configuration, on the same model and images in one run:
1. the raw engine alone in its own process at batch 1/4/8 (its best batch size) and preprocessing alone,
   which give the bound "engine + preprocessing" = 1 / (preprocess s/img + engine s/img at the best batch);
2. the server (a real `resnest serve` child process) over gRPC at concurrency 1 and 4, REST and bRPC at 4;
3. `GET /health/live` latency while a 32-image request is being classified (the event loop must not wait
   for the engine);
4. for the first config, one image sent again and again over gRPC: to that server (cache off: every request
   a miss) and to a second one with `response_cache_mb` (every request after the first a hit);
and prints images/s (median and min–max over --repeats), × bound, latency, × the same server running Paddle
Inference fp32 (what Paddle Serving 0.9's pipeline runs in its best configuration), and the CPU each request
cost in the server's processes: the front door (protocols, preprocessing, batching) and the engine workers.
`--arch ResNeSt_tiny` gives the per-request overhead (the engine costs next to nothing). `--json` writes
every figure with the machine fingerprint.

    python -m bench.served [--arch ResNeSt50 | --model-dir DIR] [--configs auto:fp32 paddle:fp32 auto:bf16]

Not a test: the machines are shared and noisy; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from resnest_serving.client.fingerprint import machine_fingerprint
from resnest_serving.client.images import list_images
from resnest_serving.client.report import strict_json
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec
from resnest_serving.protocol.bundle import ModelBundle

from bench.engines import ensure_export, in_child

log = logging.getLogger(__name__)

POINTS = [("grpc", 1), ("grpc", 4), ("http", 4), ("brpc", 4)]
BASELINE = "paddle:fp32"
CACHE_POINT = ("grpc", 1)  # the response cache's miss and hit rows: one image, one client


def measure_preprocess(bundle: ModelBundle, images: list[bytes], rounds: int = 20) -> float:
    """Seconds per image for decode + preprocessing to the uint8 pixels the server hands its engines, one thread."""
    meta = bundle.meta
    pre = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size, meta.mean, meta.std))
    started = time.perf_counter()
    for _ in range(rounds):
        for i, data in enumerate(images):
            pre.pixels_from_bytes(f"image{i}", data)
    return (time.perf_counter() - started) / (rounds * len(images))


def health_during_big_request(server, images: list[bytes]) -> dict:
    """/health/live latencies (ms) measured back to back while one 32-image REST request runs."""
    values = [base64.b64encode(images[i % len(images)]).decode() for i in range(32)]
    body = json.dumps({"key": [f"image_{i}" for i in range(32)], "value": values})
    done = threading.Event()

    def big() -> None:
        requests.post(server.url("/imagenet/prediction"), data=body, timeout=300)
        done.set()

    thread = threading.Thread(target=big)
    thread.start()
    latencies = []
    with requests.Session() as session:
        while not done.is_set():
            started = time.perf_counter()
            session.get(server.url("/health/live"), timeout=30)
            latencies.append((time.perf_counter() - started) * 1000)
    thread.join()
    return {"p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "max_ms": max(latencies), "count": len(latencies)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def process_tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server process ("front door") and by its children ("engine workers")."""
    out = {"front door": 0.0, "engine workers": 0.0}
    try:
        out["front door"] = cpu_seconds(pid)
    except OSError:
        return out
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text.rpartition(")")[2].split()[1]) == pid:
                out["engine workers"] += cpu_seconds(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return out


def flame_graph(pid: int, folder: Path, name: str, seconds: float) -> subprocess.Popen:
    """Start py-spy recording the front door process (threads, native frames off) for `seconds` into
    folder/name.svg; the caller waits for it."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise RuntimeError("--flamegraph needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
                             "--output", str(folder / f"{name}.svg"), "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_point(server, protocol: str, concurrency: int, image_paths: list[Path], args: argparse.Namespace,
                  name: str) -> dict:
    """One load point against a running server: the bench summary plus the server's CPU per request."""
    from resnest_serving.client.bench import BenchConfig, run_repeats

    bench = BenchConfig(protocol=protocol, endpoint=f"127.0.0.1:{server.ports[protocol]}", images=image_paths,
                        concurrency=concurrency, duration=args.seconds, warmup=4, metrics_url=server.url("/metrics"))
    before = process_tree_cpu(server.proc.pid)
    profiler = flame_graph(server.proc.pid, args.flamegraph, name, args.seconds * args.repeats) \
        if args.flamegraph else None
    run = asyncio.run(run_repeats(bench, args.repeats))
    after = process_tree_cpu(server.proc.pid)
    if profiler is not None:
        profiler.wait(60)
    requests_done = sum(len(r.samples) for r in run.reports) + bench.warmup
    summary = run.median_report.summary()
    summary["figures"] = run.figures()
    summary["cpu_ms_per_request"] = {k: 1000 * (after[k] - before[k]) / max(1, requests_done) for k in after}
    log.info("%s: %.2f images/s, CPU/request %s", name, summary["images_per_s"],
             ", ".join(f"{k} {v:.2f} ms" for k, v in summary["cpu_ms_per_request"].items()))
    return summary


def run_served(model_dir: Path, engine: str, precision: str, args: argparse.Namespace, images: list[bytes],
               image_dir: Path, workdir: Path, cache_rows: bool = False) -> dict:
    from resnest_serving.serving.launcher import ServerProcess, write_config

    workdir.mkdir(parents=True, exist_ok=True)
    op = {"batch_size": args.batch_size, "auto_batching_timeout": args.batch_timeout_ms, "engine": engine}

    def start(name: str, **extra) -> ServerProcess:
        config = write_config(workdir / f"bench_{engine}_{precision}{name}.yml", model_dir, op={**op, **extra},
                              lsc={"thread_num": args.threads, "precision": precision})
        return ServerProcess(config, timeout=300)

    one_image = sorted(image_dir.iterdir())[:1]
    server = start("")
    results: dict = {"engine": server.info["engine"]}
    try:
        for protocol, concurrency in POINTS:
            results[(protocol, concurrency)] = measure_point(server, protocol, concurrency, sorted(image_dir.iterdir()),
                                                             args, f"{engine}_{precision}_{protocol}_c{concurrency}")
        if cache_rows:
            results[(f"{CACHE_POINT[0]}, 1 image, cache off", CACHE_POINT[1])] = measure_point(
                server, *CACHE_POINT, one_image, args, f"{engine}_{precision}_cache_miss")
        results["health"] = health_during_big_request(server, images)
    finally:
        server.stop()
    if cache_rows:
        server = start("_cache", response_cache_mb=args.cache_mb)
        try:
            results[(f"{CACHE_POINT[0]}, 1 image, cache hit", CACHE_POINT[1])] = measure_point(
                server, *CACHE_POINT, one_image, args, f"{engine}_{precision}_cache_hit")
        finally:
            server.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ResNeSt50")
    parser.add_argument("--model-dir", type=Path, help="an exported serving_server (default: random-init --arch)")
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared data folder")
    parser.add_argument("--configs", nargs="+", default=["auto:fp32", BASELINE, "auto:bf16", "auto:int8"],
                        help="engine:precision pairs (default: auto:fp32 paddle:fp32 auto:bf16 auto:int8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per measured point")
    parser.add_argument("--threads", type=int, default=2, help="math threads of the engine")
    parser.add_argument("--batch-size", type=int, default=4, help="server batch_size")
    parser.add_argument("--batch-timeout-ms", type=int, default=2, help="server auto_batching_timeout")
    parser.add_argument("--repeats", type=int, default=1, help="measure each point N times (median, min–max)")
    parser.add_argument("--json", type=Path, help="write every figure and the machine fingerprint here")
    parser.add_argument("--flamegraph", type=Path, metavar="DIR",
                        help="record a py-spy flame graph of the front door at every point into DIR (pip install py-spy)")
    parser.add_argument("--cache-mb", type=float, default=16.0,
                        help="response_cache_mb of the cache-hit row's server (first config only); 0 skips the rows")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    fingerprint = machine_fingerprint()
    image_dir = args.shared / "data" / "images"
    images = [p.read_bytes() for p in list_images(image_dir)]
    shared = {f"image{i}": data for i, data in enumerate(images)}
    model_dir = args.model_dir or ensure_export(args.arch, args.out, shared, {"shared-images": shared})
    bundle = ModelBundle.load(model_dir)
    pre_s = measure_preprocess(bundle, images)

    rows, health, bounds = {}, {}, {}
    for spec in args.configs:
        engine, _, precision = spec.partition(":")
        kind = engine if engine != "auto" else None
        raw = {}
        for candidate in ([kind] if kind else ["openvino", "onnxruntime", "paddle"]):
            raw = in_child({"model": str(model_dir), "engine": candidate, "precision": precision or "fp32",
                            "threads": args.threads, "batches": [1, 4, 8], "seconds": 3})
            if "ms" in raw:
                break
        if "ms" not in raw:
            log.warning("%s: %s", spec, raw.get("error"))
            continue
        engine_s = min(ms / int(bs) for bs, ms in raw["ms"].items()) / 1000
        bounds[spec] = 1.0 / (pre_s + engine_s)
        served = run_served(model_dir, engine, precision or "fp32", args, images, image_dir, args.out,
                            cache_rows=not rows and args.cache_mb > 0)
        health[spec] = (served.pop("engine"), served.pop("health"))
        rows[spec] = served

    out = [f"model {bundle.meta.arch or model_dir} input {bundle.meta.crop_size}, {args.threads} math threads, "
           f"server batch_size {args.batch_size} / auto_batching_timeout {args.batch_timeout_ms} ms, "
           f"{len(images)} real images, preprocessing {1000 * pre_s:.2f} ms/img", "",
           "| config | engine chosen | protocol | concurrency | images/s (min–max) | × bound | × paddle fp32 | p50 ms "
           "| p99 ms | CPU ms/request: front door + engine |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for spec, served in rows.items():
        for (protocol, concurrency), s in served.items():
            base = rows.get(BASELINE, {}).get((protocol, concurrency))
            ratio = f"×{s['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
            spread = s["figures"]["images_per_s"]
            cpu = s["cpu_ms_per_request"]
            out.append(f"| {spec} | {health[spec][0]} | {protocol} | {concurrency} | "
                       f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f}) | "
                       f"{spread['median'] / bounds[spec]:.2f} | {ratio} | "
                       f"{s['latency_ms']['p50']:.1f} | {s['latency_ms']['p99']:.1f} | "
                       f"{cpu['front door']:.2f} + {cpu['engine workers']:.2f} |")
    out += ["", "bound = 1 / (preprocessing + engine at its best batch size, alone in its own process):"]
    out += [f"- {spec}: {bound:.2f} images/s" for spec, bound in bounds.items()]
    out += ["", "GET /health/live while a 32-image request runs (back-to-back checks):"]
    out += [f"- {spec}: p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms "
            f"({h['count']} checks)" for spec, (_, h) in health.items()]
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(strict_json({
            "fingerprint": fingerprint, "model": str(model_dir), "preprocess_ms": 1000 * pre_s,
            "bounds_images_per_s": bounds, "health": {k: h for k, (_, h) in health.items()},
            "points": [{"config": spec, "engine": health[spec][0], "protocol": p, "concurrency": c, **summary}
                       for spec, served in rows.items() for (p, c), summary in served.items()]}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
