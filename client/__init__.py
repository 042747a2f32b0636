"""Python clients for resnest-serving (and any Paddle Serving 0.9 pipeline server), over gRPC, REST and
bRPC, sync and asyncio, plus a drop-in ``PipelineClient`` and the load-test engine behind ``resnest bench``.

    from resnest_serving.client import connect
    with connect("grpc", "127.0.0.1:9993") as c:          # or "http" / "brpc"
        for r in c.classify(["daisy.jpg", "cat.png"]):    # paths, bytes or uint8 arrays
            print(r.label, r.prob, r.labels, r.scores)

    from resnest_serving.client import PipelineClient                     # Paddle Serving scripts: change only the import
"""

from __future__ import annotations

from resnest_serving.client.base import AsyncClassifier, Classifier
from resnest_serving.client.codec import Classification, parse_classifications, safe_literal
from resnest_serving.client.credentials import Credentials
from resnest_serving.client.errors import (
    TLS_HINT,
    BadResponseError,
    ClientError,
    ServingError,
    TransportError,
)
from resnest_serving.client.factory import PROTOCOLS, connect, connect_async
from resnest_serving.client.pipeline_client import PipelineClient, PipelinePredictFuture

__all__ = [
    "PROTOCOLS",
    "TLS_HINT",
    "AsyncClassifier",
    "BadResponseError",
    "Classification",
    "Classifier",
    "ClientError",
    "Credentials",
    "PipelineClient",
    "PipelinePredictFuture",
    "ServingError",
    "TransportError",
    "connect",
    "connect_async",
    "parse_classifications",
    "safe_literal",
]
