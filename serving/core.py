"""The one object every front door calls: protocol messages → pipeline.Request → Pipeline →
pipeline.Response → protocol messages, with per-protocol metrics (counted here, once, for every door). gRPC and bRPC carry the same
protobuf Request/Response; REST carries their JSON mapping."""

from __future__ import annotations

import logging
import time

from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.pipeline import Pipeline
from resnest_serving.pipeline.types import Request, Response
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.wire import ElemType
from resnest_serving.serving.metrics import Metrics

log = logging.getLogger(__name__)



def request_from_proto(message: pb.Request, protocol: str) -> Request:
    """Keys/values as sent; string tensors become key/value pairs (as Paddle Serving unpacks them)."""
    keys, values = list(message.key), list(message.value)
    for tensor in message.tensors:
        if tensor.elem_type == ElemType.STRING:  # str_data joined is the value
            keys.append(tensor.name)
            values.append("".join(tensor.str_data))
        elif tensor.elem_type == ElemType.BYTES:  # np.save bytes: a pickle, never loaded here
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"tensor {tensor.name!r}: byte_data tensors "
                                "(elem_type 13) are numpy pickles, which this server never loads; send each "
                                "image as a base64 string value")
        else:
            raise PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"tensor {tensor.name!r}: elem_type "
                                f"{tensor.elem_type} tensors are not accepted; this image classifier takes "
                                "base64-encoded images as key/value strings")
    return Request(keys, values, logid=message.logid, name=message.name, method=message.method,
                   clientip=message.clientip, protocol=protocol)


def response_to_proto(response: Response) -> pb.Response:
    return pb.Response(err_no=response.err_no, err_msg=response.err_msg, key=response.keys,
                       value=response.values)


class ServingCore:
    """Pipeline plus metrics; the front doors stay thin."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics):
        self.pipeline = pipeline
        self.metrics = metrics

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        response = await self.pipeline.infer(request)
        self.metrics.request_done(request.protocol, response.err_no, time.perf_counter() - started)
        return response

    async def infer_proto(self, message: pb.Request, protocol: str) -> pb.Response:
        try:
            request = request_from_proto(message, protocol)
        except PipelineError as exc:
            log.info("logid=%d protocol=%s err_no=%d %s", message.logid, protocol, exc.code, exc.message)
            self.reject(protocol, int(exc.code))
            return response_to_proto(Response.from_error(exc))
        return response_to_proto(await self.infer(request))

    def reject(self, protocol: str, err_no: int) -> None:
        """Count a request answered with `err_no` before it reached the pipeline (no latency). With `infer`,
        the one place where requests are counted, whatever door they came through."""
        self.metrics.request_done(protocol, err_no, 0.0)

    def refused(self, protocol: str, status: int) -> None:
        """Count a request refused before authentication (in resnest_refused_requests, never as an err_no)."""
        self.metrics.refused(protocol, status)
