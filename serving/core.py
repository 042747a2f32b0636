"""The one object every front door calls: protocol messages → pipeline.Request → the named model's Pipeline →
pipeline.Response → protocol messages, with per-protocol metrics (counted here, once, for every door). gRPC and bRPC carry the same
protobuf Request/Response; REST carries their JSON mapping."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

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
    """Prefixes the pipeline's per-request log lines with `model=NAME` (`model=NAME version=N` for a versioned
    model): the model a request was routed to (set by ServingCore for the request's task and the tasks it
    starts)."""

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


VERSION_KEY = "model_version"  # the response key naming the version that answered (versioned model_config only)


class ServedVersion:
    """One version of a model in service: its number, its Pipeline and the requests routed to it and not yet
    answered (counted so that a version switched away from is stopped only once they are done)."""

    def __init__(self, number: int, pipeline: Pipeline):
        self.number = number
        self.pipeline = pipeline
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Return once no request routed to this version is in flight."""
        await self._idle.wait()


class ServedModel:
    """One served model: its name, op and the versions in service. `versions` is the one reference a request
    reads at routing (replaced whole, never changed in place), so the repository switches versions atomically
    without touching the doors. `versioned`: its model_config holds numbered version folders (its answers say
    which version answered); otherwise it is version 1 and its answers are as Paddle Serving's."""

    def __init__(self, name: str, op: OpConfig, pipeline: Pipeline | None = None, version: int = 1,
                 versioned: bool = False):
        self.name = name
        self.op = op
        self.versioned = versioned
        self.versions: dict[int, ServedVersion] = {version: ServedVersion(version, pipeline)} if pipeline else {}
        self.draining: dict[int, ServedVersion] = {}  # switched away from, in-flight requests finishing
        self.unloaded = False

    @property
    def pipeline(self) -> Pipeline:
        """The newest served version's pipeline."""
        return self.versions[max(self.versions)].pipeline

    @property
    def ready(self) -> bool:
        return not self.unloaded and bool(self.versions) and all(v.pipeline.ready for v in self.versions.values())

    def route(self, version: int | None = None) -> ServedVersion:
        """The version a request runs on: `version`, or the newest served one; PipelineError NO_SERVICE saying
        what is served otherwise. A version switched away from is not routed to (its requests already in flight
        finish)."""
        versions = self.versions
        if self.unloaded or not versions:
            raise PipelineError(ErrorCode.NO_SERVICE, f"model {self.name!r} is unloaded; load it with POST "
                                f"/v2/repository/models/{self.name}/load")
        if version is None:
            return versions[max(versions)]
        found = versions.get(version)
        if found is None:
            raise PipelineError(ErrorCode.NO_SERVICE, f"model {self.name!r} has no version {version} in service; "
                                f"it serves {', '.join(str(v) for v in sorted(versions))}")
        return found


class ServingCore:
    """The served models plus metrics; routing a request to its model by name (and version) happens here, for
    every door. `repository` (set by Server.start) starts, switches and stops the models' versions."""

    repository: ModelRepository

    def __init__(self, models: list[ServedModel], metrics: Metrics):
        self.models = {model.name: model for model in models}
        self.metrics = metrics

    @property
    def ready(self) -> bool:
        """True when every configured model that is not unloaded is ready."""
        return all(model.ready for model in self.models.values() if not model.unloaded)

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
        """The answer of the newest served version of the request's model (Paddle Serving's doors)."""
        return (await self.infer_version(request))[0]

    async def infer_version(self, request: Request, version: int | None = None,
                            fallback: bool = False) -> tuple[Response, int]:
        """Route the request (once: the version is read here, before any await) and run it; (answer, the
        version that answered, 0 when none did). `version` pins it; with `fallback`, a pinned version
        already out of service gives way to the newest one (it was picked, not named, by the client)."""
        started = time.perf_counter()
        try:
            model = self.model(request.name)
            try:
                served = model.route(version)
            except PipelineError:
                if not fallback:
                    raise
                served = model.route()
        except PipelineError as exc:
            log.info("logid=%d protocol=%s err_no=%d %s", request.logid, request.protocol, exc.code, exc.message)
            self.reject(request.protocol, int(exc.code), request.name if request.name in self.models else "")
            return Response.from_error(exc), 0
        served.enter()
        token = _MODEL.set(f"{model.name} version={served.number}" if model.versioned else model.name)
        try:
            response = await served.pipeline.infer(request)
        finally:
            _MODEL.reset(token)
            served.leave()
        if model.versioned and response.err_no == 0:
            response.keys.append(VERSION_KEY)
            response.values.append(str(served.number))
        self.metrics.request_done(request.protocol, response.err_no, time.perf_counter() - started, model.name)
        return response, served.number

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
