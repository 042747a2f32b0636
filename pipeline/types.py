"""Transport-agnostic request and response: every protocol adapter converts to and from these."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from resnest_serving.pipeline.errors import PipelineError


@dataclass
class Request:
    """One pipeline call: parallel key/value lists (PaddleClas: every value is one base64 image)."""

    keys: list[str]
    values: list[str]
    logid: int = 0
    name: str = ""  # service name from the URL or the gRPC message; "" skips the name check
    method: str = ""
    clientip: str = ""
    protocol: str = ""  # "grpc" | "http" | "brpc" | "v2-http" | "v2-grpc" | "inproc": for logs and metrics only
    # Instead of base64 `values` (Open Inference Protocol): the encoded image files, one per key, or a
    # preprocessed float32 [N, 3, H, W] batch, one row per key.
    images: list[bytes] | None = None
    tensor: np.ndarray | None = None


@dataclass
class Response:
    """Pipeline answer in Paddle Serving's shape: err_no/err_msg plus parallel key/value string lists."""

    err_no: int = 0
    err_msg: str = ""
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    probs: np.ndarray | None = None  # the model's output rows [N, classes], in request order (when err_no 0)

    @classmethod
    def from_error(cls, error: PipelineError) -> Response:
        return cls(err_no=int(error.code), err_msg=error.message)
