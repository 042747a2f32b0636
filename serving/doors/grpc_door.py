"""gRPC front door: baidu.paddle_serving.pipeline_serving.PipelineService/inference (grpc.aio)."""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import DecodeError

from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.wire import PIPELINE_SERVICE
from resnest_serving.serving.config.schema import TlsConfig
from resnest_serving.serving.core import ServingCore
from resnest_serving.serving.doors.connections import MAX_CALLS_PER_CONNECTION, DoorSettings
from resnest_serving.serving.doors.security import OPEN_GRPC_METHODS, TokenSet, grpc_server_credentials
from resnest_serving.serving.v2 import grpc_door as v2_grpc
from resnest_serving.serving.v2.model import V2Models

log = logging.getLogger(__name__)


class PipelineServicer:
    def __init__(self, core: ServingCore):
        self.core = core

    async def inference(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Response:
        """Parsed here rather than by grpc, so that bytes that are not a Request get INVALID_ARGUMENT."""
        try:
            message = pb.Request.FromString(request)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a serialized "
                                f"baidu.paddle_serving.pipeline_serving.Request: {exc}")
        return await self.core.infer_proto(message, "grpc")


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every call but the health checks needs metadata `authorization: Bearer <token>`.

    The check reads only the call's headers. A refused call is answered by a request-streaming handler that
    never asks for a message, so grpcio does not receive the request (up to max_request_bytes) at all: HTTP/2
    flow control holds the client's bytes back until UNAUTHENTICATED ends the call."""

    def __init__(self, tokens: TokenSet):
        self.tokens = tokens

        async def deny(_unread_requests, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token: send metadata "
                                "'authorization: Bearer <token>'")

        self._deny = grpc.stream_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method in OPEN_GRPC_METHODS:
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if self.tokens.accepts(metadata.get("authorization")):
            return await continuation(details)
        log.info("grpc %s: refused, missing or unknown bearer token", details.method)
        return self._deny


async def start_grpc(core: ServingCore, host: str, port: int, door: DoorSettings, tls: TlsConfig | None = None,
                     reuse_port: bool = False, v2: V2Models | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server (TLS when `tls` is on, tokens when `door.tokens` holds any), with the Open
    Inference Protocol's service for `v2` beside PipelineService; returns it and the bound port (port 0 =
    ephemeral)."""
    limits = door.limits
    options = [("grpc.max_receive_message_length", door.max_request_bytes),
               ("grpc.max_send_message_length", door.max_request_bytes),
               ("grpc.so_reuseport", 1 if reuse_port else 0),
               ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
               ("grpc.server_handshake_timeout_ms", int(limits.read_timeout_s * 1000)),
               ("grpc.max_concurrent_streams", MAX_CALLS_PER_CONNECTION)]
    interceptors = [TokenInterceptor(door.tokens)] if door.tokens is not None and door.tokens.enabled else []
    # grpcio cannot count connections; it caps calls in progress (RESOURCE_EXHAUSTED beyond, before the message is
    # read) at max_connections, and streams per connection at MAX_CALLS_PER_CONNECTION, as bRPC does.
    server = grpc.aio.server(options=options, interceptors=interceptors,
                             maximum_concurrent_rpcs=limits.max_connections)
    handler = grpc.unary_unary_rpc_method_handler(PipelineServicer(core).inference,
                                                  response_serializer=pb.Response.SerializeToString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(PIPELINE_SERVICE,
                                                                          {"inference": handler})])
    if v2 is not None:
        v2_grpc.add_to_server(v2, server)  # Open Inference Protocol (KServe V2) beside it
    address = f"{_grpc_host(host)}:{port}"
    credentials = grpc_server_credentials(tls) if tls is not None else None
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC could not bind {host}:{port} (port in use?)")
    await server.start()
    return server, bound


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
