"""Remote engine: run the model on model server(s) over bRPC (C++ Serving's GeneralModelService). It lives
in serving/, beside the protocol code, because the pipeline knows no wire protocol.

What a Paddle Serving op with ``client_type: brpc`` and ``server_endpoints`` does: each batch goes to
``GeneralModelService.inference`` as one FP32 tensor ``[N, 3, H, W]`` named with the bundle's real feed
name and alias, asking for the fetch alias. The batch travels in ``float_data`` (what a real C++ Serving
0.9 reads for FP32; it reads ``tensor_content`` only for FP16/INT8/UINT8), encoded by hand as one packed
field, so it costs what ``tensor_content`` does; ``use_tensor_content=True`` sends that field instead.

Endpoints are used in turn (round-robin). An endpoint that cannot be reached (connect refused, connection
dropped, server stopping) is marked down for ``backoff_s`` and the call moves on to the next one; when
none is left the call fails with ``RemoteModelError`` naming every endpoint and why. Errors the model
server answers (a non-zero RPC ``error_code``, e.g. -5100 for bad input) and timeouts are not retried.
One ``BrpcClient`` per endpoint (``pool_size`` connections) is shared by all engine instances and created
lazily inside the running event loop.

``RemoteSecurity`` (``local_service_conf.rpc_tls_*`` and ``rpc_token_file``) gives every endpoint TLS and a
token. What reaches the pipeline's callers names no endpoint: the WARNING log line has the address and the
model call's log_id, the error the model call's log_id and the brpc error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from resnest_serving.pipeline.engines import EngineError, StartReport
from resnest_serving.protocol import general_model_service_pb2 as gm
from resnest_serving.protocol.baidu_std import BrpcError, Errno
from resnest_serving.protocol.brpc_client import BrpcClient
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.endpoints import split_host_port
from resnest_serving.protocol.general_model import encode_request, tensor_values
from resnest_serving.protocol.serving_config import read_config
from resnest_serving.protocol.wire import GENERAL_MODEL_SERVICE
from resnest_serving.serving.config.schema import LocalServiceConf
from resnest_serving.serving.doors.security import TokenSet, read_tokens

__all__ = ["RemoteEngine", "RemoteModel", "RemoteModelError", "RemoteSecurity", "create_remote_engines"]

log = logging.getLogger(__name__)

DEFAULT_BACKOFF_S = 1.0
_UNREACHABLE = {Errno.EFAILEDSOCKET, Errno.EEOF, Errno.ELOGOFF}  # try the next endpoint, mark this one down
_BUSY = {Errno.ELIMIT, Errno.EOVERCROWDED}  # try the next endpoint, this one stays up


class RemoteModelError(EngineError):
    """A remote model call failed: ``code`` is the brpc errno or C++ Serving code, ``endpoint`` where."""

    def __init__(self, message: str, code: int | None = None, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint


@dataclass(frozen=True)
class RemoteSecurity:
    """TLS and token for the model servers: ``ssl_context`` verifies them (None: plain text), ``tokens``'
    first token is sent as ``RpcMeta.authentication_data`` (None: no token), following its file."""

    ssl_context: ssl.SSLContext | None = None
    tokens: TokenSet | None = None

    @classmethod
    def from_config(cls, lsc: LocalServiceConf, where: str = "op.<name>.local_service_conf") -> RemoteSecurity:
        """From ``rpc_tls_ca_file``, ``rpc_tls_cert_file``/``rpc_tls_key_file`` and ``rpc_token_file``;
        ValueError naming the key when one is missing, unreadable or inconsistent."""
        for key in ("rpc_tls_ca_file", "rpc_tls_cert_file", "rpc_tls_key_file", "rpc_token_file"):
            path = getattr(lsc, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"[CONF] {where}.{key}: {str(path)!r} is not a file")
        if (lsc.rpc_tls_cert_file is None) != (lsc.rpc_tls_key_file is None):
            raise ValueError(f"[CONF] {where}.rpc_tls_cert_file: give rpc_tls_cert_file and rpc_tls_key_file "
                             "together (the pipeline's client certificate and its key)")
        if lsc.rpc_tls_cert_file is not None and lsc.rpc_tls_ca_file is None:
            raise ValueError(f"[CONF] {where}.rpc_tls_cert_file: a client certificate needs rpc_tls_ca_file, the "
                             "CA that verifies the model servers")
        context = None
        if lsc.rpc_tls_ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=str(lsc.rpc_tls_ca_file))
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                if lsc.rpc_tls_cert_file is not None:
                    context.load_cert_chain(str(lsc.rpc_tls_cert_file), str(lsc.rpc_tls_key_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"[CONF] {where}.rpc_tls_*: cannot load the certificate/key files: {exc}") from None
        tokens = None
        if lsc.rpc_token_file is not None:
            path = Path(lsc.rpc_token_file)
            tokens = TokenSet(read_tokens(path, f"{where}.rpc_token_file"), path)
        return cls(context, tokens)

    @property
    def token(self) -> bytes:
        return self.tokens.first() if self.tokens is not None else b""

    def describe(self) -> str:
        parts = ["TLS" if self.ssl_context is not None else "plain text"]
        if self.tokens is not None:
            parts.append(f"token from {self.tokens.path}")
        return ", ".join(parts)


@dataclass
class _Endpoint:
    address: str
    host: str
    port: int
    client: BrpcClient | None = None
    down_until: float = 0.0
    down_since: float = 0.0
    last_error: str = ""


class RemoteModel:
    """The model server(s) behind all remote engine instances: round-robin, back-off, one client each."""

    def __init__(self, bundle: ModelBundle, endpoints: tuple[str, ...] | list[str], pool_size: int,
                 timeout_s: float, *, backoff_s: float = DEFAULT_BACKOFF_S, use_tensor_content: bool = False,
                 security: RemoteSecurity | None = None):
        if not endpoints:
            raise ValueError("a remote model needs at least one endpoint \"host:port\"")
        self.bundle = bundle
        self.timeout_s = timeout_s
        self.pool_size = max(1, pool_size)
        self.backoff_s = backoff_s
        self.use_tensor_content = use_tensor_content
        self.security = security or RemoteSecurity()
        self.endpoints = [_Endpoint(e, *split_host_port(e)) for e in endpoints]
        self._closing: set[asyncio.Task[None]] = set()
        self._turn = itertools.count()
        self._log_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def addresses(self) -> str:
        return ", ".join(e.address for e in self.endpoints)

    async def infer(self, batch: np.ndarray, log_id: int | None = None) -> np.ndarray:
        """Probabilities [N, classes] for ``batch`` [N, 3, H, W] from the next reachable endpoint."""
        self._bind_loop()
        b = self.bundle
        log_id = next(self._log_ids) if log_id is None else log_id
        payload = encode_request(batch, b.feed_name, b.feed_alias, [b.fetch_alias], log_id, self.use_tensor_content)
        start = next(self._turn)
        n = len(self.endpoints)
        failures = []
        for ep in (self.endpoints[(start + i) % n] for i in range(n)):
            now = time.monotonic()
            if ep.down_until > now:
                failures.append((ep, f"down for {now - ep.down_since:.1f} s after {ep.last_error}", "down"))
                continue
            try:
                data = await self._client(ep).call(GENERAL_MODEL_SERVICE, "inference", payload, log_id=log_id)
            except BrpcError as exc:
                if exc.code in _UNREACHABLE:
                    self._mark_down(ep, exc, log_id)
                    failures.append((ep, str(exc), _errno_name(exc.code)))
                    continue
                if exc.code in _BUSY:
                    log.warning("log_id=%d model server %s busy, trying the next one: %s", log_id, ep.address, exc)
                    failures.append((ep, str(exc), _errno_name(exc.code)))
                    continue
                log.warning("log_id=%d model server %s failed: %s", log_id, ep.address, exc)
                raise RemoteModelError(f"model server failed (model call log_id={log_id}): "
                                       f"{self._public(str(exc))}", exc.code, ep.address) from None
            if ep.down_since:
                log.info("model server %s is reachable again", ep.address)
                ep.down_until = ep.down_since = 0.0
            return self._decode(data, batch.shape[0], ep, log_id)
        log.warning("log_id=%d no model server available: %s", log_id,
                    "; ".join(f"{ep.address}: {why}" for ep, why, _ in failures))
        raise RemoteModelError(f"no model server available (model call log_id={log_id}; {n} endpoint(s): "
                               f"{', '.join(short for _, _, short in failures)})", endpoint=self.addresses)

    def _public(self, text: str) -> str:
        """``text`` with every endpoint's address replaced: errors that reach callers name no internal host."""
        for ep in self.endpoints:
            for form in (ep.address, f"{ep.host}:{ep.port}", f"[{ep.host}]:{ep.port}"):
                text = text.replace(form, "<model server>")
        return text

    def _mark_down(self, ep: _Endpoint, exc: BrpcError, log_id: int) -> None:
        now = time.monotonic()
        if not ep.down_since:
            ep.down_since = now
            log.warning("log_id=%d model server %s unreachable, skipping it for %.1f s: %s", log_id, ep.address,
                        self.backoff_s, exc)
        ep.down_until = now + self.backoff_s
        ep.last_error = str(exc)

    def _decode(self, data: bytes, images: int, ep: _Endpoint, log_id: int) -> np.ndarray:
        try:
            return self._values(data, images)
        except RemoteModelError as exc:
            log.warning("log_id=%d model server %s: %s", log_id, ep.address, exc)
            raise RemoteModelError(f"model server failed (model call log_id={log_id}): {self._public(str(exc))}",
                                   exc.code, ep.address) from None

    def _values(self, data: bytes, images: int) -> np.ndarray:
        b = self.bundle
        response = gm.Response()
        try:
            response.ParseFromString(data)
        except DecodeError as exc:
            raise RemoteModelError(f"bad Response: {exc}", Errno.ERESPONSE) from None
        if response.err_no:
            raise RemoteModelError(f"[{response.err_no}] {response.err_msg}", response.err_no)
        tensor = next((t for o in response.outputs for t in o.tensor
                       if t.alias_name == b.fetch_alias or t.name == b.fetch_name), None)
        if tensor is None:
            raise RemoteModelError(f"the response has no fetch var {b.fetch_alias!r} (real name {b.fetch_name!r}); "
                                   "is it serving the same model?", Errno.ERESPONSE)
        try:
            values = tensor_values(tensor).astype(np.float32, copy=False)
        except ValueError as exc:
            raise RemoteModelError(str(exc), Errno.ERESPONSE) from None
        if not values.size or values.size % images or (tensor.shape and tensor.shape[0] != images):
            raise RemoteModelError(f"fetch var {b.fetch_alias!r} has shape {list(tensor.shape)} and {values.size} "
                                   f"values for {images} images", Errno.ERESPONSE)
        return values.reshape(images, -1)

    def _bind_loop(self) -> None:
        """Clients belong to one event loop; a new loop (e.g. a restarted server in tests) gets new ones."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            for ep in self.endpoints:
                ep.client = None

    def _client(self, ep: _Endpoint) -> BrpcClient:
        token = self.security.token
        if ep.client is not None and ep.client.auth_data != token:  # the token file changed: new connections
            log.info("model server %s: token changed, reconnecting", ep.address)
            task = asyncio.get_running_loop().create_task(ep.client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            ep.client = None
        if ep.client is None:
            ep.client = BrpcClient(ep.host, ep.port, timeout=self.timeout_s, pool_size=self.pool_size,
                                   ssl=self.security.ssl_context, auth_data=token)
        return ep.client

    async def close(self) -> None:
        """Close the connections (idempotent)."""
        clients = [ep.client for ep in self.endpoints if ep.client is not None]
        for ep in self.endpoints:
            ep.client = None
        for client in clients:
            await client.close()


class RemoteEngine:
    """One engine instance over the shared RemoteModel (implements ``pipeline.engines.Engine``)."""

    def __init__(self, model: RemoteModel) -> None:
        self.model = model

    async def start(self) -> StartReport:
        """Nothing to load here: the model server warms up its own engines, and may start after this
        pipeline (calls fail with every endpoint named until one answers)."""
        return StartReport("brpc", "fp32", f"model server(s) {self.model.addresses} "
                                           f"({self.model.security.describe()})")

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        return await self.model.infer(batch)

    async def close(self) -> None:
        await self.model.close()


def with_client_config(bundle: ModelBundle, client_config: Path) -> ModelBundle:
    """The bundle with the remote model's feed and fetch names from its client prototxt (Paddle Serving's
    `client_config`): what the remote engine sends and asks for."""
    config = read_config(client_config)
    if len(config.feed_var) != 1 or len(config.fetch_var) != 1:
        raise ValueError(f"{client_config}: expected one feed and one fetch var (an image classifier), got "
                         f"{len(config.feed_var)} and {len(config.fetch_var)}")
    feed, fetch = config.feed_var[0], config.fetch_var[0]
    log.info("remote model names from %s: feed %r (alias %r), fetch %r (alias %r)", client_config, feed.name,
             feed.alias_name, fetch.name, fetch.alias_name)
    return replace(bundle, feed_name=feed.name, feed_alias=feed.alias_name, fetch_name=fetch.name,
                   fetch_alias=fetch.alias_name)


def create_remote_engines(bundle: ModelBundle, endpoints: tuple[str, ...], concurrency: int, timeout_s: float,
                          *, backoff_s: float = DEFAULT_BACKOFF_S, use_tensor_content: bool = False,
                          security: RemoteSecurity | None = None) -> list:
    """``concurrency`` engine instances sharing one client per endpoint (``pool_size`` = concurrency)."""
    model = RemoteModel(bundle, endpoints, concurrency, timeout_s, backoff_s=backoff_s,
                        use_tensor_content=use_tensor_content, security=security)
    log.info("remote model at %s over bRPC (%s): %d instance(s), timeout %.0f ms", model.addresses,
             model.security.describe(), concurrency, timeout_s * 1000)
    return [RemoteEngine(model) for _ in range(concurrency)]


def _errno_name(code: int) -> str:
    try:
        return Errno(code).name
    except ValueError:
        return str(code)
