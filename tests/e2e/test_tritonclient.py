"""The unchanged tritonclient (http, http.aio, grpc, grpc.aio; binary and JSON tensors) against a real
server: health, metadata, model config, top-k classifications and probabilities equal to what
PipelineService answers for the same images, FP32 tensor inputs, and the protocol's errors for bad
tensors while the server keeps serving.

tritonclient pins protobuf < 7, so it runs from its own environment (RESNEST_TRITON_PYTHON, built by
`make venv-test`) as a subprocess running tests/triton_client.py; this module runs everything else.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec
from resnest_serving.protocol import grpc_predict_v2_pb2 as v2pb
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from resnest_serving.protocol.bundle import ModelBundle
from support import ServerProcess, run_tritonclient, write_config

TOPK = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    cfg = write_config(tmp_path_factory.mktemp("v2srv") / "config.yml", tiny_model_dir,
                       op={"topk": TOPK, "batch_size": 4, "auto_batching_timeout": 5})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory, image_paths) -> list[Path]:
    """The shared JPEGs plus one of them re-encoded as PNG."""
    folder = tmp_path_factory.mktemp("v2images")
    png = folder / "daisy.png"
    ok, buf = cv2.imencode(".png", cv2.imread(str(image_paths[-1])))
    assert ok
    png.write_bytes(buf.tobytes())
    return [*image_paths, png]


@pytest.fixture(scope="module")
def pipeline_answers(server, images) -> list[dict]:
    """PipelineService's answer per image (one request with all of them)."""
    request = pb.Request(key=[f"k{i}" for i in range(len(images))], name="imagenet", method="prediction",
                         value=[base64.b64encode(p.read_bytes()).decode() for p in images])
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        answer = pb_grpc.PipelineServiceStub(channel).inference(request, timeout=60)
    assert answer.err_no == 0, answer.err_msg
    out = {k: ast.literal_eval(v) for k, v in zip(answer.key, answer.value, strict=True)}
    return [{"class_ids": out["class_ids"][i], "scores": out["scores"][i], "labels": out["label_names"][i],
             "prob": out["prob"][i]} for i in range(len(images))]


@pytest.fixture(scope="module")
def tensor_file(tmp_path_factory, tiny_model_dir, images) -> Path:
    """The images preprocessed in this process (the pipeline's own code) as FP32 [N, 3, H, W]."""
    meta = ModelBundle.load(tiny_model_dir).meta
    pre = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size, meta.mean, meta.std))
    batch = np.stack([pre.from_bytes(p.name, p.read_bytes()) for p in images]).astype(np.float32)
    path = tmp_path_factory.mktemp("v2tensor") / "batch.npy"
    np.save(path, batch)
    return path


def _calls(server, images, tensor_file) -> list[dict]:
    http, rpc = f"127.0.0.1:{server.ports['http']}", f"127.0.0.1:{server.ports['grpc']}"
    n = len(images)
    files = [str(p) for p in images]
    image_in = {"name": "image", "datatype": "BYTES", "shape": [n, 1], "files": files}
    tensor_in = {"name": "x", "datatype": "FP32", "shape": [n, 3, 64, 64], "npy": str(tensor_file)}
    top = [{"name": "prediction", "class_count": TOPK}]
    calls = []
    for t, url in (("http", http), ("grpc", rpc)):
        calls += [
            {"id": f"{t}-live", "op": "live", "transport": t, "url": url},
            {"id": f"{t}-ready", "op": "ready", "transport": t, "url": url},
            {"id": f"{t}-model-ready", "op": "model_ready", "transport": t, "url": url},
            {"id": f"{t}-model-ready-v1", "op": "model_ready", "transport": t, "url": url, "version": "1"},
            {"id": f"{t}-server-metadata", "op": "server_metadata", "transport": t, "url": url},
            {"id": f"{t}-model-metadata", "op": "model_metadata", "transport": t, "url": url},
            {"id": f"{t}-model-config", "op": "model_config", "transport": t, "url": url},
            {"id": f"{t}-top", "op": "infer", "transport": t, "url": url, "inputs": [image_in], "outputs": top},
            {"id": f"{t}-probs", "op": "infer", "transport": t, "url": url, "inputs": [image_in]},
            {"id": f"{t}-tensor", "op": "infer", "transport": t, "url": url, "inputs": [tensor_in]},
            {"id": f"{t}-flat-shape", "op": "infer", "transport": t, "url": url, "version": "1", "outputs": top,
             "inputs": [{**image_in, "shape": [n]}]},
        ]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in images]
    calls += [
        {"id": "http-json-top", "op": "infer", "transport": "http", "url": http, "binary": False, "outputs": top,
         "parameters": {"content_type": "base64"},
         "inputs": [{"name": "image", "datatype": "BYTES", "shape": [n, 1], "strings": b64}]},
        {"id": "http-json-probs", "op": "infer", "transport": "http", "url": http, "binary": False,
         "outputs": [{"name": "prediction"}], "inputs": [{**tensor_in}]},
        {"id": "http-aio-top", "op": "infer", "transport": "http-aio", "url": http, "inputs": [image_in],
         "outputs": top},
        {"id": "grpc-aio-top", "op": "infer", "transport": "grpc-aio", "url": rpc, "inputs": [image_in],
         "outputs": top},
        {"id": "http-aio-live", "op": "live", "transport": "http-aio", "url": http},
        {"id": "grpc-aio-live", "op": "live", "transport": "grpc-aio", "url": rpc},
        {"id": "descriptor", "op": "descriptor"},
    ]
    bad_image = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "strings": ["this is not an image"]}
    wrong_dtype = {"name": "image", "datatype": "FP32", "shape": [1, 3, 64, 64], "npy": str(tensor_file) + ".one.npy"}
    wrong_shape = {"name": "x", "datatype": "FP32", "shape": [1, 3, 32, 32], "npy": str(tensor_file) + ".small.npy"}
    for t, url in (("http", http), ("grpc", rpc)):
        calls += [
            {"id": f"{t}-err-model", "op": "infer", "transport": t, "url": url, "model": "resnet",
             "inputs": [image_in]},
            {"id": f"{t}-err-version", "op": "infer", "transport": t, "url": url, "version": "2",
             "inputs": [image_in]},
            {"id": f"{t}-err-metadata-model", "op": "model_metadata", "transport": t, "url": url, "model": "resnet"},
            {"id": f"{t}-err-dtype", "op": "infer", "transport": t, "url": url, "inputs": [wrong_dtype]},
            {"id": f"{t}-err-shape", "op": "infer", "transport": t, "url": url, "inputs": [wrong_shape]},
            {"id": f"{t}-err-image", "op": "infer", "transport": t, "url": url, "inputs": [bad_image]},
            {"id": f"{t}-err-two-inputs", "op": "infer", "transport": t, "url": url,
             "inputs": [image_in, tensor_in]},
            {"id": f"{t}-err-output", "op": "infer", "transport": t, "url": url, "inputs": [image_in],
             "outputs": [{"name": "logits"}]},
            {"id": f"{t}-after-errors", "op": "infer", "transport": t, "url": url, "inputs": [image_in],
             "outputs": top},
        ]
    return calls


@pytest.fixture(scope="module")
def results(server, images, tensor_file, tmp_path_factory) -> dict:
    batch = np.load(tensor_file)
    np.save(str(tensor_file) + ".one.npy", batch[:1])
    np.save(str(tensor_file) + ".small.npy", np.zeros((1, 3, 32, 32), np.float32))
    return run_tritonclient(_calls(server, images, tensor_file), tmp_path_factory.mktemp("v2calls"))


def value(results: dict, key: str):
    assert "value" in results[key], f"{key}: {results[key]}"
    return results[key]["value"]


def check_top(result: dict, want: list[dict], where: str) -> None:
    out = result["prediction"]
    assert out["shape"] == [len(want), TOPK], where
    rows = [out["data"][i * TOPK:(i + 1) * TOPK] for i in range(len(want))]
    for i, (row, answer) in enumerate(zip(rows, want, strict=True)):
        parsed = [item.split(":", 2) for item in row]
        assert [int(p[1]) for p in parsed] == answer["class_ids"], (where, i)
        assert [p[2] for p in parsed] == answer["labels"], (where, i)
        assert [round(float(p[0]), 5) for p in parsed] == pytest.approx(answer["scores"], abs=2e-5), (where, i)
        assert float(parsed[0][0]) == pytest.approx(answer["prob"], rel=1e-4), (where, i)


def check_probs(result: dict, want: list[dict], where: str, classes: int = 10) -> np.ndarray:
    out = result["prediction"]
    assert out["shape"] == [len(want), classes] and out.get("dtype", "float32") == "float32", where
    probs = np.asarray(out["data"], np.float32).reshape(len(want), classes)
    for i, answer in enumerate(want):
        order = np.argsort(-probs[i], kind="stable")[:TOPK].tolist()
        assert order == answer["class_ids"], (where, i)
        assert probs[i][order] == pytest.approx(answer["scores"], abs=2e-5), (where, i)
    return probs


def test_health(results):
    for key in ("http-live", "http-ready", "http-model-ready", "http-model-ready-v1", "grpc-live", "grpc-ready",
                "grpc-model-ready", "grpc-model-ready-v1", "http-aio-live", "grpc-aio-live"):
        assert value(results, key) is True, key


def test_server_and_model_metadata(results):
    for t in ("http", "grpc"):
        meta = value(results, f"{t}-server-metadata")
        assert meta["name"] == "resnest-serving"
        assert {"binary_tensor_data", "classification", "model_configuration"} <= set(meta["extensions"])
        model = value(results, f"{t}-model-metadata")
        assert model["name"] == "imagenet" and model["versions"] == ["1"], t
        inputs = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in model["inputs"]}
        assert inputs == {"image": ("BYTES", [-1, 1]), "x": ("FP32", [-1, 3, 64, 64])}, t
        outputs = {o["name"]: (o["datatype"], [int(d) for d in o["shape"]]) for o in model["outputs"]}
        assert outputs == {"prediction": ("FP32", [-1, 10])}, t


def test_model_config(results):
    http = value(results, "http-model-config")
    grpc_config = value(results, "grpc-model-config")["config"]  # tritonclient parsed it with Triton's proto
    for config in (http, grpc_config):
        assert config["name"] == "imagenet"
        assert int(config["max_batch_size"]) == 32
        assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
            ("image", "TYPE_STRING", [1]), ("x", "TYPE_FP32", [3, 64, 64])]
        assert all(i["optional"] for i in config["input"])
        assert [(o["name"], o["data_type"], [int(d) for d in o["dims"]]) for o in config["output"]] == [
            ("prediction", "TYPE_FP32", [10])]
    assert grpc_config["input"][1]["format"] == "FORMAT_NCHW"


@pytest.mark.parametrize("key", ["http-top", "grpc-top", "http-json-top", "http-aio-top", "grpc-aio-top",
                                 "http-flat-shape", "grpc-flat-shape", "http-after-errors", "grpc-after-errors"])
def test_topk_equals_pipeline_service(results, pipeline_answers, key):
    check_top(value(results, key), pipeline_answers, key)


def test_probabilities_and_tensor_inputs_equal_pipeline_service(results, pipeline_answers):
    from_images = check_probs(value(results, "http-probs"), pipeline_answers, "http-probs")
    for key in ("grpc-probs", "http-tensor", "grpc-tensor", "http-json-probs"):
        probs = check_probs(value(results, key), pipeline_answers, key)
        np.testing.assert_allclose(probs, from_images, atol=2e-5, err_msg=key)
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4), key


ERRORS = {
    "err-model": ("404", "NOT_FOUND", "unknown model 'resnet'; this server serves 'imagenet'"),
    "err-version": ("404", "NOT_FOUND", "model 'imagenet' has no version '2'"),
    "err-metadata-model": ("404", "NOT_FOUND", "unknown model 'resnet'"),
    "err-dtype": ("400", "INVALID_ARGUMENT", "input 'image': datatype FP32 not accepted; send BYTES"),
    "err-shape": ("400", "INVALID_ARGUMENT", "input 'x': shape [1, 3, 32, 32]; this model takes [N, 3, 64, 64]"),
    "err-image": ("400", "INVALID_ARGUMENT", "image 'image[0]': not a decodable image"),
    "err-two-inputs": ("400", "INVALID_ARGUMENT", "send exactly one input"),
    "err-output": ("400", "INVALID_ARGUMENT", "unknown output 'logits'; this model's output is 'prediction'"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_bad_requests_get_protocol_errors(results, name, transport):
    http_status, grpc_status, message = ERRORS[name]
    result = results[f"{transport}-{name}"]
    assert "error" in result, f"{transport}-{name} succeeded: {result}"
    status = result["error"]["status"]
    if transport == "http":
        assert status == http_status
    else:
        assert status == f"StatusCode.{grpc_status}"
    assert message in result["error"]["message"]


def test_wire_contract_matches_tritonclient(results):
    """Every message and field of our grpc_predict_v2.proto has tritonclient's number and type."""
    theirs = value(results, "descriptor")
    ours, checked = {}, 0
    for message in v2pb.DESCRIPTOR.message_types_by_name.values():
        stack = [(message, "")]
        while stack:
            descriptor, prefix = stack.pop()
            for field in descriptor.fields:
                ours[f"{prefix}{descriptor.name}.{field.name}"] = [field.number, field.type]
            stack += [(n, f"{prefix}{descriptor.name}.") for n in descriptor.nested_types
                      if not n.GetOptions().map_entry]
    for key, number_type in ours.items():
        assert theirs.get(key) == number_type, f"{key}: ours {number_type}, tritonclient {theirs.get(key)}"
        checked += 1
    assert checked >= 60
    for method in v2pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        assert theirs["methods"][method.name] == [method.input_type.name, method.output_type.name]
