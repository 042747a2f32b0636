"""Model-only front door: Paddle Serving C++ Serving's ``GeneralModelService`` over one model.

``baidu.paddle_serving.predictor.general_model.GeneralModelService`` ``inference`` (and ``debug``, which
behaves the same, as in C++ Serving) takes a ``Request`` whose tensor is a preprocessed image batch
``[N, 3, H, W]`` and answers a ``Response`` with one ``ModelOutput(engine_name="general_infer_0")`` holding
the fetch var(s) ``[N, classes]`` in ``float_data``. Requests from every connection go through one
``DynamicBatcher``, so concurrent calls share engine batches. Served over bRPC ``baidu_std`` (gzip
response payloads, ``compress_type`` 2, as C++ Serving's generated handler sets) and, optionally, over
HTTP on its own port (``POST /GeneralModelService/inference``, JSON or ``application/proto``).

Input: the tensor is found by the model's real feed name or its alias, in ``name`` or ``alias_name``.
FP32 (elem_type 1) data may come in ``float_data`` (what C++ clients send) or as raw little-endian
``tensor_content``; FP16 (5) and UINT8 (7) come in ``tensor_content`` and are cast to float32 as they are
(no scaling). ``fetch_var_names`` takes real names or aliases; empty means every fetch var.

Errors go through the RPC meta, never ``Response.err_no``, as C++ Serving does (``cntl->SetFailed``):

* a payload that does not parse as ``Request``: ``EREQUEST`` (1003), which brpc itself answers before
  the service runs;
* anything wrong with the input (no/unknown feed, shape, elem_type, data size, unknown fetch) and an
  engine failure: ``-5100`` (``ERR_OP_INFER_FAILURE``), the code C++ Serving returns whenever an op's
  ``inference()`` fails (its reader op rejects bad input that way);
* the batch queue full: ``ELIMIT`` (2004), brpc's "reached server's limit";
* a bug in this module: ``-5000`` (``ERR_INTERNAL_FAILURE``).

The text starts with C++ Serving's fixed ``"InferService inference failed!"`` and then says what was
wrong, so clients that match the C++ text still work and people can act on the message.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from collections.abc import Iterable

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from resnest_serving.pipeline.batcher import DynamicBatcher, QueueFull
from resnest_serving.pipeline.engines import Engine
from resnest_serving.protocol import general_model_service_pb2 as gm
from resnest_serving.protocol.baidu_std import (
    BrpcError,
    CompressType,
    Errno,
    parse_message,
    short_service_name,
)
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.general_model import tensor_values
from resnest_serving.protocol.wire import GENERAL_MODEL_SERVICE, ElemType
from resnest_serving.serving.doors.brpc_server import BrpcServer
from resnest_serving.serving.doors.brpc_services import RequestContext
from resnest_serving.serving.doors.connections import DoorSettings
from resnest_serving.serving.doors.http_guard import ascii_int, request_body
from resnest_serving.serving.doors.statuses import brpc_kind, http_status

__all__ = [
    "ENGINE_NAME",
    "ERR_INTERNAL_FAILURE",
    "ERR_OP_INFER_FAILURE",
    "ModelService",
    "register_model_service",
    "start_model_http",
]

log = logging.getLogger(__name__)

METHODS = ("inference", "debug")
ENGINE_NAME = "general_infer_0"
ERR_INTERNAL_FAILURE = -5000  # "Paddle Serving Framework Internal Error."
ERR_OP_INFER_FAILURE = -5100  # "Paddle Serving Op Inference Error."
FAILED = "InferService inference failed!"  # C++ Serving's cntl->SetFailed text


def _bad_input(detail: str) -> BrpcError:
    return BrpcError(ERR_OP_INFER_FAILURE, f"{FAILED} {detail}")


class ModelService:
    """One model behind GeneralModelService: ``await start()``, ``infer``/``handle`` calls, ``await stop()``."""

    def __init__(self, bundle: ModelBundle, engines: list[Engine], *, batch_size: int,
                 auto_batching_timeout_ms: float, max_queue_images: int, max_images_per_request: int) -> None:
        self.bundle = bundle
        self.max_images_per_request = max_images_per_request
        self.input_shape = (3, bundle.meta.crop_size, bundle.meta.crop_size)
        self.batcher = DynamicBatcher(engines, batch_size, auto_batching_timeout_ms, max_queue_images)
        self._started = False

    async def start(self) -> None:
        """Start the batcher's engine workers (idempotent; the first call also does it)."""
        if not self._started:
            self._started = True
            await self.batcher.start()

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self.batcher.stop()

    # -- the RPC ----------------------------------------------------------------------------------------

    async def handle(self, payload: bytes, ctx: RequestContext) -> bytes:
        """bRPC handler: serialized Request in, serialized Response out; failures raise BrpcError."""
        request = parse_message(payload, gm.Request, "request message")
        return (await self.infer(request, ctx.log_id)).SerializeToString()

    async def infer(self, request: gm.Request, log_id: int = 0) -> gm.Response:
        """Run the request's image batch through the model; raises BrpcError as described above."""
        log_id = request.log_id or log_id
        t0 = time.time()
        try:
            images = self._input(request)
            fetch = self._fetch(request.fetch_var_names)
            await self.start()
            t1 = time.time()
            try:
                probs = await self.batcher.submit(images)
            except QueueFull as exc:
                raise BrpcError(Errno.ELIMIT, f"{FAILED} server overloaded: {exc}; retry later") from None
            except Exception as exc:  # engine failure: the op's inference failed
                raise BrpcError(ERR_OP_INFER_FAILURE,
                                f"{FAILED} engine error: {type(exc).__name__}: {exc}") from exc
            t2 = time.time()
            response = self._response(probs, fetch, log_id)
        except BrpcError as exc:
            log.info("log_id=%d GeneralModelService failed: %s", log_id, exc)
            raise
        except Exception as exc:  # a bug here: report it as the framework's, keep serving
            log.exception("log_id=%d GeneralModelService internal error", log_id)
            raise BrpcError(ERR_INTERNAL_FAILURE, f"{FAILED} Paddle Serving Framework Internal Error. "
                            f"{type(exc).__name__}: {exc}") from exc
        if request.profile_server:
            response.profile_server = True
            response.profile_time.extend(int(t * 1e6) for t in (t0, t1, t2, time.time()))
        log.debug("log_id=%d GeneralModelService %d image(s) in %.1f ms", log_id, images.shape[0],
                  (time.time() - t0) * 1000)
        return response

    def _input(self, request: gm.Request) -> np.ndarray:
        """The request's feed tensor as float32 [N, 3, H, W], or a -5100 error saying what is wrong."""
        b = self.bundle
        names = {b.feed_name, b.feed_alias}
        want = f"{b.feed_name!r} (alias {b.feed_alias!r})"
        tensors = list(request.tensor)
        if not tensors:
            raise _bad_input(f"the request has no tensor; send the image batch as feed var {want}")
        found = [t for t in tensors if t.name in names or t.alias_name in names]
        if not found:
            got = ", ".join(repr(t.name or t.alias_name) for t in tensors)
            raise _bad_input(f"unknown feed var {got}; this model's feed var is {want}")
        if len(tensors) > 1:
            raise _bad_input(f"the request has {len(tensors)} tensors; this model has one feed var, {want}")
        tensor = found[0]
        shape = tuple(tensor.shape)
        expected = "[N, " + ", ".join(map(str, self.input_shape)) + "]"
        if len(shape) != 4 or shape[1:] != self.input_shape or shape[0] < 1:
            raise _bad_input(f"feed var {tensor.name or tensor.alias_name!r}: shape {list(shape)} does not match "
                             f"the model's {expected} (N = number of images, the batch dim included)")
        if shape[0] > self.max_images_per_request:
            raise _bad_input(f"feed var {tensor.name or tensor.alias_name!r}: batch of {shape[0]} images; this "
                             f"server takes at most {self.max_images_per_request} per request")
        try:
            data = tensor_values(tensor)
        except ValueError as exc:
            raise _bad_input(f"feed var {tensor.name or tensor.alias_name!r}: {exc}") from None
        count = math.prod(shape)
        if data.size != count:
            raise _bad_input(f"feed var {tensor.name or tensor.alias_name!r}: {data.size} values for shape "
                             f"{list(shape)}, which needs {count}")
        return data.astype(np.float32, copy=False).reshape(shape)

    def _fetch(self, names: Iterable[str]) -> list[str]:
        b = self.bundle
        names = list(names)
        for name in names:
            if name not in (b.fetch_name, b.fetch_alias):
                raise _bad_input(f"unknown fetch var {name!r}; this model fetches {b.fetch_alias!r} "
                                 f"(real name {b.fetch_name!r})")
        return names or [b.fetch_alias]

    def _response(self, probs: np.ndarray, fetch: list[str], log_id: int) -> gm.Response:
        b = self.bundle
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        tensor = gm.Tensor(name=b.fetch_name, alias_name=b.fetch_alias, elem_type=ElemType.FP32,
                           shape=list(probs.shape))
        tensor.float_data.extend(probs.ravel())
        output = gm.ModelOutput(engine_name=ENGINE_NAME)
        for _ in fetch:  # one tensor per requested name, in request order (the model has one fetch var)
            output.tensor.append(tensor)
        return gm.Response(outputs=[output], log_id=log_id)


def register_model_service(server: BrpcServer, bundle: ModelBundle, engines: list[Engine], *, batch_size: int,
                           auto_batching_timeout_ms: float, max_queue_images: int, max_images_per_request: int,
                           timeout_s: float | None = None) -> ModelService:
    """Serve GeneralModelService.inference and .debug on ``server`` (gzip responses, as C++ Serving).

    Returns the ModelService: ``await service.start()`` before serving (or let the first call start it)
    and ``await service.stop()`` after the server stopped. ``timeout_s`` bounds each call (ERPCTIMEDOUT).
    """
    service = ModelService(bundle, engines, batch_size=batch_size, auto_batching_timeout_ms=auto_batching_timeout_ms,
                           max_queue_images=max_queue_images, max_images_per_request=max_images_per_request)
    for method in METHODS:
        server.register(GENERAL_MODEL_SERVICE, method, service.handle, response_compress_type=CompressType.GZIP,
                        timeout_s=timeout_s)
    return service


# -- HTTP (brpc's http_rpc_protocol semantics) ------------------------------------------------------------

_GZIP_MIN_BYTES = 512
PROTO_CONTENT_TYPE = "application/proto"


def _http_error(exc: BrpcError) -> web.Response:
    """brpc's http_rpc_protocol error answer: the errno's HTTP status, the text, the errno in a header."""
    return web.Response(status=http_status(brpc_kind(exc.code)), text=exc.text, content_type="text/plain",
                        headers={"x-bd-error-code": str(exc.code)})


def _numbers_for_int64(message: Message, data: dict) -> dict:
    """json_format writes 64-bit integers as strings; brpc's pb2json writes numbers. Fix in place."""
    for field in message.DESCRIPTOR.fields:
        key = field.name
        if key not in data:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            values = getattr(message, key)
            if field.is_repeated:
                for sub, sub_data in zip(values, data[key], strict=True):
                    _numbers_for_int64(sub, sub_data)
            else:
                _numbers_for_int64(values, data[key])
        elif field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
            value = data[key]
            data[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data


def brpc_json(message: Message) -> bytes:
    """brpc pb2json style: proto field names, default/empty fields left out, bytes base64, int64 numbers."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return json.dumps(_numbers_for_int64(message, data), separators=(",", ":")).encode()


class _ModelHttp:
    """``POST /GeneralModelService/{inference,debug}`` (the full service name works too)."""

    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.names = {short_service_name(GENERAL_MODEL_SERVICE), GENERAL_MODEL_SERVICE}

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        try:
            if len(parts) != 2 or parts[0] not in self.names:
                raise BrpcError(Errno.ENOSERVICE, f"Fail to find service={parts[0]!r} for path {request.path!r}; "
                                "use POST /GeneralModelService/inference")
            if parts[1] not in METHODS:
                raise BrpcError(Errno.ENOMETHOD, f"Fail to find method={parts[1]!r} of GeneralModelService; "
                                f"methods: {', '.join(METHODS)}")
            if request.method != "POST":
                return web.Response(status=405, text=f"{request.method} not allowed; use POST",
                                    content_type="text/plain", headers={"Allow": "POST"})
            proto = request.content_type == PROTO_CONTENT_TYPE
            message = self._parse(request_body(request), proto)
            log_id = ascii_int(request.headers.get("log-id", "")) or 0  # brpc's HTTP log id header
            if log_id >= 2**64:
                log_id = 0
            response = await self.service.infer(message, log_id)
        except BrpcError as exc:
            return _http_error(exc)
        body = response.SerializeToString() if proto else brpc_json(response)
        headers = {}
        if len(body) >= _GZIP_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", "").lower():
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers,
                            content_type=PROTO_CONTENT_TYPE if proto else "application/json")

    @staticmethod
    def _parse(body: bytes, proto: bool) -> gm.Request:
        if proto:
            return parse_message(body, gm.Request, "http body")
        message = gm.Request()
        what = f"Fail to parse http body as {gm.Request.DESCRIPTOR.full_name}"
        if body.strip():
            try:
                json_format.Parse(body, message, ignore_unknown_fields=True)
            except (json_format.ParseError, UnicodeDecodeError) as exc:
                raise BrpcError(Errno.EREQUEST, f"{what}, {exc}") from None
        return message


def model_http_app(service: ModelService, door: DoorSettings) -> web.Application:
    from resnest_serving.serving.doors.http_guard import http_guard

    handler = _ModelHttp(service)
    guard = http_guard(door, takes_body=lambda method, path: method == "POST" and
                       path.strip("/").split("/")[0] in handler.names)
    app = web.Application(client_max_size=door.max_request_bytes, middlewares=[guard])
    app.router.add_route("*", "/{tail:.*}", handler.dispatch, expect_handler=guard.expect_handler)
    return app


async def start_model_http(service: ModelService, host: str, port: int, door: DoorSettings,
                           reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start GeneralModelService over HTTP on its own port, within `door`'s limits, TLS and tokens; returns
    the runner (for cleanup) and the port."""
    from resnest_serving.serving.doors.rest_door import serve_app

    return await serve_app(model_http_app(service, door), host, port, door, name="model-http", reuse_port=reuse_port)
