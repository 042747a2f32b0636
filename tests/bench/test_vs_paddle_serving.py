"""The side-by-side benchmark against Paddle Serving, where it runs without Paddle Serving installed: the round
table's medians and per-round ratios, the top-1 agreement line, and the clear refusal (with the recipe to run)
when the Python 3.9 venv is missing or lacks Paddle Serving."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.served import main as served_main
from bench.vs_paddle_serving import THEIRS, PaddleServingMissing, check_python, ratio_table, top1_lines


def summary(qps: float, p50: float, cpu: float = 4.0) -> dict:
    """The fields of a load point's summary the table reads."""
    return {"qps": qps, "latency_ms": {"p50": p50}, "cpu_ms_per_request": {"front door": cpu, "engine workers": 1.0}}


def test_ratio_table_gives_medians_and_the_per_round_ratio_range():
    rounds = {("grpc", 1): {"ours (auto:fp32)": [summary(200, 5), summary(150, 6), summary(300, 4)],
                            THEIRS: [summary(100, 10), summary(100, 11), summary(120, 9)]}}
    lines = ratio_table(rounds)
    assert lines[0].startswith("| point | server | req/s | p50 ms |")
    # median 200 req/s, p50 5 ms, CPU 4 + 1; round ratios 2.0, 1.5, 2.5 → median 2.0 (1.5–2.5)
    assert lines[2] == "| grpc c1 | ours (auto:fp32) | 200.0 | 5.0 | 5.0 | ×2.00 (1.50–2.50) |"
    assert lines[3] == f"| grpc c1 | {THEIRS} | 100.0 | 10.0 | 5.0 | - |"
    assert "medians over 3 interleaved rounds" in lines[-1]


def test_ratio_table_pairs_each_round_with_the_same_round_of_paddle_serving():
    # ours is twice as fast in every round although both drift: the ratio is steady where the medians are not
    rounds = {("http", 4): {"ours": [summary(100, 5), summary(400, 5)], THEIRS: [summary(50, 9), summary(200, 9)]}}
    assert "×2.00 (2.00–2.00)" in ratio_table(rounds)[2]


def test_top1_lines_say_whether_the_servers_agree():
    same = {"a.jpg": {"ours": ("daisy", 0.93), THEIRS: ("daisy", 0.9300001)},
            "b.jpg": {"ours": ("8", 0.5), THEIRS: ("8", 0.5)}}
    assert top1_lines(same) == ["top-1 on the 2 shared images: the same on every server (max |Δprob| 1e-07)"]
    differ = {**same, "c.jpg": {"ours": ("3", 0.4), THEIRS: ("5", 0.41)}}
    (line,) = top1_lines(differ)
    assert "DIFFERENT" in line and line.endswith("differs on c.jpg")


def test_a_missing_venv_is_refused_with_the_recipe(tmp_path: Path):
    with pytest.raises(PaddleServingMissing, match=r"no such interpreter; create it with "
                                                   r"bench/paddle_serving/setup.sh .*ps39"):
        check_python(tmp_path / "ps39" / "bin" / "python")


def test_an_interpreter_without_paddle_serving_is_refused():
    with pytest.raises(PaddleServingMissing, match=r"cannot import Paddle Serving's pipeline \(.*No module named"
                                                   r".*\); create it with bench/paddle_serving/setup.sh"):
        check_python(Path(sys.executable))  # ours: Python 3.11, no paddle_serving_server


def test_served_option_fails_clearly_before_any_work(tmp_path: Path, shared: Path, capfd):
    code = served_main(["--paddle-serving", str(tmp_path / "ps39" / "bin" / "python"), "--shared", str(shared),
                        "--out", str(tmp_path / "out")])
    assert code == 2
    assert "no such interpreter; create it with bench/paddle_serving/setup.sh" in capfd.readouterr().err  # the log
    assert not (tmp_path / "out").exists()  # nothing exported, no server started
