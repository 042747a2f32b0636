"""Open Inference Protocol REST at the byte level against a real server: the binary tensor extension both
ways, compressed bodies, every malformed-request path answered with HTTP 4xx + {"error"} naming the
problem (and counted under protocol v2-http), and the server still serving after each."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import requests

from support import ServerProcess, write_config

MAX_BYTES = 2 * 1024 * 1024
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    cfg = write_config(tmp_path_factory.mktemp("v2rest") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "max_images_per_request": 4}, top={"max_request_bytes": MAX_BYTES})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jpeg(image_paths) -> bytes:
    return image_paths[0].read_bytes()


def infer_url(server, model: str = "imagenet") -> str:
    return server.url(f"/v2/models/{model}/infer")


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_request(header: dict, blob: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return text + blob, {HEADER: str(length), "Content-Type": "application/octet-stream"}


def split_response(reply: requests.Response) -> tuple[dict, bytes]:
    n = int(reply.headers[HEADER])
    return json.loads(reply.content[:n]), reply.content[n:]


def image_request(jpeg: bytes, **output_params) -> tuple[bytes, dict]:
    blob = bytes_elements(jpeg)
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                          "parameters": {"binary_data_size": len(blob)}}]}
    if output_params:
        header["outputs"] = [{"name": "prediction", "parameters": output_params}]
    return binary_request(header, blob)


def assert_serves(server, jpeg: bytes) -> None:
    body, headers = image_request(jpeg, classification=1, binary_data=False)
    reply = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["shape"] == [1, 1]


def test_binary_both_ways(server, jpeg):
    body, headers = image_request(jpeg, binary_data=True)
    reply = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == "application/octet-stream"
    meta, blob = split_response(reply)
    (out,) = meta["outputs"]
    assert out["name"] == "prediction" and out["datatype"] == "FP32" and out["shape"] == [1, 10]
    assert out["parameters"]["binary_data_size"] == len(blob) == 40 and "data" not in out
    probs = np.frombuffer(blob, "<f4")
    assert abs(float(probs.sum()) - 1.0) < 1e-4

    body, headers = image_request(jpeg, classification=3, binary_data=True)
    meta, blob = split_response(requests.post(infer_url(server), data=body, headers=headers, timeout=30))
    out = meta["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 3]
    items, offset = [], 0
    while offset < len(blob):
        (n,) = struct.unpack_from("<I", blob, offset)
        items.append(blob[offset + 4:offset + 4 + n].decode())
        offset += 4 + n
    order = np.argsort(-probs, kind="stable")[:3]
    assert [int(item.split(":")[1]) for item in items] == order.tolist()
    assert [float(item.split(":")[0]) for item in items] == pytest.approx(probs[order].tolist(), abs=1e-6)


def test_request_binary_output_default_and_id(server, jpeg):
    blob = bytes_elements(jpeg)
    body, headers = binary_request({"id": "abc-1", "parameters": {"binary_data_output": True},
                                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                "parameters": {"binary_data_size": len(blob)}}]}, blob)
    meta, data = split_response(requests.post(infer_url(server), data=body, headers=headers, timeout=30))
    assert meta["id"] == "abc-1" and meta["model_name"] == "imagenet" and meta["model_version"] == "1"
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == len(data) == 40


def test_json_tensor_and_gzip_body(server, jpeg):
    tensor = np.zeros((1, 3, 64, 64), np.float32)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 64, 64],
                                   "data": tensor.tolist()}]}).encode()
    plain = requests.post(infer_url(server), data=body, timeout=30)
    assert plain.status_code == 200 and plain.headers["Content-Type"].startswith("application/json")
    squeezed = requests.post(infer_url(server), data=gzip.compress(body), timeout=30,
                             headers={"Content-Encoding": "gzip"})
    assert squeezed.status_code == 200, squeezed.text
    assert squeezed.json()["outputs"] == plain.json()["outputs"]
    assert len(plain.json()["outputs"][0]["data"]) == 10


def test_endpoints(server):
    assert requests.get(server.url("/v2/models/imagenet/versions/1"), timeout=10).json()["name"] == "imagenet"
    assert requests.get(server.url("/v2/models/imagenet/versions/1/ready"), timeout=10).json()["ready"] is True
    index = requests.post(server.url("/v2/repository/index"), timeout=10)
    assert index.json() == [{"name": "imagenet", "version": "1", "state": "READY"}]
    for method, path, status in [("GET", "/v2/repository/index", 405), ("GET", "/v2/models/imagenet/infer", 405),
                                 ("POST", "/v2/models/imagenet", 405), ("GET", "/v2/models/imagenet/stats", 404),
                                 ("GET", "/v2/models", 404), ("GET", "/v2/models/imagenet/versions/2", 404),
                                 ("GET", "/v2/nothing", 404)]:
        reply = requests.request(method, server.url(path), timeout=10)
        assert reply.status_code == status, (method, path, reply.text)
        assert reply.json()["error"], (method, path)


def _blob_case(header: dict, blob: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    return binary_request(header, blob, header_length)


def _img(shape, size, datatype="BYTES", name="image"):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}]}


BAD = {
    "malformed JSON": (lambda j: (b'{"inputs": [', {}), 400, "malformed JSON request body"),
    "JSON array": (lambda j: (b"[1, 2]", {}), 400, "the JSON request must be an object, got list"),
    "no inputs": (lambda j: (b"{}", {}), 400, "'inputs' must be a non-empty list"),
    "header length past body": (lambda j: _blob_case(_img([1, 1], 4 + len(j)), bytes_elements(j), 10**7), 400,
                                "Inference-Header-Content-Length '10000000' must be an integer between 0 and"),
    "header length not a number": (lambda j: (b"{}", {HEADER: "ten"}), 400, "must be an integer"),
    "header length too short": (lambda j: _blob_case(_img([1, 1], 4 + len(j)), bytes_elements(j), 5), 400,
                                "malformed JSON request body"),
    "binary size past end": (lambda j: _blob_case(_img([1, 1], 10 + len(j)), bytes_elements(j)), 400,
                             "runs past the end of the body ("),
    "unclaimed binary bytes": (lambda j: _blob_case(_img([1, 1], 4 + len(j)), bytes_elements(j) + b"xyz"), 400,
                               "3 bytes after the JSON header are not claimed"),
    "BYTES length prefix too long": (lambda j: _blob_case(_img([1, 1], 8), struct.pack("<I", 99) + b"abcd"), 400,
                                     "BYTES element 0 claims 99 bytes but only 4 remain"),
    "huge shape": (lambda j: (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 2**62, 2**62],
                                                      "data": []}]}).encode(), {}), 400,
                   "is beyond what any request can hold"),
    "BYTES count vs shape": (lambda j: _blob_case(_img([2, 1], 4 + len(j)), bytes_elements(j)), 400,
                             "shape [2, 1] needs 2 BYTES elements, the data holds 1"),
    "FP32 size vs shape": (lambda j: _blob_case(_img([1, 3, 64, 64], 100, "FP32", "x"), b"\0" * 100), 400,
                           "shape [1, 3, 64, 64] of FP32 needs 49152 bytes, got 100"),
    "FP64 tensor": (lambda j: _blob_case(_img([1, 3, 64, 64], 98304, "FP64", "x"), b"\0" * 98304), 400,
                    "input 'x': datatype FP64 not accepted; send FP32 [N, 3, 64, 64]"),
    "unknown datatype": (lambda j: (json.dumps({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1],
                                                            "data": [1]}]}).encode(), {}), 400,
                         "unknown datatype 'FLOAT'"),
    "negative shape": (lambda j: (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1],
                                                          "data": [1]}]}).encode(), {}), 400,
                       "shape must be a list of non-negative integers"),
    "JSON data count": (lambda j: (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 64, 64],
                                                           "data": [0.5] * 7}]}).encode(), {}), 400,
                        "shape [1, 3, 64, 64] needs 12288 elements, data has 7"),
    "JSON data not numbers": (lambda j: (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                                                 "data": ["a", "b"]}]}).encode(), {}), 400,
                              "data is not a (nested) list of FP32 numbers"),
    "NaN tensor": (lambda j: _blob_case(_img([1, 3, 64, 64], 49152, "FP32", "x"),
                                        np.full((1, 3, 64, 64), np.nan, "<f4").tobytes()), 400,
                   "tensor has NaN or infinite values"),
    "no data": (lambda j: (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}).encode(),
                           {}), 400, "has neither 'data' nor parameters.binary_data_size"),
    "too many rows": (lambda j: _blob_case(_img([5, 1], 5 * (4 + len(j))), bytes_elements(*[j] * 5)), 400,
                      "has 5 rows; this server takes at most 4 per request"),
    "zero rows": (lambda j: _blob_case(_img([0, 1], 0), b""), 400, "input 'image' has no rows"),
    "truncated JPEG": (lambda j: _blob_case(_img([1, 1], 4 + len(j) // 2), bytes_elements(j[:len(j) // 2])), 400,
                       "image 'image[0]'"),
    "base64 not base64": (lambda j: (json.dumps({"parameters": {"content_type": "base64"}, "inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["@@@"]}]}).encode(), {}), 400,
                          "element 0 is not valid base64"),
    "bad classification": (lambda j: image_request(j, classification="three"), 400,
                           "parameters.classification must be a non-negative integer, got 'three'"),
    "bad gzip": (lambda j: (b"not gzip", {"Content-Encoding": "gzip"}), 400,
                 "request body could not be read: corrupt gzip data"),
    "gzip bomb": (lambda j: (gzip.compress(b" " * (MAX_BYTES + 10)), {"Content-Encoding": "gzip"}), 413,
                  f"gzip body inflates to more than {MAX_BYTES} bytes (max_request_bytes)"),
    "body too large": (lambda j: (b" " * (MAX_BYTES + 10), {}), 413, f"over the limit of {MAX_BYTES} bytes"),
    "header length superscript": (lambda j: (b"{}", {HEADER: "²"}), 400, "must be an integer"),
    "header length 5000 digits": (lambda j: (b"{}", {HEADER: "9" * 5000}), 400, "must be an integer"),
    "20000 requested outputs": (lambda j: _with_outputs(j, [{"name": "prediction"}] * 20_000), 400,
                                "20000 requested outputs; send at most 16"),
    "unknown output": (lambda j: _with_outputs(j, [{"name": "prediction"}, {"name": "logits"}]), 400,
                       "unknown output 'logits'; this model's output is 'prediction'"),
    "one output two ways": (lambda j: _with_outputs(j, [{"name": "prediction"}, {
        "name": "prediction", "parameters": {"classification": 2}}]), 400,
                            "output 'prediction' requested twice with different parameters"),
    "empty gzip members": (lambda j: (gzip.compress(b"", mtime=0) * 80_000, {"Content-Encoding": "gzip"}), 413,
                           "gzip body has more than 64 members"),
    "JSON of empty lists": (lambda j: (b'{"zz": [' + b"[]," * 200_000 + b"[]]}", {}), 400,
                            "the JSON body holds more than 100000 arrays and objects"),
}


def _with_outputs(jpeg: bytes, outputs: list[dict]) -> tuple[bytes, dict]:
    blob = bytes_elements(jpeg)
    return binary_request({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(blob)}}], "outputs": outputs}, blob)


@pytest.mark.parametrize("request_id", ["²", "9" * 5000, "١٢", "12"])
def test_any_id_string_is_echoed(server, jpeg, request_id):
    """The V2 id is any string: digits that are not ASCII, or too many of them, are no logid (0), never a
    500 (issue: int("²") raised)."""
    blob = bytes_elements(jpeg)
    body, headers = binary_request({"id": request_id, "inputs": [{"name": "image", "datatype": "BYTES",
                                    "shape": [1], "parameters": {"binary_data_size": len(blob)}}]}, blob)
    reply = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text[:300]
    assert json.loads(reply.content[:int(reply.headers.get(HEADER, len(reply.content)))])["id"] == request_id


def test_repeated_outputs_answered_once(server, jpeg):
    body, headers = _with_outputs(jpeg, [{"name": "prediction", "parameters": {"binary_data": False}}] * 3)
    reply = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    assert [out["name"] for out in reply.json()["outputs"]] == ["prediction"]


def test_unknown_model_readiness_names_nothing_served(server):
    reply = requests.get(server.url("/v2/models/zzz/ready"), timeout=10)
    assert reply.status_code == 404 and reply.json() == {"error": "unknown model 'zzz'"}
    reply = requests.get(server.url("/v2/models/zzz"), timeout=10)  # metadata (behind the token when auth is on)
    assert reply.status_code == 404 and "this server serves 'imagenet'" in reply.json()["error"]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests(server, jpeg, case):
    make, status, message = BAD[case]
    body, headers = make(jpeg)
    reply = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert message in reply.json()["error"]
    assert_serves(server, jpeg)


def test_metrics_count_v2_http(server, jpeg):
    assert_serves(server, jpeg)
    requests.post(infer_url(server), data=b"{", timeout=10)
    text = requests.get(server.url("/metrics"), timeout=10).text
    ok = [line for line in text.splitlines() if line.startswith('resnest_requests_total{err_no="0",model="imagenet",protocol="v2-http"}')]
    bad = [line for line in text.splitlines()
           if line.startswith('resnest_requests_total{err_no="5000",model="imagenet",protocol="v2-http"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert bad and float(bad[0].split()[-1]) >= 1
