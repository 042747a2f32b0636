"""Batching on or off, side by side in one run: one server per batch size, all up at once, and the load points
measured in interleaved rounds (each round runs every point at every batch size, the order of the batch sizes
alternating between rounds), so a shared machine's drift hits every batch size alike. Per point: the median
images/s and p50 latency per batch size, and the median (min–max) over the rounds of each round's ratio to the
first batch size, and the CPU each request cost (front door + engine workers, from /proc): less sensitive
than images/s to other work on the machine."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.load_points import measure_point, start_server

BATCH_POINTS = [("grpc", 1), ("grpc", 4), ("http", 1)]


def compare_batch_sizes(model_dir: Path, engine: str, precision: str, args: argparse.Namespace,
                        image_dir: Path, workdir: Path) -> dict:
    """{(protocol, concurrency): {batch_size: [summary per round]}} for args.batch_sizes over args.repeats rounds."""
    sizes = list(args.batch_sizes)
    servers = {}
    rounds: dict = {point: {bs: [] for bs in sizes} for point in BATCH_POINTS}
    try:
        for bs in sizes:
            servers[bs] = start_server(model_dir, engine, precision, args, workdir, f"_bs{bs}", batch_size=bs)
        for r in range(args.repeats):
            order = sizes if r % 2 == 0 else sizes[::-1]
            for protocol, concurrency in BATCH_POINTS:
                for bs in order:
                    rounds[(protocol, concurrency)][bs].append(measure_point(
                        servers[bs], protocol, concurrency, sorted(image_dir.iterdir()), args,
                        f"{engine}_{precision}_bs{bs}_{protocol}_c{concurrency}_round{r}", repeats=1))
    finally:
        for server in servers.values():
            server.stop()
    return rounds


def batch_table(results: dict[str, dict]) -> list[str]:
    """Markdown rows: config, point, then per batch size its median images/s and p50, and the round ratios."""
    lines = []
    for spec, rounds in results.items():
        for (protocol, concurrency), by_size in rounds.items():
            sizes = list(by_size)
            first = by_size[sizes[0]]
            cells = []
            for bs in sizes:
                runs = by_size[bs]
                ips = statistics.median(s["images_per_s"] for s in runs)
                p50 = statistics.median(s["latency_ms"]["p50"] for s in runs)
                cell = f"{ips:.2f} img/s, p50 {p50:.1f} ms"
                if all("cpu_ms_per_request" in s for s in runs):
                    front, engine = (statistics.median(s["cpu_ms_per_request"][k] for s in runs)
                                     for k in ("front door", "engine workers"))
                    cell += f", CPU {front:.2f} + {engine:.2f} ms/req"
                if bs != sizes[0]:
                    ratios = [s["images_per_s"] / f["images_per_s"] for s, f in zip(runs, first, strict=True)]
                    cell += f", ×{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                cells.append(cell)
            lines.append(f"| {spec} | {protocol} c{concurrency} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    sizes = list(next(iter(next(iter(results.values())).values())))
    head = ["| config | point | " + " | ".join(f"batch_size {bs}" for bs in sizes) + " |",
            "|---" * (len(sizes) + 2) + "|"]
    return head + lines + ["", f"medians over the rounds; × = median of each round's images/s ratio to batch_size "
                                f"{sizes[0]} (min–max over the rounds); CPU = front door + engine workers per request "
                                "(/proc CPU time)"]
