"""What `resnest tune` writes: the chosen configs, the JSON report with the machine fingerprint, a Markdown
table of every candidate and a plot of throughput against p99 latency with the chosen point marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from resnest_serving.client.report import strict_json
from resnest_serving.client.text_table import text_table
from resnest_serving.serving.launcher import write_config
from resnest_serving.serving.tune import Candidate, Point, as_dict

__all__ = ["choose", "write_outputs"]

PORTS = {"rpc_port": 9993, "http_port": 18080, "brpc_port": 9994}  # configs/config.yml's


def choose(candidates: list[Candidate], p99_ms: float | None) -> tuple[Candidate | None, Candidate | None]:
    """(most images/s meeting the target, lowest p99) among the measured candidates."""
    measured = [c for c in candidates if c.status == "measured"]
    with_best = [c for c in measured if c.best(p99_ms)]
    fastest = max(with_best, key=lambda c: c.best(p99_ms).images_per_s, default=None)
    with_low = [c for c in measured if c.lowest_latency()]
    quickest = min(with_low, key=lambda c: c.lowest_latency().p99_ms, default=None)
    return fastest, quickest


def verdict(fastest: Candidate | None, default: Candidate | None, p99_ms: float | None) -> str:
    """One sentence: the chosen config against the default config, measured in the same run."""
    if fastest is None:
        return "no candidate met the p99 target without errors: no config written"
    if default is None or default.status != "measured":
        return "the default config was not measured"
    if fastest is default:
        return "the default config is already the best point measured"
    chosen = fastest.best(p99_ms)
    base = default.best(p99_ms)
    if base is None:
        anyhow = default.best(None)
        return (f"the default config met the p99 target at no load level (its best: {anyhow.images_per_s:.1f} "
                f"images/s at p99 {anyhow.p99_ms:.0f} ms); the chosen config serves {chosen.images_per_s:.1f} "
                "images/s within it" if anyhow else "the default config answered no load level without errors")
    return f"the chosen config serves {chosen.images_per_s / base.images_per_s:.2f}x the default config's images/s in this run"


def _write_config(path: Path, model_dir: Path, cand: Candidate, point: Point, what: str) -> Path:
    write_config(path, model_dir, cand.op, lsc=cand.lsc)
    config = yaml.safe_load(path.read_text())
    config.update(PORTS)
    config["dag"] = {"is_thread_op": True}
    header = (f"# written by `resnest tune` ({what}): {cand.name}\n"
              f"# measured: {point.images_per_s:.1f} images/s, p50 {point.p50_ms:.0f} ms, p99 {point.p99_ms:.0f} ms "
              f"at {point.concurrency} request(s) in flight\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def _fmt(point: Point | None) -> list[str]:
    if point is None:
        return ["-", "-", "-", "-"]
    return [f"{point.images_per_s:.1f}", f"{point.p50_ms:.0f}", f"{point.p99_ms:.0f}", str(point.concurrency)]


def table(candidates: list[Candidate], p99_ms: float | None, chosen: Candidate | None) -> str:
    rows = []
    for cand in candidates:
        mark = " *" if cand is chosen else ""
        point, why = cand.best(p99_ms), cand.why
        if point is None and cand.best(None) is not None:  # measured, but no level met the target
            point, why = cand.best(None), f"no load level met p99 <= {p99_ms:g} ms; shown: its best"
        rows.append([cand.name + mark, cand.stage, cand.status, *_fmt(point), cand.engine_started or "", why[:100]])
    headers = ["candidate", "stage", "status", "images/s", "p50 ms", "p99 ms", "in flight", "engine", "why"]
    return text_table(headers, rows, right=range(3, 7))


def _plot(path: Path, candidates: list[Candidate], p99_ms: float | None, chosen: Candidate | None) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for cand in candidates:
        if cand.points:
            ax.plot([p.p99_ms for p in cand.points], [p.images_per_s for p in cand.points], "o-", ms=4,
                    label=cand.name, alpha=0.8)
    best = chosen.best(p99_ms) if chosen else None
    if best:
        ax.plot([best.p99_ms], [best.images_per_s], "*", ms=18, color="red", label=f"chosen: {chosen.name}")
    if p99_ms:
        ax.axvline(p99_ms, color="gray", linestyle=":", label=f"p99 target {p99_ms:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.set_title("resnest tune: every candidate at concurrency 1, 2, 4, ...")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(out: Path, model_dir: Path, candidates: list[Candidate], p99_ms: float | None,
                  fingerprint: dict[str, Any], elapsed_s: float, budget_s: float) -> list[Path]:
    """Every output file; returns their paths."""
    fastest, quickest = choose(candidates, p99_ms)
    default = candidates[0] if candidates and candidates[0].name.startswith("default") else None
    paths: list[Path] = []
    summary: dict[str, Any] = {"elapsed_s": elapsed_s, "budget_s": budget_s, "p99_target_ms": p99_ms,
                               "chosen": fastest.name if fastest else None,
                               "lowest_latency": quickest.name if quickest else None}
    if fastest:
        paths.append(_write_config(out / "config.yml", model_dir, fastest, fastest.best(p99_ms), "most images/s"
                                   + (f" with p99 <= {p99_ms:g} ms" if p99_ms else "")))
    if quickest:
        paths.append(_write_config(out / "config_low_latency.yml", model_dir, quickest, quickest.lowest_latency(),
                                   "lowest p99"))
    summary["verdict"] = verdict(fastest, default, p99_ms)
    if fastest and default and default.best(p99_ms):
        summary["chosen_vs_default"] = fastest.best(p99_ms).images_per_s / default.best(p99_ms).images_per_s
    report = {"fingerprint": fingerprint, "model_dir": str(model_dir), "summary": summary,
              "candidates": [as_dict(c, p99_ms) for c in candidates]}
    json_path = out / "tune_report.json"
    json_path.write_text(json.dumps(strict_json(report), indent=1, allow_nan=False))
    paths.append(json_path)
    plot = _plot(out / "tune.png", candidates, p99_ms, fastest)
    lines = [f"# resnest tune: {model_dir}", "",
             f"Machine: {fingerprint.get('cpu')}, {fingerprint.get('cores')} cores, "
             f"{' '.join(fingerprint.get('flags') or [])}; load average before "
             f"{', '.join(f'{x:.2f}' for x in fingerprint.get('load_average') or [])}.",
             f"Time: {elapsed_s:.0f} s of a {budget_s:.0f} s budget. p99 target: "
             f"{f'{p99_ms:g} ms' if p99_ms else 'none'}. Chosen (*): {summary['chosen']}. "
             f"{summary.get('verdict', '')}", "", "```", table(candidates, p99_ms, fastest), "```"]
    if plot:
        lines += ["", f"![throughput vs p99]({plot.name})"]
        paths.append(plot)
    md = out / "tune_report.md"
    md.write_text("\n".join(lines) + "\n")
    paths.append(md)
    return paths

