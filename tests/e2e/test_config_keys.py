"""Every config key that promises a behaviour shows it on a real server (tiny model, loopback): profile and
tracer log lines, retries of timed-out requests, err_no 6000 over every protocol, client_config in remote
mode, label_file, service_name, host, concurrency, engine choice, health endpoints, SIGINT."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import time

import grpc
import pytest
import requests

from resnest_serving.client import connect
from resnest_serving.client.errors import ServingError
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.brpc_client import SyncBrpcClient
from resnest_serving.protocol.wire import PIPELINE_SERVICE, ElemType


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_for_log(server, pattern: str, timeout: float = 20.0) -> re.Match:
    """The first log line matching `pattern`, waiting for it to be written (the server logs asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, server.log)
        if match:
            return match
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r} in:\n{server.log}")


def grpc_call(server, request: pb.Request, host: str = "127.0.0.1") -> pb.Response:
    with grpc.insecure_channel(f"{host}:{server.ports['grpc']}") as channel:
        return pb_grpc.PipelineServiceStub(channel).inference(request, timeout=30)


def image_request(image_paths, logid: int = 0, n: int = 1) -> pb.Request:
    values = [b64(image_paths[i % len(image_paths)].read_bytes()) for i in range(n)]
    return pb.Request(key=[f"image_{i}" for i in range(n)], value=values, logid=logid)


def test_use_profile_logs_stage_timings_per_request(server_factory, image_paths):
    server = server_factory(top={"dag": {"use_profile": True}})
    assert grpc_call(server, image_request(image_paths, logid=77)).err_no == 0
    wait_for_log(server, r"logid=77 protocol=grpc profile images:1 preprocess:[\d.]+ms inference:[\d.]+ms "
                         r"postprocess:[\d.]+ms")


def test_tracer_logs_throughput_every_interval(server_factory, image_paths):
    server = server_factory(top={"dag": {"tracer": {"interval_s": 1}}})
    for i in range(3):
        assert grpc_call(server, image_request(image_paths, logid=i)).err_no == 0
    match = wait_for_log(server, r"pipeline\.tracer: tracer: (\d+) requests in [\d.]+ s \([\d.]+ qps\), "
                                 r"err_no \{0: (\d+)\}, latency mean [\d.]+ ms, max [\d.]+ ms")
    assert int(match.group(1)) == int(match.group(2)) >= 1


def test_op_timeout_gives_6000_on_every_protocol_and_dag_retry_retries(server_factory, image_paths):
    server = server_factory(op={"timeout": 1}, top={"dag": {"retry": 3}})  # 1 ms: no request can make it
    request = image_request(image_paths, logid=5, n=8)
    answers = {"grpc": grpc_call(server, request)}
    body = requests.post(server.url("/imagenet/prediction"), data=json.dumps(
        {"key": list(request.key), "value": list(request.value), "logid": 5}), timeout=30).json()
    answers["http"] = pb.Response(err_no=body["err_no"], err_msg=body["err_msg"])
    with SyncBrpcClient("127.0.0.1", server.ports["brpc"]) as client:
        answers["brpc"] = client.call_message(PIPELINE_SERVICE, "inference", request, pb.Response)
    for protocol, answer in answers.items():
        assert answer.err_no == 6000, protocol
        assert "longer than the op timeout of 1 ms; exceeded retry count (3 attempts)" in answer.err_msg, protocol
    wait_for_log(server, r"logid=5 protocol=grpc attempt 2/3 timed out")


def test_client_config_names_what_the_remote_engine_sends(tmp_path, tiny_export, image_paths):
    from support import ServerProcess, write_config

    model_cfg = write_config(tmp_path / "model.yml", tiny_export.server_dir, top={"rpc_port": None})
    model_server = ServerProcess(model_cfg, extra_args=["--model-server"])
    try:
        remote = {"server_endpoints": [f"127.0.0.1:{model_server.ports['brpc']}"]}
        good = ServerProcess(write_config(tmp_path / "good.yml", tiny_export.server_dir,
                                          op={**remote, "client_config": str(tiny_export.client_dir)},
                                          lsc={"client_type": "brpc"}))
        assert grpc_call(good, image_request(image_paths)).err_no == 0
        good.stop()
        wrong = tmp_path / "serving_client_conf.prototxt"
        wrong.write_text((tiny_export.client_dir / "serving_client_conf.prototxt").read_text()
                         .replace('alias_name: "prediction"', 'alias_name: "not_a_fetch_var"'))
        bad = ServerProcess(write_config(tmp_path / "bad.yml", tiny_export.server_dir,
                                         op={**remote, "client_config": str(wrong)}, lsc={"client_type": "brpc"}))
        answer = grpc_call(bad, image_request(image_paths))
        bad.stop()
        assert answer.err_no == 10000 and "unknown fetch var 'not_a_fetch_var'" in answer.err_msg
    finally:
        model_server.stop()


def test_label_file_and_service_name_at_run_time(server_factory, image_paths, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class number {i}\n" for i in range(1000)))
    server = server_factory(op={"label_file": str(labels)}, top={"service_name": "classify"})
    with connect("http", f"127.0.0.1:{server.ports['http']}", service_name="classify") as client:
        (answer,) = client.classify(image_paths[0])
    assert answer.label.startswith("class number ")
    with connect("http", f"127.0.0.1:{server.ports['http']}", service_name="imagenet") as client:
        with pytest.raises(ServingError) as err:
            client.classify(image_paths[0])
    assert err.value.err_no == 3002 and "this server serves 'classify'" in err.value.err_msg


def test_host_is_the_only_address_listened_on(server_factory, image_paths):
    """host: ::1 (IPv6 loopback): every door answers there and none on 127.0.0.1 (the default host)."""
    server = server_factory(top={"host": "::1"})
    assert server.info["host"] == "::1"
    assert grpc_call(server, image_request(image_paths), host="[::1]").err_no == 0
    assert requests.get(f"http://[::1]:{server.ports['http']}/health/live", timeout=5).status_code == 200
    with SyncBrpcClient("::1", server.ports["brpc"]) as client:
        assert client.call_message(PIPELINE_SERVICE, "inference", image_request(image_paths), pb.Response).err_no == 0
    for door in ("grpc", "http", "brpc"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.ports[door]), timeout=5).close()


def test_max_connections_closes_the_connection_over_the_limit(server_factory, image_paths):
    """max_connections: 2 from config.yml: on REST and bRPC a third open connection is closed at once, the two
    held ones keep serving, and once they close a new connection is served again."""
    server = server_factory(top={"max_connections": 2})
    health = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    for door in ("http", "brpc"):
        address = ("127.0.0.1", server.ports[door])
        held = [socket.create_connection(address, timeout=10) for _ in range(2)]
        if door == "http":  # both held connections are accepted and answer
            for sock in held:
                sock.sendall(health)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        extra = socket.create_connection(address, timeout=10)
        try:
            closed = extra.recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed, door
        extra.close()
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the held connections are gone
        try:
            with SyncBrpcClient("127.0.0.1", server.ports["brpc"]) as client:
                answer = client.call_message(PIPELINE_SERVICE, "inference", image_request(image_paths), pb.Response)
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert answer.err_no == 0
    assert requests.get(server.url("/health/live"), timeout=10).status_code == 200


def test_concurrency_two_serves_from_two_engine_processes(server_factory, image_paths):
    server = server_factory(op={"concurrency": 2, "engine": "onnxruntime", "batch_size": 2})
    pids = {m.group(1) for m in re.finditer(r"engine-[01] \(pid (\d+)\): onnxruntime fp32", server.log)}
    assert len(pids) == 2
    with connect("grpc", f"127.0.0.1:{server.ports['grpc']}") as client:
        answers = [client.classify(image_paths) for _ in range(3)]
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == len(image_paths)


@pytest.mark.parametrize("engine", ["onnxruntime", "paddle"])
def test_engine_setting_serves_with_that_engine(server_factory, image_paths, tiny_model_dir, engine):
    from resnest_serving.pipeline.local import LocalClassifier

    server = server_factory(op={"engine": engine, "topk": 3})
    assert server.info["engine"] == f"{engine} fp32"
    want = LocalClassifier(tiny_model_dir, engine=engine).classify_files(image_paths, k=3)
    with connect("grpc", f"127.0.0.1:{server.ports['grpc']}") as client:
        got = client.classify(image_paths)
    assert [g.class_ids for g in got] == [tuple(w.class_ids) for w in want]


def test_health_endpoints(tiny_server):
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        response = requests.get(tiny_server.url(path), timeout=10)
        assert response.status_code == 200, path


def test_pickled_byte_tensors_are_refused(tiny_server):
    answer = grpc_call(tiny_server, pb.Request(tensors=[pb.Tensor(name="image", elem_type=ElemType.BYTES,
                                                                  byte_data=b"\x93NUMPY pickled")]))
    assert answer.err_no == 5000 and "numpy pickles, which this server never loads" in answer.err_msg


def test_sigint_stops_gracefully(server_factory):
    server = server_factory()
    assert server.stop(signal.SIGINT) == 0 and "stopped" in server.log


def test_thread_num_given_or_every_core_to_one_engine(tmp_path, tiny_model_dir):
    import os

    from resnest_serving.serving.launcher import (  # no thread_num: the server's own default
        ServerProcess,
        write_config,
    )

    cores = len(os.sched_getaffinity(0))
    server = ServerProcess(write_config(tmp_path / "c.yml", tiny_model_dir, op={"engine": "onnxruntime"}))
    try:
        assert re.search(rf"engine-0 \(pid \d+\): onnxruntime fp32 \({cores} thread\(s\)", server.log), server.log
    finally:
        assert server.stop() == 0
    # thread_num given: the engine runs that many, even more than the cores (the default never is)
    server = ServerProcess(write_config(tmp_path / "given.yml", tiny_model_dir, op={"engine": "onnxruntime"},
                                        lsc={"thread_num": cores + 1}))
    try:
        assert re.search(rf"engine-0 \(pid \d+\): onnxruntime fp32 \({cores + 1} thread\(s\)", server.log), \
            server.log
    finally:
        assert server.stop() == 0


def test_full_queue_gives_6000_on_every_protocol(server_factory, image_paths, variant_dirs):
    """op.max_queue_images: one 4-image ResNeSt50 request with the only engine thread, a second one of 4
    images waiting in the queue (4 of max_queue_images 4): one more image from any front door gets err_no 6000
    at once; the two requests before it are answered."""
    import threading

    server = server_factory(op={"engine": "paddle", "batch_size": 1, "max_images_per_request": 4,
                                "max_queue_images": 4}, model_dir=variant_dirs["ResNeSt50"])
    answers: dict[str, pb.Response] = {}

    def send(name: str, logid: int) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.setdefault(name, grpc_call(server, image_request(
            image_paths, logid=logid, n=4))))
        thread.start()
        return thread

    def wait_preprocessed(count: int, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + 120
        while f'resnest_stage_seconds_count{{model="imagenet",stage="preprocess"}} {count}.0' not in requests.get(
                server.url("/metrics"), timeout=10).text:
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads)
            time.sleep(0.02)

    threads = [send("running", 1)]
    wait_preprocessed(1, threads)
    threads.append(send("queued", 2))
    wait_preprocessed(2, threads)
    request = image_request(image_paths, logid=3, n=1)
    refused = {"grpc": grpc_call(server, request)}
    body = requests.post(server.url("/imagenet/prediction"), timeout=30,
                         json={"key": list(request.key), "value": list(request.value)}).json()
    refused["http"] = pb.Response(err_no=body["err_no"], err_msg=body["err_msg"])
    with SyncBrpcClient("127.0.0.1", server.ports["brpc"]) as client:
        refused["brpc"] = client.call_message(PIPELINE_SERVICE, "inference", request, pb.Response)
    assert threads[1].is_alive(), "the queued request finished too soon: the queue was not full throughout"
    for protocol, answer in refused.items():
        assert answer.err_no == 6000, (protocol, answer)
        assert "server overloaded: 4 images already queued (max_queue_images 4)" in answer.err_msg, protocol
    for thread in threads:
        thread.join(120)
    assert answers["running"].err_no == 0 and answers["queued"].err_no == 0
