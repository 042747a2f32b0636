"""bRPC front door: `baidu.paddle_serving.pipeline_serving.PipelineService.inference` over baidu_std,
answering exactly as the gRPC front door does (same protobuf messages)."""

from __future__ import annotations

from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.baidu_std import parse_message
from resnest_serving.protocol.wire import PIPELINE_SERVICE
from resnest_serving.serving.core import ServingCore
from resnest_serving.serving.doors.brpc_server import BrpcServer
from resnest_serving.serving.doors.brpc_services import RequestContext


def register_pipeline(server: BrpcServer, core: ServingCore) -> None:
    async def inference(payload: bytes, ctx: RequestContext) -> bytes:
        message = parse_message(payload, pb.Request)
        if not message.logid and ctx.log_id:
            message.logid = ctx.log_id
        return (await core.infer_proto(message, "brpc")).SerializeToString()

    server.register(PIPELINE_SERVICE, "inference", inference)
