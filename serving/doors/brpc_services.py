"""The bRPC server's dispatch table: handlers by (service, method), found by the full service name or the
short one (after the last dot), as brpc does; and what a handler is given besides its payload."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from resnest_serving.protocol.baidu_std import BrpcError, CompressType, Errno, compress, short_service_name


@dataclass(frozen=True)
class RequestContext:
    """What a handler may want to know about the call besides its payload."""

    service: str  # the service name as the client sent it
    method: str
    log_id: int
    correlation_id: int
    peer: str
    compress_type: int  # the request payload's compression (already undone)
    attachment: bytes = b""


Handler = Callable[[bytes, RequestContext], Awaitable[bytes]]


@dataclass(frozen=True)
class Method:
    handler: Handler
    response_compress_type: int
    timeout_s: float | None


class ServiceTable:
    """Registered handlers by service and method."""

    def __init__(self) -> None:
        self._services: dict[str, dict[str, Method]] = {}
        self._short: dict[str, set[str]] = {}

    def register(
        self,
        service: str,
        method: str,
        handler: Handler,
        *,
        response_compress_type: int = CompressType.NONE,
        timeout_s: float | None = None,
    ) -> None:
        """Serve ``service.method`` (full service name, e.g.
        ``baidu.paddle_serving.predictor.general_model.GeneralModelService``) with ``handler``.

        Clients may call it by the full name or by the short one (after the last dot).
        ``response_compress_type`` compresses successful responses (2 = gzip, as C++ Serving does);
        ``timeout_s`` overrides the server's per-call timeout for this method.
        """
        compress(b"", response_compress_type)  # refuse snappy/lz4 now, not at the first call
        methods = self._services.setdefault(service, {})
        if method in methods:
            raise ValueError(f"{service}.{method} is already registered")
        methods[method] = Method(handler, int(response_compress_type), timeout_s)
        self._short.setdefault(short_service_name(service), set()).add(service)

    def lookup(self, service: str, method: str) -> Method:
        methods = self._services.get(service)
        if methods is None and "." not in service:
            full = self._short.get(service, set())
            if len(full) == 1:
                methods = self._services[next(iter(full))]
        if methods is None:
            raise BrpcError(Errno.ENOSERVICE, f"Fail to find service={service}")
        entry = methods.get(method)
        if entry is None:
            raise BrpcError(Errno.ENOMETHOD, f"Fail to find method={service}/{method}")
        return entry
