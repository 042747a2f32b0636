"""What every HTTP front door checks before a handler runs (REST, the Open Inference Protocol, the model
server's HTTP): the bearer token, and the body (time, size, encoding, bounded inflating). Plus the
grpc-gateway error body these refusals use, and one-line logging of requests aiohttp cannot parse."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from pipeline.errors import ErrorCode
from protocol.inflate import InflateError, inflate
from serving.connections import DoorSettings
from serving.metrics import Metrics
from serving.security import TokenSet, is_open_path

log = logging.getLogger(__name__)

GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAUTHENTICATED = 16


def gateway_error(status: int, grpc_code: int, message: str) -> web.Response:
    body = {"error": message, "code": grpc_code, "message": message, "details": []}
    return web.json_response(body, status=status)


ACCEPTED_ENCODINGS = ("", "identity", "gzip", "deflate")  # the last two inflated here, bounded
# where the guard leaves the (inflated) body for the handlers (aiohttp < 3.12 has no RequestKey: a str key)
BODY = web.RequestKey("resnest_body", bytes) if hasattr(web, "RequestKey") else "resnest.body"


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (bad headers, a body that does not inflate) with a traceback at ERROR:
    a client's mistake, not the server's. Keep it as one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.msg, record.args = f"http bad request: {type(exc).__name__}: {exc}".replace("\n", " "), ()
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


logging.getLogger("aiohttp.server").addFilter(ClientErrorsInOneLine())


def unauthenticated(tokens: TokenSet | None, path: str, authorization: str | None,
                    remote: str | None = "") -> web.Response | None:
    """The 401 answer for a call without one of the tokens (None when it may pass: auth off, a token it
    accepts, or an open health path)."""
    if tokens is None or is_open_path(path) or tokens.accepts(authorization):
        return None
    log.info("http %s from %s: refused, missing or unknown bearer token", path, remote)
    response = gateway_error(401, GRPC_UNAUTHENTICATED, "missing or invalid bearer token: send "
                             "'Authorization: Bearer <token>'")
    response.headers["WWW-Authenticate"] = 'Bearer realm="resnest-serving"'
    return response


class BodyRefused(Exception):
    """A request body refused before any handler: HTTP status, gRPC code (for grpc-gateway's body), why."""

    def __init__(self, status: int, grpc_code: int, message: str):
        super().__init__(message)
        self.status, self.grpc_code, self.message = status, grpc_code, message


def too_large(limit: int) -> BodyRefused:
    return BodyRefused(413, GRPC_RESOURCE_EXHAUSTED, f"request body over the limit of {limit} bytes "
                                                     "(max_request_bytes)")


def check_encoding(encoding: str) -> str:
    """The normalized Content-Encoding, or BodyRefused(415) for one this server does not inflate."""
    encoding = encoding.strip().lower()
    if encoding not in ACCEPTED_ENCODINGS:
        raise BodyRefused(415, GRPC_INVALID_ARGUMENT, f"Content-Encoding {encoding!r} is not supported; send "
                                                      "gzip, deflate or identity")
    return encoding


async def decoded_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` inflated (off the event loop, step by step, at most `limit` bytes out) when `encoding` is gzip
    or deflate; BodyRefused (413, 400) otherwise. Used by every HTTP door, Ray's included."""
    if len(raw) > limit:
        raise too_large(limit)
    encoding = check_encoding(encoding)
    if encoding not in ("gzip", "deflate"):
        return raw
    try:
        return await asyncio.to_thread(inflate, raw, encoding, limit)
    except InflateError as exc:
        if exc.too_large:
            raise BodyRefused(413, GRPC_RESOURCE_EXHAUSTED, f"request body: {exc} (max_request_bytes)") from None
        raise BodyRefused(400, GRPC_INVALID_ARGUMENT, f"request body could not be read: {exc}") from None


def http_guard(door: DoorSettings, metrics: Metrics | None = None):
    """aiohttp middleware run before any handler: the bearer token (health stays open), then the whole body,
    read within request_read_timeout_s and max_request_bytes, in one of the accepted encodings, inflated
    step by step up to max_request_bytes (aiohttp's own inflating is off: `serve_app`). Handlers take the
    body from `request_body`. Refusals are counted in `metrics` as err_no 5000 on "http" (or "v2-http")."""

    def refuse(request: web.Request, status: int, grpc_code: int, message: str) -> web.Response:
        log.info("http %s %s from %s: %d %s", request.method, request.path, request.remote, status, message)
        if metrics is not None:
            protocol = "v2-http" if request.path == "/v2" or request.path.startswith("/v2/") else "http"
            metrics.request_done(protocol, int(ErrorCode.INPUT_PARAMS_ERROR), 0.0)
        return gateway_error(status, grpc_code, message)

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        refused = unauthenticated(door.tokens, request.path, request.headers.get("Authorization"), request.remote)
        if refused is not None:
            return refused
        if request.body_exists:
            encoding = request.headers.get("Content-Encoding", "")
            try:
                check_encoding(encoding)
                raw = await asyncio.wait_for(request.read(), door.limits.read_timeout_s)
                request[BODY] = await decoded_body(raw, encoding, door.max_request_bytes)
            except BodyRefused as exc:
                return refuse(request, exc.status, exc.grpc_code, exc.message)
            except TimeoutError:
                response = refuse(request, 408, GRPC_DEADLINE_EXCEEDED, "request body not received within "
                                  f"{door.limits.read_timeout_s:g} s (request_read_timeout_s)")
                response.force_close()
                return response
            except web.HTTPRequestEntityTooLarge:
                error = too_large(door.max_request_bytes)
                return refuse(request, error.status, error.grpc_code, error.message)
            except (RequestPayloadError, web.HTTPBadRequest, ClientPayloadError) as exc:
                return refuse(request, 400, GRPC_INVALID_ARGUMENT, f"request body could not be read: {exc}")
        return await handler(request)

    return guard


def request_body(request: web.Request) -> bytes:
    """The request's body as `http_guard` read and inflated it (b"" when it had none)."""
    return request.get(BODY, b"")
