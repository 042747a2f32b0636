"""The one object every front door calls: protocol messages → pipeline.Request → the named model's Pipeline →
pipeline.Response → protocol messages, with per-protocol metrics (counted here, once, for every door). gRPC and bRPC carry the same
protobuf Request/Response; REST carries their JSON mapping."""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass

from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.pipeline import Pipeline
from resnest_serving.pipeline.types import Request, Response
from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.wire import ElemType
from resnest_serving.serving.config.schema import OpConfig
from resnest_serving.serving.metrics import Metrics
from resnest_serving.serving.repository.manager import ModelRepository

log = logging.getLogger(__name__)

_MODEL: contextvars.ContextVar[str] = contextvars.ContextVar("served_model", default="")


class _ModelInLogLines(logging.Filter):
    """Prefixes the pipeline's per-request log lines with `model=NAME`: the model a request was routed to
    (set by ServingCore.infer for the request's task and the tasks it starts)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = _MODEL.get()
        if name and isinstance(record.msg, str):
            record.msg = f"model={name} {record.msg}"  # names are [A-Za-z0-9_.-]: no % to escape
        return True


logging.getLogger(Pipeline.__module__).addFilter(_ModelInLogLines())



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


@dataclass
class ServedModel:
    """One served model: its name, op and current Pipeline. The pipeline is the one reference a request reads,
    so a later version reload can swap it here without touching the doors."""

    name: str
    op: OpConfig
    pipeline: Pipeline

    @property
    def ready(self) -> bool:
        return self.pipeline.ready


class ServingCore:
    """The served models plus metrics; routing a request to its model by name happens here, for every door.
    `repository` (set by Server.start) starts, switches and stops the models' versions."""

    repository: ModelRepository

    def __init__(self, models: list[ServedModel], metrics: Metrics):
        self.models = {model.name: model for model in models}
        self.metrics = metrics

    @property
    def ready(self) -> bool:
        """True when every configured model is ready."""
        return all(model.ready for model in self.models.values())

    def model(self, name: str) -> ServedModel:
        """The model called `name` (an empty name: the only model, when one is served); PipelineError
        NO_SERVICE (3002) naming the served models otherwise."""
        found = self.models.get(name) if name else next(iter(self.models.values())) if len(self.models) == 1 else None
        if found is not None:
            return found
        served = ", ".join(repr(n) for n in self.models)
        if not name:
            raise PipelineError(ErrorCode.NO_SERVICE, f"no service name in the request; this server serves "
                                f"several models ({served}): name one (request.name, or /{{name}}/prediction)")
        raise PipelineError(ErrorCode.NO_SERVICE, f"Failed to inference: Service name error. (got {name[:200]!r}; "
                            f"this server serves {served})")

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            model = self.model(request.name)
        except PipelineError as exc:
            log.info("logid=%d protocol=%s err_no=%d %s", request.logid, request.protocol, exc.code, exc.message)
            self.reject(request.protocol, int(exc.code))
            return Response.from_error(exc)
        token = _MODEL.set(model.name)
        try:
            response = await model.pipeline.infer(request)
        finally:
            _MODEL.reset(token)
        self.metrics.request_done(request.protocol, response.err_no, time.perf_counter() - started, model.name)
        return response

    async def infer_proto(self, message: pb.Request, protocol: str) -> pb.Response:
        try:
            request = request_from_proto(message, protocol)
        except PipelineError as exc:
            log.info("logid=%d protocol=%s err_no=%d %s", message.logid, protocol, exc.code, exc.message)
            self.reject(protocol, int(exc.code), message.name if message.name in self.models else "")
            return response_to_proto(Response.from_error(exc))
        return response_to_proto(await self.infer(request))

    def reject(self, protocol: str, err_no: int, model: str = "") -> None:
        """Count a request answered with `err_no` before it reached a pipeline (no latency). With `infer`,
        the one place where requests are counted, whatever door they came through."""
        self.metrics.request_done(protocol, err_no, 0.0, model)

    def refused(self, protocol: str, status: int) -> None:
        """Count a request refused before authentication (in resnest_refused_requests, never as an err_no)."""
        self.metrics.refused(protocol, status)
