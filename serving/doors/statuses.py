"""Each transport's status for a `serving.errors.ErrorKind`, stated once: the HTTP status, the gRPC status
(also the `code` of grpc-gateway's JSON error body), and the kind of a brpc errno (so that the model
server's HTTP door answers as brpc's ErrorCodeToStatusCode does)."""

from __future__ import annotations

import grpc
from aiohttp import web

from resnest_serving.protocol.baidu_std import Errno
from resnest_serving.serving.errors import ErrorKind, ServingError

HTTP_STATUS = {ErrorKind.INVALID: 400, ErrorKind.UNAUTHENTICATED: 401, ErrorKind.FORBIDDEN: 403,
               ErrorKind.NOT_FOUND: 404, ErrorKind.METHOD: 405, ErrorKind.READ_TIMEOUT: 408,
               ErrorKind.TOO_LARGE: 413, ErrorKind.ENCODING: 415, ErrorKind.INTERNAL: 500,
               ErrorKind.UNAVAILABLE: 503, ErrorKind.DEADLINE: 504}

GRPC_STATUS = {ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
               ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
               ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED, ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
               ErrorKind.METHOD: grpc.StatusCode.UNIMPLEMENTED, ErrorKind.READ_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
               ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED, ErrorKind.ENCODING: grpc.StatusCode.INVALID_ARGUMENT,
               ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL, ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
               ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED}

BRPC_ERRNO_KINDS = {Errno.ENOSERVICE: ErrorKind.NOT_FOUND, Errno.ENOMETHOD: ErrorKind.NOT_FOUND,
                    Errno.ERPCAUTH: ErrorKind.UNAUTHENTICATED, Errno.EREQUEST: ErrorKind.INVALID,
                    22: ErrorKind.INVALID, Errno.ELIMIT: ErrorKind.UNAVAILABLE, Errno.ELOGOFF: ErrorKind.UNAVAILABLE,
                    1: ErrorKind.FORBIDDEN, Errno.ERPCTIMEDOUT: ErrorKind.DEADLINE, 110: ErrorKind.DEADLINE}
"""brpc errno → kind (EINVAL 22, EPERM 1, ETIMEDOUT 110 as brpc maps them); any other errno is INTERNAL."""


def http_status(kind: ErrorKind) -> int:
    return HTTP_STATUS[kind]


def grpc_status(kind: ErrorKind) -> grpc.StatusCode:
    return GRPC_STATUS[kind]


def brpc_kind(errno: int) -> ErrorKind:
    return BRPC_ERRNO_KINDS.get(errno, ErrorKind.INTERNAL)


def gateway_error(error: ServingError) -> web.Response:
    """grpc-gateway's JSON error answer (Paddle Serving's REST door): {"error", "code", "message", "details"}."""
    code = grpc_status(error.kind).value[0]
    body = {"error": error.message, "code": code, "message": error.message, "details": []}
    return web.json_response(body, status=http_status(error.kind))


def json_error(error: ServingError) -> web.Response:
    """The Open Inference Protocol's JSON error answer: {"error": message}."""
    return web.json_response({"error": error.message}, status=http_status(error.kind))


async def grpc_abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    """End a gRPC call with the error's status and message."""
    await context.abort(grpc_status(error.kind), error.message)
