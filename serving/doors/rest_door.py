"""REST front door: `POST /{name}/{method}` with grpc-gateway (v1, JSONPb OrigName + EmitDefaults) JSON
semantics, plus `GET /health/live`, `/health/ready` (and KServe's `/v2/health/*`) and `/metrics`; the Open
Inference Protocol's `/v2/...` is handed to serving.v2.rest_door. Before any handler, `http_guard` checks the
token and reads the body within the door's limits; `serve_app` adds the connection limits and TLS.

As grpc-gateway does: any Content-Type is read as JSON; an empty body is an empty Request; the URL's
name/method override the body's; unknown JSON fields are ignored; malformed JSON is HTTP 400 with
`{"error","code","message","details"}`; application errors are HTTP 200 with err_no; other paths are
plain-text 404, other methods on /{name}/{method} plain-text 405. Responses print every field, with
proto field names, in field-number order.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from google.protobuf import json_format

from resnest_serving.pipeline.errors import ErrorCode
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.v2 import is_v2_path
from resnest_serving.serving.core import ServingCore
from resnest_serving.serving.doors.connections import DoorSettings, LimitedSite, PeerLimiter
from resnest_serving.serving.doors.http_guard import (
    OPEN_METHODS,
    ascii_int,
    http_guard,
    load_json,
    off_loop_if_large,
    request_body,
)
from resnest_serving.serving.doors.security import HEALTH_PATHS
from resnest_serving.serving.doors.statuses import gateway_error
from resnest_serving.serving.errors import invalid
from resnest_serving.serving.v2 import rest_door as v2_rest
from resnest_serving.serving.v2 import routes as v2_routes
from resnest_serving.serving.v2.model import V2Models

MAX_JSON_ELEMENTS = 100_000  # list items, fields and containers in one Paddle Serving REST body

log = logging.getLogger(__name__)


def plain(status: int) -> web.Response:
    from http import HTTPStatus

    return web.Response(status=status, text=HTTPStatus(status).phrase + "\n", content_type="text/plain")


def parse_request_json(body: bytes) -> pb.Request:
    """grpc-gateway's JSON → Request mapping for the pipeline Request, written out for speed
    (json_format.Parse takes ~40x longer on image-sized strings and holds the event loop meanwhile).
    Proto field names (and jsonpb's lowerCamelCase, identical here); unknown fields ignored; int64 as a
    number or a numeric string; `tensors` through json_format (rare). At most MAX_JSON_ELEMENTS elements
    (`load_json`)."""
    data = load_json(body, MAX_JSON_ELEMENTS)
    if not isinstance(data, dict):
        raise ValueError(f"the JSON body must be an object, got {type(data).__name__}")
    message = pb.Request()
    for name in ("key", "value"):
        items = data.get(name)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"field {name!r} must be a list of strings")
        getattr(message, name).extend(items)
    for name in ("name", "method", "clientip"):
        text = data.get(name)
        if text is not None:
            if not isinstance(text, str):
                raise ValueError(f"field {name!r} must be a string")
            setattr(message, name, text)
    logid = data.get("logid", data.get("logId"))
    if logid is not None:
        number = logid if isinstance(logid, int) and not isinstance(logid, bool) else \
            ascii_int(logid, signed=True) if isinstance(logid, str) else None
        if number is None or not -2**63 <= number < 2**63:
            raise ValueError(f"field 'logid' must be a 64-bit integer or a numeric string, got {str(logid)[:40]!r}")
        message.logid = number
    if data.get("tensors"):
        json_format.ParseDict({"tensors": data["tensors"]}, message, ignore_unknown_fields=True)
    return message


def grpc_gateway_json(message: pb.Response) -> bytes:
    """grpc-gateway v1 JSON: proto field names, every field emitted in field-number order (as jsonpb)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    ordered = {f.name: data[f.name] for f in message.DESCRIPTOR.fields}  # field-number order, as jsonpb
    return json.dumps(ordered, ensure_ascii=False).encode()


def rest_takes_body(method: str, path: str) -> bool:
    """The REST door's routes that take a body: POST /{name}/{method}, and POST on the Open Inference
    Protocol's .../infer and /v2/repository/index. Any other request reaches its handler unread."""
    if is_v2_path(path):
        return v2_routes.takes_body(method, path)
    return method == "POST" and path.count("/") == 2


class RestAdapter:
    """Paddle Serving's REST routes, health and /metrics; with `v2`, the Open Inference Protocol beside them."""

    def __init__(self, core: ServingCore, door: DoorSettings, v2: V2Models | None = None):
        self.core = core
        self.door = door
        self.v2 = v2
        self.max_request_bytes = door.max_request_bytes

    def app(self) -> web.Application:
        guard = http_guard(self.door, self.core, rest_takes_body)
        app = web.Application(client_max_size=self.max_request_bytes, middlewares=[guard])
        app.router.add_route("*", "/{tail:.*}", self.dispatch, expect_handler=guard.expect_handler)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if self.v2 is not None and path not in HEALTH_PATHS and is_v2_path(path):  # serving/v2/rest_door.py
            return await v2_rest.handle(self.v2, request)
        body = request_body(request)
        return await self.answer(path, request.method, body, request.remote or "")

    async def answer(self, path: str, method: str, body: bytes, remote: str = "") -> web.Response:
        """The answer to a Paddle Serving REST call (health, /metrics or `POST /{name}/{method}`), whatever
        HTTP server received it (aiohttp here, Ray Serve's proxy in serving.ray.app)."""
        if path in HEALTH_PATHS or path == "/metrics":
            if method not in OPEN_METHODS:
                return plain(405)
            return self.health(HEALTH_PATHS[path]) if path in HEALTH_PATHS else self.metrics()
        segments = path.strip("/").split("/") if path.strip("/") else []
        if len(segments) != 2 or path.count("/") != 2 or not all(segments):
            return plain(404)
        if method != "POST":
            return plain(405)
        message = pb.Request()
        if body.strip():
            try:
                message = await off_loop_if_large(body, parse_request_json)
            except (ValueError, json_format.ParseError, RecursionError) as exc:
                log.info("http malformed JSON from %s: %s", remote, exc)
                self.core.reject("http", int(ErrorCode.RPC_PACKAGE_ERROR))
                return gateway_error(invalid(f"malformed JSON request body: {exc}"))
        message.name, message.method = segments
        answer = await self.core.infer_proto(message, "http")
        return web.Response(body=grpc_gateway_json(answer), content_type="application/json")

    def health(self, kind: str) -> web.Response:
        ready = self.core.ready
        if kind == "live":
            return web.json_response({"status": "live"})
        return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)

    def metrics(self) -> web.Response:
        response = web.Response(body=self.core.metrics.exposition())
        response.headers["Content-Type"] = self.core.metrics.content_type
        return response


async def start_rest(core: ServingCore, host: str, port: int, door: DoorSettings, reuse_port: bool = False,
                     metrics_only: bool = False, shutdown_timeout_s: float = 10.0,
                     v2: V2Models | None = None) -> tuple[web.AppRunner, int]:
    """Start the HTTP server, with the Open Inference Protocol for `v2` (or, with metrics_only, Paddle
    Serving's separate Prometheus port serving GET /metrics alone); returns the runner (for cleanup) and the
    bound port."""
    adapter = RestAdapter(core, door, v2)
    if metrics_only:
        guard = http_guard(door, core, takes_body=lambda _m, _p: False)
        app = web.Application(client_max_size=door.max_request_bytes, middlewares=[guard])

        async def metrics(_request: web.Request) -> web.Response:
            return adapter.metrics()

        app.router.add_get("/metrics", metrics, expect_handler=guard.expect_handler)
    else:
        app = adapter.app()
    name = "prometheus" if metrics_only else "http"
    return await serve_app(app, host, port, door, name, reuse_port, shutdown_timeout_s)


async def serve_app(app: web.Application, host: str, port: int, door: DoorSettings,
                    name: str = "http", reuse_port: bool = False,
                    shutdown_timeout_s: float = 10.0) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app on host:port (0 = any free port) within `door`'s limits and TLS; returns the
    runner (for cleanup) and the port. Idle connections, and headers that take longer than
    idle_timeout_s, are closed (aiohttp's keep-alive timer runs from the connection's start)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout_s,
                           keepalive_timeout=door.limits.idle_timeout_s, auto_decompress=False,
                           lingering_time=2.0)  # unread body after a refusal: discarded for 2 s (aiohttp: 10)
    await runner.setup()
    limiter = PeerLimiter(name, door.limits)
    await LimitedSite(runner, host, port, limiter, ssl_context=door.ssl_context,
                      reuse_port=reuse_port or None).start()
    return runner, runner.addresses[0][1]
