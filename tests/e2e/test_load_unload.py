"""Unload and load through the Open Inference Protocol's repository extension on a real server with
`model_control: explicit` and `auth:` on: an unloaded model's inference is refused on every door (404 / 3002,
the message naming the load call) while the server stays up, loading it again brings the answers back, every
call needs the token, and the unchanged tritonclient (http and grpc) does the same with its own calls. With
polling off, a load call is what picks up a new version folder; a broken one is refused (400) while the
served version keeps answering."""

from __future__ import annotations

import base64
import json
import shutil
import struct

import grpc
import pytest
import requests

from resnest_serving.client import Credentials, TransportError, connect
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol import pipeline_service_pb2_grpc as pb_grpc
from support import load_unload_config, run_tritonclient, serving, write_config

TOKEN = "load-unload-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LOAD_HINT = "POST /v2/repository/models/imagenet/load"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    with serving(load_unload_config(tmp_path_factory.mktemp("loadunload"), tiny_model_dir, TOKEN)) as server:
        yield server


@pytest.fixture(scope="module")
def jpeg(image_paths) -> bytes:
    return image_paths[0].read_bytes()


def v2_infer(server, jpeg: bytes) -> requests.Response:
    blob = struct.pack("<I", len(jpeg)) + jpeg
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return requests.post(server.url("/v2/models/imagenet/infer"), data=header + blob, timeout=30,
                         headers={**BEARER, "Inference-Header-Content-Length": str(len(header))})


def pipeline_infer(server, jpeg: bytes) -> pb.Response:
    request = pb.Request(key=["image"], value=[base64.b64encode(jpeg).decode()], name="imagenet")
    with grpc.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        return pb_grpc.PipelineServiceStub(channel).inference(request, metadata=(("authorization", BEARER[
            "Authorization"]),), timeout=30)


def rest(server, action: str, name: str = "imagenet", headers: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(server.url(f"/v2/repository/models/{name}/{action}"), headers=headers, timeout=120,
                         **kwargs)


def state(server) -> str:
    index = requests.post(server.url("/v2/repository/index"), headers=BEARER, timeout=10).json()
    return next(entry["state"] for entry in index if entry["name"] == "imagenet")


def test_unload_refuses_then_load_serves_again(server, jpeg):
    """REST: unload (200 {}, and again: a no-op) → V2 404 and PipelineService 3002 naming the load call,
    readiness false → load (200 {}) → both answer again. The token is needed for both calls."""
    assert v2_infer(server, jpeg).status_code == 200
    for action in ("unload", "load"):
        assert rest(server, action).status_code == 401
        assert rest(server, action, headers={"Authorization": "Bearer not-the-token-0123456789"}).status_code == 401
    for _ in range(2):
        reply = rest(server, "unload", headers=BEARER, json={"parameters": {"unload_dependents": False}})
        assert reply.status_code == 200 and reply.json() == {}, reply.text
    refused = v2_infer(server, jpeg)
    assert refused.status_code == 404 and LOAD_HINT in refused.json()["error"], refused.text
    answer = pipeline_infer(server, jpeg)
    assert answer.err_no == 3002 and LOAD_HINT in answer.err_msg
    assert state(server) != "READY"
    assert requests.get(server.url("/v2/models/imagenet/ready"), timeout=10).status_code != 200
    assert requests.get(server.url("/health/live"), timeout=10).status_code == 200
    reply = rest(server, "load", headers=BEARER)
    assert reply.status_code == 200 and reply.json() == {}, reply.text
    assert v2_infer(server, jpeg).status_code == 200
    assert pipeline_infer(server, jpeg).err_no == 0
    assert state(server) == "READY"


def test_unknown_model(server):
    reply = rest(server, "load", name="resnet", headers=BEARER)
    assert reply.status_code == 404 and "resnet" in reply.json()["error"], reply.text
    with connect("v2-grpc", f"127.0.0.1:{server.ports['grpc']}", credentials=Credentials(token=TOKEN)) as client:
        with pytest.raises(TransportError) as info:
            client.unload_model("resnet")
    assert info.value.code == "NOT_FOUND"


@pytest.mark.parametrize("protocol", ["v2-grpc", "v2-http"])
def test_our_clients(server, image_paths, protocol):
    """Our V2 clients' unload_model / load_model with the token; without it, UNAUTHENTICATED / 401."""
    port = server.ports["grpc" if protocol == "v2-grpc" else "http"]
    endpoint = f"127.0.0.1:{port}"
    with connect(protocol, endpoint) as client:
        with pytest.raises(TransportError) as info:
            client.unload_model("imagenet")
        assert info.value.code in (401, "UNAUTHENTICATED")
    with connect(protocol, endpoint, credentials=Credentials(token=TOKEN)) as client:
        client.unload_model("imagenet")
        with pytest.raises(TransportError) as info:
            client.classify(image_paths[:1])
        assert info.value.code in (404, "NOT_FOUND") and LOAD_HINT in str(info.value)
        assert {e["name"]: e["state"] for e in client.repository_index()}["imagenet"] != "READY"
        client.load_model("imagenet")
        assert client.classify(image_paths[:1])[0].label
        assert {e["name"]: e["state"] for e in client.repository_index()}["imagenet"] == "READY"


def test_tritonclient(server, tmp_path, image_paths):
    """tritonclient's unload_model (http, which always sends unload_dependents) and load_model (grpc) with the
    token in `headers`; without it they fail UNAUTHENTICATED; infer answers 404 while unloaded."""
    http = f"127.0.0.1:{server.ports['http']}"
    grpc_url = f"127.0.0.1:{server.ports['grpc']}"
    image = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "files": [str(image_paths[0])]}
    token = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case; HTTP takes it too
    calls = [{"id": "unload-no-token", "op": "unload_model", "transport": "http", "url": http},
             {"id": "load-no-token", "op": "load_model", "transport": "grpc", "url": grpc_url},
             {"id": "unload", "op": "unload_model", "transport": "http", "url": http, "headers": token},
             {"id": "infer-unloaded", "op": "infer", "transport": "http", "url": http, "headers": token,
              "inputs": [image]},
             {"id": "index-unloaded", "op": "repository_index", "transport": "grpc", "url": grpc_url,
              "headers": token},
             {"id": "load", "op": "load_model", "transport": "grpc", "url": grpc_url, "headers": token},
             {"id": "infer", "op": "infer", "transport": "grpc", "url": grpc_url, "headers": token,
              "inputs": [image]},
             {"id": "index", "op": "repository_index", "transport": "http", "url": http, "headers": token}]
    results = run_tritonclient(calls, tmp_path)
    for key in ("unload-no-token", "load-no-token"):
        assert "error" in results[key], results[key]
        assert results[key]["error"]["status"] in ("401", "StatusCode.UNAUTHENTICATED")
    assert results["unload"] == {"value": None} and results["load"] == {"value": None}, results
    assert results["infer-unloaded"]["error"]["status"] == "404"
    assert LOAD_HINT in results["infer-unloaded"]["error"]["message"]
    assert results["infer"]["value"]["prediction"]["shape"] == [1, 10]
    (unloaded,) = [m for m in results["index-unloaded"]["value"]["models"] if m["name"] == "imagenet"]
    assert unloaded.get("state") != "READY"
    assert {m["name"]: m.get("state") for m in results["index"]["value"]}["imagenet"] == "READY"


@pytest.fixture(scope="module")
def versioned(tmp_path_factory, tiny_model_dir):
    """A versioned model_config (version 1), polling off, model_control: explicit, auth off: only a load call
    picks up new versions."""
    folder = tmp_path_factory.mktemp("versioned") / "imagenet"
    shutil.copytree(tiny_model_dir, folder / "1")
    cfg = write_config(folder.parent / "config.yml", folder, top={"model_control": "explicit"})
    with serving(cfg) as server:
        yield server, folder


def v2_version(server, jpeg: bytes) -> str:
    reply = v2_infer(server, jpeg)
    assert reply.status_code == 200, reply.text
    return json.loads(reply.content[:int(reply.headers.get("Inference-Header-Content-Length", len(reply.content)))])[
        "model_version"]


def test_load_picks_up_a_new_version_and_refuses_a_broken_one(versioned, tiny_model_dir, jpeg):
    """With polling off, version 2 dropped into the folder is served only after POST .../load (200 {});
    a corrupt version 3 makes load answer 400 with the reason while version 2 keeps answering."""
    server, folder = versioned
    assert v2_version(server, jpeg) == "1"
    shutil.copytree(tiny_model_dir, folder / ".2.tmp")
    (folder / ".2.tmp").rename(folder / "2")
    assert v2_version(server, jpeg) == "1"  # no polling: nothing changes by itself
    reply = rest(server, "load")
    assert reply.status_code == 200 and reply.json() == {}, reply.text
    assert v2_version(server, jpeg) == "2"
    shutil.copytree(tiny_model_dir, folder / ".3.tmp")
    for weights in (*(folder / ".3.tmp").glob("*.pdiparams"), *(folder / ".3.tmp").glob("*.onnx")):
        weights.write_bytes(b"these are not weights\n" * 200)
    (folder / ".3.tmp").rename(folder / "3")
    reply = rest(server, "load")
    assert reply.status_code == 400 and "version 3" in reply.json()["error"], reply.text
    assert v2_version(server, jpeg) == "2"
