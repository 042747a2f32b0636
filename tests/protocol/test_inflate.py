"""Bounded inflate: the limit applies to the output, checked as it is produced."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib

import pytest

from resnest_serving.protocol.inflate import CHUNK_BYTES, MAX_GZIP_MEMBERS, InflateError, inflate


@pytest.mark.parametrize("fmt,pack", [("gzip", gzip.compress), ("zlib", zlib.compress), ("deflate", zlib.compress),
                                      ("deflate", lambda d: zlib.compress(d, wbits=-15))])
def test_round_trip(fmt, pack):
    data = bytes(range(256)) * 100
    assert inflate(pack(data), fmt, len(data)) == data


def test_concatenated_gzip_members():
    assert inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 4) == b"abcd"
    with pytest.raises(InflateError) as info:
        inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 3)
    assert info.value.too_large


def test_bomb_stops_at_the_limit():
    """256 MiB of zeros in ~250 KB: refused having held little more than the limit in memory."""
    bomb = zlib.compress(bytes(256 * 1024 * 1024), 9)
    assert len(bomb) < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(InflateError, match="inflates to more than 4194304 bytes") as info:
            inflate(bomb, "zlib", 4 * 1024 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.too_large
    assert peak < 3 * 4 * 1024 * 1024, peak  # not the 256 MiB the bomb holds


@pytest.mark.parametrize("data,message", [(b"not gzip at all", "corrupt gzip data"),
                                          (gzip.compress(b"x" * 1000)[:-12], "incomplete")])
def test_corrupt(data, message):
    with pytest.raises(InflateError, match=message) as info:
        inflate(data, "gzip", 10**6)
    assert not info.value.too_large


EMPTY_MEMBER = gzip.compress(b"", mtime=0)  # 20 bytes


def test_many_empty_members_refused_fast():
    """1.6 MB of empty 20-byte gzip members (quadratic to inflate when each member copied the rest of the
    input): refused at the member cap, in milliseconds."""
    assert len(EMPTY_MEMBER) == 20
    data = EMPTY_MEMBER * 80_000
    started = time.perf_counter()
    with pytest.raises(InflateError, match=f"more than {MAX_GZIP_MEMBERS} members") as info:
        inflate(data, "gzip", 64 * 1024 * 1024)
    assert time.perf_counter() - started < 0.5
    assert info.value.too_large
    assert inflate(EMPTY_MEMBER * (MAX_GZIP_MEMBERS - 1) + gzip.compress(b"ok"), "gzip", 10) == b"ok"


def test_members_inflate_in_linear_time():
    """Without the member cap, 80,000 members still take time linear in the input (old code: 3.7 s)."""
    data = EMPTY_MEMBER * 80_000 + gzip.compress(b"end")
    started = time.thread_time()
    assert inflate(data, "gzip", 100, max_members=10**6) == b"end"
    assert time.thread_time() - started < 1.5


def test_cpu_budget():
    """A body that takes longer than the CPU budget is refused, whatever its size."""
    data = zlib.compress(bytes(64 * 1024 * 1024), 9)
    assert len(inflate(data, "zlib", 64 * 1024 * 1024)) == 64 * 1024 * 1024
    with pytest.raises(InflateError, match="s of CPU to inflate") as info:
        inflate(data, "zlib", 64 * 1024 * 1024, cpu_budget_s=0.001)
    assert info.value.too_large


def test_chunk_boundaries():
    """Members and streams that straddle the decompressor's input chunks inflate exactly."""
    import random

    rng = random.Random(7)
    parts = [rng.randbytes(rng.randrange(1, 3 * CHUNK_BYTES)) for _ in range(5)]
    data = b"".join(gzip.compress(p, compresslevel=1) for p in parts)
    assert inflate(data, "gzip", sum(map(len, parts))) == b"".join(parts)
    with pytest.raises(InflateError, match="incomplete"):
        inflate(data[:-1], "gzip", 10**8)
