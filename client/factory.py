"""``connect(protocol, endpoint)``: the one way to get a client for any front door."""

from __future__ import annotations

from resnest_serving.client.base import DEFAULT_TIMEOUT, AsyncClassifier, Classifier
from resnest_serving.client.codec import DEFAULT_METHOD
from resnest_serving.client.credentials import Credentials

__all__ = ["PROTOCOLS", "connect", "connect_async"]

PROTOCOLS = ("grpc", "http", "brpc", "v2-http", "v2-grpc")


def connect(protocol: str, endpoint: str, *, service_name: str = "imagenet", method: str = DEFAULT_METHOD,
            timeout: float = DEFAULT_TIMEOUT, credentials: Credentials | None = None) -> Classifier:
    """A blocking client for ``protocol`` ("grpc", "http", "brpc", or the Open Inference Protocol's
    "v2-http" / "v2-grpc") at ``endpoint`` ("host:port").

    ``service_name`` is the pipeline's name (``imagenet`` for PaddleClas's config; a wrong one gets
    err_no 3002); ``timeout`` is the default per-call limit in seconds; ``credentials``: TLS and token for
    a server with ``tls:``/``auth:`` on.
    """
    cls = _classes(protocol)[0]
    return cls(endpoint, service_name=service_name, method=method, timeout=timeout, credentials=credentials)


def connect_async(protocol: str, endpoint: str, *, service_name: str = "imagenet",
                  method: str = DEFAULT_METHOD, timeout: float = DEFAULT_TIMEOUT,
                  credentials: Credentials | None = None) -> AsyncClassifier:
    """The asyncio twin of ``connect`` (nothing is opened until the first call)."""
    cls = _classes(protocol)[1]
    return cls(endpoint, service_name=service_name, method=method, timeout=timeout, credentials=credentials)


def _classes(protocol: str) -> tuple[type[Classifier], type[AsyncClassifier]]:
    name = protocol.lower()
    if name == "grpc":
        from resnest_serving.client.grpc_client import AsyncGrpcClassifier, GrpcClassifier

        return GrpcClassifier, AsyncGrpcClassifier
    if name in ("http", "rest"):
        from resnest_serving.client.http_client import AsyncHttpClassifier, HttpClassifier

        return HttpClassifier, AsyncHttpClassifier
    if name in ("v2-http", "v2-grpc"):
        from resnest_serving.client import v2_client

        return v2_client.CLASSES[name]
    if name == "brpc":
        from resnest_serving.client.brpc_client import AsyncBrpcClassifier, BrpcClassifier

        return BrpcClassifier, AsyncBrpcClassifier
    raise ValueError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
