"""Client exceptions: the server said no (``ServingError``), the call did not get through
(``TransportError``), or the answer makes no sense (``BadResponseError``)."""

from __future__ import annotations

__all__ = ["BadResponseError", "ClientError", "ServingError", "TransportError"]

_ERR_NAMES = {
    50: "PRODUCT_ERROR", 3000: "NOT_IMPLEMENTED", 3001: "CLOSED_ERROR", 3002: "NO_SERVICE",
    3003: "INIT_ERROR", 4000: "CONF_ERROR", 5000: "INPUT_PARAMS_ERROR", 6000: "TIMEOUT",
    7000: "TYPE_ERROR", 8000: "RPC_PACKAGE_ERROR", 9000: "CLIENT_ERROR", 10000: "UNKNOW",
}
"""Paddle Serving 0.9 err_no names (python/pipeline/error_catch.py), for messages only."""


class ClientError(Exception):
    """Base class of every error raised by ``client``; ``kind`` is a short label for error tallies."""

    kind: str = "error"


class ServingError(ClientError):
    """The server answered with ``err_no != 0`` (Paddle Serving application error)."""

    def __init__(self, err_no: int, err_msg: str) -> None:
        self.err_no = int(err_no)
        self.err_msg = err_msg
        name = _ERR_NAMES.get(self.err_no, "error")
        super().__init__(f"[err_no {self.err_no} {name}] {err_msg}")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"err_no {self.err_no}"


class TransportError(ClientError):
    """The call failed below the application: connection refused, timeout, HTTP status, gRPC status,
    brpc errno. ``code`` is the underlying code (HTTP status int, ``grpc.StatusCode`` name, brpc errno
    int, or None), ``protocol`` is "grpc", "http" or "brpc", ``timeout`` is True for deadline errors."""

    def __init__(self, message: str, *, protocol: str, code: int | str | None = None,
                 timeout: bool = False) -> None:
        super().__init__(message)
        self.protocol = protocol
        self.code = code
        self.timeout = timeout

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.timeout:
            return "timeout"
        return f"{self.protocol} {self.code}" if self.code is not None else f"{self.protocol} error"


class BadResponseError(ClientError):
    """A response that cannot be parsed or does not match the request (wrong count, wrong types)."""

    kind = "bad_response"
