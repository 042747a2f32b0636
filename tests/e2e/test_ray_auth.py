"""Token auth reaches `resnest serve --ray` too: Ray Serve's HTTP and gRPC proxies hand every call to the
replica, which applies the same `auth:` check as `resnest serve` (one local Ray instance, one replica)."""

from __future__ import annotations

import base64

import grpc
import pytest
import ray.serve  # noqa: F401  (make venv-test installs Ray: without it these tests fail, never skip)
import requests

from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from support import ServerProcess, write_config

TOKEN = "ray-token-0123456789abcdef"


def server_brpc_port(config_path) -> int:
    from resnest_serving.serving.config.loader import load_config

    return load_config(config_path).brpc_port


def test_ray_proxies_apply_the_token_check(tmp_path, tiny_model_dir, image_paths, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    config = write_config(tmp_path / "ray.yml", tiny_model_dir,
                          top={"auth": {"token_file": str(tokens)}})
    server = ServerProcess(config, timeout=150, extra_args=["--ray", "--ray-replica-cpus", "0.5"])
    try:
        image = base64.b64encode(image_paths[0].read_bytes()).decode()
        url = f"http://127.0.0.1:{server.ports['http']}/imagenet/prediction"
        refused = requests.post(url, json={"key": ["a"], "value": [image]}, timeout=60)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        answered = requests.post(url, json={"key": ["a"], "value": [image]}, timeout=60,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        assert answered.status_code == 200 and answered.json()["err_no"] == 0
        assert requests.get(f"http://127.0.0.1:{server.ports['http']}/health/ready", timeout=30).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
            stub = pb_grpc.PipelineServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.inference(pb.Request(key=["a"], value=[image]), timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = stub.inference(pb.Request(key=["a"], value=[image]), timeout=60,
                                   metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert reply.err_no == 0 and list(reply.value) == answered.json()["value"]
    finally:
        assert server.stop(timeout=60) == 0
    # write_config sets brpc_port: Ray has no bRPC proxy, and the log says so.
    assert f"brpc_port {server_brpc_port(config)} is not served with --ray" in server.log
