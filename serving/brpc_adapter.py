"""bRPC front door: `baidu.paddle_serving.pipeline_serving.PipelineService.inference` over baidu_std,
answering exactly as the gRPC front door does (same protobuf messages)."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from protocol import pipeline_service_pb2 as pb
from protocol.baidu_std import BrpcError, Errno
from serving.brpc_server import BrpcServer, RequestContext
from serving.core import ServingCore

PIPELINE_SERVICE = "baidu.paddle_serving.pipeline_serving.PipelineService"


def register_pipeline(server: BrpcServer, core: ServingCore) -> None:
    async def inference(payload: bytes, ctx: RequestContext) -> bytes:
        message = pb.Request()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise BrpcError(Errno.EREQUEST, f"Fail to parse request as {pb.Request.DESCRIPTOR.full_name}: "
                            f"{exc}") from None
        if not message.logid and ctx.log_id:
            message.logid = ctx.log_id
        return (await core.infer_proto(message, "brpc")).SerializeToString()

    server.register(PIPELINE_SERVICE, "inference", inference)
