"""BrpcServer with the real BrpcClient (and raw sockets for what a well-behaved client never sends)."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import pytest

from resnest_serving.protocol import baidu_std as bs
from resnest_serving.protocol.brpc_client import BrpcClient, SyncBrpcClient
from resnest_serving.protocol.brpc_meta_pb2 import RpcMeta
from resnest_serving.protocol.general_model_service_pb2 import Request, Response
from resnest_serving.serving.doors.brpc_server import BrpcServer
from resnest_serving.serving.doors.brpc_services import RequestContext
from resnest_serving.serving.doors.connections import ConnectionLimits

SVC = "test.brpc.EchoService"
GM = "baidu.paddle_serving.predictor.general_model.GeneralModelService"
HOST = "127.0.0.1"


async def echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload


async def describe(payload: bytes, ctx: RequestContext) -> bytes:
    return json.dumps({"payload": payload.decode(), "service": ctx.service, "method": ctx.method,
                       "log_id": ctx.log_id, "cid": ctx.correlation_id, "peer": ctx.peer,
                       "compress": ctx.compress_type, "attachment": ctx.attachment.decode()}).encode()


async def sleep_then_echo(payload: bytes, ctx: RequestContext) -> bytes:
    await asyncio.sleep(float(payload))
    return payload


async def boom(payload: bytes, ctx: RequestContext) -> bytes:
    raise ValueError("image 'a' is not a JPEG")


async def own_error(payload: bytes, ctx: RequestContext) -> bytes:
    raise bs.BrpcError(-5000, "Paddle Serving Framework Internal Error.")


async def gm_inference(payload: bytes, ctx: RequestContext) -> bytes:
    req = Request.FromString(payload)
    return Response(log_id=req.log_id, err_msg=",".join(req.fetch_var_names)).SerializeToString()


def make_server(**kwargs: Any) -> BrpcServer:
    server = BrpcServer(**kwargs)
    server.register(SVC, "echo", echo)
    server.register(SVC, "describe", describe)
    server.register(SVC, "sleep", sleep_then_echo)
    server.register(SVC, "boom", boom)
    server.register(SVC, "own_error", own_error)
    server.register(SVC, "sleep_short_deadline", sleep_then_echo, timeout_s=0.05)
    server.register(SVC, "gzip_echo", echo, response_compress_type=bs.CompressType.GZIP)
    server.register(SVC, "zlib_echo", echo, response_compress_type=bs.CompressType.ZLIB)
    server.register(GM, "inference", gm_inference, response_compress_type=bs.CompressType.GZIP)
    return server


@asynccontextmanager
async def serving(port: int = 0, **kwargs: Any) -> AsyncIterator[BrpcServer]:
    server = make_server(**kwargs)
    await server.start(HOST, port)
    try:
        yield server
    finally:
        await server.stop(grace_s=0.5)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def expect_error(code: int | set[int], call: Awaitable[Any]) -> bs.BrpcError:
    with pytest.raises(bs.BrpcError) as err:
        await call
    assert err.value.code in (code if isinstance(code, set) else {code}), err.value
    return err.value


DROPPED = {bs.Errno.EEOF, bs.Errno.EFAILEDSOCKET}  # EOF, or a reset when the server closed with unread bytes


async def raw_call(port: int, data: bytes, n_responses: int = 1) -> list[bs.Frame]:
    """Send raw bytes on a fresh connection and read ``n_responses`` frames (fewer if the server closes)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    parser, frames = bs.FrameParser(), []
    try:
        while len(frames) < n_responses:
            chunk = await reader.read(65536)
            if not chunk:
                break
            frames += parser.feed(chunk)
    except ConnectionResetError:
        pass
    writer.close()
    return frames


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionResetError:
        return True


# -- success paths --------------------------------------------------------------------------------------


def test_echo_full_and_short_service_name_and_request_context() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port) as client:
            assert await client.call(SVC, "echo", b"hello") == b"hello"
            assert await client.call("EchoService", "echo", b"short") == b"short"
            info = json.loads(await client.call(SVC, "describe", b"x", log_id=77, attachment=b"att"))
            assert info["service"] == SVC and info["method"] == "describe" and info["log_id"] == 77
            assert info["attachment"] == "att" and info["peer"].startswith("127.0.0.1:")
            assert await client.call(SVC, "echo", b"") == b""
            big = bytes(range(256)) * 4096  # 1 MiB: several reads on both sides
            assert await client.call(SVC, "echo", big) == big
    run(main)


def test_general_model_service_messages_and_gzip_response_meta() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port) as client:
            resp = await client.call_message(GM, "inference", Request(fetch_var_names=["prob"], log_id=5),
                                             Response)
            assert (resp.log_id, resp.err_msg) == (5, "prob")
            # On the wire the response is gzip with compress_type=2, like C++ Serving.
            payload = Request(log_id=6).SerializeToString()
            request = bs.encode_request(GM, "inference", payload, correlation_id=9)
            [frame] = await raw_call(server.port, request)
            assert frame.meta.compress_type == 2 and frame.meta.correlation_id == 9
            assert frame.meta.response.error_code == 0 and not frame.meta.response.HasField("error_text")
            assert Response.FromString(gzip.decompress(frame.payload)).log_id == 6
    run(main)


@pytest.mark.parametrize("request_ctype", [0, 2, 3])
def test_compressed_requests_and_responses(request_ctype: int) -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port, compress_type=request_ctype) as client:
            data = b"resnest " * 500
            info = json.loads(await client.call(SVC, "describe", data))
            assert info["payload"] == data.decode() and info["compress"] == request_ctype
            assert await client.call(SVC, "gzip_echo", data) == data
            assert await client.call(SVC, "zlib_echo", data) == data
            frames = await raw_call(server.port, bs.encode_request(SVC, "zlib_echo", data, correlation_id=1,
                                                                   compress_type=request_ctype))
            assert frames[0].meta.compress_type == 3 and zlib.decompress(frames[0].payload) == data
    run(main)


def test_pipelining_out_of_order_on_one_connection() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port, pool_size=1) as client:
            done: list[bytes] = []

            async def call(delay: bytes) -> None:
                done.append(await client.call(SVC, "sleep", delay))

            peers = {json.loads(await client.call(SVC, "describe", b""))["peer"] for _ in range(3)}
            await asyncio.gather(call(b"0.3"), call(b"0.0"), call(b"0.15"))
            assert done == [b"0.0", b"0.15", b"0.3"]
            peers |= {json.loads(await client.call(SVC, "describe", b""))["peer"]}
            assert len(peers) == 1  # everything went over the one connection

            # The same on a raw socket: two frames in one write, the second is answered first.
            data = (bs.encode_request(SVC, "sleep", b"0.2", correlation_id=1)
                    + bs.encode_request(SVC, "sleep", b"0.0", correlation_id=2))
            frames = await raw_call(server.port, data, n_responses=2)
            assert [f.meta.correlation_id for f in frames] == [2, 1]
            assert [f.payload for f in frames] == [b"0.0", b"0.2"]
    run(main)


def test_pool_spreads_calls_over_connections() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port, pool_size=3) as client:
            peers = {json.loads(await client.call(SVC, "describe", b""))["peer"] for _ in range(6)}
            assert len(peers) == 3
    run(main)


# -- error paths ----------------------------------------------------------------------------------------


def test_unknown_service_and_method() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port) as client:
            err = await expect_error(bs.Errno.ENOSERVICE, client.call("no.such.Service", "echo", b""))
            assert "no.such.Service" in err.text
            await expect_error(bs.Errno.ENOSERVICE, client.call("other.pkg.EchoService", "echo", b""))
            err = await expect_error(bs.Errno.ENOMETHOD, client.call(SVC, "nope", b""))
            assert "nope" in err.text
            await expect_error(bs.Errno.ENOMETHOD, client.call("EchoService", "nope", b""))
            assert await client.call(SVC, "echo", b"still fine") == b"still fine"
    run(main)


def test_handler_errors() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port) as client:
            err = await expect_error(bs.Errno.EINTERNAL, client.call(SVC, "boom", b""))
            assert err.text == "image 'a' is not a JPEG"
            err = await expect_error(-5000, client.call(SVC, "own_error", b""))
            assert err.text == "Paddle Serving Framework Internal Error."
            [frame] = await raw_call(server.port, bs.encode_request(SVC, "boom", b"", correlation_id=3))
            assert frame.meta.correlation_id == 3 and frame.payload == b"" and frame.meta.compress_type == 0
            assert frame.meta.response.error_code == 2001
    run(main)


def test_server_side_timeout() -> None:
    async def main() -> None:
        async with serving(timeout_s=0.1) as server, BrpcClient(HOST, server.port) as client:
            await expect_error(bs.Errno.ERPCTIMEDOUT, client.call(SVC, "sleep_short_deadline", b"1"))
            await expect_error(bs.Errno.ERPCTIMEDOUT, client.call(SVC, "sleep", b"1"))  # server-wide default
            assert await client.call(SVC, "sleep", b"0.01") == b"0.01"
    run(main)


def test_client_side_timeout_then_connection_still_usable() -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port, timeout=5) as client:
            err = await expect_error(bs.Errno.ERPCTIMEDOUT, client.call(SVC, "sleep", b"0.3", timeout=0.05))
            assert "timed out after 50 ms" in err.text
            await asyncio.sleep(0.35)  # the late answer arrives and is dropped
            assert await client.call(SVC, "echo", b"next") == b"next"
    run(main)


def test_bad_request_payloads_are_erequest() -> None:
    async def main() -> None:
        async with serving() as server:
            meta = RpcMeta(correlation_id=4, compress_type=2)
            meta.request.service_name, meta.request.method_name = SVC, "echo"
            for ctype, payload in ((2, b"not gzip"), (3, b"not zlib"), (1, b"snappy?"), (4, b"lz4?")):
                meta.compress_type = ctype
                [frame] = await raw_call(server.port, bs.encode_frame(meta, payload))
                assert frame.meta.response.error_code == bs.Errno.EREQUEST, ctype
                assert frame.meta.correlation_id == 4
            meta.compress_type = 0
            meta.attachment_size = 100  # more than the body holds
            data = bs.encode_frame(meta, b"abc")
            [frame] = await raw_call(server.port, data)
            assert frame.meta.response.error_code == bs.Errno.EREQUEST
            assert "attachment_size" in frame.meta.response.error_text
    run(main)


def test_compressed_body_inflating_over_the_limit_is_erequest() -> None:
    """A 4 KB gzip body that inflates to 4 MiB, on a server taking 64 KiB bodies: refused as it inflates;
    the same connection keeps serving."""
    async def main() -> None:
        async with (serving(max_body_size=65536) as server,
                    BrpcClient(HOST, server.port, compress_type=bs.CompressType.GZIP) as client):
            err = await expect_error(bs.Errno.EREQUEST, client.call(SVC, "echo", bytes(4 * 1024 * 1024)))
            assert "inflates to more than 65536 bytes (max_request_bytes)" in err.text
            small = b"y" * 60000
            assert await client.call(SVC, "echo", small) == small
    run(main)


def test_token_checked_once_per_connection_and_a_failed_check_closes_it() -> None:
    from resnest_serving.serving.doors.security import TokenSet

    async def main() -> None:
        tokens = TokenSet(["right-token-0123456789"])
        async with serving(tokens=tokens) as server:
            async with BrpcClient(HOST, server.port, auth_data=b"wrong-token-0123456789") as client:
                await expect_error(bs.Errno.ERPCAUTH, client.call(SVC, "echo", b"x"))
            meta = RpcMeta(correlation_id=1, authentication_data=b"nope")
            meta.request.service_name, meta.request.method_name = SVC, "echo"
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(bs.encode_frame(meta, b"x"))
            parser, frames = bs.FrameParser(), []
            while not frames:
                frames += parser.feed(await asyncio.wait_for(reader.read(65536), 5))
            assert frames[0].meta.response.error_code == bs.Errno.ERPCAUTH
            assert await closed_by_server(reader)  # as brpc: no second guess on the same connection
            writer.close()
            async with BrpcClient(HOST, server.port, auth_data=b"Bearer right-token-0123456789") as client:
                assert await client.call(SVC, "echo", b"one") == b"one"
                assert await client.call(SVC, "echo", b"two") == b"two"
    run(main)


def test_token_checked_on_the_meta_before_any_payload_byte_is_read() -> None:
    """Issue #24.3: a header and a meta declaring a 60 MB payload, no token, and not one payload byte sent:
    the answer (ERPCAUTH) and the close come anyway, so the server never waited for (or read) the payload.
    A meta over 64 KiB is not read at all (the token is inside it)."""
    from resnest_serving.serving.doors.security import TokenSet

    async def main() -> None:
        async with serving(tokens=TokenSet(["right-token-0123456789"])) as server:
            meta = RpcMeta(correlation_id=7, authentication_data=b"wrong-token-0123456789")
            meta.request.service_name, meta.request.method_name = SVC, "echo"
            raw = meta.SerializeToString()
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"PRPC" + struct.pack(">II", len(raw) + 60 * 10**6, len(raw)) + raw)
            frame = bs.decode_frame(await asyncio.wait_for(reader.read(65536), 2))
            assert frame.meta.correlation_id == 7 and frame.meta.response.error_code == bs.Errno.ERPCAUTH
            assert await closed_by_server(reader)
            writer.close()

            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"PRPC" + struct.pack(">II", 10**6, 10**6 - 1))  # a 1 MB meta: not awaited
            assert await closed_by_server(reader)
            writer.close()
    run(main)


def test_calls_in_flight_per_connection_are_capped_with_elimit() -> None:
    """Issue #24 (suspected, real): one connection could start any number of calls at once."""
    from resnest_serving.serving.doors.brpc_server import MAX_CALLS_PER_CONNECTION

    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port, pool_size=1) as client:
            calls = [asyncio.create_task(client.call(SVC, "sleep", b"0.3"))
                     for _ in range(MAX_CALLS_PER_CONNECTION + 2)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            refused = [r for r in results if isinstance(r, bs.BrpcError)]
            assert sum(r == b"0.3" for r in results) == MAX_CALLS_PER_CONNECTION
            assert len(refused) == 2 and all(r.code == bs.Errno.ELIMIT for r in refused), refused
            assert f"limit of {MAX_CALLS_PER_CONNECTION} calls in flight" in refused[0].text
            assert await client.call(SVC, "echo", b"after") == b"after"  # the same connection goes on
    run(main)


def test_body_over_limit_is_answered_then_connection_closed() -> None:
    async def main() -> None:
        async with serving(max_body_size=1024) as server, BrpcClient(HOST, server.port) as client:
            assert await client.call(SVC, "echo", b"x" * 500) == b"x" * 500
            err = await expect_error(bs.Errno.EREQUEST, client.call(SVC, "echo", b"x" * 2000))
            assert "max_body_size=1024" in err.text
            await asyncio.sleep(0.05)  # let the client see the close that follows the answer
            assert await client.call(SVC, "echo", b"ok") == b"ok"  # reconnects

            # Only a header and a meta are sent: the answer comes without the body ever being sent.
            meta = RpcMeta(correlation_id=11)
            meta.request.service_name, meta.request.method_name = SVC, "echo"
            raw = meta.SerializeToString()
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"PRPC" + struct.pack(">II", 10**9, len(raw)) + raw)
            frame = bs.decode_frame(await asyncio.wait_for(reader.read(65536), 2))
            assert frame.meta.correlation_id == 11 and frame.meta.response.error_code == bs.Errno.EREQUEST
            assert await closed_by_server(reader)
            writer.close()

            # A header alone, whose meta is too big to peek at: closed without an answer.
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(b"PRPC" + struct.pack(">II", 10**9, 10**8))
            assert await closed_by_server(reader)
            writer.close()
    run(main)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                      # bad magic
    b"PRPC" + struct.pack(">II", 4, 8) + b"abcd",               # meta_size > body_size
    b"PRPC" + struct.pack(">II", 3, 3) + b"\xff\xff\xff",       # corrupt RpcMeta
    bs.encode_response(1, b"x"),                                # a response sent to the server
])
def test_malformed_frame_closes_only_that_connection(garbage: bytes) -> None:
    async def main() -> None:
        async with serving() as server, BrpcClient(HOST, server.port) as client:
            assert await client.call(SVC, "echo", b"before") == b"before"
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(garbage)
            assert await closed_by_server(reader)
            writer.close()
            assert await client.call(SVC, "echo", b"after") == b"after"
            assert await client.call(SVC, "sleep", b"0.01") == b"0.01"
    run(main)


def test_too_many_connections() -> None:
    async def main() -> None:
        async with serving(limits=ConnectionLimits(max_connections=1)) as server:
            first = BrpcClient(HOST, server.port)
            second = BrpcClient(HOST, server.port)
            assert await first.call(SVC, "echo", b"1") == b"1"
            await expect_error(DROPPED, second.call(SVC, "echo", b"2"))
            await first.close()
            for _ in range(50):  # the server notices the first connection is gone
                try:
                    assert await second.call(SVC, "echo", b"2") == b"2"
                    break
                except bs.BrpcError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("second client never got a connection")
            await second.close()
    run(main)


def test_max_concurrency_is_elimit() -> None:
    async def main() -> None:
        async with serving(max_concurrency=1) as server, BrpcClient(HOST, server.port) as client:
            slow = asyncio.create_task(client.call(SVC, "sleep", b"0.2"))
            await asyncio.sleep(0.05)
            await expect_error(bs.Errno.ELIMIT, client.call(SVC, "echo", b"x"))
            assert await slow == b"0.2"
            assert await client.call(SVC, "echo", b"x") == b"x"
    run(main)


# -- lifecycle ------------------------------------------------------------------------------------------


def test_client_reconnects_after_server_restart_on_same_port() -> None:
    async def main() -> None:
        async with serving() as server:
            port = server.port
            client = BrpcClient(HOST, port, connect_timeout=1)
            assert await client.call(SVC, "echo", b"one") == b"one"
        await asyncio.sleep(0.01)
        err = await expect_error(bs.Errno.EFAILEDSOCKET, client.call(SVC, "echo", b"down"))
        assert f"{HOST}:{port}" in err.text
        async with serving(port) as again:
            assert again.port == port
            assert await client.call(SVC, "echo", b"two") == b"two"
        await client.close()
        await expect_error(bs.Errno.ECLOSE, client.call(SVC, "echo", b"closed"))
    run(main)


def test_stop_lets_calls_finish_refuses_new_ones_and_drops_stragglers() -> None:
    async def main() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def gated(payload: bytes, ctx: RequestContext) -> bytes:
            started.set()
            await release.wait()
            return payload

        server = make_server()
        server.register(SVC, "gated", gated)
        await server.start(HOST, 0)
        client = BrpcClient(HOST, server.port, pool_size=1)
        assert await client.call(SVC, "echo", b"warm") == b"warm"
        finishing = asyncio.create_task(client.call(SVC, "gated", b"done"))
        await started.wait()
        stopping = asyncio.create_task(server.stop(grace_s=5))
        await asyncio.sleep(0)  # stop() has begun: no more accepting, new calls get ELOGOFF
        await expect_error(bs.Errno.ELOGOFF, client.call(SVC, "echo", b"late"))  # same connection, while stopping
        release.set()
        assert await finishing == b"done"
        await stopping

        started.clear()
        release.clear()
        await server.start(HOST, 0)
        client2 = BrpcClient(HOST, server.port)
        straggler = asyncio.create_task(client2.call(SVC, "gated", b"never"))
        await started.wait()
        await server.stop(grace_s=0.05)
        await expect_error(DROPPED, straggler)  # the dropped connection fails the pending call
        await client.close()
        await client2.close()
    run(main)


# -- synchronous wrapper --------------------------------------------------------------------------------


def test_sync_client_from_many_threads() -> None:
    loop = asyncio.new_event_loop()
    server = make_server()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(HOST, 0), loop).result(5)
        with SyncBrpcClient(HOST, server.port, pool_size=2, compress_type=2) as client:
            assert client.call(SVC, "echo", b"sync") == b"sync"
            resp = client.call_message(GM, "inference", Request(log_id=3), Response)
            assert resp.log_id == 3
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda i: client.call(SVC, "echo", str(i).encode()), range(64)))
            assert results == [str(i).encode() for i in range(64)]
            with pytest.raises(bs.BrpcError) as err:
                client.call(SVC, "sleep", b"0.5", timeout=0.05)
            assert err.value.code == bs.Errno.ERPCTIMEDOUT
            with pytest.raises(bs.BrpcError) as err:
                client.call(SVC, "boom", b"")
            assert err.value.code == bs.Errno.EINTERNAL
        with pytest.raises(bs.BrpcError) as err:
            client.call(SVC, "echo", b"after close")
        assert err.value.code == bs.Errno.ECLOSE
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_registration_rules() -> None:
    server = BrpcServer()
    server.register(SVC, "echo", echo)
    with pytest.raises(ValueError, match="already registered"):
        server.register(SVC, "echo", echo)
    with pytest.raises(bs.BrpcError):
        server.register(SVC, "snappy", echo, response_compress_type=bs.CompressType.SNAPPY)
    with pytest.raises(bs.BrpcError):
        BrpcClient(HOST, 1, compress_type=bs.CompressType.LZ4)
