"""Drop-in ``PipelineClient`` with Paddle Serving 0.9's API (python/pipeline/pipeline_client.py).

Existing scripts change one import (``from client import PipelineClient``) and keep working: same
``connect``/``predict`` signatures, same request packing, the raw protobuf ``Response`` back, gRPC errors
raised as ``grpc.RpcError``. Differences, all deliberate: no timing prints on stdout, the caller's
``feed_dict`` is not modified (Paddle pops ``logid``/``clientip`` from it), numpy print options are
changed only while packing (Paddle sets ``threshold=sys.maxsize`` globally), and ``predict`` takes an
optional keyword-only ``timeout`` in seconds (Paddle has none: it waits forever).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import sys
from collections.abc import Callable

import grpc
import numpy as np

from resnest_serving.client.base import parse_endpoint
from resnest_serving.client.grpc_client import CHANNEL_OPTIONS
from resnest_serving.protocol.endpoints import join_host_port
from resnest_serving.protocol.pipeline_service_pb2 import Request, Response, Tensor
from resnest_serving.protocol.pipeline_service_pb2_grpc import PipelineServiceStub
from resnest_serving.protocol.wire import PROFILE_KEY, ElemType

__all__ = ["PipelineClient", "PipelinePredictFuture", "pack_request"]

log = logging.getLogger(__name__)

_PROFILE_VALUE = "1"

# numpy dtype -> (Tensor field, pipeline elem_type), ../shared/reference/paddle_serving_protocol.md §5 "Tensor mode" (bf16 travels as uint16).
_TENSOR_FIELDS: dict[str, tuple[str, ElemType]] = {
    "int64": ("int64_data", ElemType.INT64),
    "float32": ("float_data", ElemType.FP32),
    "int32": ("int_data", ElemType.INT32),
    "float64": ("float64_data", ElemType.FP64),
    "int16": ("int_data", ElemType.INT16),
    "float16": ("float_data", ElemType.FP16),
    "uint16": ("uint32_data", ElemType.BF16),
    "uint8": ("uint32_data", ElemType.UINT8),
    "int8": ("int_data", ElemType.INT8),
    "bool": ("bool_data", ElemType.BOOL),
}


class PipelinePredictFuture:
    """What ``predict(..., asyn=True)`` returns: ``result()`` waits for and returns the Response."""

    def __init__(self, call_future: grpc.Future, callback_func: Callable[[Response], Response]) -> None:
        self.call_future = call_future
        self.callback_func = callback_func

    def result(self, timeout: float | None = None) -> Response:
        return self.callback_func(self.call_future.result(timeout=timeout))


class PipelineClient:
    """Paddle Serving's pipeline gRPC client: ``connect(["127.0.0.1:9993"])`` then
    ``predict(feed_dict={"image": b64}, fetch=["label", "prob"])``."""

    def __init__(self) -> None:
        self._channel: grpc.Channel | None = None
        self._stub: PipelineServiceStub | None = None
        self._profile_key = PROFILE_KEY
        self._profile_value = _PROFILE_VALUE

    def connect(self, endpoints: list[str]) -> None:
        """Open an insecure channel to ``endpoints`` ("ip:port" strings; round-robin over several)."""
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self._channel = grpc.insecure_channel(
            _channel_target(list(endpoints)),
            options=[*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")],
        )
        self._stub = PipelineServiceStub(self._channel)

    def predict(self, feed_dict: dict, fetch: list | None = None, asyn: bool = False,
                pack_tensor_format: bool = False, use_tensor_bytes: bool = False, profile: bool = False,
                log_id: int = 0, *, timeout: float | None = None) -> Response | PipelinePredictFuture:
        """Pack ``feed_dict`` into a Request and call ``inference``; returns the Response (or, with
        ``asyn=True``, a future whose ``result()`` returns it). ``fetch`` is type-checked only, as in
        Paddle Serving."""
        if not isinstance(feed_dict, dict):
            raise TypeError("feed must be dict type with format: {name: value}.")
        if fetch is not None and not isinstance(fetch, list):
            raise TypeError("fetch must be list type with format: [name].")
        if self._stub is None:
            raise RuntimeError("PipelineClient is not connected: call connect(endpoints) first")
        req = pack_request(feed_dict, pack_tensor_format=pack_tensor_format,
                           use_tensor_bytes=use_tensor_bytes, profile=profile)
        req.logid = int(log_id)
        if not asyn:
            return self._unpack_response_package(self._stub.inference(req, timeout=timeout), fetch)
        call_future = self._stub.inference.future(req, timeout=timeout)
        return PipelinePredictFuture(call_future, lambda resp: self._unpack_response_package(resp, fetch))

    def close(self) -> None:
        """Close the channel (Paddle's client has no close; harmless to skip)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def _unpack_response_package(self, resp: Response, fetch: list | None) -> Response:
        return resp


def pack_request(feed_dict: dict, *, pack_tensor_format: bool = False, use_tensor_bytes: bool = False,
                 profile: bool = False) -> Request:
    """Paddle Serving's ``_pack_request_package``, without touching ``feed_dict`` or global state.

    String mode: ``str`` values as they are, ndarrays as ``repr`` (full, no ``...``), lists as
    ``repr(np.array(list))``, plus ``pipeline.profile``="1" when ``profile``. Tensor mode: one
    ``Tensor`` per key (``.lod`` keys feed the ``lod``), strings as elem_type 12, arrays in the field
    of their dtype or, with ``use_tensor_bytes``, as ``np.save`` bytes (elem_type 13). ``logid``/``clientip`` keys fill those fields (``predict``
    then overwrites ``logid`` with its ``log_id`` argument, as Paddle does).
    """
    feed = dict(feed_dict)
    req = Request()
    if "logid" in feed:
        req.logid = int(feed.pop("logid"))
    if "clientip" in feed:
        req.clientip = str(feed.pop("clientip"))
    else:
        req.clientip = _local_ip()
    with np.printoptions(threshold=sys.maxsize):
        if not pack_tensor_format:
            for key, value in feed.items():
                req.key.append(key)
                if isinstance(value, str):
                    req.value.append(value)
                elif isinstance(value, np.ndarray):
                    req.value.append(repr(value))
                elif isinstance(value, list):
                    req.value.append(repr(np.array(value)))
                else:
                    raise TypeError(f"only str and np.ndarray type is supported: {type(value)}")
            if profile:
                req.key.append(PROFILE_KEY)
                req.value.append(_PROFILE_VALUE)
            return req
    for key, value in feed.items():
        if ".lod" in key:
            continue
        tensor = Tensor(name=key)
        if isinstance(value, str):
            tensor.str_data.append(value)
            tensor.elem_type = ElemType.STRING
        elif isinstance(value, np.ndarray):
            tensor.shape.extend(int(d) for d in value.shape)
            lod = feed.get(key + ".lod")
            if lod is not None:
                tensor.lod.extend(int(v) for v in lod)
            if use_tensor_bytes:
                buf = io.BytesIO()
                np.save(buf, value, allow_pickle=True)
                tensor.byte_data = buf.getvalue()
                tensor.elem_type = ElemType.BYTES
            elif value.dtype.name in _TENSOR_FIELDS:
                field, elem_type = _TENSOR_FIELDS[value.dtype.name]
                getattr(tensor, field).extend(value.flatten().tolist())
                tensor.elem_type = elem_type
            else:
                log.error("value type %s of key %r is not supported in tensor format", value.dtype, key)
        else:
            raise TypeError(f"only str and np.ndarray type is supported: {type(value)}")
        req.tensors.append(tensor)
    return req  # as in Paddle Serving, ``profile`` adds its key in string mode only


def _local_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _channel_target(endpoints: list[str]) -> str:
    """Paddle's ``"ipv4:" + ",".join(endpoints)``, extended to IPv6 literals and host names (resolved)."""
    if not endpoints:
        raise ValueError("connect() needs at least one endpoint")
    v4: list[str] = []
    v6: list[str] = []
    for endpoint in endpoints:
        host, port = parse_endpoint(endpoint)
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
        (v4 if addr.version == 4 else v6).append(join_host_port(str(addr), port))
    if v4 and v6:
        raise ValueError(f"cannot mix IPv4 and IPv6 endpoints in one channel: {endpoints}")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)
