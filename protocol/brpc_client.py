"""bRPC ``baidu_std`` client on asyncio, plus a thread-safe synchronous wrapper.

Calls are multiplexed: several requests may be in flight on one connection and their responses are
matched by ``correlation_id``, in whatever order they come back. A small pool of such connections is
opened lazily; a connection that drops fails the calls waiting on it (EEOF / EFAILEDSOCKET) and is
replaced by the next call. Used by ``client/`` and by the pipeline's remote-model engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl as ssl_module
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from resnest_serving.protocol.baidu_std import (
    DEFAULT_MAX_BODY_SIZE,
    BrpcError,
    CompressType,
    Errno,
    Frame,
    FrameError,
    FrameParser,
    compress,
    decompress,
    encode_request,
)

__all__ = ["BrpcClient", "SyncBrpcClient"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

_READ_CHUNK = 256 * 1024


class _Connection:
    """One TCP connection: writes request frames, and a reader task that routes responses to futures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body_size: int,
                 name: str) -> None:
        self.writer = writer
        self.name = name
        self.pending: dict[int, asyncio.Future[Frame]] = {}
        self.closed = False
        self._reader = reader
        self._parser = FrameParser(max_body_size)
        self._write_lock = asyncio.Lock()
        self._read_task = asyncio.create_task(self._read_loop())

    @property
    def alive(self) -> bool:
        return not self.closed and not self.writer.is_closing()

    async def send(self, correlation_id: int, frame: bytes) -> asyncio.Future[Frame]:
        """Register a waiter for ``correlation_id`` and write the request; returns the waiter."""
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self.pending[correlation_id] = future
        async with self._write_lock:
            if not self.alive:
                raise BrpcError(Errno.EFAILEDSOCKET, f"connection to {self.name} is closed")
            try:
                self.writer.write(frame)
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise BrpcError(Errno.EFAILEDSOCKET, f"cannot send to {self.name}: {exc}") from exc
        return future

    async def _read_loop(self) -> None:
        error = BrpcError(Errno.EEOF, f"connection to {self.name} closed by the server")
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    break
                for frame in self._parser.feed(data):
                    future = self.pending.pop(frame.meta.correlation_id, None)
                    if future is None or future.done():
                        log.debug("brpc response for unknown or expired correlation_id=%d from %s",
                                  frame.meta.correlation_id, self.name)
                        continue
                    future.set_result(frame)
        except FrameError as exc:
            log.warning("brpc bad frame from %s, dropping the connection: %s", self.name, exc.text)
            error = BrpcError(Errno.EFAILEDSOCKET, f"bad response frame from {self.name}: {exc.text}")
        except (ConnectionError, OSError) as exc:
            error = BrpcError(Errno.EFAILEDSOCKET, f"connection to {self.name} failed: {exc}")
        except asyncio.CancelledError:
            error = BrpcError(Errno.ECLOSE, f"connection to {self.name} closed by the client")
        finally:
            self.fail_all(error)

    def fail_all(self, error: BrpcError) -> None:
        """Mark the connection dead, fail every waiting call with ``error`` and close the socket."""
        self.closed = True
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        if not self.writer.is_closing():
            self.writer.close()
        if pending:
            log.debug("brpc %d calls on %s failed: %s", len(pending), self.name, error)

    async def close(self) -> None:
        self._read_task.cancel()
        await asyncio.gather(self._read_task, return_exceptions=True)


class BrpcClient:
    """Async bRPC client for one server: ``await call(service, method, payload)``.

    ``timeout`` (seconds) bounds each whole call (connect, send, wait) unless ``call`` gets its own;
    ``pool_size`` connections are opened lazily and used in turn; ``compress_type`` compresses request
    payloads (0 none, 2 gzip, 3 zlib). Bound to the event loop it is first used on.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 20.0,
        connect_timeout: float = 2.0,
        pool_size: int = 1,
        compress_type: int = CompressType.NONE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        ssl: ssl_module.SSLContext | None = None,
        auth_data: bytes = b"",
    ) -> None:
        """``ssl``: speak TLS (verifying the server with the context); ``auth_data``: sent as
        ``RpcMeta.authentication_data`` (a token, for a server with ``auth:``)."""
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        compress(b"", compress_type)  # refuse snappy/lz4 here, not at the first call
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.compress_type = int(compress_type)
        self.max_body_size = max_body_size
        self.ssl = ssl
        self.auth_data = auth_data
        self._slots: list[_Connection | None] = [None] * pool_size
        self._slot_locks = [asyncio.Lock() for _ in range(pool_size)]
        self._turn = itertools.count()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def __aenter__(self) -> BrpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        log_id: int = 0,
        attachment: bytes = b"",
    ) -> bytes:
        """Call ``service.method`` (full service name) with a serialized request; return the (decompressed)
        serialized response. Failures raise ``BrpcError`` with the brpc errno (server-sent or local:
        ERPCTIMEDOUT, EFAILEDSOCKET, EEOF, ERESPONSE)."""
        response, _attachment = await self.call_with_attachment(
            service, method, payload, timeout=timeout, log_id=log_id, attachment=attachment
        )
        return response

    async def call_with_attachment(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        log_id: int = 0,
        attachment: bytes = b"",
    ) -> tuple[bytes, bytes]:
        """Like ``call`` but returns ``(response payload, response attachment)``."""
        if self._closed:
            raise BrpcError(Errno.ECLOSE, "client is closed")
        self._check_loop()
        timeout = self.timeout if timeout is None else timeout
        correlation_id = next(self._ids)
        frame = encode_request(service, method, payload, correlation_id=correlation_id, log_id=log_id,
                               authentication_data=self.auth_data,
                               compress_type=self.compress_type, attachment=attachment)
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection()
                response = await (await conn.send(correlation_id, frame))
        except TimeoutError:
            raise BrpcError(
                Errno.ERPCTIMEDOUT,
                f"{service}.{method} to {self.host}:{self.port} timed out after {timeout * 1000:.0f} ms",
            ) from None
        finally:
            if conn is not None:
                conn.pending.pop(correlation_id, None)
        rmeta = response.meta.response
        if rmeta.error_code:
            raise BrpcError(rmeta.error_code, rmeta.error_text)
        try:
            return decompress(response.payload, response.meta.compress_type, self.max_body_size), response.attachment
        except BrpcError as exc:
            raise BrpcError(Errno.ERESPONSE,
                            f"bad response from {self.host}:{self.port}: {exc.text}") from exc

    async def call_message(
        self,
        service: str,
        method: str,
        request_msg: Message,
        response_cls: type[M],
        *,
        timeout: float | None = None,
        log_id: int = 0,
    ) -> M:
        """Call with protobuf messages: serialize ``request_msg``, parse the answer as ``response_cls``."""
        data = await self.call(service, method, request_msg.SerializeToString(), timeout=timeout,
                               log_id=log_id)
        return _parse(response_cls, data)

    async def close(self) -> None:
        """Close every connection; calls still waiting fail with ECLOSE. Idempotent."""
        self._closed = True
        conns = [c for c in self._slots if c is not None]
        self._slots = [None] * len(self._slots)
        for conn in conns:
            await conn.close()

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("BrpcClient is bound to another event loop; create one per loop "
                               "(or use SyncBrpcClient from threads)")

    async def _connection(self) -> _Connection:
        """The next pool slot's connection, (re)connecting it if it is missing or dead."""
        slot = next(self._turn) % len(self._slots)
        conn = self._slots[slot]
        if conn is not None and conn.alive:
            return conn
        async with self._slot_locks[slot]:
            conn = self._slots[slot]
            if conn is None or not conn.alive:
                conn = await self._connect()
                self._slots[slot] = conn
            return conn

    async def _connect(self) -> _Connection:
        name = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                               server_hostname=self.host if self.ssl else None)
        except TimeoutError:
            raise BrpcError(
                Errno.EFAILEDSOCKET, f"connect to {name} timed out after {self.connect_timeout * 1000:.0f} ms"
            ) from None
        except ssl_module.SSLError as exc:
            raise BrpcError(Errno.ESSL, f"TLS with {name} failed: {exc}") from exc
        except OSError as exc:
            raise BrpcError(Errno.EFAILEDSOCKET, f"cannot connect to {name}: {exc}") from exc
        log.debug("brpc connected to %s", name)
        return _Connection(reader, writer, self.max_body_size, name)


def _parse(response_cls: type[M], data: bytes) -> M:
    msg = response_cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise BrpcError(Errno.ERESPONSE,
                        f"cannot parse response as {response_cls.__name__}: {exc}") from exc
    return msg


class SyncBrpcClient:
    """Blocking, thread-safe face of ``BrpcClient``: its own event loop runs in a daemon thread and any
    number of threads may ``call`` at once (their calls share the connections)."""

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        """Same arguments as ``BrpcClient``."""
        self._client = BrpcClient(host, port, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"brpc-client-{host}:{port}",
                                        daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> SyncBrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, service: str, method: str, payload: bytes, *, timeout: float | None = None,
             log_id: int = 0, attachment: bytes = b"") -> bytes:
        """Blocking ``BrpcClient.call``."""
        return self._run(self._client.call(service, method, payload, timeout=timeout, log_id=log_id,
                                           attachment=attachment))

    def call_message(self, service: str, method: str, request_msg: Message, response_cls: type[M], *,
                     timeout: float | None = None, log_id: int = 0) -> M:
        """Blocking ``BrpcClient.call_message``."""
        return self._run(self._client.call_message(service, method, request_msg, response_cls,
                                                   timeout=timeout, log_id=log_id))

    def close(self) -> None:
        """Close the connections and stop the background loop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                raise BrpcError(Errno.ECLOSE, "client is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()
