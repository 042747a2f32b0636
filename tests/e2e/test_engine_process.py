"""The engine runs outside the server's event loop: while Paddle Inference (which keeps the GIL for a whole
batch) classifies a 32-image request, the same server keeps answering health checks; a server whose
engine fails its start-up check exits before opening any port, with one message saying what to change."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import threading

import requests

from support import REPO_ROOT, write_config


def test_health_answers_while_a_32_image_request_runs(server_factory, variant_dirs, image_paths):
    # batch_size 8: the 32 images run as four engine calls of ~0.5-1 s each on ResNeSt50 (224x224)
    server = server_factory(op={"engine": "paddle", "batch_size": 8, "auto_batching_timeout": 1},
                            model_dir=variant_dirs["ResNeSt50"])
    images = [base64.b64encode(image_paths[i % len(image_paths)].read_bytes()).decode() for i in range(32)]
    body = json.dumps({"key": [f"image_{i}" for i in range(32)], "value": images})
    result = {}

    def big_request():
        result["response"] = requests.post(server.url("/imagenet/prediction"), data=body, timeout=120).json()

    thread = threading.Thread(target=big_request)
    thread.start()
    answered_during = 0
    with requests.Session() as session:
        while thread.is_alive():
            assert session.get(server.url("/health/live"), timeout=30).status_code == 200
            answered_during += thread.is_alive()
    thread.join()
    response = result["response"]
    assert response["err_no"] == 0, response
    assert len(response["value"]) == 2 and len(ast.literal_eval(response["value"][0])) == 32
    # An engine holding the server's GIL would let a health check through only between engine calls
    # (about four); here they are answered all along.
    assert answered_during >= 20, answered_during


def test_engine_failing_its_startup_check_stops_the_server_before_any_port(tmp_path, split_model_dir):
    config = write_config(tmp_path / "config.yml", split_model_dir, op={"engine": "paddle", "batch_size": 4})
    proc = subprocess.run([sys.executable, "-m", "resnest_serving.cli", "serve", "--config", str(config)], cwd=REPO_ROOT,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "SSE41"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "engine paddle (fp32" in errors[0] and "at batch size 2" in errors[0] and "What to change" in errors[0]
    assert "listening" not in proc.stderr
