"""Client exceptions: the server said no (``ServingError``), the call did not get through
(``TransportError``), or the answer makes no sense (``BadResponseError``)."""

from __future__ import annotations

import socket
import ssl

from resnest_serving.protocol.wire import ErrorCode

__all__ = ["TLS_HINT", "BadResponseError", "ClientError", "ServingError", "TransportError", "speaks_tls"]

TLS_HINT = "the server speaks TLS: give --tls-ca (Python: Credentials(tls_ca=...))"
CONNECTION_CODES = frozenset({"UNAVAILABLE", "connection", "EFAILEDSOCKET", "EEOF"})
"""TransportError codes of a call that died with its connection (what a TLS port does to plain text)."""


class ClientError(Exception):
    """Base class of every error raised by ``client``; ``kind`` is a short label for error tallies."""

    kind: str = "error"


class ServingError(ClientError):
    """The server answered with ``err_no != 0`` (Paddle Serving application error)."""

    def __init__(self, err_no: int, err_msg: str) -> None:
        self.err_no = int(err_no)
        self.err_msg = err_msg
        name = ErrorCode(self.err_no).name if self.err_no in ErrorCode._value2member_map_ else "error"
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

    def with_tls_hint(self) -> TransportError:
        """The same error, its message ending with TLS_HINT."""
        return TransportError(f"{self}: {TLS_HINT}", protocol=self.protocol, code=self.code, timeout=self.timeout)

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.timeout:
            return "timeout"
        return f"{self.protocol} {self.code}" if self.code is not None else f"{self.protocol} error"


class BadResponseError(ClientError):
    """A response that cannot be parsed or does not match the request (wrong count, wrong types)."""

    kind = "bad_response"


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers a TLS handshake (the certificate is not checked: this only tells a
    plain-text client why its call was dropped)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock):
                return True
    except ssl.SSLError as exc:  # a TLS alert (e.g. a client certificate is required) is TLS too
        return "ALERT" in str(exc.reason or "").upper()
    except (OSError, ValueError):
        return False
