"""``connect(protocol, endpoint)``: the one way to get a client for any front door."""

from __future__ import annotations

from resnest_serving.client.base import DEFAULT_TIMEOUT, AsyncClassifier, Classifier
from resnest_serving.client.codec import DEFAULT_METHOD
from resnest_serving.client.credentials import Credentials

__all__ = ["PROTOCOLS", "connect", "connect_async"]

PROTOCOLS = ("grpc", "http", "brpc", "v2-http", "v2-grpc")
V2_PROTOCOLS = ("v2-http", "v2-grpc")


def connect(protocol: str, endpoint: str, *, service_name: str = "imagenet", model_version: str = "",
            method: str = DEFAULT_METHOD, timeout: float = DEFAULT_TIMEOUT,
            credentials: Credentials | None = None) -> Classifier:
    """A blocking client for ``protocol`` ("grpc", "http", "brpc", or the Open Inference Protocol's
    "v2-http" / "v2-grpc") at ``endpoint`` ("host:port").

    ``service_name`` is the model's name: the op name in the server's config (``imagenet`` for PaddleClas's
    config; a wrong one gets err_no 3002, or 404 over V2); ``model_version`` asks the Open Inference Protocol
    for one version ("" = the server's choice; Paddle Serving's protocols carry no version); ``timeout`` is the
    default per-call limit in seconds; ``credentials``: TLS and token for a server with ``tls:``/``auth:`` on.
    """
    cls = _classes(protocol, model_version)[0]
    return cls(endpoint, service_name=service_name, method=method, timeout=timeout, credentials=credentials,
               **_version(protocol, model_version))


def connect_async(protocol: str, endpoint: str, *, service_name: str = "imagenet", model_version: str = "",
                  method: str = DEFAULT_METHOD, timeout: float = DEFAULT_TIMEOUT,
                  credentials: Credentials | None = None) -> AsyncClassifier:
    """The asyncio twin of ``connect`` (nothing is opened until the first call)."""
    cls = _classes(protocol, model_version)[1]
    return cls(endpoint, service_name=service_name, method=method, timeout=timeout, credentials=credentials,
               **_version(protocol, model_version))


def add_model_arguments(parser) -> None:
    """`--model NAME` (Paddle Serving's word, `--service-name`, is the same option) and `--model-version V`."""
    parser.add_argument("--model", "--service-name", dest="service_name", default="imagenet", metavar="NAME",
                        help="the model to call: an op name of the server's config (default imagenet, "
                             "PaddleClas's; --service-name is Paddle Serving's word for it)")
    parser.add_argument("--model-version", default="", metavar="V",
                        help="one version of the model (Open Inference Protocol only: --protocol v2-http or "
                             "v2-grpc; default: the server's choice)")


def _version(protocol: str, model_version: str) -> dict[str, str]:
    return {"model_version": model_version} if protocol.lower() in V2_PROTOCOLS else {}


def _classes(protocol: str, model_version: str = "") -> tuple[type[Classifier], type[AsyncClassifier]]:
    name = protocol.lower()
    if model_version and name not in V2_PROTOCOLS:
        raise ValueError(f"a model version ({model_version!r}) can be asked for over the Open Inference Protocol "
                         f"only (v2-http, v2-grpc); Paddle Serving's {protocol} requests carry no version")
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
