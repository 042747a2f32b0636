"""Ray Serve vs `resnest serve` on one machine, same model, same config, same load (client/bench.py):
1. `resnest serve` (one process: front doors + batcher + engine worker);
2. `resnest serve --ray` with 1 replica, then with 2 replicas (local Ray instance, started for each setup);
each loaded over gRPC (PipelineClient's PipelineService) at concurrency 1 (per-request latency: the
difference to 1. is the Ray proxy's overhead) and 8 (throughput), and over REST at 8. The mean engine batch
is read from the answering process's /metrics (one replica or the plain server; with 2 replicas each scrape
sees one of them, so it is not reported).

    python -m bench.ray_bench [--model-dir DIR] [--duration S] [--replica-cpus C] [--json FILE]

Not a test: the machine is shared and noisy; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

import requests

from resnest_serving.client.bench import BenchConfig, run_bench
from resnest_serving.client.images import list_images
from resnest_serving.serving.launcher import ServerProcess, write_config

log = logging.getLogger(__name__)

POINTS = [("grpc", 1), ("grpc", 8), ("http", 8)]


def batch_mean(url: str) -> tuple[float, float]:
    """(sum, count) of resnest_batch_images from a /metrics page."""
    text = requests.get(url, timeout=10).text
    values = {"resnest_batch_images_sum": 0.0, "resnest_batch_images_count": 0.0}  # summed over models
    for name, value in re.findall(r"^(resnest_batch_images_(?:sum|count))(?:\{[^}]*\})? (\S+)$", text, flags=re.M):
        values[name] += float(value)
    return values["resnest_batch_images_sum"], values["resnest_batch_images_count"]


def measure(server: ServerProcess, images: list[Path], duration: float, batch_known: bool) -> list[dict]:
    rows = []
    for protocol, concurrency in POINTS:
        endpoint = f"127.0.0.1:{server.ports[protocol]}"
        before = batch_mean(server.url("/metrics")) if batch_known else None
        report = asyncio.run(run_bench(BenchConfig(protocol=protocol, endpoint=endpoint, images=images,
                                                   concurrency=concurrency, duration=duration, warmup=20)))
        summary = report.summary()
        row = {"protocol": protocol, "concurrency": concurrency, "qps": summary["qps"],
               "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"],
               "errors": summary["errors"], "batch": None}
        if before is not None:
            after = batch_mean(server.url("/metrics"))
            batches = after[1] - before[1]
            row["batch"] = (after[0] - before[0]) / batches if batches else None
        rows.append(row)
        log.info("%s c=%d: %.1f req/s p50 %.2f ms p99 %.2f ms errors %d", protocol, concurrency, row["qps"],
                 row["p50_ms"], row["p99_ms"], row["errors"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="serving_server folder (default: export the demo model)")
    parser.add_argument("--images", type=Path, help="images to send (default ../shared/data/images)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load point (default 8)")
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="--ray-replica-cpus (default 0.5)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    shared = Path(os.environ.get("RESNEST_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    images = list_images(args.images or shared / "data" / "images")
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH
            from resnest_serving.export.exporter import ExportOptions, export

            model_dir = export(ExportOptions(arch=ARCH, out=Path(tmp) / "bundle", checkpoint=CHECKPOINT_PATH,
                                             label_file=LABELS_PATH)).server_dir
        config = write_config(Path(tmp) / "config.yml", model_dir,
                              op={"batch_size": 8, "auto_batching_timeout": 2},
                              top={"brpc_port": None}, lsc={"thread_num": 1})
        setups = [("resnest serve", []),
                  ("ray, 1 replica", ["--ray", "--ray-min-replicas", "1", "--ray-replica-cpus", str(args.replica_cpus)]),
                  ("ray, 2 replicas", ["--ray", "--ray-min-replicas", "2", "--ray-replica-cpus", str(args.replica_cpus)])]
        results = {}
        for name, extra in setups:
            log.info("== %s", name)
            server = ServerProcess(config, extra_args=extra, timeout=180)
            try:
                results[name] = measure(server, images, args.duration, batch_known="2 replicas" not in name)
            finally:
                server.stop(timeout=60)
    base = {(r["protocol"], r["concurrency"]): r for r in results["resnest serve"]}
    print("| setup | protocol | concurrency | req/s | p50 ms | p99 ms | Δp50 vs resnest serve | mean batch | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        for r in rows:
            delta = r["p50_ms"] - base[(r["protocol"], r["concurrency"])]["p50_ms"]
            batch = f"{r['batch']:.2f}" if r["batch"] else "—"
            print(f"| {name} | {r['protocol']} | {r['concurrency']} | {r['qps']:.1f} | {r['p50_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {delta:+.2f} | {batch} | {r['errors']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
