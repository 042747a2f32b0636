"""Open Inference Protocol (KServe V2 / Triton) wire facts, each stated once for the server (`serving/v2/`)
and the client (`client/v2_client.py`): the REST path prefix, the binary tensor extension's header, the
datatype names with their little-endian element layout, the BYTES length-prefix framing, and the name of
this server's encoded-image input."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from urllib.parse import quote

import numpy as np

REST_PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
"""Binary tensor extension: the JSON header's length in bytes; the raw tensor bytes follow it in the body."""
IMAGE_INPUT = "image"
"""The BYTES input that carries one encoded image file (JPEG, PNG, ...) per row."""

NUMERIC_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
"""V2 datatype → little-endian numpy dtype (the binary tensor extension's byte layout)."""
DATATYPES = frozenset(NUMERIC_DTYPES) | {"BYTES", "BF16"}

_LENGTH = struct.Struct("<I")  # a BYTES element's length, before its bytes


class BytesFramingError(ValueError):
    """A BYTES buffer whose length prefixes do not add up to its size."""


def is_v2_path(path: str) -> bool:
    """Whether an HTTP path belongs to the Open Inference Protocol (`/v2` or under it)."""
    return path == REST_PREFIX or path.startswith(REST_PREFIX + "/")


REPOSITORY_FIELDS = ("name", "version", "state", "reason")
"""The fields of a model repository index entry (REST JSON keys, gRPC ModelIndex fields)."""


def repository_path(action: str, name: str = "") -> str:
    """The REST path of a model repository extension call: "index", or "load"/"unload" of model `name`
    (percent-encoded here)."""
    if action == "index":
        return f"{REST_PREFIX}/repository/index"
    return f"{REST_PREFIX}/repository/models/{quote(name, safe='')}/{action}"


def encode_bytes(items: Iterable[bytes]) -> bytes:
    """BYTES elements in the raw layout: a 4-byte little-endian length before each element."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


def decode_bytes(buffer: bytes | memoryview) -> list[bytes]:
    """The elements of a raw BYTES buffer (see encode_bytes); BytesFramingError when a length prefix is cut
    short or an element runs past the end: a malformed buffer is never truncated silently."""
    items, offset, end = [], 0, len(buffer)
    while offset < end:
        if offset + _LENGTH.size > end:
            raise BytesFramingError(f"BYTES data ends inside an element's 4-byte length prefix ({end - offset} "
                                    f"trailing bytes after {len(items)} elements)")
        (size,) = _LENGTH.unpack_from(buffer, offset)
        offset += _LENGTH.size
        if offset + size > end:
            raise BytesFramingError(f"BYTES element {len(items)} claims {size} bytes but only {end - offset} "
                                    "remain")
        items.append(bytes(buffer[offset:offset + size]))
        offset += size
    return items
