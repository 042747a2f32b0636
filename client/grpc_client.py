"""gRPC adapter: ``PipelineService/inference``, sync and asyncio, over a plain channel or TLS (with the
client's ``Credentials``)."""

from __future__ import annotations

from typing import Any

import grpc

from resnest_serving.client.base import AsyncClassifier, Classifier
from resnest_serving.client.errors import TransportError
from resnest_serving.protocol.endpoints import join_host_port
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response
from resnest_serving.protocol.pipeline_service_pb2_grpc import PipelineServiceStub

__all__ = ["CHANNEL_OPTIONS", "AsyncGrpcClassifier", "GrpcClassifier", "grpc_target"]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
]
"""Paddle Serving's PipelineClient message limits (512 MiB each way)."""

_CLASSIFIER_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.enable_http_proxy", 0)]
"""Ours also ignore http_proxy/https_proxy: a proxy in the environment is the cause of PaddleClas's
"no result comes back" FAQ, and a model server is never reached through an HTTP CONNECT proxy."""


grpc_target = join_host_port


def _transport_error(exc: grpc.RpcError, target: str) -> TransportError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    name = code.name if code is not None else None
    return TransportError(f"gRPC {name} from {target}: {details}", protocol="grpc", code=name,
                          timeout=code == grpc.StatusCode.DEADLINE_EXCEEDED)


class GrpcClassifier(Classifier):
    """Blocking gRPC client."""

    protocol = "grpc"

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.target = grpc_target(self.host, self.port)
        self._channel = self.credentials.grpc_channel(self.target, _CLASSIFIER_OPTIONS)
        self._stub = PipelineServiceStub(self._channel)

    def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        try:
            return self._stub.inference(request, timeout=self._timeout(timeout),
                                        metadata=self.credentials.grpc_metadata())
        except grpc.RpcError as exc:
            raise self.explained(_transport_error(exc, self.target)) from None

    def close(self) -> None:
        self._channel.close()


class AsyncGrpcClassifier(AsyncClassifier):
    """asyncio gRPC client (``grpc.aio``); the channel opens on first use, in the running loop."""

    protocol = "grpc"

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.target = grpc_target(self.host, self.port)
        self._channel: grpc.aio.Channel | None = None
        self._stub: PipelineServiceStub | None = None

    async def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        if self._stub is None:
            self._channel = self.credentials.grpc_channel(self.target, _CLASSIFIER_OPTIONS, aio=True)
            self._stub = PipelineServiceStub(self._channel)
        try:
            return await self._stub.inference(request, timeout=self._timeout(timeout),
                                              metadata=self.credentials.grpc_metadata())
        except grpc.RpcError as exc:
            raise await self.explained_async(_transport_error(exc, self.target)) from None

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()
