"""The real server as a subprocess on loopback: gRPC via plain generated stubs, REST exactly as
PaddleClas's pipeline_http_client.py calls it, bRPC; answers equal the in-process model; bad input gets
Paddle Serving codes while the server keeps serving; lifecycle."""

from __future__ import annotations

import ast
import base64
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
import requests

from resnest_serving.pipeline.local import LocalClassifier
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.brpc_client import SyncBrpcClient


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def grpc_call(server, request: pb.Request, timeout: float = 30) -> pb.Response:
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        return pb_grpc.PipelineServiceStub(channel).inference(request, timeout=timeout)


def http_call(server, body, path="/imagenet/prediction") -> requests.Response:
    return requests.post(server.url(path), data=body if isinstance(body, (str, bytes)) else json.dumps(body),
                         timeout=30)


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return LocalClassifier(tiny_model_dir)


def test_grpc_rest_brpc_answer_like_in_process(tiny_server, local, image_paths):
    want = local.classify_files(image_paths, k=3)
    values = [b64(p.read_bytes()) for p in image_paths]
    keys = [f"image_{i}" for i in range(len(values))]
    request = pb.Request(key=keys, value=values, name="imagenet", method="prediction", logid=42)

    answers = {"grpc": grpc_call(tiny_server, request)}
    r = http_call(tiny_server, {"key": keys, "value": values})  # no content type, as PaddleClas sends
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["err_no", "err_msg", "key", "value", "tensors"]
    answers["http"] = pb.Response(err_no=body["err_no"], err_msg=body["err_msg"], key=body["key"],
                                  value=body["value"])
    with SyncBrpcClient("127.0.0.1", tiny_server.ports["brpc"]) as client:
        answers["brpc"] = client.call_message("baidu.paddle_serving.pipeline_serving.PipelineService",
                                              "inference", request, pb.Response)
    for protocol, answer in answers.items():
        assert answer.err_no == 0, (protocol, answer.err_msg)
        assert list(answer.key) == ["label", "prob", "class_ids", "scores", "label_names"]
        out = {k: ast.literal_eval(v) for k, v in zip(answer.key, answer.value, strict=True)}
        assert out["class_ids"] == [p.class_ids for p in want], protocol
        assert out["label"] == [p.labels[0].replace(",", "") for p in want]
        got_prob, want_prob = np.array(out["prob"]), np.array([p.scores[0] for p in want])
        assert np.abs(got_prob - want_prob).max() <= 1e-4 * want_prob.max(), protocol
        assert out["label_names"] == [p.labels for p in want]


def test_paddleclas_http_client_exactly(tiny_server, shared):
    """deploy/paddleserving/pipeline_http_client.py: json.dumps body, no headers, r.json()."""
    image = b64((shared / "data" / "images" / "daisy.jpg").read_bytes())
    data = {"key": ["image"], "value": [image]}
    result = requests.post(url=tiny_server.url("/imagenet/prediction"), data=json.dumps(data)).json()
    assert result["err_no"] == 0 and result["err_msg"] == "" and result["tensors"] == []
    assert result["key"][:2] == ["label", "prob"] and len(ast.literal_eval(result["value"][0])) == 1


def test_concurrent_requests_get_their_own_answers(tiny_server, local, image_paths):
    want = {p.name: local.classify_files([p], k=3)[0] for p in image_paths}
    jobs = [image_paths[i % len(image_paths)] for i in range(40)]

    def call(path):
        answer = grpc_call(tiny_server, pb.Request(key=["image"], value=[b64(path.read_bytes())]))
        assert answer.err_no == 0, answer.err_msg
        out = dict(zip(answer.key, answer.value, strict=True))
        return path.name, ast.literal_eval(out["class_ids"])[0], ast.literal_eval(out["scores"])[0]

    def batches() -> float:  # the server is shared by other tests: count this test's batches only
        metrics = requests.get(tiny_server.url("/metrics"), timeout=10).text
        return float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith("resnest_batch_images_count")))

    before = batches()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for name, class_ids, scores in results:
        assert class_ids == want[name].class_ids
        assert np.allclose(scores, np.round(want[name].scores, 5), atol=2e-5)
    assert batches() - before < len(jobs)  # some requests shared a batch


def test_bad_input_gets_codes_and_server_keeps_serving(server_factory, image_paths):
    server = server_factory(op={"max_images_per_request": 2, "max_image_pixels": 1_000_000, "max_aspect_ratio": 5},
                            top={"max_request_bytes": 1_000_000})
    jpeg = image_paths[0].read_bytes()
    _, big = cv2.imencode(".png", np.zeros((1000, 1200, 3), np.uint8))
    _, strip = cv2.imencode(".png", np.zeros((10000, 1, 3), np.uint8))
    _, tall = cv2.imencode(".png", np.zeros((60, 10, 3), np.uint8))  # 6:1, within the default limit of 20
    cases = {
        "bad base64": (["image"], ["@@@@"], 5000, "not valid base64"),
        "not an image": (["image"], [b64(b"GIF89a but not really")], 5000, "not a decodable image"),
        "truncated JPEG": (["image"], [b64(jpeg[:3000])], 5000, "corrupt JPEG"),
        "empty value": (["image"], [""], 5000, "empty value"),
        "pixel limit": (["image"], [b64(big.tobytes())], 5000, "exceeds the limit of 1000000"),
        "aspect ratio": (["image"], [b64(strip.tobytes())], 5000, "1x10000 has an aspect ratio of 1e+04"),
        "max_aspect_ratio": (["image"], [b64(tall.tobytes())], 5000,
                             "10x60 has an aspect ratio of 6, over the limit of 5 (max_aspect_ratio)"),
        "too many images": (["a", "b", "c"], [b64(jpeg)] * 3, 5000, "at most 2 per request"),
        "no images": ([], [], 5000, "no images"),
    }
    for name, (keys, values, code, text) in cases.items():
        for answer in (grpc_call(server, pb.Request(key=keys, value=values)),
                       pb.Response(**{k: v for k, v in http_call(server, {"key": keys, "value": values}).json().items()
                                      if k != "tensors"})):
            assert answer.err_no == code, (name, answer.err_msg)
            assert text in answer.err_msg, (name, answer.err_msg)

    wrong = grpc_call(server, pb.Request(key=["image"], value=[b64(jpeg)], name="resnet"))
    assert wrong.err_no == 3002 and "Service name error" in wrong.err_msg
    wrong = http_call(server, {"key": ["image"], "value": [b64(jpeg)]}, path="/resnet/prediction").json()
    assert wrong["err_no"] == 3002

    r = http_call(server, '{"key": ["image"], "value": [')
    assert r.status_code == 400 and r.json()["code"] == 3 and set(r.json()) == {"error", "code", "message", "details"}
    r = http_call(server, '{"key": "image"}')
    assert r.status_code == 400
    assert requests.get(server.url("/imagenet/prediction"), timeout=10).status_code == 405
    assert requests.post(server.url("/a/b/c"), data="{}", timeout=10).text == "Not Found\n"

    huge = b64(b"\xff\xd8" + b"\0" * 1_000_000)
    r = http_call(server, {"key": ["image"], "value": [huge]})
    assert r.status_code == 413 and "max_request_bytes" in r.json()["message"]
    with pytest.raises(grpc.RpcError) as info:
        grpc_call(server, pb.Request(key=["image"], value=[huge]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    numeric = pb.Request(tensors=[pb.Tensor(name="x", elem_type=1, shape=[1], float_data=[1.0])])
    assert grpc_call(server, numeric).err_no == 5000
    as_tensor = pb.Request(tensors=[pb.Tensor(name="image", elem_type=12, str_data=[b64(jpeg)])])
    assert grpc_call(server, as_tensor).err_no == 0

    from resnest_serving.protocol.baidu_std import BrpcError, Errno

    with SyncBrpcClient("127.0.0.1", server.ports["brpc"]) as client:
        with pytest.raises(BrpcError) as info:
            client.call("baidu.paddle_serving.pipeline_serving.PipelineService", "inference", b"\xff\xff\xff")
        assert info.value.code == Errno.EREQUEST and "PipelineService" not in info.value.text
        assert "baidu.paddle_serving.pipeline_serving.Request" in info.value.text
        bad = client.call_message("baidu.paddle_serving.pipeline_serving.PipelineService", "inference",
                                  pb.Request(key=["image"], value=["@@"]), pb.Response)
        assert bad.err_no == 5000

    ok = grpc_call(server, pb.Request(key=["image"], value=[b64(jpeg)]))  # still serving
    assert ok.err_no == 0
    assert server.proc.poll() is None
    metrics = requests.get(server.url("/metrics"), timeout=10).text
    assert 'resnest_requests_total{err_no="5000",model="imagenet",protocol="grpc"}' in metrics
    assert 'resnest_requests_total{err_no="5000",model="imagenet",protocol="brpc"}' in metrics


def test_startup_log_sigterm_finishes_in_flight(server_factory, image_paths, tiny_model_dir, variant_dirs):
    server = server_factory(op={"engine": "paddle", "batch_size": 2}, model_dir=variant_dirs["ResNeSt50"],
                            top={"dag": {"enable_prometheus": True, "prometheus_port": free_port()}})
    metrics = requests.get(f"http://127.0.0.1:{server.ports['prometheus']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "resnest_requests_total" in metrics.text
    log = server.log
    assert "ResNeSt50" in log and "engine paddle fp32 chosen, as configured" in log and "loaded in" in log
    assert "grpc=127.0.0.1:" in log and "http=127.0.0.1:" in log and "brpc=127.0.0.1:" in log
    result = {}

    def slow_call():  # 8 images of ResNeSt50 on 1 thread: seconds of engine time after preprocessing
        images = [b64(image_paths[i % len(image_paths)].read_bytes()) for i in range(8)]
        result["answer"] = grpc_call(server, pb.Request(key=[f"k{i}" for i in range(8)], value=images))

    thread = threading.Thread(target=slow_call)
    thread.start()
    while 'resnest_stage_seconds_count{model="imagenet",stage="preprocess"} 1.0' not in requests.get(server.url("/metrics"),
                                                                                    timeout=10).text:
        assert thread.is_alive(), "the request finished before SIGTERM could be sent"
        time.sleep(0.01)
    assert thread.is_alive()  # preprocessed, now with the engine: in flight
    assert server.stop(signal.SIGTERM) == 0
    thread.join(30)
    assert result["answer"].err_no == 0 and len(ast.literal_eval(result["answer"].value[0])) == 8
    assert "stopped" in server.log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_num_two_processes_share_ports(server_factory, image_paths):
    """worker_num: 2: two processes listen on the same ports, and each answers on its own: with one of them
    stopped (SIGSTOP), new connections that the kernel hands to the other are answered on every door."""
    import os

    ports = {"rpc_port": free_port(), "http_port": free_port(), "brpc_port": free_port()}
    server = server_factory(top={"worker_num": 2, **ports})
    deadline = time.time() + 60

    def listening() -> list[str]:
        return [line for line in server.log.splitlines() if "service 'imagenet' listening" in line]

    while len(listening()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    pids = sorted({int(line.split("(pid ")[1].rstrip(")")) for line in listening()})
    assert len(pids) == 2
    assert all(f":{server.ports[door]}" in line for line in listening() for door in ("grpc", "http", "brpc"))
    value = b64(image_paths[0].read_bytes())

    def answered_by_the_running_one() -> set[str]:
        """Doors on which some new connection got an answer (each door tried up to 12 times, 2 s each)."""
        doors = set()
        for _ in range(12):
            with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}",
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                try:
                    if pb_grpc.PipelineServiceStub(channel).inference(pb.Request(key=["i"], value=[value]),
                                                                      timeout=2).err_no == 0:
                        doors.add("grpc")
                        break
                except grpc.RpcError:
                    pass
        for _ in range(12):
            try:
                if requests.post(server.url("/imagenet/prediction"), timeout=2,
                                 data=json.dumps({"key": ["i"], "value": [value]})).json()["err_no"] == 0:
                    doors.add("http")
                    break
            except requests.RequestException:
                pass
        for _ in range(12):
            try:
                with SyncBrpcClient("127.0.0.1", server.ports["brpc"], timeout=2) as client:
                    if client.call_message("baidu.paddle_serving.pipeline_serving.PipelineService", "inference",
                                           pb.Request(key=["i"], value=[value]), pb.Response).err_no == 0:
                        doors.add("brpc")
                        break
            except Exception:
                pass
        return doors

    for stopped in pids:
        os.kill(stopped, signal.SIGSTOP)
        try:
            assert answered_by_the_running_one() == {"grpc", "http", "brpc"}, f"pid {stopped} stopped"
        finally:
            os.kill(stopped, signal.SIGCONT)
    assert server.stop() == 0


@pytest.mark.parametrize("op,message", [
    ({"concurency": 2}, "concurency"),
    ({"local_service_conf": {"model_config": "/nonexistent/model", "client_type": "local_predictor"}},
     "/nonexistent/model"),
    ({"batch_size": 0}, "op.imagenet.batch_size"),
])
def test_bad_config_stops_before_binding(tmp_path, tiny_model_dir, op, message):
    import subprocess
    import sys

    from support import REPO_ROOT, write_config

    port = free_port()
    cfg = write_config(tmp_path / "bad.yml", tiny_model_dir, op=op, top={"http_port": port})
    proc = subprocess.run([sys.executable, "-m", "resnest_serving.cli", "serve", "--config", str(cfg)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "listening" not in proc.stderr  # every front door logs when it binds; none did
