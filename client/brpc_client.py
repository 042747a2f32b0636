"""bRPC adapter: ``PipelineService.inference`` over brpc ``baidu_std`` (protocol.brpc_client), sync and
asyncio. Several calls share one multiplexed connection."""

from __future__ import annotations

from typing import Any

from resnest_serving.client.base import AsyncClassifier, Classifier
from resnest_serving.client.errors import TransportError
from resnest_serving.protocol.baidu_std import BrpcError, Errno
from resnest_serving.protocol.brpc_client import BrpcClient, SyncBrpcClient
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response
from resnest_serving.protocol.wire import PIPELINE_SERVICE

__all__ = ["PIPELINE_SERVICE", "AsyncBrpcClassifier", "BrpcClassifier"]

_METHOD = "inference"


def _transport_error(exc: BrpcError, endpoint: str) -> TransportError:
    try:
        code: int | str = Errno(exc.code).name
    except ValueError:
        code = exc.code
    return TransportError(f"bRPC call to {endpoint} failed: {exc}", protocol="brpc", code=code,
                          timeout=exc.code == Errno.ERPCTIMEDOUT)


class BrpcClassifier(Classifier):
    """Blocking bRPC client (its event loop runs in a background thread)."""

    protocol = "brpc"

    def __init__(self, endpoint: str, *, connections: int = 1, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self._client = SyncBrpcClient(self.host, self.port, timeout=self.timeout, pool_size=connections,
                                      ssl=self.credentials.ssl_context(), auth_data=self.credentials.brpc_auth())

    def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        try:
            return self._client.call_message(PIPELINE_SERVICE, _METHOD, request, Response,
                                             timeout=self._timeout(timeout), log_id=request.logid)
        except BrpcError as exc:
            raise self.explained(_transport_error(exc, self.endpoint)) from None

    def close(self) -> None:
        self._client.close()


class AsyncBrpcClassifier(AsyncClassifier):
    """asyncio bRPC client."""

    protocol = "brpc"

    def __init__(self, endpoint: str, *, connections: int = 1, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self._client = BrpcClient(self.host, self.port, timeout=self.timeout, pool_size=connections,
                                  ssl=self.credentials.ssl_context(), auth_data=self.credentials.brpc_auth())

    async def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        try:
            return await self._client.call_message(PIPELINE_SERVICE, _METHOD, request, Response,
                                                   timeout=self._timeout(timeout), log_id=request.logid)
        except BrpcError as exc:
            raise await self.explained_async(_transport_error(exc, self.endpoint)) from None

    async def close(self) -> None:
        await self._client.close()
