"""Load-test output: the text tables, the JSON file and the optional matplotlib plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from resnest_serving.client.bench import BenchReport, RepeatedRun, SweepReport
from resnest_serving.client.stats import PERCENTILES
from resnest_serving.client.text_table import text_table

__all__ = ["format_report", "format_sweep", "plot_report", "plot_sweep", "strict_json", "write_json"]

_LAT_KEYS = ("mean", *(f"p{p}" for p in PERCENTILES), "max")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    return text_table(headers, rows, right=range(1, len(headers)))


def _ms(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _describe(config: dict[str, Any]) -> str:
    mode = (f"open loop at {config['rate']:g} req/s (at most {config['concurrency']} in flight)"
            if config.get("rate") else f"closed loop, concurrency {config['concurrency']}")
    bound = " or ".join(x for x in (f"{config['duration']:g} s" if config.get("duration") else "",
                                    f"{config['requests']} requests" if config.get("requests") else "") if x)
    return (f"{config['protocol']} {config['endpoint']} (service {config['service_name']}), {mode}, "
            f"{config['images_per_request']} image(s)/request from {len(config['images'])} file(s), {bound}")


def format_report(report: BenchReport) -> str:
    """The end-of-run tables: totals and latency, errors by kind, server stage timings."""
    s = report.summary()
    lat = s["latency_ms"]
    rows = [
        ["requests", f"{s['requests']}"],
        ["successes", f"{s['successes']}"],
        ["errors", f"{s['errors']}"],
        ["elapsed (s)", f"{s['elapsed_s']:.2f}"],
        ["QPS (ok req/s)", f"{s['qps']:.2f}"],
        ["images/s", f"{s['images_per_s']:.2f}"],
    ] + [[f"latency {k} (ms)", _ms(lat.get(k))] for k in _LAT_KEYS]
    if "response_time_ms" in s:
        rows += [[f"response time {k} (ms)", _ms(s["response_time_ms"].get(k))] for k in ("p50", "p99", "max")]
        rows.append(["late starts (> 10 ms behind schedule)", str(s["late_starts"])])
    parts = [f"resnest bench: {_describe(report.config)}", _table(["metric", "value"], rows)]
    if s["errors_by_kind"]:
        erows = [[kind, str(n), report.error_examples.get(kind, "")[:90]] for kind, n in s["errors_by_kind"].items()]
        parts.append("errors\n" + _table(["kind", "count", "first message"], erows))
    parts.append(_format_server(report.server))
    return "\n\n".join(parts)


def _format_server(server: dict[str, Any]) -> str:
    if not server.get("available"):
        return f"server stages: not available ({server.get('reason', 'no metrics')})"
    rows = [[stage, str(v["count"]), _ms(v["mean_ms"])] for stage, v in server["stages_ms"].items()]
    text = f"server stages (from {server['url']}, this run only)\n" + _table(["stage", "count", "mean ms"], rows)
    if "mean_batch_images" in server:
        text += f"\nengine batches: {server['batches']}, mean {server['mean_batch_images']:.2f} images/batch"
    return text


def format_sweep(sweep: SweepReport) -> str:
    """One row per level (concurrency or offered rate), the knee or the best rate marked with ``*``; with
    repeats, each row is the level's median repeat."""
    marked = sweep.knee if sweep.axis == "concurrency" else sweep.best_rate
    rows = []
    for level, report in sweep.levels:
        s = report.summary()
        lat = s.get("response_time_ms") or s["latency_ms"]
        rows.append([f"{level:g}{' *' if level == marked else ''}", str(s["requests"]), str(s["errors"]),
                     f"{s['qps']:.2f}", f"{s['images_per_s']:.2f}", *(_ms(lat.get(k)) for k in _LAT_KEYS)])
    headers = [sweep.axis if sweep.axis == "concurrency" else "rate (req/s)", "requests", "errors", "QPS",
               "images/s", *(f"{k} ms" for k in _LAT_KEYS)]
    first = sweep.levels[0][1].config
    if sweep.axis == "concurrency":
        line = knee_line(sweep)
        title = _describe(first | {"concurrency": "N"})
    else:
        target = sweep.p99_target_ms
        line = ("latency is the response time (from the scheduled arrival); give --p99-ms to find the best rate"
                if target is None else f"best rate (*): {marked:g} req/s, the highest with p99 <= {target:g} ms and "
                "no errors" if marked is not None else f"best rate: none meets p99 <= {target:g} ms without errors")
        title = _describe(first | {"rate": 0.0}).replace("at 0 req/s", "at R req/s")
    runs = len(sweep.runs[0].reports) if sweep.runs else 1
    repeats = f"\neach row: the median of {runs} repeats" if runs > 1 else ""
    return "\n\n".join([f"resnest bench sweep: {title}", _table(headers, rows), line + repeats])


def still_rising(sweep: SweepReport) -> bool:
    """True when the knee is the highest level and it beat the level below: throughput had not levelled
    off within the sweep, so that level is no knee, only where the sweep stopped."""
    levels = sorted((level, report.images_per_s) for level, report in sweep.levels)
    return (sweep.knee is not None and len(levels) > 1 and sweep.knee == levels[-1][0]
            and levels[-1][1] > levels[-2][1])


def knee_line(sweep: SweepReport) -> str:
    """The sentence under the sweep table: the knee, or why there is none."""
    knee = sweep.knee
    if knee is None:
        return "knee: none (no successful requests)"
    if still_rising(sweep):
        return (f"knee (*): concurrency {knee} is only where the sweep stopped: images/s still rose at this highest "
                "level, so throughput had not levelled off; try higher levels")
    return (f"knee (*): concurrency {knee}, the lowest level reaching {sweep.knee_fraction:.0%} of the "
            "best images/s")


def write_json(path: str | Path, report: BenchReport | SweepReport | RepeatedRun) -> Path:
    """The full report, raw per-request samples included."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict_json(report.to_dict(raw=True)), indent=1, allow_nan=False))
    return path


def strict_json(value: Any) -> Any:
    """NaN/inf (e.g. latency of a run without successes) → None, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'resnest-serving[plot]' "
                           "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: BenchReport, path: str | Path) -> Path:
    """Latency over time (errors marked) and a latency histogram, as one PNG."""
    plt = _pyplot()
    ok = report.ok
    bad = [s for s in report.samples if s.error is not None]
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_t.scatter([s.start for s in ok], [s.latency * 1000 for s in ok], s=6, alpha=0.6, label="ok")
    if bad:
        ax_t.scatter([s.start for s in bad], [s.latency * 1000 for s in bad], s=14, marker="x", color="red",
                     label=f"errors ({len(bad)})")
    ax_t.set_xlabel("time since start (s)")
    ax_t.set_ylabel("latency (ms)")
    ax_t.set_title("latency over time")
    ax_t.legend(loc="upper right")
    if ok:
        ax_h.hist([s.latency * 1000 for s in ok], bins=min(50, max(5, len(ok) // 4)))
        lat = report.summary()["latency_ms"]
        for key, style in (("p50", "--"), ("p99", ":")):
            ax_h.axvline(lat[key], linestyle=style, color="black", label=f"{key} {lat[key]:.1f} ms")
        ax_h.legend(loc="upper right")
    ax_h.set_xlabel("latency (ms)")
    ax_h.set_ylabel("requests")
    ax_h.set_title("latency histogram")
    fig.suptitle(_describe(report.config), fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_sweep(sweep: SweepReport, path: str | Path) -> Path:
    """Throughput and latency (p50, p99) against concurrency or offered rate, the knee marked."""
    plt = _pyplot()
    levels = [c for c, _ in sweep.levels]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(levels, [r.images_per_s for _, r in sweep.levels], "o-", label="images/s")
    ax.set_xlabel(sweep.axis if sweep.axis == "concurrency" else "offered rate (req/s)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [f"{c:g}" for c in levels])
    ax.minorticks_off()
    ax2 = ax.twinx()
    for key, style in (("p50", "s--"), ("p99", "^:")):
        ax2.plot(levels, [r.figures()[f"{key}_ms"] for _, r in sweep.levels], style, color="gray",
                 label=f"{key} ms")
    ax2.set_ylabel("latency (ms)")
    ax2.set_ylim(bottom=0)
    if sweep.knee is not None:
        label = f"still rising at c={sweep.knee}" if still_rising(sweep) else f"knee c={sweep.knee}"
        ax.axvline(sweep.knee, color="red", alpha=0.5, label=label)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper left")
    first = sweep.levels[0][1].config
    ax.set_title(f"{sweep.axis} sweep: {first['protocol']} {first['endpoint']} (service {first['service_name']})",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
