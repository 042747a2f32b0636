"""The Open Inference Protocol's repository extension, load and unload: the routes, the parameter rules, and
against real servers the refusals on REST and gRPC: off without `model_control: explicit` (403 /
PERMISSION_DENIED), the token before anything else when `auth:` is on (401 / UNAUTHENTICATED, body unread),
and every parameter this server does not honour refused by name; the server keeps serving after each."""

from __future__ import annotations

import json

import grpc
import pytest
import requests

from resnest_serving.protocol import grpc_predict_v2_pb2 as pb
from resnest_serving.protocol import grpc_predict_v2_pb2_grpc as pb_grpc
from resnest_serving.serving.errors import ErrorKind, ServingError
from resnest_serving.serving.v2.repository import check_request, rest_parameters
from resnest_serving.serving.v2.routes import Endpoint, Route, match, takes_body
from support import load_unload_config, serving

TOKEN = "repository-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
GRPC_BEARER = (("authorization", f"Bearer {TOKEN}"),)
Param = pb.ModelRepositoryParameter


# -- routes and rules ------------------------------------------------------------------------------------


def test_routes():
    assert match("/v2/repository/models/imagenet/load") == Route(Endpoint.REPOSITORY_LOAD, "imagenet")
    assert match("/v2/repository/models/imagenet/unload/") == Route(Endpoint.REPOSITORY_UNLOAD, "imagenet")
    assert match("/v2/repository/models//load") == Route(Endpoint.REPOSITORY_LOAD, "")
    for path in ("/v2/repository/models/imagenet", "/v2/repository/models/imagenet/reload",
                 "/v2/repository/models/imagenet/load/now", "/v2/repository/models", "/v2/repository"):
        assert match(path) is None, path
    assert takes_body("POST", "/v2/repository/models/imagenet/load")
    assert not takes_body("GET", "/v2/repository/models/imagenet/unload")


def refusal(action: str, name: str, parameters: dict, control: str = "explicit") -> ServingError:
    with pytest.raises(ServingError) as caught:
        check_request(action, name, parameters, control)
    return caught.value


def test_parameter_rules():
    check_request("load", "imagenet", {}, "explicit")
    check_request("unload", "imagenet", {"unload_dependents": False}, "explicit")  # what tritonclient sends
    off = refusal("load", "imagenet", {}, "none")
    assert off.kind is ErrorKind.FORBIDDEN and "model_control: explicit" in off.message
    cases = {("load", "config"): "'config' is not supported",
             ("load", "file:1/model.onnx"): "model files are not taken from the request",
             ("unload", "unload_dependents"): "no ensembles",
             ("load", "unload_dependents"): "unknown load parameter 'unload_dependents'",
             ("unload", "force"): "takes no parameters but unload_dependents: false"}
    for (action, key), words in cases.items():
        error = refusal(action, "imagenet", {key: True})
        assert error.kind is ErrorKind.INVALID and words in error.message, (action, key, error.message)
    assert "no model name" in refusal("load", "", {}).message
    assert rest_parameters("load", None) == {}
    assert rest_parameters("unload", {"parameters": {"unload_dependents": False}}) == {"unload_dependents": False}
    for data, words in (([], "must be a JSON object"), ({"parameters": []}, "'parameters' must be an object"),
                        ({"model": "x"}, "unknown key(s) 'model'")):
        with pytest.raises(ServingError, match=words.replace("(", r"\(").replace(")", r"\)")):
            rest_parameters("load", data)


# -- real servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_model_dir):
    """model_control: explicit, auth on."""
    with serving(load_unload_config(tmp_path_factory.mktemp("v2repo"), tiny_model_dir, TOKEN)) as server:
        yield server


@pytest.fixture(scope="module")
def stub(guarded):
    with grpc.insecure_channel(f"127.0.0.1:{guarded.ports['grpc']}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_error(call, request, metadata=GRPC_BEARER) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    return caught.value


def test_off_by_default(tiny_server):
    """Without model_control: explicit, load and unload are 403 / PERMISSION_DENIED naming the key; the
    metadata still advertises the extension (Triton does the same in model control mode none)."""
    for action in ("load", "unload"):
        reply = requests.post(tiny_server.url(f"/v2/repository/models/imagenet/{action}"), timeout=10)
        assert reply.status_code == 403, reply.text
        assert "model_control: explicit" in reply.json()["error"]
    with grpc.insecure_channel(f"127.0.0.1:{tiny_server.ports['grpc']}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        error = grpc_error(stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="imagenet"), ())
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "model_control" in error.details()
        extensions = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).extensions
    assert "model_repository" in extensions and "model_repository(index)" in extensions
    assert requests.get(tiny_server.url("/v2/models/imagenet/ready"), timeout=10).json()["ready"] is True


def test_token_first(guarded, stub):
    """No token: 401 (REST, with WWW-Authenticate) / UNAUTHENTICATED (gRPC) before the body is looked at,
    whatever it holds; the bad token too."""
    for action in ("load", "unload"):
        url = guarded.url(f"/v2/repository/models/imagenet/{action}")
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
            reply = requests.post(url, data=b"{not json", headers=headers, timeout=10)
            assert reply.status_code == 401 and "WWW-Authenticate" in reply.headers, reply.text
    for call, request in ((stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="imagenet")),
                          (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="imagenet"))):
        assert grpc_error(call, request, ()).code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_refused_by_name(guarded, stub):
    """With the token: parameters this server does not honour, and malformed bodies, are 400 /
    INVALID_ARGUMENT naming what was wrong; nothing is loaded or unloaded and the model keeps serving."""
    cases = [("load", {"parameters": {"config": "{}"}}, "'config' is not supported"),
             ("load", {"parameters": {"file:1/model.onnx": "AAAA"}}, "model files are not taken"),
             ("unload", {"parameters": {"unload_dependents": True}}, "no ensembles"),
             ("unload", {"parameters": {"force": 1}}, "unknown unload parameter 'force'"),
             ("load", {"parameters": "config"}, "'parameters' must be an object"),
             ("load", {"name": "imagenet"}, "unknown key(s) 'name'"),
             ("load", [1], "must be an object")]
    for action, body, words in cases:
        reply = requests.post(guarded.url(f"/v2/repository/models/imagenet/{action}"), data=json.dumps(body),
                              headers=BEARER, timeout=10)
        assert reply.status_code == 400 and words in reply.json()["error"], (body, reply.text)
    reply = requests.post(guarded.url("/v2/repository/models/imagenet/load"), data=b"{oops", headers=BEARER,
                          timeout=10)
    assert reply.status_code == 400 and "malformed JSON" in reply.json()["error"]
    reply = requests.get(guarded.url("/v2/repository/models/imagenet/load"), headers=BEARER, timeout=10)
    assert reply.status_code == 405
    grpc_cases = [(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(
                       model_name="imagenet", parameters={"config": Param(string_param="{}")}), "'config'"),
                  (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(
                       model_name="imagenet", parameters={"unload_dependents": Param(bool_param=True)}),
                   "no ensembles"),
                  (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(), "no model name")]
    for call, request, words in grpc_cases:
        error = grpc_error(call, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    ready = requests.get(guarded.url("/v2/models/imagenet/ready"), timeout=10)
    assert ready.json()["ready"] is True
    assert "model 'imagenet': unload refused (V2 repository extension): unload parameter unload_dependents: " \
           "true is not supported" in guarded.log  # each refusal is one INFO line
