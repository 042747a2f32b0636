"""REST adapter: ``POST /{service_name}/{method}`` with the grpc-gateway JSON of the pipeline Request,
sync (``http.client``, keep-alive pool) and asyncio (aiohttp)."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format

from resnest_serving.client.base import AsyncClassifier, Classifier
from resnest_serving.client.errors import BadResponseError, TransportError
from resnest_serving.protocol.endpoints import join_host_port
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response

__all__ = ["AsyncHttpClassifier", "HttpClassifier", "decode_http_response", "encode_http_request"]

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_IDLE = 32


def encode_http_request(request: Request) -> bytes:
    """grpc-gateway JSON body (proto field names) of a pipeline Request."""
    return json.dumps(json_format.MessageToDict(request, preserving_proto_field_name=True)).encode()


def decode_http_response(status: int, body: bytes, url: str) -> Response:
    """HTTP 200 + JSON → Response; any other status → ``TransportError(code=status)``."""
    if status != 200:
        text = body.decode("utf-8", "replace").strip()
        try:  # grpc-gateway style {"error": ..., "code": ..., "message": ...}
            data = json.loads(text)
            if isinstance(data, dict) and data.get("message"):
                text = str(data["message"])
        except ValueError:
            pass
        raise TransportError(f"HTTP {status} from {url}: {text[:300]}", protocol="http", code=status,
                             timeout=status == 504)
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError(f"JSON {type(data).__name__}, not an object")
        return json_format.ParseDict(data, Response(), ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise BadResponseError(f"HTTP 200 from {url} is not a pipeline Response: {exc}") from None


class HttpClassifier(Classifier):
    """Blocking REST client over ``http.client`` with a small keep-alive connection pool. The timeout
    applies to each socket operation (connect, send, wait for the answer)."""

    protocol = "http"

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.path = f"/{quote(self.service_name, safe='')}/{quote(self.method, safe='')}"
        self.url = f"{self.credentials.scheme}://{join_host_port(self.host, self.port)}{self.path}"
        self._ssl = self.credentials.ssl_context()
        self._auth = self.credentials.http_headers()
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        status, data, _ = self._post(encode_http_request(request), _HEADERS, self._timeout(timeout))
        return decode_http_response(status, data, self.url)

    def _post(self, body: bytes, headers: dict[str, str], timeout: float,
              path: str | None = None) -> tuple[int, bytes, Any]:
        """POST ``body`` to ``path`` (default ``self.path``) over a pooled connection: (status, body, response
        headers)."""
        for attempt in range(2):
            conn, reused = self._acquire(timeout)
            try:
                conn.request("POST", path or self.path, body=body, headers={**headers, **self._auth})
                reply = conn.getresponse()
                data = reply.read()
            except TimeoutError:
                conn.close()
                raise TransportError(f"HTTP call to {self.url} timed out after {timeout:g} s",
                                     protocol=self.protocol, code="timeout", timeout=True) from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 0:  # a keep-alive connection the server had closed: retry once
                    continue
                raise self.explained(TransportError(f"HTTP call to {self.url} failed: {exc}", protocol=self.protocol,
                                                    code="connection")) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise self.explained(TransportError(f"HTTP call to {self.url} failed: {exc!r}",
                                                    protocol=self.protocol, code="connection")) from None
            self._release(conn, reply.will_close)
            return reply.status, data, reply.headers
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _acquire(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            if self._ssl is not None:
                return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self._ssl), False
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _release(self, conn: http.client.HTTPConnection, will_close: bool) -> None:
        with self._lock:
            if not will_close and not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


class AsyncHttpClassifier(AsyncClassifier):
    """asyncio REST client (aiohttp); the session opens on first use, in the running loop. The timeout
    bounds the whole call."""

    protocol = "http"

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        path = f"/{quote(self.service_name, safe='')}/{quote(self.method, safe='')}"
        self.url = f"{self.credentials.scheme}://{join_host_port(self.host, self.port)}{path}"
        self._session: Any = None

    async def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        status, data, _ = await self._post(encode_http_request(request), _HEADERS, self._timeout(timeout))
        return decode_http_response(status, data, self.url)

    async def _post(self, body: bytes, headers: dict[str, str], timeout: float,
                    path: str | None = None) -> tuple[int, bytes, Any]:
        """POST ``body`` to ``self.url`` (or ``path`` on its server): (status, body, response headers)."""
        import aiohttp

        if self._session is None:
            ssl = self.credentials.ssl_context()
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=ssl if ssl else True))
        url = f"{self.credentials.scheme}://{join_host_port(self.host, self.port)}{path}" if path else self.url
        try:
            async with self._session.post(url, data=body, headers={**headers, **self.credentials.http_headers()},
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                return reply.status, await reply.read(), reply.headers
        except TimeoutError:
            raise TransportError(f"HTTP call to {self.url} timed out after {timeout:g} s", protocol=self.protocol,
                                 code="timeout", timeout=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise await self.explained_async(TransportError(f"HTTP call to {self.url} failed: {exc!r}",
                                                            protocol=self.protocol, code="connection")) from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
