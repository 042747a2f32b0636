"""Two models in one real server (two tiny exports that answer differently): each is answered by name on
every door (gRPC, REST, bRPC, V2 REST, V2 gRPC) exactly as a one-model server of it answers; unknown names get
err_no 3002 / V2 NOT_FOUND; metrics count per model; readiness covers both; a bad op among two is named."""

from __future__ import annotations

import base64
import json
import struct

import grpc
import numpy as np
import pytest
import requests
import yaml

from resnest_serving.protocol import grpc_predict_v2_pb2 as v2
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as v2_grpc
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.brpc_client import SyncBrpcClient
from support import ServerProcess, teardown_problems, write_config

PIPELINE_SERVICE = "baidu.paddle_serving.pipeline_serving.PipelineService"
OP = {"topk": 3, "batch_size": 1}  # one image per batch: the same arithmetic in every server
NAMES = ("imagenet", "other")


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny export: other weights, 7 classes (its answers cannot be the first model's)."""
    from resnest_serving.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("other") / "bundle"
    return export(ExportOptions(arch="ResNeSt_tiny", out=out, random_init=True, seed=2, class_num=7)).server_dir


def two_model_config(path, first_dir, second_dir):
    """write_config's one-op config plus a second op `other` (same settings, its own model)."""
    write_config(path, first_dir, OP)
    config = yaml.safe_load(path.read_text())
    second = json.loads(json.dumps(config["op"]["imagenet"]))
    second["local_service_conf"]["model_config"] = str(second_dir)
    config["op"]["other"] = second
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model_dir, other_model_dir):
    """{"both": the two-model server, "imagenet"/"other": a one-model server of each}."""
    folder = tmp_path_factory.mktemp("many")
    started = {"both": ServerProcess(two_model_config(folder / "both.yml", tiny_model_dir, other_model_dir),
                                     wait=False),
               "imagenet": ServerProcess(write_config(folder / "a.yml", tiny_model_dir, OP), wait=False),
               "other": ServerProcess(write_config(folder / "b.yml", other_model_dir, OP), wait=False)}
    for server in started.values():
        server.wait_ready()
    yield started
    problems = [p for server in started.values() for p in teardown_problems(server)]
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture(scope="module")
def jpeg(image_paths) -> bytes:
    return image_paths[0].read_bytes()


def paddle_request(jpeg: bytes, name: str) -> pb.Request:
    return pb.Request(key=["image"], value=[base64.b64encode(jpeg).decode()], name=name, logid=7)


def grpc_answer(server, request: pb.Request) -> pb.Response:
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        return pb_grpc.PipelineServiceStub(channel).inference(request, timeout=60)


def rest_answer(server, request: pb.Request, name: str) -> pb.Response:
    body = requests.post(server.url(f"/{name}/prediction"), json={"key": list(request.key),
                                                                  "value": list(request.value)}, timeout=60).json()
    return pb.Response(err_no=body["err_no"], err_msg=body["err_msg"], key=body["key"], value=body["value"])


def brpc_answer(server, request: pb.Request) -> pb.Response:
    with SyncBrpcClient("127.0.0.1", server.ports["brpc"]) as client:
        return client.call_message(PIPELINE_SERVICE, "inference", request, pb.Response)


def v2_rest_probs(server, jpeg: bytes, name: str, version: str = "") -> requests.Response:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": len(jpeg) + 4}}],
                         "outputs": [{"name": "prediction", "parameters": {"binary_data": False}}]}).encode()
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return requests.post(server.url(path), data=header + struct.pack("<I", len(jpeg)) + jpeg, timeout=60,
                         headers={"Inference-Header-Content-Length": str(len(header))})


def v2_grpc_infer(server, jpeg: bytes, name: str, version: str = "") -> v2.ModelInferResponse:
    request = v2.ModelInferRequest(model_name=name, model_version=version, inputs=[
        v2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1, 1])],
        raw_input_contents=[struct.pack("<I", len(jpeg)) + jpeg])
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        return v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)


def test_every_door_answers_each_model_as_its_one_model_server(servers, jpeg):
    both = servers["both"]
    for name in NAMES:
        single = servers[name]
        want = grpc_answer(single, paddle_request(jpeg, ""))
        assert want.err_no == 0
        got = {"grpc": grpc_answer(both, paddle_request(jpeg, name)),
               "http": rest_answer(both, paddle_request(jpeg, name), name),
               "brpc": brpc_answer(both, paddle_request(jpeg, name))}
        for door, answer in got.items():
            assert (answer.err_no, list(answer.key), list(answer.value)) == (0, list(want.key), list(want.value)), \
                (name, door, answer)
        rest = v2_rest_probs(both, jpeg, name)
        assert rest.status_code == 200, rest.text
        assert rest.json()["model_name"] == name
        probs = np.asarray(rest.json()["outputs"][0]["data"], np.float32)
        single_probs = np.asarray(v2_rest_probs(single, jpeg, "imagenet").json()["outputs"][0]["data"], np.float32)
        assert probs.shape == single_probs.shape and (probs.size == 7) == (name == "other")
        np.testing.assert_array_equal(probs, single_probs)
        reply = v2_grpc_infer(both, jpeg, name, "1")
        assert reply.model_name == name and reply.model_version == "1"
        np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f4"), single_probs)
    first = grpc_answer(both, paddle_request(jpeg, "imagenet"))
    second = grpc_answer(both, paddle_request(jpeg, "other"))
    assert list(first.value) != list(second.value)  # two models, two answers


def test_unknown_or_missing_names_on_every_door(servers, jpeg):
    both = servers["both"]
    for answer in (grpc_answer(both, paddle_request(jpeg, "zzz")), rest_answer(both, paddle_request(jpeg, ""), "zzz"),
                   brpc_answer(both, paddle_request(jpeg, "zzz"))):
        assert answer.err_no == 3002 and "'zzz'" in answer.err_msg
        assert "'imagenet', 'other'" in answer.err_msg
    nameless = grpc_answer(both, paddle_request(jpeg, ""))
    assert nameless.err_no == 3002 and "name one" in nameless.err_msg
    assert brpc_answer(both, paddle_request(jpeg, "")).err_no == 3002
    assert grpc_answer(both, paddle_request(jpeg, "Imagenet")).err_no == 3002  # names are case-sensitive
    unknown = v2_rest_probs(both, jpeg, "zzz")
    assert unknown.status_code == 404 and "'imagenet', 'other'" in unknown.json()["error"]
    old = v2_rest_probs(both, jpeg, "other", version="2")
    assert old.status_code == 404 and "has no version '2'" in old.json()["error"] and "'1'" in old.json()["error"]
    for name, version in (("zzz", ""), ("other", "2")):
        with pytest.raises(grpc.RpcError) as info:
            v2_grpc_infer(both, jpeg, name, version)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    bad = grpc_answer(both, pb.Request(key=["image"], value=["@@"], name="other", logid=99))
    assert bad.err_no == 5000
    assert grpc_answer(both, paddle_request(jpeg, "other")).err_no == 0  # still serving
    assert "model=other logid=99 protocol=grpc err_no=5000" in both.log  # per-request lines name the model


def test_ready_metadata_and_metrics_cover_both_models(servers, jpeg):
    both = servers["both"]
    assert requests.get(both.url("/health/ready"), timeout=10).status_code == 200
    assert requests.get(both.url("/v2/health/ready"), timeout=10).status_code == 200
    for name in NAMES:
        assert requests.get(both.url(f"/v2/models/{name}/ready"), timeout=10).json() == {"name": name, "ready": True}
        meta = requests.get(both.url(f"/v2/models/{name}"), timeout=10).json()
        assert meta["name"] == name and (meta["outputs"][0]["shape"][1] == 7) == (name == "other")
    index = requests.post(both.url("/v2/repository/index"), timeout=10).json()
    assert [(m["name"], m["state"]) for m in index] == [("imagenet", "READY"), ("other", "READY")]
    assert requests.get(both.url("/v2/models/zzz/ready"), timeout=10).status_code == 404
    for _ in range(2):
        assert grpc_answer(both, paddle_request(jpeg, "other")).err_no == 0
    text = requests.get(both.url("/metrics"), timeout=10).text
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("resnest_requests_total{")}
    assert counts['resnest_requests_total{err_no="0",model="other",protocol="grpc"}'] >= 2
    assert counts['resnest_requests_total{err_no="0",model="imagenet",protocol="grpc"}'] >= 1
    assert 'resnest_batch_images_count{model="other"}' in text and 'resnest_batch_images_count{model="imagenet"}' in text
    log = both.log
    assert "model 'imagenet':" in log and "model 'other':" in log and "models 'imagenet', 'other'" in log


def test_a_bad_op_among_two_fails_start_up_naming_it(tmp_path, tiny_model_dir):
    config = two_model_config(tmp_path / "bad.yml", tiny_model_dir, tmp_path / "missing")
    with pytest.raises(RuntimeError) as info:
        ServerProcess(config)
    assert "[CONF] op.other.local_service_conf.model_config" in str(info.value)
    assert "does not exist" in str(info.value)
