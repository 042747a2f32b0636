"""gRPC front door: baidu.paddle_serving.pipeline_serving.PipelineService/inference (grpc.aio)."""

from __future__ import annotations

import grpc

from protocol import pipeline_service_pb2 as pb
from protocol import pipeline_service_pb2_grpc as pb_grpc
from serving import v2_grpc
from serving.core import ServingCore


class PipelineServicer(pb_grpc.PipelineServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    async def inference(self, request: pb.Request, context: grpc.aio.ServicerContext) -> pb.Response:
        return await self.core.infer_proto(request, "grpc")


async def start_grpc(core: ServingCore, host: str, port: int, max_message_bytes: int,
                     reuse_port: bool = False) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server; returns it and the bound port (port 0 = ephemeral)."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes),
               ("grpc.so_reuseport", 1 if reuse_port else 0)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_PipelineServiceServicer_to_server(PipelineServicer(core), server)
    v2_grpc.add_to_server(core, server)  # Open Inference Protocol (KServe V2) beside it
    bound = server.add_insecure_port(f"{_grpc_host(host)}:{port}")
    if bound == 0:
        raise OSError(f"gRPC could not bind {host}:{port} (port in use?)")
    await server.start()
    return server, bound


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
