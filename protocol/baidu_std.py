"""brpc ``baidu_std`` wire format: frames, compression, errno values.

A frame is a 12-byte header (``b"PRPC"``, big-endian uint32 ``body_size``, big-endian uint32
``meta_size``) followed by the body: a serialized ``brpc.policy.RpcMeta`` (``meta_size`` bytes), the
payload (a serialized protobuf message, possibly compressed) and the attachment
(``RpcMeta.attachment_size`` bytes, possibly none). ``body_size`` counts meta + payload + attachment,
not the header. Reference: ``../shared/reference/paddle_serving_protocol.md`` §7 and brpc's
``docs/cn/baidu_std.md``. Pure functions and one incremental parser; no sockets here.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.message import DecodeError

from resnest_serving.protocol.brpc_meta_pb2 import RpcMeta
from resnest_serving.protocol.inflate import InflateError, inflate

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "BadMagicError",
    "BrpcError",
    "CompressType",
    "Errno",
    "Frame",
    "FrameError",
    "FrameParser",
    "FrameTooLargeError",
    "MetaSizeError",
    "compress",
    "decode_frame",
    "decompress",
    "encode_frame",
    "encode_request",
    "encode_response",
    "parse_header",
    "parse_meta",
    "short_service_name",
]

MAGIC = b"PRPC"
HEADER_SIZE = 12
_HEADER = struct.Struct(">4sII")
DEFAULT_MAX_BODY_SIZE = 512 * 1024 * 1024
"""Paddle Serving starts brpc with ``--max_body_size`` 512 MiB."""


class Errno(IntEnum):
    """brpc error codes (``src/brpc/errno.proto``), carried in ``RpcResponseMeta.error_code``."""

    ENOSERVICE = 1001  # Service not found
    ENOMETHOD = 1002  # Method not found
    EREQUEST = 1003  # Bad request
    ERPCAUTH = 1004  # Unauthorized
    ETOOMANYFAILS = 1005  # Too many sub calls failed
    EPCHANFINISH = 1006  # [Internal] ParallelChannel finished
    EBACKUPREQUEST = 1007  # Sending backup request
    ERPCTIMEDOUT = 1008  # RPC call is timed out
    EFAILEDSOCKET = 1009  # Broken socket
    EHTTP = 1010  # Bad http call
    EOVERCROWDED = 1011  # The server is overcrowded
    ERTMPPUBLISHABLE = 1012
    ERTMPCREATESTREAM = 1013
    EEOF = 1014  # Got EOF
    EUNUSED = 1015  # The socket was not needed
    ESSL = 1016  # SSL related error
    EH2RUNOUTSTREAMS = 1017  # The H2 socket ran out of streams
    EREJECT = 1018  # The request is rejected
    EINTERNAL = 2001  # Internal server error
    ERESPONSE = 2002  # Bad response
    ELOGOFF = 2003  # Server is stopping
    ELIMIT = 2004  # Reached server's limit on resources
    ECLOSE = 2005  # Close socket initiatively
    EITP = 2006  # Failed Itp response




class CompressType(IntEnum):
    """``brpc.CompressType`` (``src/brpc/options.proto``), carried in ``RpcMeta.compress_type``."""

    NONE = 0
    SNAPPY = 1
    GZIP = 2
    ZLIB = 3
    LZ4 = 4


class BrpcError(Exception):
    """A failed bRPC call or a protocol violation: ``code`` is a brpc errno, ``text`` says why."""

    def __init__(self, code: int, text: str = "") -> None:
        self.code = int(code)
        self.text = text
        try:
            name = Errno(self.code).name
        except ValueError:
            name = "error"
        super().__init__(f"[{name} {self.code}] {text}" if text else f"[{name} {self.code}]")


class FrameError(BrpcError):
    """The byte stream is not a valid baidu_std frame; the connection cannot be trusted any more."""

    def __init__(self, text: str) -> None:
        super().__init__(Errno.EREQUEST, text)


class BadMagicError(FrameError):
    """The first 4 bytes of a frame are not ``b"PRPC"``."""


class MetaSizeError(FrameError):
    """The header declares ``meta_size > body_size``."""


class FrameTooLargeError(FrameError):
    """The header declares a body larger than the configured limit (detected before the body is read)."""

    def __init__(self, body_size: int, meta_size: int, limit: int) -> None:
        super().__init__(f"body_size={body_size} exceeds max_body_size={limit}")
        self.body_size = body_size
        self.meta_size = meta_size
        self.limit = limit


def compress(data: bytes, compress_type: int) -> bytes:
    """Compress a payload as brpc does for ``compress_type``: 0 as is, 2 gzip, 3 zlib.

    Snappy (1) and LZ4 (4) are refused with ``BrpcError(EREQUEST)``: no library for them is a dependency.
    """
    if compress_type == CompressType.NONE:
        return bytes(data)
    if compress_type == CompressType.GZIP:
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compress_type == CompressType.ZLIB:
        return zlib.compress(data)
    raise BrpcError(Errno.EREQUEST, f"unsupported compress_type={_compress_name(compress_type)}")


def decompress(data: bytes, compress_type: int, limit: int = DEFAULT_MAX_BODY_SIZE) -> bytes:
    """Undo ``compress``, refusing output over ``limit`` bytes as it is produced; corrupt or oversized data
    or an unsupported type raises ``BrpcError(EREQUEST)``."""
    if compress_type == CompressType.NONE:
        return bytes(data)
    if compress_type not in (CompressType.GZIP, CompressType.ZLIB):
        raise BrpcError(Errno.EREQUEST, f"unsupported compress_type={_compress_name(compress_type)}")
    fmt = "gzip" if compress_type == CompressType.GZIP else "zlib"
    try:
        return inflate(data, fmt, limit)
    except InflateError as exc:
        which = " (max_request_bytes)" if exc.too_large else ""
        raise BrpcError(Errno.EREQUEST, f"cannot decompress {_compress_name(compress_type)} payload: "
                        f"{exc}{which}") from None


def _compress_name(compress_type: int) -> str:
    try:
        return f"{compress_type} ({CompressType(compress_type).name.lower()})"
    except ValueError:
        return str(compress_type)


@dataclass
class Frame:
    """One decoded frame. ``payload`` is still compressed as ``meta.compress_type`` says."""

    meta: RpcMeta
    payload: bytes
    attachment: bytes = b""


def encode_frame(meta: RpcMeta, payload: bytes = b"", attachment: bytes = b"") -> bytes:
    """Serialize one frame; sets ``meta.attachment_size`` when there is an attachment."""
    if attachment:
        meta.attachment_size = len(attachment)
    meta_bytes = meta.SerializeToString()
    body_size = len(meta_bytes) + len(payload) + len(attachment)
    return b"".join((_HEADER.pack(MAGIC, body_size, len(meta_bytes)), meta_bytes, payload, attachment))


def encode_request(
    service: str,
    method: str,
    payload: bytes,
    *,
    correlation_id: int,
    log_id: int = 0,
    compress_type: int = CompressType.NONE,
    attachment: bytes = b"",
    authentication_data: bytes = b"",
) -> bytes:
    """A request frame: compresses ``payload`` and fills ``RpcRequestMeta`` as a brpc client does."""
    meta = RpcMeta()
    if authentication_data:
        meta.authentication_data = authentication_data
    meta.request.service_name = service
    meta.request.method_name = method
    if log_id:
        meta.request.log_id = log_id
    meta.correlation_id = correlation_id
    if compress_type:
        meta.compress_type = compress_type
    return encode_frame(meta, compress(payload, compress_type), attachment)


def encode_response(
    correlation_id: int,
    payload: bytes = b"",
    *,
    error_code: int = 0,
    error_text: str = "",
    compress_type: int = CompressType.NONE,
    attachment: bytes = b"",
) -> bytes:
    """A response frame: always sets ``error_code`` (0 ok), ``error_text`` only when non-empty.

    Error responses carry no payload and no compression, like brpc's.
    """
    meta = RpcMeta()
    meta.response.error_code = error_code
    if error_text:
        meta.response.error_text = error_text
    meta.correlation_id = correlation_id
    if error_code:
        return encode_frame(meta)
    if compress_type:
        meta.compress_type = compress_type
    return encode_frame(meta, compress(payload, compress_type), attachment)


def parse_header(header: bytes, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> tuple[int, int]:
    """Validate a 12-byte header and return ``(body_size, meta_size)``.

    Raises ``BadMagicError``, ``FrameTooLargeError`` or ``MetaSizeError`` so that a reader can give up
    before reading (or allocating) the body.
    """
    if len(header) != HEADER_SIZE:
        raise FrameError(f"header must be {HEADER_SIZE} bytes, got {len(header)}")
    magic, body_size, meta_size = _HEADER.unpack(header)
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if body_size > max_body_size:
        raise FrameTooLargeError(body_size, meta_size, max_body_size)
    if meta_size > body_size:
        raise MetaSizeError(f"meta_size={meta_size} is bigger than body_size={body_size}")
    return body_size, meta_size


def parse_meta(meta_bytes: bytes) -> RpcMeta:
    """Parse ``RpcMeta``; corrupt bytes raise ``FrameError``."""
    try:
        return RpcMeta.FromString(meta_bytes)
    except DecodeError as exc:
        raise FrameError(f"cannot parse RpcMeta: {exc}") from exc


def _split_body(body: bytes, meta_size: int) -> Frame:
    meta = parse_meta(bytes(body[:meta_size]))
    rest = len(body) - meta_size
    attachment_size = meta.attachment_size
    if attachment_size < 0 or attachment_size > rest:
        raise FrameError(f"attachment_size={attachment_size} is larger than payload+attachment={rest}")
    end = len(body) - attachment_size
    return Frame(meta, bytes(body[meta_size:end]), bytes(body[end:]))


def decode_frame(data: bytes, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> Frame:
    """Decode exactly one complete frame (trailing or missing bytes are an error)."""
    body_size, meta_size = parse_header(data[:HEADER_SIZE], max_body_size)
    if len(data) != HEADER_SIZE + body_size:
        raise FrameError(f"frame declares {HEADER_SIZE + body_size} bytes, got {len(data)}")
    return _split_body(data[HEADER_SIZE:], meta_size)


class FrameParser:
    """Incremental decoder: ``feed`` it bytes as they arrive, in chunks of any size, and get whole frames.

    The header is validated as soon as its 12 bytes are in, so an oversized or corrupt frame is refused
    before its body is buffered. After an error the parser is unusable (the stream has lost sync).
    """

    def __init__(self, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        self.max_body_size = max_body_size
        self._buf = bytearray()
        self._pos = 0
        self._header: tuple[int, int] | None = None
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every frame now complete (possibly none), in stream order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        try:
            frames = list(self._frames())
        except FrameError as exc:
            self._error = exc
            raise
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return frames

    def _frames(self) -> Iterator[Frame]:
        while True:
            if self._header is None:
                if self.buffered < HEADER_SIZE:
                    return
                header = bytes(self._buf[self._pos : self._pos + HEADER_SIZE])
                self._header = parse_header(header, self.max_body_size)
                self._pos += HEADER_SIZE
            body_size, meta_size = self._header
            if self.buffered < body_size:
                return
            body = self._buf[self._pos : self._pos + body_size]
            self._pos += body_size
            self._header = None
            yield _split_body(body, meta_size)


def short_service_name(full_name: str) -> str:
    """``a.b.GeneralModelService`` → ``GeneralModelService`` (the name brpc accepts without package)."""
    return full_name.rsplit(".", 1)[-1]


def parse_message(payload: bytes, message_cls, what: str = "request"):
    """Parse a protobuf payload, or raise BrpcError EREQUEST naming the message type (brpc's wording)."""
    from google.protobuf.message import DecodeError

    message = message_cls()
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise BrpcError(Errno.EREQUEST, f"Fail to parse {what} as {message_cls.DESCRIPTOR.full_name}, "
                        f"size={len(payload)}: {exc}") from None
    return message
