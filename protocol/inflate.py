"""Bounded decompression of request bodies: gzip/zlib/deflate inflated step by step, with the size limit
applied to the output, so a small compressed body cannot expand into gigabytes (a decompression bomb).

Bounded in time too: the input is fed to the decompressor in fixed-size chunks (no copy of the rest of the
input per gzip member, so the work is linear in the input), a gzip body may hold at most `MAX_GZIP_MEMBERS`
members, and one call may spend at most `CPU_BUDGET_S` seconds of CPU time."""

from __future__ import annotations

import time
import zlib

# zlib window bits per format: gzip header, zlib header, raw deflate (HTTP's "deflate" is zlib-wrapped,
# but some clients send raw deflate; both are accepted under that name, as browsers and servers do).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "zlib": zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

CHUNK_BYTES = 64 * 1024  # compressed input handed to the decompressor per call
MAX_GZIP_MEMBERS = 64  # concatenated gzip members accepted in one body (clients send one)
CPU_BUDGET_S = 2.0  # CPU seconds one body may take to inflate (64 MiB of zeros takes ~0.1 s)


class InflateError(ValueError):
    """The data does not inflate (corrupt) or inflates beyond the limit (`too_large`: beyond the size
    limit, the member cap or the CPU budget)."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def inflate(data: bytes, fmt: str, limit: int, *, max_members: int = MAX_GZIP_MEMBERS,
            cpu_budget_s: float = CPU_BUDGET_S) -> bytes:
    """Decompress `data` (gzip, zlib or deflate; up to `max_members` concatenated gzip members), refusing
    output over `limit` bytes as soon as it is produced, and any body that takes over `cpu_budget_s` of
    this thread's CPU time."""
    wbits = _WBITS[fmt]
    if fmt == "deflate" and data[:1] and (data[0] & 0x0F) != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate: no zlib header
    view = memoryview(data)
    deadline = time.thread_time() + cpu_budget_s
    out = bytearray()
    pos = members = 0
    try:
        while True:
            members += 1
            if members > max_members:
                raise InflateError(f"{fmt} body has more than {max_members} members", too_large=True)
            inflater = zlib.decompressobj(wbits)
            while not inflater.eof:
                if pos >= len(view):
                    raise InflateError(f"corrupt {fmt} data: the compressed stream is incomplete")
                pending: bytes | memoryview = view[pos:pos + CHUNK_BYTES]
                pos += len(pending)
                while pending and not inflater.eof:
                    # at most one byte over the limit out of each call: reaching it means refusing
                    out += inflater.decompress(pending, limit + 1 - len(out))
                    if len(out) > limit:
                        raise InflateError(f"{fmt} body inflates to more than {limit} bytes", too_large=True)
                    pending = inflater.unconsumed_tail
                    if time.thread_time() > deadline:
                        raise InflateError(f"{fmt} body takes more than {cpu_budget_s:g} s of CPU to inflate",
                                           too_large=True)
            pos -= len(inflater.unused_data)  # the part of the last chunk after this member
            if fmt != "gzip" or pos >= len(view):
                return bytes(out)
    except zlib.error as exc:
        raise InflateError(f"corrupt {fmt} data: {exc}") from None
