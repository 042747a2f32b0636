"""PaddleClas's own deploy/paddleserving/config.yml (configs/paddleclas_config.yml) starts the server with
only model_config changed (plus the CPU lines PaddleClas's TIPC script edits, since no GPU is here), and
PaddleClas's HTTP client gets its answer."""

from __future__ import annotations

import base64
import json
import re
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
    proc = subprocess.run([sys.executable, "-m", "resnest_serving.cli", "serve", "--config", str(CONFIG),
                           "--set", f"{LSC}.model_config={tiny_model_dir}", "--set", "http_port=0",
                           "--set", "rpc_port=0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "device_type 1 needs a GPU build of Paddle" in proc.stderr
    assert 'to run on CPU set device_type: 0 and devices: ""' in proc.stderr  # says how to run on CPU
    assert "Traceback" not in proc.stderr


def test_one_story_from_export_to_the_paddleclas_config():
    """README's export writes ResNeSt50_serving/ at the repository root; the shipped config and the README's
    copy of it name its serving_server folder, relative to configs/."""
    from resnest_serving.serving.config.loader import load_config

    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(r"resnest export --arch ResNeSt50 .*--out ResNeSt50_serving\b", readme.replace("\\\n", ""))
    model_config = load_config(CONFIG).op[0].local_service_conf.model_config
    assert model_config == REPO_ROOT / "ResNeSt50_serving" / "serving_server"
    yaml_block = readme.split("([configs/paddleclas_config.yml](configs/paddleclas_config.yml))", 1)[1]
    assert re.search(r"model_config: (\S+)", yaml_block)[1] == "../ResNeSt50_serving/serving_server"


def test_bundle_root_as_model_config_suggests_serving_server(tiny_export):
    from resnest_serving.serving.config.files import check_paths
    from resnest_serving.serving.config.loader import ConfigError, load_config

    config = load_config(CONFIG, {f"{LSC}.model_config": str(tiny_export.server_dir.parent),
                                  f"{LSC}.device_type": 0, f"{LSC}.devices": ""})
    with pytest.raises(ConfigError) as info:
        check_paths(config)
    assert f"did you mean {str(tiny_export.server_dir)!r}?" in str(info.value)
