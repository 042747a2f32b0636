"""Bounded inflate: the limit applies to the output, checked as it is produced."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from protocol.inflate import InflateError, inflate


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
