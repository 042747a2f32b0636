"""PaddleClas's own deploy/paddleserving/config.yml (configs/paddleclas_config.yml) starts the server with
only model_config changed (plus the CPU lines PaddleClas's TIPC script edits, since no GPU is here), and
PaddleClas's HTTP client gets its answer."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import requests
from support import REPO_ROOT, ServerProcess

CONFIG = REPO_ROOT / "configs" / "paddleclas_config.yml"
LSC = "op.imagenet.local_service_conf"


def test_paddleclas_config_serves_on_cpu(tiny_model_dir, shared):
    server = ServerProcess(CONFIG, {f"{LSC}.model_config": tiny_model_dir, f"{LSC}.device_type": 0,
                                    f"{LSC}.devices": '""', "http_port": 0, "rpc_port": 0})
    try:
        image = base64.b64encode((shared / "data" / "images" / "daisy.jpg").read_bytes()).decode()
        answer = requests.post(server.url("/imagenet/prediction"),
                               data=json.dumps({"key": ["image"], "value": [image]}), timeout=30).json()
        assert answer["err_no"] == 0 and answer["key"] == ["label", "prob"]
        assert set(server.ports) == {"grpc", "http"}  # no bRPC unless brpc_port is set
    finally:
        assert server.stop() == 0


def test_paddleclas_gpu_config_on_a_cpu_build_is_a_clear_error(tiny_model_dir):
    import paddle

    if paddle.is_compiled_with_cuda():
        pytest.skip("a GPU build of Paddle would start")
    proc = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--config", str(CONFIG),
                           "--set", f"{LSC}.model_config={tiny_model_dir}", "--set", "http_port=0",
                           "--set", "rpc_port=0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "device_type 1 needs a GPU build of Paddle" in proc.stderr
