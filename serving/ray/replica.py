"""One Ray Serve replica (`PipelineReplica`): the project's pipeline, batcher and engines behind Ray's gRPC proxy
(`inference`, the decoded PipelineService Request) and HTTP proxy (`__call__`, answered by the REST door's
`RestAdapter.answer` after the same checks as `serving.doors.http_guard`)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from resnest_serving.serving.config.loader import ServerConfig

log = logging.getLogger(__name__)


class PipelineReplica:
    """One Ray Serve replica: a full pipeline (engines, batcher) serving the gRPC and HTTP proxies."""

    async def __init__(self, config: ServerConfig):
        from resnest_serving.serving.core import ServingCore
        from resnest_serving.serving.doors.connections import ConnectionLimits, DoorSettings
        from resnest_serving.serving.doors.rest_door import RestAdapter
        from resnest_serving.serving.doors.security import TokenSet
        from resnest_serving.serving.logs import setup_logging
        from resnest_serving.serving.metrics import Metrics
        from resnest_serving.serving.ray.app import RAY
        from resnest_serving.serving.server import start_model

        setup_logging(config.log_level)
        started = time.perf_counter()
        self.config = config
        self.metrics = Metrics()
        model = await start_model(config, config.only_op(RAY), config.service_name, self.metrics)
        self.pipeline = model.pipeline
        self.core = ServingCore([model], self.metrics)
        self.tokens = TokenSet.load(config.auth)
        self.rest = RestAdapter(self.core, DoorSettings(config.max_request_bytes, ConnectionLimits.from_config(config),
                                                        tokens=self.tokens))
        log.info("ray replica pid %d: service %r ready (%s) in %.2f s", os.getpid(), config.service_name,
                 self.engine_name(), time.perf_counter() - started)

    def engine_name(self) -> str:
        report = getattr(self.pipeline.batcher.engines[0], "report", None)
        return f"{report.kind} {report.precision}" if report else "remote"

    async def describe(self) -> dict[str, Any]:
        """Which process answered and what it runs (for the ready file, scripts and tests)."""
        return {"pid": os.getpid(), "engine": self.engine_name(), "service": self.config.service_name}

    async def inference(self, request, grpc_context=None):
        """gRPC PipelineService/inference, called by Ray Serve's gRPC proxy with the decoded Request (and,
        because of the parameter's name, the call's context: its metadata carries the token). A request over
        `max_request_bytes` gets RESOURCE_EXHAUSTED with grpcio's own wording, as from `resnest serve`."""
        size, limit = request.ByteSize(), self.config.max_request_bytes
        if size > limit:
            import grpc

            from resnest_serving.pipeline.errors import ErrorCode
            from resnest_serving.protocol import pipeline_service_pb2 as pb

            self.core.reject("grpc", int(ErrorCode.INPUT_PARAMS_ERROR))
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                grpc_context.set_details(f"SERVER: Received message larger than max ({size} vs. {limit}) "
                                         "(max_request_bytes)")
            return pb.Response()
        if self.tokens.enabled:
            metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
            if not self.tokens.accepts(metadata.get("authorization")):
                import grpc

                from resnest_serving.protocol import pipeline_service_pb2 as pb

                grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                grpc_context.set_details("missing or invalid bearer token: send metadata 'authorization: Bearer "
                                         "<token>'")
                return pb.Response()
        return await self.core.infer_proto(request, "grpc")

    async def __call__(self, request):
        """HTTP, called by Ray Serve's HTTP proxy with a Starlette request: answered by the same
        RestAdapter.answer as `resnest serve`'s aiohttp server, after the same token check."""
        from resnest_serving.serving.doors.http_guard import (
            ascii_int,
            check_headers,
            decoded_body,
            read_bounded,
        )
        from resnest_serving.serving.doors.rest_door import rest_takes_body
        from resnest_serving.serving.doors.statuses import gateway_error
        from resnest_serving.serving.errors import ServingError

        # the same steps as serving.doors.http_guard: open paths, token, method, size, then the body is read
        path, method, headers = request.url.path, request.method, request.headers
        has_body = headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers
        verdict = check_headers(method, path, headers, has_body, ascii_int(headers.get("content-length", "")),
                                self.rest.door, rest_takes_body, request.client.host if request.client else "")
        if verdict is not None:
            step, refusal = verdict
            if step == "body":
                self.core.reject("http", refusal.err_no)
            return _starlette(gateway_error(refusal) if isinstance(refusal, ServingError) else refusal)
        if not (has_body and rest_takes_body(method, path)):
            return _starlette(await self.rest.answer(path, method, b""))
        limit = self.config.max_request_bytes
        try:
            body = await decoded_body(await read_bounded(request.stream(), limit),
                                      headers.get("content-encoding", ""), limit)
        except ServingError as exc:
            self.core.reject("http", exc.err_no)
            return _starlette(gateway_error(exc))
        return _starlette(await self.rest.answer(request.url.path, request.method, body))

    async def check_health(self) -> None:
        """Ray's periodic health check: a replica whose pipeline stopped is replaced."""
        if not self.pipeline.ready:
            raise RuntimeError("pipeline not ready")

    async def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            await pipeline.stop()


def _starlette(response):
    """An aiohttp web.Response built by serving.doors.rest_door → the same status, body and content type."""
    from starlette.responses import Response

    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    headers.setdefault("Content-Type", response.content_type)
    return Response(response.body, status_code=response.status, headers=headers)
