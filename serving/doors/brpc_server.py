"""bRPC ``baidu_std`` server on asyncio: what Paddle Serving's C++ (brpc) port speaks.

Handlers are registered per (service, method) and get the request payload already decompressed; what
they return is sent back, compressed as chosen at registration (gzip for ``GeneralModelService``, like
C++ Serving). Each request runs in its own task, so several calls on one connection proceed at once and
are answered in completion order, matched by ``correlation_id``. Errors go back as brpc errno values in
``RpcResponseMeta``. Framing lives in ``protocol.baidu_std``; this module holds no model code.

Each frame is read in three steps: the 12-byte header (size limits), the ``RpcMeta`` (at most 64 KiB: the token
and the call's identity), then the payload, only for a call that is let in: a connection that fails the token
check is answered ERPCAUTH and closed with its payload unread, and a call beyond MAX_CALLS_PER_CONNECTION in
flight is answered ELIMIT with its payload skipped in small chunks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from resnest_serving.protocol.baidu_std import (
    DEFAULT_MAX_BODY_SIZE,
    HEADER_SIZE,
    BrpcError,
    CompressType,
    Errno,
    FrameError,
    FrameTooLargeError,
    decompress,
    encode_response,
    parse_header,
    parse_meta,
)
from resnest_serving.protocol.brpc_meta_pb2 import RpcMeta
from resnest_serving.serving.doors.brpc_connection import Connection, skip_bytes
from resnest_serving.serving.doors.brpc_services import Handler, RequestContext, ServiceTable
from resnest_serving.serving.doors.connections import (
    MAX_CALLS_PER_CONNECTION,
    ConnectionLimits,
    PeerLimiter,
)
from resnest_serving.serving.doors.security import TokenSet

__all__ = ["MAX_CALLS_PER_CONNECTION", "BrpcServer", "Handler", "RequestContext"]

log = logging.getLogger(__name__)

_MAX_META_TO_PEEK = 64 * 1024  # an oversized frame's meta is read (for its correlation_id) up to this size
_MAX_META_SIZE = 64 * 1024  # an RpcMeta is a few hundred bytes; a larger one is not read (before the token check)
_PEEK_TIMEOUT_S = 2.0


class BrpcServer:
    """An asyncio bRPC server: ``register`` handlers, ``await start(host, port)``, ``await stop()``."""

    def __init__(
        self,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_concurrency: int = 0,
        timeout_s: float | None = None,
        limits: ConnectionLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tokens: TokenSet | None = None,
    ) -> None:
        """``max_concurrency`` > 0 answers ELIMIT beyond that many calls in flight (server-wide);
        ``timeout_s`` is the default per-call handler timeout (None: no limit) → ERPCTIMEDOUT.
        ``limits``: connections in all and per address, idle and read timeouts (ConnectionLimits' defaults
        when None); ``ssl_context`` makes the port TLS-only; ``tokens`` requires
        ``RpcMeta.authentication_data`` (ERPCAUTH otherwise)."""
        self.max_body_size = max_body_size
        self.limits = limits or ConnectionLimits()
        self._limiter = PeerLimiter("brpc", self.limits)
        self.ssl_context = ssl_context
        self.tokens = tokens if tokens is not None and tokens.enabled else None
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self._table = ServiceTable()
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Task[None]] = set()  # server-wide: a call outlives its connection
        self._in_flight = 0
        self._stopping = False
        self.port: int | None = None

    # -- registration -------------------------------------------------------------------------------

    def register(
        self,
        service: str,
        method: str,
        handler: Handler,
        *,
        response_compress_type: int = CompressType.NONE,
        timeout_s: float | None = None,
    ) -> None:
        """Serve ``service.method`` with ``handler`` (see ``ServiceTable.register``)."""
        self._table.register(service, method, handler, response_compress_type=response_compress_type,
                             timeout_s=timeout_s)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False) -> None:
        """Listen on ``host:port``; port 0 picks a free port, readable afterwards as ``.port``.
        ``reuse_port`` lets several worker processes share the port (SO_REUSEPORT)."""
        if self._server is not None:
            raise RuntimeError("BrpcServer already started")
        self._stopping = False
        handshake = (self.limits.read_timeout_s or None) if self.ssl_context else None
        self._server = await asyncio.start_server(self._on_connect, host, port, reuse_port=reuse_port or None,
                                                  ssl=self.ssl_context, ssl_handshake_timeout=handshake)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("brpc server listening on %s:%d", host, self.port)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let calls in flight finish (up to ``grace_s``), then close every connection.

        Requests that arrive meanwhile are answered ELOGOFF ("Server is stopping"), as brpc does.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        pending = list(self._calls)
        if pending:
            _done, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("brpc server stop: cancelled %d calls still running after %.1fs",
                            len(late), grace_s)
                await asyncio.wait(late)
        for conn in list(self._connections):
            conn.close()
        for task in list(self._conn_tasks):
            task.cancel()
        if self._conn_tasks:
            await asyncio.wait(list(self._conn_tasks))
        leftover = list(self._calls)  # e.g. ELOGOFF answers to requests that came in during the grace
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover)
        await server.wait_closed()
        log.info("brpc server on port %s stopped", self.port)

    # -- connections --------------------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        if self._stopping or not self._limiter.admit(conn.host):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(conn)
        self._conn_tasks.add(task)
        log.debug("brpc connection from %s", conn.peer)
        try:
            await self._read_loop(conn)
        except asyncio.CancelledError:
            pass
        finally:
            self._limiter.release(conn.host)
            self._connections.discard(conn)
            self._conn_tasks.discard(task)
            conn.close()
            log.debug("brpc connection from %s closed", conn.peer)

    async def _first_byte(self, conn: Connection) -> bytes:
        """The next frame's first byte. A connection with no call of its own pending and nothing sent for
        idle_timeout_s raises TimeoutError (closed by the caller)."""
        idle = self.limits.idle_timeout_s
        while True:
            try:
                async with asyncio.timeout(idle or None):
                    return await conn.reader.readexactly(1)
            except TimeoutError:
                if not conn.in_flight:
                    raise

    async def _read_loop(self, conn: Connection) -> None:
        """Read frames until EOF, a framing error or a timeout; each request becomes its own task. Once a
        frame has started, all of it must arrive within read_timeout_s."""
        read_timeout = self.limits.read_timeout_s or None
        while True:
            try:
                first = await self._first_byte(conn)
                async with asyncio.timeout(read_timeout):
                    header = first + await conn.reader.readexactly(HEADER_SIZE - 1)
            except TimeoutError:
                log.info("brpc closing connection from %s: no frame for %g s (idle_timeout_s) or a header not "
                         "received within %g s", conn.peer, self.limits.idle_timeout_s, read_timeout or 0)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.warning("brpc connection from %s closed in the middle of a header", conn.peer)
                return
            except ConnectionError:
                return
            try:
                body_size, meta_size = parse_header(header, self.max_body_size)
                if meta_size > _MAX_META_SIZE:
                    raise FrameError(f"meta_size={meta_size} exceeds {_MAX_META_SIZE} bytes")
                async with asyncio.timeout(read_timeout):
                    meta = parse_meta(await conn.reader.readexactly(meta_size))
                if not meta.HasField("request"):
                    raise FrameError("frame without RpcRequestMeta")
                admitted = await self._admit(conn, meta, body_size - meta_size)
                if admitted is None:
                    return
                if not admitted:
                    continue
                async with asyncio.timeout(read_timeout):
                    rest = await conn.reader.readexactly(body_size - meta_size)
            except TimeoutError:
                log.warning("brpc closing connection from %s: frame of %d bytes not received within %g s "
                            "(request_read_timeout_s)", conn.peer, body_size, read_timeout)
                return
            except FrameTooLargeError as exc:
                log.warning("brpc closing connection from %s: %s", conn.peer, exc.text)
                await self._refuse_too_large(conn, exc)
                return
            except FrameError as exc:
                log.warning("brpc closing connection from %s: %s", conn.peer, exc.text)
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("brpc connection from %s closed in the middle of a frame", conn.peer)
                return
            self._start_call(conn, meta, rest)

    async def _admit(self, conn: Connection, meta: RpcMeta, payload_size: int) -> bool | None:
        """Checks made on the meta alone, before any payload byte is read: True, serve the call. A connection
        that fails the token check gets ERPCAUTH and is closed with its payload unread (None); a connection
        already at MAX_CALLS_PER_CONNECTION calls in flight gets ELIMIT for this call, whose payload is
        skipped unkept (False, or None when the client does not read the answer)."""
        if self.tokens is not None and not conn.authenticated:
            if not self.tokens.accepts(meta.authentication_data):
                log.info("brpc log_id=%d from %s refused: missing or invalid token; closing the connection with "
                         "the %d-byte payload unread", meta.request.log_id, conn.peer, payload_size)
                await self._answer_error(conn, meta, Errno.ERPCAUTH,
                                         "missing or invalid token in RpcMeta.authentication_data")
                return None
            conn.authenticated = True  # as brpc: a connection authenticates once, with its first request
        if conn.in_flight >= MAX_CALLS_PER_CONNECTION:
            await skip_bytes(conn.reader, payload_size, self.limits.read_timeout_s or None)
            text = (f"Reached the connection's limit of {MAX_CALLS_PER_CONNECTION} calls in flight: wait for "
                    "answers or open another connection")
            log.warning("brpc log_id=%d from %s refused: %s", meta.request.log_id, conn.peer, text)
            await self._answer_error(conn, meta, Errno.ELIMIT, text)  # inline: a client that sends without
            return None if conn.writer.is_closing() else False          # reading waits, or is closed
        return True

    async def _answer_error(self, conn: Connection, meta: RpcMeta, code: int, text: str) -> None:
        """Send an error answer; a client that does not read it within a few seconds is closed."""
        try:
            await asyncio.wait_for(conn.send(encode_response(meta.correlation_id, error_code=code, error_text=text)),
                                   _PEEK_TIMEOUT_S)
        except (ConnectionError, OSError, TimeoutError):
            conn.close()

    def _start_call(self, conn: Connection, meta: RpcMeta, rest: bytes) -> None:
        """Start a task for one admitted request (its meta and its payload + attachment)."""
        task = asyncio.create_task(self._serve_call(conn, meta, rest))
        self._calls.add(task)
        conn.in_flight += 1
        task.add_done_callback(lambda done: self._call_done(done, conn))

    def _call_done(self, task: asyncio.Task[None], conn: Connection) -> None:
        self._calls.discard(task)
        conn.in_flight -= 1

    async def _refuse_too_large(self, conn: Connection, exc: FrameTooLargeError) -> None:
        """Answer an oversized frame with EREQUEST when its meta (and so its correlation_id) is small
        enough to read; the body itself is never read."""
        if not 0 < exc.meta_size <= min(_MAX_META_TO_PEEK, exc.body_size):
            return
        try:
            meta_bytes = await asyncio.wait_for(conn.reader.readexactly(exc.meta_size), _PEEK_TIMEOUT_S)
            meta = parse_meta(meta_bytes)
            await asyncio.wait_for(
                conn.send(encode_response(meta.correlation_id, error_code=exc.code, error_text=exc.text)),
                _PEEK_TIMEOUT_S,
            )
        except (FrameError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return
        log.warning("brpc log_id=%d correlation_id=%d refused: %s",
                    meta.request.log_id, meta.correlation_id, exc.text)

    # -- calls --------------------------------------------------------------------------------------

    async def _serve_call(self, conn: Connection, meta: RpcMeta, rest: bytes) -> None:
        req = meta.request
        start = time.monotonic()
        cause: BaseException | None = None
        try:
            payload, compress_type = await self._run(conn, meta, rest)
            frame = encode_response(meta.correlation_id, payload, compress_type=compress_type)
            code, text = 0, ""
        except BrpcError as exc:
            code, text, cause = exc.code, exc.text, exc.__cause__
            frame = encode_response(meta.correlation_id, error_code=code, error_text=text)
        try:
            await conn.send(frame)
        except (ConnectionError, OSError) as exc:
            log.warning("brpc log_id=%d %s.%s from %s: response not sent: %s",
                        req.log_id, req.service_name, req.method_name, conn.peer, exc)
            return
        ms = (time.monotonic() - start) * 1000
        if code:
            # A handler's own exception is a bug worth a traceback, but only when debugging.
            trace = cause if cause is not None and log.isEnabledFor(logging.DEBUG) else None
            log.warning("brpc log_id=%d %s.%s from %s failed in %.1f ms: [%d] %s",
                        req.log_id, req.service_name, req.method_name, conn.peer, ms, code, text,
                        exc_info=trace)
        else:
            log.debug("brpc log_id=%d %s.%s from %s ok in %.1f ms",
                      req.log_id, req.service_name, req.method_name, conn.peer, ms)

    async def _run(self, conn: Connection, meta: RpcMeta, rest: bytes) -> tuple[bytes, int]:
        """Dispatch one call; returns (response payload, how to compress it) or raises BrpcError."""
        req = meta.request
        if self._stopping:
            raise BrpcError(Errno.ELOGOFF, "Server is stopping")
        if self.max_concurrency and self._in_flight >= self.max_concurrency:
            raise BrpcError(Errno.ELIMIT, f"Reached server's max_concurrency={self.max_concurrency}")
        entry = self._table.lookup(req.service_name, req.method_name)
        attachment_size = meta.attachment_size
        if not 0 <= attachment_size <= len(rest):
            raise BrpcError(Errno.EREQUEST,
                            f"attachment_size={attachment_size} is larger than request_size={len(rest)}")
        split = len(rest) - attachment_size
        compress_type = meta.compress_type
        payload = rest[:split]
        if compress_type:  # inflated off the event loop, bounded by the body limit
            payload = await asyncio.to_thread(decompress, payload, compress_type, self.max_body_size)
        ctx = RequestContext(
            service=req.service_name, method=req.method_name, log_id=req.log_id,
            correlation_id=meta.correlation_id, peer=conn.peer, compress_type=compress_type,
            attachment=rest[split:],
        )
        timeout = entry.timeout_s if entry.timeout_s is not None else self.timeout_s
        self._in_flight += 1
        try:
            result = await asyncio.wait_for(entry.handler(payload, ctx), timeout)
        except BrpcError:
            raise
        except TimeoutError:
            limit = f"within {timeout * 1000:.0f} ms" if timeout is not None else "(its own timeout)"
            raise BrpcError(Errno.ERPCTIMEDOUT, f"handler did not finish {limit}") from None
        except Exception as exc:  # a handler bug must not kill the connection: answer EINTERNAL
            raise BrpcError(Errno.EINTERNAL, str(exc) or type(exc).__name__) from exc
        finally:
            self._in_flight -= 1
        if not isinstance(result, bytes | bytearray | memoryview):
            raise BrpcError(Errno.EINTERNAL, f"handler returned {type(result).__name__}, not bytes")
        return bytes(result), entry.response_compress_type
