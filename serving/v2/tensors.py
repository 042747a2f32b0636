"""Open Inference Protocol tensors on the server: a request's inputs checked and decoded (JSON `data`,
the binary extension's raw bytes, gRPC raw contents) into `Tensor`s, and outputs encoded back to raw bytes.
Every refusal is a ServingError (INVALID) naming the input and what was wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnest_serving.protocol.b64 import decode_strict
from resnest_serving.protocol.v2 import (
    DATATYPES,
    NUMERIC_DTYPES,
    BytesFramingError,
    decode_bytes,
    encode_bytes,
)
from resnest_serving.serving.errors import invalid


@dataclass
class Tensor:
    """A decoded input or an output: numeric data as an ndarray of `shape`, BYTES as a flat list."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


MAX_REQUESTED_OUTPUTS = 16  # entries in a request's `outputs` (deduplicated to the model's one output)
MAX_RANK = 8
MAX_ELEMENTS = 2**31 - 1  # more than max_request_bytes can carry; numpy cannot reshape far beyond it


def check_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise invalid(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise invalid(f"input {name!r}: shape {shape} is beyond what any request can hold (at most {MAX_RANK} "
                      f"dimensions, {MAX_ELEMENTS} elements)")
    return shape


def check_datatype(name: str, datatype: Any) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise invalid(f"input {name!r}: unknown datatype {datatype!r}; the protocol's are "
                      f"{', '.join(sorted(DATATYPES))}")
    return datatype


def decode_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> np.ndarray | list[bytes]:
    """Raw tensor bytes (binary extension or gRPC raw_input_contents): little-endian elements, or for
    BYTES a 4-byte little-endian length before each element."""
    count = math.prod(shape)
    if datatype == "BYTES":
        try:
            items = decode_bytes(raw)
        except BytesFramingError as exc:
            raise invalid(f"input {name!r}: {exc}") from None
        if len(items) != count:
            raise invalid(f"input {name!r}: shape {shape} needs {count} BYTES elements, the data holds {len(items)}")
        return items
    if datatype == "BF16":
        raise invalid(f"input {name!r}: BF16 is not accepted by this model; send FP32")
    dtype = NUMERIC_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise invalid(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                      f"got {len(raw)}")
    return np.frombuffer(raw, dtype).reshape(shape)


def decode_json(name: str, datatype: str, shape: list[int], data: Any, b64: bool) -> np.ndarray | list[bytes]:
    """JSON `data` (flat or nested, row-major). BYTES elements are strings (UTF-8 text, or base64 when the
    input or request has parameters.content_type "base64": JSON cannot carry raw image bytes)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise invalid(f"input {name!r}: shape {shape} needs {count} elements, data has {len(flat)}")
        out = []
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise invalid(f"input {name!r}: BYTES element {i} must be a string, got {type(item).__name__}")
            out.append(_b64(name, i, item) if b64 else item.encode("utf-8", "surrogatepass"))
        return out
    if datatype == "BF16":
        raise invalid(f"input {name!r}: BF16 is not accepted by this model; send FP32")
    try:
        array = np.asarray(data, dtype=NUMERIC_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"input {name!r}: data is not a (nested) list of {datatype} numbers: {exc}") from None
    if array.size != count:
        raise invalid(f"input {name!r}: shape {shape} needs {count} elements, data has {array.size}")
    return array.reshape(shape)


def _flatten(name: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise invalid(f"input {name!r}: data must be a list, got {type(data).__name__}")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _b64(name: str, index: int, text: str) -> bytes:
    try:
        return decode_strict(text)
    except ValueError as exc:
        raise invalid(f"input {name!r}: element {index} is not valid base64 ({exc})") from None


def encode_raw(tensor: Tensor) -> bytes:
    """The binary form of an output (see decode_raw)."""
    if tensor.datatype == "BYTES":
        return encode_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, NUMERIC_DTYPES[tensor.datatype]).tobytes()
