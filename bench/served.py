"""Served-vs-raw benchmark, per engine configuration, on the same model and images in one run:
1. the raw engine alone in its own process at batch 1/4/8 and preprocessing alone, just before and just after
   the served points, which give each point's bound "engine + preprocessing" = 1 / (preprocess s/img + engine
   s/img at the best batch size the server can form at that load: at most min(concurrency, batch_size));
2. the server (a real `resnest serve` child process) over gRPC at concurrency 1 and 4, REST and bRPC at 4;
3. `GET /health/live` latency while a 32-image request is being classified (the event loop must not wait
   for the engine);
4. for the first config, one image sent again and again over gRPC: to that server (cache off: every request
   a miss) and to a second one with `response_cache_mb` (every request after the first a hit);
and prints images/s (median and min–max over --repeats), × bound, latency, × the same server running Paddle
Inference fp32 (what Paddle Serving 0.9's pipeline runs in its best configuration), and the CPU each request
cost in the server's processes: the front door (protocols, preprocessing, batching) and the engine workers,
and in the load generator (this process, on the same cores).
`--arch ResNeSt_tiny` gives the per-request overhead (the engine costs next to nothing). `--json` writes
every figure with the machine fingerprint. `--stages` profiles every point with py-spy and prints the front
door's CPU per request by stage (bench/stages.py); `--batch-sizes 1 4` instead compares batch sizes side by
side, one server each, in interleaved rounds (bench/batching.py), and `--compare KEY=A,B` any op or
local_service_conf key's values the same way.

    python -m bench.served [--arch ResNeSt50 | --model-dir DIR] [--configs auto:fp32 paddle:fp32 auto:bf16]
    python -m bench.served --arch ResNeSt_tiny --configs auto:fp32 --stages --flamegraph DIR
    python -m bench.served --configs auto:fp32 --batch-sizes 1 4 --batch-timeout-ms -1 --repeats 5
    python -m bench.served --configs auto:int8 --compare local_service_conf.batch_streams=1,2 --repeats 5

Not a test: the machines are shared and noisy; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from bench.batching import batch_table, compare_settings, variants_of
from bench.engines import ensure_export, in_child
from bench.load_points import ENGINE, FRONT, LOADGEN, measure_point, start_server
from bench.stages import stage_table
from resnest_serving.client.fingerprint import machine_fingerprint
from resnest_serving.client.images import list_images
from resnest_serving.client.report import strict_json
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec
from resnest_serving.protocol.bundle import ModelBundle

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


def engine_alone(model_dir: Path, bundle: ModelBundle, engine: str, precision: str, args: argparse.Namespace,
                 images: list[bytes]) -> dict | None:
    """The engine alone in its own process at batch 1, 4 and 8 (ms per image; `auto` takes the first of
    OpenVINO, ONNX Runtime, Paddle that runs) and preprocessing alone (ms per image): the bound's parts."""
    raw: dict = {}
    for candidate in ([engine] if engine != "auto" else ["openvino", "onnxruntime", "paddle"]):
        raw = in_child({"model": str(model_dir), "engine": candidate, "precision": precision,
                        "threads": args.threads, "batches": [1, 4, 8], "seconds": 3})
        if "ms" in raw:
            break
    if "ms" not in raw:
        log.warning("%s:%s: %s", engine, precision, raw.get("error"))
        return None
    return {"ms_per_image": {int(bs): ms / int(bs) for bs, ms in raw["ms"].items()},
            "preprocess_ms": 1000 * measure_preprocess(bundle, images)}


def bound(alone: dict[str, dict], batch_limit: int) -> float:
    """Images/s the engine and preprocessing allow, one after the other, at the best batch size the server can
    form at this load (at most min(concurrency, batch_size)): from the mean of the before and after
    measurements."""
    def per_image(a: dict) -> float:
        feasible = [ms for bs, ms in a["ms_per_image"].items() if bs <= batch_limit]
        return a["preprocess_ms"] + min(feasible or a["ms_per_image"].values())

    return 1000.0 / statistics.mean(per_image(a) for a in alone.values())


def run_served(model_dir: Path, engine: str, precision: str, args: argparse.Namespace, images: list[bytes],
               image_dir: Path, workdir: Path, cache_rows: bool = False) -> dict:
    """Every POINTS load point (and the cache rows, the health check) against one server of this config; with
    --stages each point is profiled and results["stages"] holds the stage table's lines."""
    def profile(name: str) -> Path | None:
        return workdir / "stages" / f"{name}.txt" if args.stages else None

    one_image = sorted(image_dir.iterdir())[:1]
    server = start_server(model_dir, engine, precision, args, workdir)
    results: dict = {"engine": server.info["engine"]}
    stage_points: dict[str, dict] = {}  # the stage table's columns
    try:
        for protocol, concurrency in POINTS:
            name = f"{engine}_{precision}_{protocol}_c{concurrency}"
            point = measure_point(server, protocol, concurrency, sorted(image_dir.iterdir()), args, name,
                                  profile=profile(name))
            results[(protocol, concurrency)] = point
            stage_points[f"{protocol} c{concurrency}"] = point
        if cache_rows:
            name = f"{engine}_{precision}_cache_miss"
            point = measure_point(server, *CACHE_POINT, one_image, args, name, profile=profile(name))
            results[(f"{CACHE_POINT[0]}, 1 image, cache off", CACHE_POINT[1])] = point
            stage_points["1 image, cache off"] = point
        results["health"] = health_during_big_request(server, images)
    finally:
        server.stop()
    if cache_rows:
        server = start_server(model_dir, engine, precision, args, workdir, "_cache", response_cache_mb=args.cache_mb)
        try:
            name = f"{engine}_{precision}_cache_hit"
            point = measure_point(server, *CACHE_POINT, one_image, args, name, profile=profile(name))
            results[(f"{CACHE_POINT[0]}, 1 image, cache hit", CACHE_POINT[1])] = point
            stage_points["1 image, cache hit"] = point
        finally:
            server.stop()
    if args.stages:
        results["stages"] = stage_table(stage_points)
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
    parser.add_argument("--stages", action="store_true",
                        help="profile every point (py-spy) and print the front door's CPU per request by stage")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="N",
                        help="instead of the usual points: one server per batch size, gRPC c1/c4 and HTTP c1 in "
                             "interleaved rounds (--repeats rounds), images/s and the ratio to the first size")
    parser.add_argument("--compare", metavar="KEY=A,B",
                        help="like --batch-sizes for any op key or local_service_conf.KEY, e.g. "
                             "local_service_conf.batch_streams=1,2: one server per value")
    parser.add_argument("--paddle-serving", type=Path, metavar="PYTHON",
                        help="instead: the first --configs entry side by side with the real Paddle Serving 0.9 "
                             "pipeline run by this Python 3.9 (bench/paddle_serving/setup.sh makes one), "
                             "interleaved rounds (bench/vs_paddle_serving.py)")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    fingerprint = machine_fingerprint()
    image_dir = args.shared / "data" / "images"
    images = [p.read_bytes() for p in list_images(image_dir)]
    if args.paddle_serving:
        from bench.vs_paddle_serving import vs_main

        return vs_main(args, image_dir, fingerprint)
    shared = {f"image{i}": data for i, data in enumerate(images)}
    model_dir = args.model_dir or ensure_export(args.arch, args.out, shared, {"shared-images": shared})
    bundle = ModelBundle.load(model_dir)
    if args.batch_sizes or args.compare:
        return batch_sizes_main(model_dir, bundle, image_dir, fingerprint, args)
    rows, health, alone, stage_lines = {}, {}, {}, {}
    for spec in args.configs:
        engine, _, precision = spec.partition(":")
        before = engine_alone(model_dir, bundle, engine, precision or "fp32", args, images)
        if before is None:
            continue
        served = run_served(model_dir, engine, precision or "fp32", args, images, image_dir, args.out,
                            cache_rows=not rows and args.cache_mb > 0)
        after = engine_alone(model_dir, bundle, engine, precision or "fp32", args, images) or before
        alone[spec] = {"before": before, "after": after}
        health[spec] = (served.pop("engine"), served.pop("health"))
        if "stages" in served:
            stage_lines[spec] = served.pop("stages")
        rows[spec] = served

    pre_ms = statistics.mean([a[when]["preprocess_ms"] for a in alone.values() for when in a]
                             or [1000 * measure_preprocess(bundle, images)])
    out = [f"model {bundle.meta.arch or model_dir} input {bundle.meta.crop_size}, {args.threads} math threads, "
           f"server batch_size {args.batch_size} / auto_batching_timeout {args.batch_timeout_ms} ms, "
           f"{len(images)} real images, preprocessing {pre_ms:.2f} ms/img", "",
           "| config | engine chosen | protocol | concurrency | images/s (min–max) | bound | × bound | × paddle fp32 "
           "| p50 ms | p99 ms | CPU ms/request: front door + engine + load generator |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec, served in rows.items():
        for (protocol, concurrency), s in served.items():
            base = rows.get(BASELINE, {}).get((protocol, concurrency))
            ratio = f"×{s['images_per_s'] / base['images_per_s']:.2f}" if base else "-"
            spread = s["figures"]["images_per_s"]
            cpu = s["cpu_ms_per_request"]
            limit = bound(alone[spec], min(concurrency, args.batch_size))
            s["bound_images_per_s"] = limit
            out.append(f"| {spec} | {health[spec][0]} | {protocol} | {concurrency} | "
                       f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f}) | {limit:.1f} | "
                       f"{spread['median'] / limit:.2f} | {ratio} | "
                       f"{s['latency_ms']['p50']:.1f} | {s['latency_ms']['p99']:.1f} | "
                       f"{cpu[FRONT]:.2f} + {cpu[ENGINE]:.2f} + {cpu[LOADGEN]:.2f} |")
    out += ["", "bound = 1 / (preprocessing + the engine alone in its own process at its best batch size of at most "
            "min(concurrency, batch_size)), each measured just before and just after the config's served points "
            "(the mean of the two is used); engine ms/img by batch size, preprocessing ms/img:"]
    out += [f"- {spec}: " + "; ".join(f"{when}: " + ", ".join(f"bs {bs} {ms:.2f}" for bs, ms in a[when]["ms_per_image"].items())
                                      + f", preprocessing {a[when]['preprocess_ms']:.2f}" for when in a)
            for spec, a in alone.items()]
    out += ["", "GET /health/live while a 32-image request runs (back-to-back checks):"]
    out += [f"- {spec}: p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.1f} ms "
            f"({h['count']} checks)" for spec, (_, h) in health.items()]
    for spec, served in stage_lines.items():
        out += ["", f"{spec}: where each request's CPU goes (--stages)", "", *served]
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(strict_json({
            "fingerprint": fingerprint, "model": str(model_dir), "preprocess_ms": pre_ms,
            "engine_alone": alone, "health": {k: h for k, (_, h) in health.items()},
            "points": [{"config": spec, "engine": health[spec][0], "protocol": p, "concurrency": c, **summary}
                       for spec, served in rows.items() for (p, c), summary in served.items()]}), indent=1))
    return 0


def batch_sizes_main(model_dir: Path, bundle: ModelBundle, image_dir: Path, fingerprint: dict,
                     args: argparse.Namespace) -> int:
    """--batch-sizes / --compare: every config's servers side by side (bench/batching.py), one table."""
    results = {}
    for spec in args.configs:
        engine, _, precision = spec.partition(":")
        results[spec] = compare_settings(model_dir, engine, precision or "fp32", args, image_dir, args.out)
    batching = "" if args.batch_sizes else f"batch_size {args.batch_size}, "
    out = [f"model {bundle.meta.arch or model_dir}, {args.threads} math threads, {batching}auto_batching_timeout "
           f"{args.batch_timeout_ms} ms, {args.repeats} interleaved rounds of {args.seconds:g} s", "",
           *batch_table(results)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.json:
        args.json.write_text(json.dumps(strict_json({
            "fingerprint": fingerprint, "model": str(model_dir), "variants": variants_of(args),
            "points": [{"config": spec, "protocol": p, "concurrency": c, "variant": label, "rounds": runs}
                       for spec, rounds in results.items() for (p, c), by_variant in rounds.items()
                       for label, runs in by_variant.items()]}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
