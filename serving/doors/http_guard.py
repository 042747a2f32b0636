"""What every HTTP front door checks before a handler runs (REST, the Open Inference Protocol, the model
server's HTTP): the bearer token, and the body (time, size, encoding, bounded inflating), refused as
`serving.errors.ServingError`s in grpc-gateway's error body; and one-line logging of requests aiohttp cannot
parse."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import ClientPayloadError, HttpVersion11, web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from resnest_serving.protocol.inflate import InflateError, inflate
from resnest_serving.protocol.v2 import is_v2_path
from resnest_serving.serving.core import ServingCore
from resnest_serving.serving.doors.connections import DoorSettings
from resnest_serving.serving.doors.security import TokenSet, is_open_path
from resnest_serving.serving.doors.statuses import gateway_error
from resnest_serving.serving.errors import ErrorKind, ServingError

log = logging.getLogger(__name__)
T = TypeVar("T")

ACCEPTED_ENCODINGS = ("", "identity", "gzip", "deflate")  # the last two inflated here, bounded
# where the guard leaves the (inflated) body for the handlers (aiohttp < 3.12 has no RequestKey: a str key)
BODY = web.RequestKey("resnest_body", bytes) if hasattr(web, "RequestKey") else "resnest.body"


OPEN_METHODS = ("GET", "HEAD")  # the only methods an open path (health, readiness) answers

_AUTHORIZATION_LINE = re.compile(r"^.*authorization.*$", re.IGNORECASE | re.MULTILINE)
_BEARER = re.compile(r"bearer\s+\S+", re.IGNORECASE)


def redact_authorization(text: str) -> str:
    """`text` (an aiohttp parse error, which quotes the offending header) with every line that mentions
    "authorization" replaced, and any "Bearer <token>" (the pure-Python parser quotes the value alone)
    cut to "Bearer [redacted]"."""
    text = _AUTHORIZATION_LINE.sub("[a header line with 'authorization', redacted]", text)
    return _BEARER.sub("Bearer [redacted]", text)


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request (bad headers, a body that does not inflate) with a traceback at ERROR:
    a client's mistake, not the server's. Keep it as one INFO line, with any Authorization header redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            text = redact_authorization(f"http bad request: {type(exc).__name__}: {exc}")
            record.msg, record.args = text.replace("\n", " "), ()
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
        return True


logging.getLogger("aiohttp.server").addFilter(ClientErrorsInOneLine())

_aiohttp_handle_error = web_protocol.RequestHandler.handle_error


def _handle_error_redacted(self, request, status: int = 500, exc: BaseException | None = None,
                           message: str | None = None) -> web.StreamResponse:
    """aiohttp answers a request it cannot parse with the parser's message, which quotes the bad header:
    the same answer with any Authorization header redacted (the token never goes back on the wire)."""
    return _aiohttp_handle_error(self, request, status, exc, redact_authorization(message) if message else message)


web_protocol.RequestHandler.handle_error = _handle_error_redacted  # every HTTP door of this process


def unauthenticated(tokens: TokenSet | None, path: str, authorization: str | None,
                    remote: str | None = "") -> web.Response | None:
    """The 401 answer for a call without one of the tokens (None when it may pass: auth off, a token it
    accepts, or an open health path)."""
    if tokens is None or is_open_path(path) or tokens.accepts(authorization):
        return None
    log.info("http %s from %s: refused, missing or unknown bearer token", path, remote)
    response = gateway_error(ServingError(ErrorKind.UNAUTHENTICATED, "missing or invalid bearer token: send "
                                          "'Authorization: Bearer <token>'"))
    response.headers["WWW-Authenticate"] = 'Bearer realm="resnest-serving"'
    return response


def too_large(limit: int) -> ServingError:
    return ServingError(ErrorKind.TOO_LARGE, f"request body over the limit of {limit} bytes (max_request_bytes)")


def check_encoding(encoding: str) -> str:
    """The normalized Content-Encoding, or ServingError (ENCODING, 415) for one this server does not inflate."""
    encoding = encoding.strip().lower()
    if encoding not in ACCEPTED_ENCODINGS:
        raise ServingError(ErrorKind.ENCODING, f"Content-Encoding {encoding!r} is not supported; send gzip, "
                           "deflate or identity")
    return encoding


async def decoded_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """`raw` inflated (off the event loop, step by step, at most `limit` bytes out) when `encoding` is gzip
    or deflate; ServingError (TOO_LARGE, INVALID) otherwise. Used by every HTTP door, Ray's included."""
    if len(raw) > limit:
        raise too_large(limit)
    encoding = check_encoding(encoding)
    if encoding not in ("gzip", "deflate"):
        return raw
    try:
        return await asyncio.to_thread(inflate, raw, encoding, limit)
    except InflateError as exc:
        if exc.too_large:
            raise ServingError(ErrorKind.TOO_LARGE, f"request body: {exc} (max_request_bytes)") from None
        raise ServingError(ErrorKind.INVALID, f"request body could not be read: {exc}") from None


def open_path_refusal(method: str, path: str, has_body: bool) -> ServingError | None:
    """Why an open path (health, readiness: no token needed) refuses this request, or None: they take GET
    or HEAD only (405) and no body at all (413), both decided from the request line and headers alone."""
    if method not in OPEN_METHODS:
        return ServingError(ErrorKind.METHOD, f"{method} not allowed on {path}; use GET or HEAD")
    if has_body:
        return ServingError(ErrorKind.TOO_LARGE, f"{path} takes no request body")
    return None


def post_takes_body(method: str, path: str) -> bool:
    """The default route rule of `http_guard`: POST carries a body, other methods none."""
    return method == "POST"


def protocol_of(path: str) -> str:
    """The metrics protocol label of an HTTP path: "v2-http" for the Open Inference Protocol, else "http"."""
    return "v2-http" if is_v2_path(path) else "http"


async def read_bounded(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A streamed body (chunked or not) joined, refused with 413 as soon as it passes `limit` bytes: never
    more than `limit` plus one chunk held (for HTTP servers other than aiohttp, e.g. Ray Serve's proxy)."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def check_headers(method: str, path: str, headers: Mapping[str, str], has_body: bool, declared: int | None,
                  door: DoorSettings, takes_body: Callable[[str, str], bool],
                  remote: str | None = "") -> tuple[str, ServingError | web.Response] | None:
    """Steps 1-4 of `http_guard`, from the request line and headers alone (for every HTTP server: aiohttp's
    here, Ray Serve's proxy in serving.ray.replica): None to go on, or (step, refusal): "open" (an open
    path's rule, a ServingError), "token" (the 401 answer) or "body" (a ServingError: size, encoding)."""
    if is_open_path(path):
        refusal = open_path_refusal(method, path, has_body)
        return None if refusal is None else ("open", refusal)
    refused = unauthenticated(door.tokens, path, headers.get("Authorization"), remote)
    if refused is not None:
        return "token", refused
    if has_body and takes_body(method, path):
        try:
            check_encoding(headers.get("Content-Encoding", ""))
            if declared is not None and declared > door.max_request_bytes:
                raise too_large(door.max_request_bytes)
        except ServingError as exc:
            return "body", exc
    return None


def http_guard(door: DoorSettings, core: ServingCore | None = None,
               takes_body: Callable[[str, str], bool] = post_takes_body):
    """aiohttp middleware run before any handler, in this order, each step before any body byte is read:
    1. open paths (health, readiness) take GET/HEAD without a body, else 405/413 with the body unread;
    2. the bearer token (401);
    3. the method: a request whose route takes no body (`takes_body(method, path)` False) goes to its
       handler (which answers it, or 404/405) with the body unread;
    4. the size: a declared Content-Length over max_request_bytes is 413 unread, an encoding not accepted 415;
    then the body is read within request_read_timeout_s and max_request_bytes and inflated step by step up
    to max_request_bytes (aiohttp's own inflating is off: `serve_app`); handlers parse it from
    `request_body`. Refusals of authenticated requests (or with auth off) are counted by `core` as
    err_no 5000 on "http" (or "v2-http"); refusals before authentication (1, 2) only in
    `resnest_refused_requests`, never as err_no."""

    def refuse(request: web.Request, error: ServingError, authenticated: bool = True) -> web.Response:
        response = gateway_error(error)
        log.info("http %s %s from %s: %d %s", request.method, request.path, request.remote, response.status,
                 error.message)
        if core is not None:
            if authenticated:
                core.reject(protocol_of(request.path), error.err_no)
            else:
                core.refused(protocol_of(request.path), response.status)
        if request.body_exists and request.can_read_body:
            response.force_close()  # the body is left unread: drained for lingering_time at most, then closed
        return response

    def before_reading(request: web.Request) -> web.Response | None:
        """Steps 1-4: the refusal decided from the request line and headers alone, or None."""
        verdict = check_headers(request.method, request.path, request.headers, request.body_exists,
                                request.content_length, door, takes_body, request.remote)
        if verdict is None:
            return None
        step, refusal = verdict
        if isinstance(refusal, ServingError):
            return refuse(request, refusal, authenticated=step != "open")
        if core is not None:
            core.refused(protocol_of(request.path), refusal.status)
        if request.body_exists:
            refusal.force_close()
        return refusal

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        refused = before_reading(request)
        if refused is not None:
            return refused
        if request.body_exists and takes_body(request.method, request.path) and not is_open_path(request.path):
            encoding = request.headers.get("Content-Encoding", "")
            try:
                raw = await asyncio.wait_for(request.read(), door.limits.read_timeout_s)
                request[BODY] = await decoded_body(raw, encoding, door.max_request_bytes)
            except ServingError as exc:
                return refuse(request, exc)
            except TimeoutError:
                response = refuse(request, ServingError(ErrorKind.READ_TIMEOUT, "request body not received within "
                                  f"{door.limits.read_timeout_s:g} s (request_read_timeout_s)"))
                response.force_close()
                return response
            except web.HTTPRequestEntityTooLarge:
                return refuse(request, too_large(door.max_request_bytes))
            except (RequestPayloadError, web.HTTPBadRequest, ClientPayloadError) as exc:
                return refuse(request, ServingError(ErrorKind.INVALID, f"request body could not be read: {exc}"))
            except ConnectionResetError:  # the client left mid-body: one line, not aiohttp's ERROR traceback
                return refuse(request, ServingError(ErrorKind.INVALID, "the client closed the connection before "
                                                    "the whole request body arrived"))
        return await handler(request)

    async def expect_handler(request: web.Request) -> web.StreamResponse | None:
        """For `Expect: 100-continue` (curl sends it for bodies over 1 MiB): the same checks first, so a
        refused client is answered without being asked for its body; else "100 Continue" as aiohttp does."""
        refused = before_reading(request)
        if refused is not None:
            return refused
        if request.version == HttpVersion11:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers.get('Expect', '')}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        return None

    guard.expect_handler = expect_handler  # for app.router.add_route(..., expect_handler=...)
    return guard


MAX_INT_DIGITS = 20  # an int64 / uint64 has at most 20 digits


def ascii_int(text: str, *, signed: bool = False, max_digits: int = MAX_INT_DIGITS) -> int | None:
    """`text` (a header or id, spaces around it allowed) as an int when it is ASCII digits only (with a
    leading "-" when `signed`) and at most `max_digits` long, else None: "²", "١٢", a 5000-digit string
    or "+1" are None, never a ValueError from int()."""
    text = text.strip()
    digits = text[1:] if signed and text.startswith("-") else text
    if not digits or len(digits) > max_digits or not (digits.isascii() and digits.isdigit()):
        return None
    return int(text)


THREAD_JSON_BYTES = 256 * 1024  # JSON bodies larger than this are counted and parsed off the event loop
MAX_JSON_CONTAINERS = 100_000  # arrays and objects in one JSON body (an image request has a handful)


def load_json(body: bytes, max_elements: int) -> Any:
    """json.loads(body) after counting, at C speed, what it would build: ValueError naming the limit when
    the body holds more than MAX_JSON_CONTAINERS arrays/objects or more than `max_elements` elements (commas
    and containers; an over-count when strings hold them, never an under-count). A 60 MB `[[],[],...]`
    would take ~1.5 GB as Python objects: refused having built nothing."""
    containers = body.count(b"[") + body.count(b"{")
    if containers > MAX_JSON_CONTAINERS:
        raise ValueError(f"the JSON body holds more than {MAX_JSON_CONTAINERS} arrays and objects")
    elements = containers + body.count(b",")
    if elements > max_elements:
        raise ValueError(f"the JSON body holds more than {max_elements} elements")
    return json.loads(body)


async def off_loop_if_large(body: bytes, parse: Callable[[bytes], T]) -> T:
    """`parse(body)`, in a worker thread when the body is over THREAD_JSON_BYTES (the event loop, and every
    other request and health probe on it, never waits on a large body), else right here."""
    if len(body) > THREAD_JSON_BYTES:
        return await asyncio.to_thread(parse, body)
    return parse(body)


def request_body(request: web.Request) -> bytes:
    """The request's body as `http_guard` read and inflated it (b"" when it had none)."""
    return request.get(BODY, b"")
