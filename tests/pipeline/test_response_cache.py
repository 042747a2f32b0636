"""pipeline.response_cache: rows found again by image bytes, per model version, bounded in bytes (LRU)."""

from __future__ import annotations

import numpy as np
import pytest

from resnest_serving.pipeline.response_cache import ResponseCache


def row(value: float, classes: int = 1000) -> np.ndarray:
    return np.full(classes, value, np.float32)


def test_key_depends_on_bytes_and_version():
    image = b"\xff\xd8 a jpeg"
    assert ResponseCache.key("1", image) == ResponseCache.key("1", image)
    assert ResponseCache.key("1", image) != ResponseCache.key("2", image)
    assert ResponseCache.key("1", image) != ResponseCache.key("1", image + b"\x00")


def test_hit_returns_the_stored_row_as_a_read_only_copy_and_counts():
    cache = ResponseCache(1 << 20)
    key = ResponseCache.key("1", b"x")
    assert cache.get(key) is None and (cache.hits, cache.misses) == (0, 1)
    original = row(0.5)
    cache.put(key, original)
    original[:] = 9  # the caller's buffer (e.g. shared memory) is reused: the cache kept its own copy
    got = cache.get(key)
    assert got is not None and got.tobytes() == row(0.5).tobytes()
    assert (cache.hits, cache.misses) == (1, 1)
    with pytest.raises(ValueError):
        got[0] = 1


def test_least_recently_used_goes_first_when_full():
    one = row(0).nbytes + 200
    cache = ResponseCache(3 * one)
    keys = [ResponseCache.key("1", bytes([i])) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, row(i))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], row(3))
    assert len(cache) == 3 and cache.used_bytes == 3 * one
    assert cache.get(keys[1]) is None  # the least recently used was evicted
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))


def test_replacing_a_key_keeps_the_byte_count_and_a_row_over_the_limit_is_not_kept():
    cache = ResponseCache(row(0).nbytes + 200)
    key = ResponseCache.key("1", b"x")
    cache.put(key, row(1))
    cache.put(key, row(2))
    assert len(cache) == 1 and cache.used_bytes == row(0).nbytes + 200
    cache.put(ResponseCache.key("1", b"y"), row(0, classes=10_000))
    assert len(cache) == 1


def test_clear_drops_everything_and_bad_sizes_are_refused():
    cache = ResponseCache(1 << 20)
    for i in range(5):
        cache.put(ResponseCache.key("1", bytes([i])), row(i))
    assert cache.clear() == 5 and len(cache) == 0 and cache.used_bytes == 0
    with pytest.raises(ValueError, match="> 0 bytes"):
        ResponseCache(0)
