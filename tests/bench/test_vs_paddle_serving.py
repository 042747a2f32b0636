"""The side-by-side benchmark against Paddle Serving, where it runs without Paddle Serving installed: the round
table's medians and per-round ratios, the top-1 agreement line, and the clear refusal (with the recipe to run)
when the Python 3.9 venv is missing or lacks Paddle Serving; where the venv exists, both real servers on one
legacy model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from bench.load_points import start_server
from bench.served import main as served_main
from bench.vs_paddle_serving import (
    THEIRS,
    PaddleServingMissing,
    PaddleServingServer,
    check_python,
    compare_top1,
    legacy_bundle,
    ratio_table,
    top1_lines,
)
from resnest_serving.protocol.bundle import ModelBundle
from support import REPO_ROOT


def summary(qps: float, p50: float, cpu: float = 4.0, errors: int = 0) -> dict:
    """The fields of a load point's summary the table reads."""
    return {"qps": qps, "latency_ms": {"p50": p50}, "requests": 100, "errors": errors,
            "cpu_ms_per_request": {"front door": cpu, "engine workers": 1.0}}


def test_ratio_table_gives_medians_and_the_per_round_ratio_range():
    rounds = {("grpc", 1): {"ours (auto:fp32)": [summary(200, 5), summary(150, 6), summary(300, 4)],
                            THEIRS: [summary(100, 10), summary(100, 11, errors=2), summary(120, 9)]}}
    lines = ratio_table(rounds)
    assert lines[0].startswith("| point | server | req/s | p50 ms |")
    # median 200 req/s, p50 5 ms, CPU 4 + 1; round ratios 2.0, 1.5, 2.5 → median 2.0 (1.5–2.5)
    assert lines[2] == "| grpc c1 | ours (auto:fp32) | 200.0 | 5.0 | 5.0 | 0/300 | ×2.00 (1.50–2.50) |"
    assert lines[3] == f"| grpc c1 | {THEIRS} | 100.0 | 10.0 | 5.0 | 2/300 | - |"
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


PS_PYTHON = Path(os.environ.get("RESNEST_PADDLE_SERVING", REPO_ROOT.parent / "ps39" / "bin" / "python"))


@pytest.mark.skipif(not PS_PYTHON.is_file(), reason=f"no Paddle Serving venv at {PS_PYTHON} (bench/paddle_serving/"
                                                     "setup.sh makes one; RESNEST_PADDLE_SERVING points elsewhere)")
def test_both_servers_give_the_same_top1_on_the_same_legacy_model(tmp_path: Path, shared: Path):
    """The real chain where the venv exists: Paddle 2.x writes the .pdmodel, our exporter bundles it, Paddle
    Serving 0.9 and our server classify the shared images alike, and our clients read Paddle Serving's answers."""
    from resnest_serving.client.factory import connect
    from resnest_serving.client.images import list_images

    model_dir = legacy_bundle(check_python(PS_PYTHON), "ResNeSt_tiny", tmp_path, None)
    assert ModelBundle.load(model_dir).model_file.name == "inference.pdmodel"
    images = list_images(shared / "data" / "images")
    args = argparse.Namespace(batch_size=4, batch_timeout_ms=2, threads=1)
    servers: dict = {}
    try:
        servers["ours"] = start_server(model_dir, "auto", "fp32", args, tmp_path, "_ours")
        servers[THEIRS] = PaddleServingServer(PS_PYTHON, model_dir, 1, tmp_path / "ps")
        answers = compare_top1(servers, images)
        with connect("http", f"127.0.0.1:{servers[THEIRS].ports['http']}") as client:
            over_http = client.classify({path.name: path for path in images})  # one request, five images
    finally:
        for server in servers.values():
            server.stop()
    assert top1_lines(answers)[0].startswith(f"top-1 on the {len(images)} shared images: the same on every server")
    assert [r.label for r in over_http] == [answers[path.name][THEIRS][0] for path in images]
    assert servers[THEIRS].proc.returncode is not None  # stopped with its process group
