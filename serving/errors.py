"""The one error type of the serving layer: what went wrong (`ErrorKind`), independent of the transport, and
the err_no it counts as. Each transport turns a kind into its own status in one place
(`serving.doors.statuses`: HTTP status, gRPC status, grpc-gateway body); the pipeline's own answers keep
their err_no (Paddle Serving's application errors)."""

from __future__ import annotations

from enum import Enum

from resnest_serving.pipeline.errors import ErrorCode


class ErrorKind(Enum):
    """What went wrong with a request, whatever door it came through."""

    INVALID = "invalid"  # malformed or unacceptable input
    UNAUTHENTICATED = "unauthenticated"  # no valid token
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"  # no such endpoint, model or version
    METHOD = "method"  # the endpoint exists, not with this method
    READ_TIMEOUT = "read_timeout"  # the request did not arrive in time
    TOO_LARGE = "too_large"  # over a size limit
    ENCODING = "encoding"  # a content encoding this server does not inflate
    UNAVAILABLE = "unavailable"  # overloaded, stopping, or timed out in the queue
    DEADLINE = "deadline"  # the work did not finish in time
    INTERNAL = "internal"


class ServingError(Exception):
    """A request answered with an error before or instead of a pipeline answer. `err_no` is what the request
    metrics count it as; `counted` is True once it has been counted (by the pipeline or `ServingCore.reject`)."""

    def __init__(self, kind: ErrorKind, message: str, err_no: int = int(ErrorCode.INPUT_PARAMS_ERROR)):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.err_no = err_no
        self.counted = False


def invalid(message: str) -> ServingError:
    return ServingError(ErrorKind.INVALID, message)


ERR_NO_KINDS = {ErrorCode.INPUT_PARAMS_ERROR: ErrorKind.INVALID, ErrorCode.NO_SERVICE: ErrorKind.NOT_FOUND,
                ErrorCode.TIMEOUT: ErrorKind.UNAVAILABLE, ErrorCode.CLOSED_ERROR: ErrorKind.UNAVAILABLE}
"""A pipeline err_no → the kind a protocol with status codes answers it with (anything else: INTERNAL)."""


def from_err_no(err_no: int, message: str) -> ServingError:
    """The error for a pipeline answer with err_no != 0, already counted (the core counted the answer)."""
    kind = ERR_NO_KINDS.get(ErrorCode(err_no) if err_no in ErrorCode._value2member_map_ else ErrorCode.UNKNOW,
                            ErrorKind.INTERNAL)
    error = ServingError(kind, message, err_no)
    error.counted = True
    return error
