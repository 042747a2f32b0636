"""Numbers for the load-test report: percentiles, latency summaries, the sweep knee, and server-side
stage timings from two Prometheus scrapes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "PERCENTILES",
    "find_knee",
    "histogram_totals",
    "latency_summary",
    "stage_means",
]

PERCENTILES = (50, 90, 95, 99)


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float]:
    """``count``, ``mean``, ``min``, ``p50``/``p90``/``p95``/``p99`` (numpy's linear interpolation) and
    ``max`` in milliseconds."""
    values = np.fromiter((v * 1000.0 for v in latencies_s), dtype=np.float64)
    out: dict[str, float] = {"count": len(values)}
    if not len(values):
        return out | {k: math.nan for k in ("mean", "min", *(f"p{p}" for p in PERCENTILES), "max")}
    out["mean"] = float(values.mean())
    out["min"] = float(values.min())
    for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        out[f"p{p}"] = float(v)
    out["max"] = float(values.max())
    return out


def find_knee(levels: Sequence[tuple[int, float]], fraction: float = 0.95) -> int | None:
    """The knee of a concurrency sweep: the **lowest concurrency whose throughput reaches ``fraction``
    of the best throughput seen** (default 95 %). Past it, more concurrency mostly adds queueing
    latency. ``levels`` = ``(concurrency, throughput)`` pairs; None when there is no positive throughput.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"knee fraction must be in (0, 1], got {fraction}")
    finite = [(c, t) for c, t in levels if t is not None and math.isfinite(t)]
    best = max((t for _, t in finite), default=0.0)
    if best <= 0:
        return None
    return min(c for c, t in finite if t >= fraction * best)


def histogram_totals(text: str, metric: str, label: str) -> dict[str, tuple[float, float]]:
    """``{label value: (sum, count)}`` of the Prometheus histogram ``metric`` in exposition ``text``,
    summed over any other labels. Missing metric → empty dict."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, list[float]] = {}
    names = (f"{metric}_sum", f"{metric}_count")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:  # by sample name: robust to untyped or split families
            if sample.name not in names:
                continue
            key = sample.labels.get(label, "")
            pair = totals.setdefault(key, [0.0, 0.0])
            pair[0 if sample.name.endswith("_sum") else 1] += float(sample.value)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def stage_means(before: dict[str, tuple[float, float]],
                after: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Per label value: observations and mean (in the metric's unit) between two scrapes."""
    out = {}
    for key, (total, count) in after.items():
        total0, count0 = before.get(key, (0.0, 0.0))
        n = count - count0
        if n > 0:
            out[key] = {"count": n, "mean": (total - total0) / n}
    return out
