"""The protocol-independent client: ``classify`` builds the request and parses the answer; each protocol
adapter only implements ``infer`` (send one pipeline ``Request``, return its ``Response``)."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from typing import Any

from resnest_serving.client.codec import DEFAULT_METHOD, Classification, build_request, parse_classifications
from resnest_serving.client.credentials import Credentials
from resnest_serving.client.errors import CONNECTION_CODES, TransportError, speaks_tls
from resnest_serving.client.images import encode_image, named_images
from resnest_serving.protocol.endpoints import is_loopback, split_host_port  # noqa: F401  (is_loopback re-exported)
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response

__all__ = ["DEFAULT_TIMEOUT", "AsyncClassifier", "Classifier", "is_loopback", "parse_endpoint"]

DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for one whole call unless the client or the call says otherwise."""


parse_endpoint = split_host_port  # ``"host:port"`` or ``"[v6]:port"`` → ``(host, port)``

log = logging.getLogger(__name__)
_warned_clear_token: set[str] = set()
_TLS_PROBE_S = 2.0


class _Common:
    protocol = ""

    def __init__(self, endpoint: str, *, service_name: str = "imagenet", method: str = DEFAULT_METHOD,
                 timeout: float = DEFAULT_TIMEOUT, credentials: Credentials | None = None) -> None:
        self.endpoint = endpoint
        self.credentials = credentials or Credentials()
        self.host, self.port = parse_endpoint(endpoint)
        self.service_name = service_name
        self.method = method
        self.timeout = float(timeout)
        self._tls_probe: bool | None = None
        self._warn_if_token_in_clear()

    def _warn_if_token_in_clear(self) -> None:
        """One WARNING per host when a token is to be sent without TLS beyond loopback."""
        if self.credentials.token and not self.credentials.tls and not is_loopback(self.host):
            if self.host not in _warned_clear_token:
                _warned_clear_token.add(self.host)
                log.warning("sending a bearer token to %s without TLS: anyone on the network path can read it; give "
                            "--tls-ca (Credentials(tls_ca=...)) for a server with tls: on", self.endpoint)

    def _needs_tls_hint(self, error: TransportError) -> bool:
        return not self.credentials.tls and error.code in CONNECTION_CODES

    def _speaks_tls(self) -> bool:
        """Probed once per client (a load test's many failures cost one handshake)."""
        if self._tls_probe is None:
            self._tls_probe = speaks_tls(self.host, self.port, min(self.timeout, _TLS_PROBE_S))
        return self._tls_probe

    def explained(self, error: TransportError) -> TransportError:
        """``error``, saying "the server speaks TLS" when a plain-text call was dropped by a TLS port."""
        if self._needs_tls_hint(error) and self._speaks_tls():
            return error.with_tls_hint()
        return error

    async def explained_async(self, error: TransportError) -> TransportError:
        """``explained`` off the event loop."""
        if self._needs_tls_hint(error) and await asyncio.to_thread(self._speaks_tls):
            return error.with_tls_hint()
        return error

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    def build(self, images: Any, *, log_id: int = 0, channel_order: str = "bgr") -> Request:
        """The Request ``classify`` would send for ``images`` (one key per image)."""
        items = [(key, encode_image(image, channel_order=channel_order)) for key, image in named_images(images)]
        return build_request(items, service_name=self.service_name, method=self.method, log_id=log_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r}, service_name={self.service_name!r})"


class Classifier(_Common, ABC):
    """Blocking client. ``classify(images)`` → one ``Classification`` per image, in order.

    Raises ``ServingError`` (err_no != 0), ``TransportError`` (connection, timeout, HTTP/gRPC/bRPC
    status) or ``BadResponseError``. Thread-safe; use as a context manager or call ``close()``.
    """

    def classify(self, images: Any, *, timeout: float | None = None, log_id: int = 0,
                 channel_order: str = "bgr") -> list[Classification]:
        """Classify one image or several in one request (paths, encoded bytes, uint8 arrays, or a
        ``{key: image}`` mapping); ``channel_order`` says how to read 3/4-channel arrays."""
        request = self.build(images, log_id=log_id, channel_order=channel_order)
        return self.classify_request(request, timeout=timeout)

    def classify_request(self, request: Request, *, timeout: float | None = None) -> list[Classification]:
        """Send a built pipeline Request; one ``Classification`` per key (errors raised)."""
        return parse_classifications(self.infer(request, timeout=timeout), len(request.key))

    @abstractmethod
    def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        """Send a raw pipeline Request; return the Response as is (err_no not checked)."""

    def close(self) -> None:
        """Release connections. Idempotent."""

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClassifier(_Common, ABC):
    """asyncio client with the same API as ``Classifier`` (``await classify(...)``); bound to the
    event loop it is first used on. Use ``async with`` or ``await close()``."""

    async def classify(self, images: Any, *, timeout: float | None = None, log_id: int = 0,
                       channel_order: str = "bgr") -> list[Classification]:
        """See ``Classifier.classify``."""
        request = self.build(images, log_id=log_id, channel_order=channel_order)
        return await self.classify_request(request, timeout=timeout)

    async def classify_request(self, request: Request, *, timeout: float | None = None) -> list[Classification]:
        """See ``Classifier.classify_request``."""
        return parse_classifications(await self.infer(request, timeout=timeout), len(request.key))

    @abstractmethod
    async def infer(self, request: Request, *, timeout: float | None = None) -> Response:
        """Send a raw pipeline Request; return the Response as is (err_no not checked)."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
