"""One bRPC connection's state on the server: the stream pair, the lock that keeps response frames whole,
the calls in flight and whether it has authenticated; and skipping a refused call's payload unkept."""

from __future__ import annotations

import asyncio

from resnest_serving.serving.doors.connections import peer_host

SKIP_CHUNK = 64 * 1024


class Connection:
    """Per-connection state: the stream pair and a lock that keeps response frames whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.host = peer_host(writer.transport)
        self.write_lock = asyncio.Lock()
        self.in_flight = 0  # calls of this connection not yet answered: waiting for them is not idling
        self.authenticated = False  # as brpc: a connection authenticates once, with its first request

    async def send(self, frame: bytes) -> None:
        async with self.write_lock:
            if self.writer.is_closing():
                raise ConnectionResetError("connection closed before the response was sent")
            self.writer.write(frame)
            await self.writer.drain()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


async def skip_bytes(reader: asyncio.StreamReader, size: int, timeout: float | None) -> None:
    """Read and drop ``size`` bytes in small chunks (a refused call's payload is never held whole)."""
    async with asyncio.timeout(timeout):
        while size > 0:
            chunk = await reader.read(min(size, SKIP_CHUNK))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", size)
            size -= len(chunk)
