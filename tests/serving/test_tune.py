"""`resnest tune` on the demo model with a small budget: it stays within the budget, reports every candidate
(refused with the reason, failed with the server's error, or not measured for lack of time), and the
config it writes starts a real server that answers."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
import yaml

from resnest_serving.cli import main
from resnest_serving.serving.tune import Candidate, Tuner, accuracy_gate, parse_duration
from support import ServerProcess


def test_tune_picks_a_config_that_serves(demo_export, shared, tmp_path, capsys):
    out = tmp_path / "tune"
    t0 = time.monotonic()
    rc = main(["--log-level", "WARNING", "tune", "--model-dir", str(demo_export.server_dir), "--time-budget", "50s",
               "--p99-ms", "2000", "--images", str(shared / "data" / "images"), "--out", str(out)])
    elapsed = time.monotonic() - t0
    assert rc == 0, capsys.readouterr()
    report = json.loads((out / "tune_report.json").read_text())
    assert elapsed < 50 * 1.5 and report["summary"]["elapsed_s"] <= 50 * 1.3  # one candidate may run over
    statuses = {c["name"]: c["status"] for c in report["candidates"]}
    assert statuses["default config (schema defaults)"] == "measured"
    assert statuses["onnxruntime bf16"] == "refused"  # ONNX Runtime has no bf16 on CPU, on every machine
    assert all(c["why"] for c in report["candidates"] if c["status"] != "measured")
    chosen = report["summary"]["chosen"]
    assert statuses[chosen] == "measured" and report["fingerprint"]["cores"] >= 1
    assert (out / "tune_report.md").read_text().count(" *") >= 1
    config = yaml.safe_load((out / "config.yml").read_text())
    assert config["rpc_port"] == 9993
    server = ServerProcess(out / "config.yml", {"rpc_port": 0, "http_port": 0, "brpc_port": 0})
    try:
        image = (shared / "data" / "images" / "daisy.jpg").read_bytes()
        answer = requests.post(server.url("/imagenet/prediction"), timeout=30,
                               json={"key": ["image"], "value": [base64.b64encode(image).decode()]}).json()
        assert answer["err_no"] == 0, answer
    finally:
        assert server.stop() == 0


def test_a_candidate_that_cannot_start_is_reported_not_chosen(tiny_model_dir, shared, tmp_path):
    tuner = Tuner(tiny_model_dir, sorted((shared / "data" / "images").glob("*.jpg")), "grpc", None, 120, 0.99,
                  tmp_path)
    cand = tuner.measure(Candidate("fp16 on CPU", op={"engine": "paddle"}, lsc={"precision": "fp16"}))
    assert cand.status == "failed" and "fp16" in cand.why and not cand.points


def test_accuracy_gate_and_budget_parsing(demo_export, tiny_model_dir):
    from resnest_serving.protocol.bundle import ModelBundle

    bundle = ModelBundle.load(demo_export.server_dir)
    assert accuracy_gate(bundle, "paddle", "fp32", 0.99) is None
    checks = bundle.meta.precision_checks["int8"]["engines"]
    ran = [engine for engine, check in checks.items() if "skipped" not in check and "error" not in check]
    for engine in ran:  # a recorded check gates at its worst set's agreement
        worst = min(c["top1_agreement"] for c in checks[engine].values())
        assert accuracy_gate(bundle, engine, "int8", worst) is None
        assert "below the" in accuracy_gate(bundle, engine, "int8", min(1.0, worst + 0.001)) or worst >= 1.0
    for engine in set(checks) - set(ran):  # not run at export (this CPU, or the engine has no int8): refused
        assert accuracy_gate(bundle, engine, "int8", 0.5).startswith("accuracy check not run at export")
    assert accuracy_gate(bundle, "paddle", "int8", 0.0) is None  # 0: the gate is off
    tiny = ModelBundle.load(tiny_model_dir)  # exported without --check-images
    assert "no recorded accuracy check of bf16 on openvino" in accuracy_gate(tiny, "openvino", "bf16", 0.99)
    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("5") == 5
    with pytest.raises(ValueError, match="--time-budget"):
        parse_duration("ten minutes")
