"""PeerLimiter counts, and the REST door built on it refuses what is over the limits (real aiohttp server)."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from resnest_serving.serving.doors.connections import ConnectionLimits, DoorSettings, PeerLimiter
from resnest_serving.serving.doors.rest_door import serve_app


def test_limiter_counts_in_all_and_per_peer():
    limiter = PeerLimiter("test", ConnectionLimits(max_connections=3, max_per_peer=2))
    assert limiter.admit("10.0.0.1") and limiter.admit("10.0.0.1")
    assert not limiter.admit("10.0.0.1")  # per address
    assert limiter.admit("10.0.0.2")
    assert not limiter.admit("10.0.0.3")  # in all
    limiter.release("10.0.0.1")
    assert limiter.admit("10.0.0.3")
    assert limiter.open == 3 and dict(limiter.per_peer) == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1}


def test_rest_door_closes_connections_over_max_connections():
    async def main() -> None:
        async def ok(_request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", ok)
        door = DoorSettings(1024, ConnectionLimits(max_connections=2, idle_timeout_s=30))
        runner, port = await serve_app(app, "127.0.0.1", 0, door)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not answered
            except ConnectionResetError:
                pass
            writer.close()
            for _, w in held:
                w.close()
            # the held ones are gone: a new connection is answered
            for _ in range(200):
                try:
                    with socket.create_connection(("127.0.0.1", port)) as sock:
                        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        data = await asyncio.to_thread(sock.recv, 4096)
                except ConnectionResetError:  # still refused: the server has not seen the close yet
                    data = b""
                if data.startswith(b"HTTP/1.1 200"):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("no connection was answered after the held ones closed")
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 30))
