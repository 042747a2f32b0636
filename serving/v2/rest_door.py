"""Open Inference Protocol (KServe V2) over REST, on the HTTP port beside Paddle Serving's routes, by the
route table of serving.v2.routes (`/v2/health/*` are answered by serving/doors/rest_door.py). Errors are
HTTP 4xx/5xx with `{"error": "..."}`.

Binary tensor extension both ways: `Inference-Header-Content-Length` splits the body into the JSON header
and the inputs' raw bytes (`parameters.binary_data_size`, in input order); outputs asked for with
`parameters.binary_data: true` (or request `parameters.binary_data_output: true`) come back the same way.
Request bodies compressed with `Content-Encoding: gzip|deflate` (tritonclient's
request_compression_algorithm) are inflated by serving.doors.http_guard, up to max_request_bytes inflated.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from resnest_serving.protocol.v2 import HEADER_LENGTH
from resnest_serving.serving.doors.http_guard import ascii_int, load_json, off_loop_if_large, request_body
from resnest_serving.serving.doors.statuses import json_error
from resnest_serving.serving.errors import ErrorKind, ServingError, invalid
from resnest_serving.serving.v2.model import V2Model, V2Models
from resnest_serving.serving.v2.repository import LOAD, UNLOAD, rest_parameters
from resnest_serving.serving.v2.routes import Endpoint, Route, match
from resnest_serving.serving.v2.tensors import (
    MAX_REQUESTED_OUTPUTS,
    RequestedOutput,
    Tensor,
    check_datatype,
    check_shape,
    decode_json,
    decode_raw,
    encode_raw,
)

log = logging.getLogger(__name__)

PROTOCOL = "v2-http"
JSON_ELEMENT_SLACK = 10_000  # JSON elements allowed beside the tensor data a full batch needs
REPOSITORY_BODY_ELEMENTS = 1_000  # JSON elements in a load/unload body (its parameters)

async def handle(models: V2Models, request: web.Request) -> web.StreamResponse:
    """Answer any `/v2` or `/v2/...` request by its route (serving.v2.routes)."""
    route, method = match(request.path), request.method
    if route is None:
        return json_error(ServingError(ErrorKind.NOT_FOUND, f"no such endpoint: {request.path}"))
    if not route.allows(method):
        return json_error(ServingError(ErrorKind.METHOD, f"{method} not allowed on {request.path}; use "
                                       f"{route.endpoint.method}"))
    endpoint = route.endpoint
    try:
        if endpoint is Endpoint.SERVER_METADATA:
            return web.json_response(models.server_metadata())
        if endpoint is Endpoint.REPOSITORY_INDEX:
            return web.json_response(models.repository_index())
        if endpoint is Endpoint.INFER:
            return await infer(models, request, route.name, route.version)
        if endpoint in (Endpoint.REPOSITORY_LOAD, Endpoint.REPOSITORY_UNLOAD):
            return await repository_call(models, request, route)
        model = models.find(route.name, route.version, open_path=endpoint is Endpoint.MODEL_READY)
        if endpoint is Endpoint.MODEL_READY:
            ready = model.ready
            return web.json_response({"name": route.name, "ready": ready}, status=200 if ready else 503)
        return web.json_response(model.config() if endpoint is Endpoint.MODEL_CONFIG else model.metadata())
    except ServingError as exc:
        return json_error(exc)


async def infer(models: V2Models, request: web.Request, name: str, version: str) -> web.Response:
    """POST .../infer: JSON (and binary) body → the named model's pipeline → JSON (and binary) answer."""
    request_id = ""
    model = None
    try:
        model = models.find(name, version)
        body = request_body(request)  # read, size-checked and inflated by serving.doors.http_guard
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        limit = model.max_batch * 3 * model.crop * model.crop + JSON_ELEMENT_SLACK  # a full FP32 batch as JSON
        data = await off_loop_if_large(header, lambda text: _parse_json(text, limit))
        given_id = data.get("id", "")
        if not isinstance(given_id, str):
            raise invalid(f"'id' must be a string, got {given_id!r}")
        request_id = given_id
        inputs, outputs, binary_output = _read_request(data, binary)
        result = await model.infer(inputs, outputs, request_id, PROTOCOL)
    except ServingError as exc:
        models.reject(PROTOCOL, request_id, exc, model)
        return json_error(exc)
    return _respond(model, result, request_id, binary_output)


async def repository_call(models: V2Models, request: web.Request, route: Route) -> web.Response:
    """POST /v2/repository/models/{name}/load|unload: a JSON body is optional and may hold `parameters`
    (serving.v2.repository's rules); success is 200 with `{}`, as Triton answers."""
    action = LOAD if route.endpoint is Endpoint.REPOSITORY_LOAD else UNLOAD
    body = request_body(request)
    data = _parse_json(body, REPOSITORY_BODY_ELEMENTS) if body.strip() else None
    call = models.load if action == LOAD else models.unload
    await call(route.name, rest_parameters(action, data))
    return web.json_response({})


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) by Inference-Header-Content-Length; no header = all JSON."""
    if header_length is None:
        return body, b""
    n = ascii_int(header_length)
    if n is None or n > len(body):
        raise invalid(f"{HEADER_LENGTH} {header_length[:40]!r} must be an integer between 0 and the body length "
                      f"({len(body)} bytes)")
    return body[:n], body[n:]


def _parse_json(header: bytes, max_elements: int) -> dict[str, Any]:
    """The JSON request object, within `max_elements` (serving.doors.http_guard.load_json), or INVALID_ARGUMENT."""
    try:
        data = load_json(header, max_elements)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"malformed JSON request body: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(f"the JSON request must be an object, got {type(data).__name__}")
    return data


def _params(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{where}: 'parameters' must be an object, got {type(value).__name__}")
    return value


def _read_request(data: dict[str, Any], binary: bytes) -> tuple[list[Tensor], list[RequestedOutput], bool]:
    """Decoded inputs, requested outputs, and whether outputs default to binary."""
    params = _params("request", data.get("parameters"))
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("'inputs' must be a non-empty list of tensors")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"inputs[{i}] must be an object with a string 'name'")
        name = item["name"]
        datatype = check_datatype(name, item.get("datatype"))
        shape = check_shape(name, item.get("shape"))
        iparams = _params(f"input {name!r}", item.get("parameters"))
        size = iparams.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise invalid(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(binary):
                raise invalid(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                              f"({len(binary) - offset} binary bytes left)")
            tensor = decode_raw(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in item:
            b64 = iparams.get("content_type", params.get("content_type")) == "base64"
            tensor = decode_json(name, datatype, shape, item["data"], b64)
        else:
            raise invalid(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        inputs.append(Tensor(name, datatype, shape, tensor, iparams))
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes after the JSON header are not claimed by any input's "
                      f"binary_data_size ({HEADER_LENGTH} wrong?)")
    outputs = []
    raw_outputs = data.get("outputs", [])
    if not isinstance(raw_outputs, list):
        raise invalid("'outputs' must be a list")
    if len(raw_outputs) > MAX_REQUESTED_OUTPUTS:
        raise invalid(f"{len(raw_outputs)} requested outputs; send at most {MAX_REQUESTED_OUTPUTS}")
    for i, item in enumerate(raw_outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"outputs[{i}] must be an object with a string 'name'")
        outputs.append(RequestedOutput(item["name"], _params(f"output {item['name']!r}", item.get("parameters"))))
    return inputs, outputs, params.get("binary_data_output") is True


def _respond(model: V2Model, result: list[Tensor], request_id: str, binary_output: bool) -> web.Response:
    outputs, blobs = [], []
    for tensor in result:
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.parameters.get("binary_data", binary_output) is True:
            blob = encode_raw(tensor)
            blobs.append(blob)
            out["parameters"] = {"binary_data_size": len(blob)}
        elif tensor.datatype == "BYTES":
            out["data"] = [item.decode("utf-8", "replace") for item in tensor.data]
        else:
            out["data"] = tensor.data.reshape(-1).tolist()
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if request_id:
        answer["id"] = request_id
    answer["outputs"] = outputs
    header = json.dumps(answer, ensure_ascii=False).encode()
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    response = web.Response(body=header + b"".join(blobs), content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response
