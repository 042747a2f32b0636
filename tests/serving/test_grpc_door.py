"""The gRPC front door's own limits (serving/doors/grpc_door.py), with a pipeline that answers when told to: calls in
progress are capped at max_connections (RESOURCE_EXHAUSTED beyond), and a refused token never reaches it."""

from __future__ import annotations

import asyncio

import grpc

from resnest_serving.protocol import pipeline_service_pb2 as pb
from resnest_serving.protocol.wire import PIPELINE_SERVICE
from resnest_serving.serving.doors.connections import ConnectionLimits, DoorSettings
from resnest_serving.serving.doors.grpc_door import start_grpc
from resnest_serving.serving.doors.security import TokenSet

TOKEN = "grpc-door-token-0123456789"


class HeldCore:
    """Stands in for ServingCore: each call waits until `release` is set (a slow model)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def infer_proto(self, message: pb.Request, protocol: str) -> pb.Response:
        self.entered += 1
        await self.release.wait()
        return pb.Response(err_no=0, key=list(message.key))


def test_calls_in_progress_capped_at_max_connections_and_refused_tokens_never_reach_the_pipeline() -> None:
    async def main() -> None:
        core = HeldCore()
        door = DoorSettings(1 << 20, ConnectionLimits(max_connections=2), tokens=TokenSet([TOKEN]))
        server, port = await start_grpc(core, "127.0.0.1", 0, door)  # type: ignore[arg-type]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{PIPELINE_SERVICE}/inference",
                                           request_serializer=pb.Request.SerializeToString,
                                           response_deserializer=pb.Response.FromString)
                good = (("authorization", f"Bearer {TOKEN}"),)
                held = [asyncio.ensure_future(call(pb.Request(key=[str(i)]), metadata=good, timeout=10))
                        for i in range(2)]
                while core.entered < 2:
                    await asyncio.sleep(0.01)
                try:
                    await call(pb.Request(key=["3"]), metadata=good, timeout=10)
                    raise AssertionError("a third call in progress was accepted")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                core.release.set()
                assert [list(r.key) for r in await asyncio.gather(*held)] == [["0"], ["1"]]
                try:
                    await call(pb.Request(key=["x"]), timeout=10)
                    raise AssertionError("a call without a token was accepted")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                assert core.entered == 2
        finally:
            await server.stop(0)

    asyncio.run(asyncio.wait_for(main(), 30))
