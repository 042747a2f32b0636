"""`resnest bench --compare A.json B.json`: two benchmark reports side by side, level by level, with the
ratio B/A of each figure and whether the difference is within the noise (the min–max ranges of the repeats
overlap), plus the machine fingerprints where they differ. Also the spread table printed after repeats."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from resnest_serving.client.bench_results import RepeatedRun, figures_from_summary
from resnest_serving.client.text_table import text_table

__all__ = ["FIGURE_NAMES", "compare_reports", "format_spread", "load_levels"]

FIGURE_NAMES = {"images_per_s": "images/s", "qps": "QPS", "p50_ms": "p50 ms", "p99_ms": "p99 ms"}
_FINGERPRINT_KEYS = ("cpu", "flags", "cores", "usable_cores", "memory_gib", "governor", "load_average",
                     "onednn_max_cpu_isa", "packages")


def _single(figures: dict[str, float]) -> dict[str, dict[str, float]]:
    return {k: {"median": v, "min": v, "max": v, "n": 1} for k, v in figures.items()}


def load_levels(path: str | Path) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """A report file → ({level name: {figure: spread}}, fingerprint). Reads single runs, repeated runs and
    sweeps (by concurrency or rate), and reports written before figures were recorded (n = 1)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a resnest bench report (top level is not an object)")
    if "levels" in data:
        axis = data.get("axis", "concurrency")
        levels = {f"{axis} {level[axis]:g}": level.get("figures") or _single(figures_from_summary(level["summary"]))
                  for level in data["levels"]}
    elif "figures" in data or "summary" in data:
        levels = {"run": data.get("figures") or _single(figures_from_summary(data["summary"]))}
    else:
        raise ValueError(f"{path}: not a resnest bench report (no levels, figures or summary)")
    return levels, data.get("fingerprint") or {}


def _cell(spread: dict[str, float]) -> str:
    if spread["n"] > 1:
        return f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f})"
    return f"{spread['median']:.2f}"


def _verdict(a: dict[str, float], b: dict[str, float]) -> str:
    if a["n"] < 2 or b["n"] < 2:
        return "no spread (use --repeats 3)"
    if a["min"] <= b["max"] and b["min"] <= a["max"]:
        return "within noise"
    return "B higher" if b["median"] > a["median"] else "B lower"


def compare_reports(path_a: str | Path, path_b: str | Path) -> str:
    """The comparison table for two report files (levels present in both, in A's order)."""
    levels_a, fp_a = load_levels(path_a)
    levels_b, fp_b = load_levels(path_b)
    common = [name for name in levels_a if name in levels_b]
    if not common:
        raise ValueError(f"the reports share no level: A has {', '.join(levels_a)}; B has {', '.join(levels_b)}")
    rows = []
    for name in common:
        for key, label in FIGURE_NAMES.items():
            a, b = levels_a[name].get(key), levels_b[name].get(key)
            if a is None or b is None:
                continue
            ratio = b["median"] / a["median"] if a["median"] and math.isfinite(a["median"]) else math.nan
            rows.append([name, label, _cell(a), _cell(b), f"×{ratio:.2f}", _verdict(a, b)])
    parts = [f"A: {path_a}\nB: {path_b}",
             text_table(["level", "figure", "A median (min–max)", "B median (min–max)", "B/A", "verdict"], rows,
                        right=range(2, 5))]
    differ = [[k, str(fp_a.get(k)), str(fp_b.get(k))] for k in _FINGERPRINT_KEYS if fp_a.get(k) != fp_b.get(k)]
    if differ:
        parts.append("machines differ (fingerprints)\n" + text_table(["field", "A", "B"], differ))
    only = sorted(set(levels_a) ^ set(levels_b))
    if only:
        parts.append(f"levels in one report only: {', '.join(only)}")
    return "\n\n".join(parts)


def format_spread(run: RepeatedRun) -> str:
    """The figures of a repeated run as median (min–max) over the repeats."""
    figures = run.figures()
    rows = [[label, _cell(figures[key])] for key, label in FIGURE_NAMES.items()]
    return (f"over {len(run.reports)} repeats (median, min–max)\n"
            + text_table(["figure", "median (min–max)"], rows, right=[1]))
