"""Settings side by side in one run: one server per variant (batch sizes by default, or any op or
local_service_conf key's values with --compare), all up at once, and the load points measured in interleaved
rounds (each round runs every point on every server, the order of the variants alternating between rounds),
so a shared machine's drift hits every variant alike. Per point: the median images/s and p50 latency per
variant, the median (min–max) over the rounds of each round's ratio to the first variant, and the CPU each
request cost (front door + engine workers, from /proc): less sensitive than images/s to other work on the
machine."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.load_points import measure_point, start_server

BATCH_POINTS = [("grpc", 1), ("grpc", 4), ("http", 1)]
LSC = "local_service_conf."


def variants_of(args: argparse.Namespace) -> dict[str, dict]:
    """{label: op keys (local_service_conf keys under "lsc")}: from --compare KEY=A,B, else --batch-sizes."""
    if not args.compare:
        return {f"batch_size {bs}": {"batch_size": bs} for bs in args.batch_sizes}
    key, sep, values = args.compare.partition("=")
    if not sep or not key or "," not in values:
        raise SystemExit(f"--compare: expected KEY=VALUE1,VALUE2[,...], got {args.compare!r}")
    out = {}
    for text in values.split(","):
        value = int(text) if text.lstrip("-").isdigit() else {"true": True, "false": False}.get(text, text)
        out[f"{key} {text}"] = {"lsc": {key[len(LSC):]: value}} if key.startswith(LSC) else {key: value}
    return out


def compare_settings(model_dir: Path, engine: str, precision: str, args: argparse.Namespace,
                     image_dir: Path, workdir: Path) -> dict:
    """{(protocol, concurrency): {variant: [summary per round]}} for variants_of(args) over args.repeats rounds."""
    variants = variants_of(args)
    labels = list(variants)
    servers = {}
    rounds: dict = {point: {label: [] for label in labels} for point in BATCH_POINTS}
    try:
        for i, (label, keys) in enumerate(variants.items()):
            op = {k: v for k, v in keys.items() if k != "lsc"}
            servers[label] = start_server(model_dir, engine, precision, args, workdir, f"_v{i}",
                                          lsc=keys.get("lsc", {}), **op)
        for r in range(args.repeats):
            order = labels if r % 2 == 0 else labels[::-1]
            for protocol, concurrency in BATCH_POINTS:
                for label in order:
                    rounds[(protocol, concurrency)][label].append(measure_point(
                        servers[label], protocol, concurrency, sorted(image_dir.iterdir()), args,
                        f"{engine}_{precision}_{label.replace(' ', '_')}_{protocol}_c{concurrency}_round{r}",
                        repeats=1))
    finally:
        for server in servers.values():
            server.stop()
    return rounds


def batch_table(results: dict[str, dict]) -> list[str]:
    """Markdown rows: config, point, then per variant its median images/s and p50, and the round ratios."""
    lines = []
    for spec, rounds in results.items():
        for (protocol, concurrency), by_variant in rounds.items():
            labels = list(by_variant)
            first = by_variant[labels[0]]
            cells = []
            for label in labels:
                runs = by_variant[label]
                ips = statistics.median(s["images_per_s"] for s in runs)
                p50 = statistics.median(s["latency_ms"]["p50"] for s in runs)
                cell = f"{ips:.2f} img/s, p50 {p50:.1f} ms"
                if all("cpu_ms_per_request" in s for s in runs):
                    front, engine = (statistics.median(s["cpu_ms_per_request"][k] for s in runs)
                                     for k in ("front door", "engine workers"))
                    cell += f", CPU {front:.2f} + {engine:.2f} ms/req"
                if label != labels[0]:
                    ratios = [s["images_per_s"] / f["images_per_s"] for s, f in zip(runs, first, strict=True)]
                    cell += f", ×{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                cells.append(cell)
            lines.append(f"| {spec} | {protocol} c{concurrency} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    labels = list(next(iter(next(iter(results.values())).values())))
    head = ["| config | point | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    return head + lines + ["", f"medians over the rounds; × = median of each round's images/s ratio to {labels[0]} "
                                "(min–max over the rounds); CPU = front door + engine workers per request "
                                "(/proc CPU time)"]
