"""Bounded decompression of request bodies: gzip/zlib/deflate inflated step by step, with the size limit
applied to the output, so a small compressed body cannot expand into gigabytes (a decompression bomb)."""

from __future__ import annotations

import zlib

# zlib window bits per format: gzip header, zlib header, raw deflate (HTTP's "deflate" is zlib-wrapped,
# but some clients send raw deflate; both are accepted under that name, as browsers and servers do).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class InflateError(ValueError):
    """The data does not inflate (corrupt) or inflates beyond the limit (`too_large`)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def inflate(data: bytes, fmt: str, limit: int) -> bytes:
    """Decompress `data` (gzip, zlib or deflate; concatenated gzip members too), refusing output over
    `limit` bytes as soon as it is produced."""
    wbits = _WBITS[fmt]
    if fmt == "deflate" and data[:1] and (data[0] & 0x0F) != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate: no zlib header
    out = bytearray()
    rest = memoryview(data)
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise InflateError(f"{fmt} body inflates to more than {limit} bytes", too_large=True)
            out += inflater.flush()
        except zlib.error as exc:
            raise InflateError(f"corrupt {fmt} data: {exc}") from None
        if len(out) > limit:
            raise InflateError(f"{fmt} body inflates to more than {limit} bytes", too_large=True)
        if not inflater.eof:
            raise InflateError(f"corrupt {fmt} data: the compressed stream is incomplete")
        rest = memoryview(inflater.unused_data)
        if fmt != "gzip" or not rest:
            return bytes(out)
