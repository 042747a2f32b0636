"""Benchmarks a reader can trust: Poisson open loop (never ahead of schedule, the offered rate achieved
when the server keeps up), rate sweeps against a p99 target, repeats with median and min–max, the machine
fingerprint in every report, and `--compare` of two reports."""

from __future__ import annotations

import json
import statistics

import pytest

from resnest_serving.cli import main
from resnest_serving.client.bench import arrival_offsets
from resnest_serving.client.compare import compare_reports


def ep(server, protocol: str) -> str:
    return f"127.0.0.1:{server.ports[protocol]}"


def test_poisson_arrivals_offer_exactly_the_rate_with_exponential_gaps():
    offsets = arrival_offsets(50.0, 40.0, None, "poisson", seed=3)
    assert len(offsets) == 2000 and offsets == sorted(offsets) and 0 <= offsets[0] and offsets[-1] < 40.0
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert 0.9 < statistics.pstdev(gaps) / statistics.mean(gaps) < 1.1  # exponential: std == mean
    assert arrival_offsets(50.0, 40.0, None, "poisson", seed=3) == offsets  # the seed decides
    assert arrival_offsets(4.0, None, 3, "uniform") == [0.0, 0.25, 0.5]
    assert len(arrival_offsets(10.0, 1.0, 5, "poisson")) == 5  # whichever bound comes first


def test_open_loop_is_never_ahead_and_achieves_the_rate(topk_server, tmp_path, capsys):
    report = tmp_path / "open.json"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
               "--rate", "30", "--duration", "4", "--concurrency", "8", "--latency-bound-ms", "500",
               "--json", str(report), "--quiet"])
    assert rc == 0, capsys.readouterr()
    data = json.loads(report.read_text())
    assert data["config"]["arrivals"] == "poisson"
    assert all(s["wait_ms"] >= 0 for s in data["samples"])  # nothing sent ahead of its scheduled time
    summary = data["summary"]
    assert summary["offered_rate"] == 30 and abs(summary["achieved_rate"] - 30) <= 0.05 * 30, summary
    assert summary["over_bound"]["bound_ms"] == 500 and 0 <= summary["over_bound"]["share"] <= 1
    fingerprint = data["fingerprint"]
    assert fingerprint["cores"] >= 1 and fingerprint["cpu"] and "paddlepaddle" in fingerprint["packages"]
    assert len(fingerprint["load_average"]) == 3


def test_rate_sweep_finds_the_highest_rate_meeting_p99(topk_server, tmp_path, capsys):
    report = tmp_path / "rates.json"
    rc = main(["--log-level", "WARNING", "bench", "--protocol", "http", "--endpoint", ep(topk_server, "http"),
               "--rate", "5,15", "--duration", "2", "--concurrency", "8", "--p99-ms", "5000", "--warmup", "2",
               "--json", str(report), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "best rate (*): 15 req/s" in out, out
    data = json.loads(report.read_text())
    assert data["axis"] == "rate" and data["best_rate"] == 15 and [lv["rate"] for lv in data["levels"]] == [5, 15]
    # an unmeetable target picks nothing
    sweep_rc = main(["--log-level", "WARNING", "bench", "--protocol", "http", "--endpoint", ep(topk_server, "http"),
                     "--rate", "5,10", "--duration", "1", "--p99-ms", "0.001", "--quiet"])
    assert sweep_rc == 0 and "best rate: none meets p99 <= 0.001 ms" in capsys.readouterr().out


def test_repeats_report_median_and_spread_and_compare_reads_them(topk_server, tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, concurrency in ((a, "1"), (b, "4")):
        rc = main(["--log-level", "WARNING", "bench", "--protocol", "grpc", "--endpoint", ep(topk_server, "grpc"),
                   "--concurrency", concurrency, "--requests", "12", "--repeats", "3", "--json", str(path), "--quiet"])
        assert rc == 0
    out = capsys.readouterr().out
    assert "over 3 repeats (median, min–max)" in out
    data = json.loads(a.read_text())
    assert len(data["repeats"]) == 3 and data["figures"]["images_per_s"]["n"] == 3
    fig = data["figures"]["p50_ms"]
    assert fig["min"] <= fig["median"] <= fig["max"]
    assert main(["bench", "--compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "B/A" in table and "run" in table and ("within noise" in table or "B higher" in table or "B lower" in table)


def _report(path, images_per_s: list[float], p99: list[float]):
    runs = [{"images_per_s": x, "qps": x, "p50_ms": y / 2, "p99_ms": y} for x, y in zip(images_per_s, p99, strict=True)]
    figures = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                   "max": max(r[k] for r in runs), "n": len(runs)} for k in runs[0]}
    path.write_text(json.dumps({"axis": "concurrency", "fingerprint": {"cpu": str(path.name)},
                                "levels": [{"concurrency": 4, "figures": figures}]}))
    return path


def test_compare_says_when_a_difference_is_within_the_noise(tmp_path):
    a = _report(tmp_path / "a.json", [10, 11, 12], [100, 110, 120])
    b = _report(tmp_path / "b.json", [11.5, 12, 13], [90, 95, 99])
    c = _report(tmp_path / "c.json", [20, 21, 22], [50, 55, 60])
    ab, ac = compare_reports(a, b), compare_reports(a, c)
    def row(table: str, figure: str) -> str:
        return next(line for line in table.splitlines() if f"  {figure}  " in line)

    assert "×1.09" in row(ab, "images/s") and "within noise" in row(ab, "images/s")  # the ranges overlap
    assert "B lower" in row(ab, "p99 ms")  # 90-99 against 100-120: apart
    assert "×1.91" in row(ac, "images/s") and "B higher" in row(ac, "images/s")
    assert "machines differ" in ac  # the fingerprints name different CPUs
    other = json.loads(a.read_text())
    other["levels"][0]["concurrency"] = 8
    (tmp_path / "d.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="share no level: A has concurrency 4; B has concurrency 8"):
        compare_reports(a, tmp_path / "d.json")
    (tmp_path / "e.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a resnest bench report"):
        compare_reports(a, tmp_path / "e.json")
