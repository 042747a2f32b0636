"""Connection limits shared by the REST and bRPC front doors: how many connections may be open (in all and per
client address), and how long a connection may sit idle or take to send a request. A slow or greedy client
costs the connections it holds, never the server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from resnest_serving.serving.config.schema import ServerConfig, default_of

log = logging.getLogger(__name__)

MAX_CALLS_PER_CONNECTION = 128
"""Calls in flight on one connection: bRPC answers ELIMIT beyond it, gRPC's max_concurrent_streams."""


@dataclass(frozen=True)
class ConnectionLimits:
    """Per front door, from config.yml (`from_config`); each default is its key's default in the schema.
    `max_per_peer` 0 means no per-address limit."""

    max_connections: int = default_of(ServerConfig, "max_connections")
    max_per_peer: int = default_of(ServerConfig, "max_connections_per_peer")
    idle_timeout_s: float = default_of(ServerConfig, "idle_timeout_s")
    read_timeout_s: float = default_of(ServerConfig, "request_read_timeout_s")

    @classmethod
    def from_config(cls, config: ServerConfig) -> ConnectionLimits:
        return cls(max_connections=config.max_connections, max_per_peer=config.max_connections_per_peer,
                   idle_timeout_s=config.idle_timeout_s, read_timeout_s=config.request_read_timeout_s)


class PeerLimiter:
    """Counts open connections in all and per client address; refuses those over the limits, logging at most
    one WARNING a second per door (with the number refused), so a flood cannot flood the log too."""

    def __init__(self, door: str, limits: ConnectionLimits):
        self.door = door
        self.limits = limits
        self.open = 0
        self.per_peer: Counter[str] = Counter()
        self._refused = 0
        self._last_warning = 0.0

    def admit(self, peer: str) -> bool:
        """Count a new connection from `peer` (its address without the port); False: close it now."""
        limits = self.limits
        if self.open >= limits.max_connections:
            return self._refuse(peer, f"{self.open} connections open (max_connections={limits.max_connections})")
        if limits.max_per_peer and self.per_peer[peer] >= limits.max_per_peer:
            return self._refuse(peer, f"{self.per_peer[peer]} connections open from this address "
                                      f"(max_connections_per_peer={limits.max_per_peer})")
        self.open += 1
        self.per_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        self.open -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]

    def _refuse(self, peer: str, why: str) -> bool:
        self._refused += 1
        now = time.monotonic()
        if now - self._last_warning >= 1.0:
            log.warning("%s refused a connection from %s: %s (%d refused since the last warning)", self.door,
                        peer, why, self._refused)
            self._last_warning, self._refused = now, 0
        return False


def peer_host(transport: asyncio.BaseTransport) -> str:
    """The client's address without its port ("unix" or "?" when there is none)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "?")


class _CountedProtocol(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: admits or refuses the connection, and forwards everything
    else unchanged."""

    def __init__(self, inner: asyncio.Protocol, limiter: PeerLimiter):
        self._inner = inner
        self._limiter = limiter
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = peer_host(transport)
        if not self._limiter.admit(peer):
            transport.abort()
            return
        self._peer = peer
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is None:
            return
        self._limiter.release(self._peer)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class LimitedSite(web.TCPSite):
    """aiohttp's TCPSite with a PeerLimiter in front of every connection. With TLS, a connection is counted
    once its handshake is done (asyncio reports it then); the handshake itself must finish within
    read_timeout_s."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limiter: PeerLimiter, **kwargs: Any):
        super().__init__(runner, host, port, **kwargs)
        self._limiter = limiter

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        limiter = self._limiter
        handshake = (limiter.limits.read_timeout_s or None) if self._ssl_context else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CountedProtocol(server(), limiter), self._host, self._port, ssl=self._ssl_context,
            ssl_handshake_timeout=handshake, backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]


@dataclass(frozen=True)
class DoorSettings:
    """What every front door enforces: body size, connection limits, TLS (an ssl.SSLContext, REST and bRPC)
    and the accepted tokens (a serving.doors.security.TokenSet)."""

    max_request_bytes: int
    limits: ConnectionLimits = ConnectionLimits()
    ssl_context: Any = None
    tokens: Any = None
