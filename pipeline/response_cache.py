"""The response cache: a model's output row per image, found again by a hash of the image's bytes.

Identical images (thumbnails, retries, a client's repeated frame) are answered without decoding or running
the model. What is kept is the engine's output row (the probabilities of one image), not a formatted
response: the same row serves every top-k, every protocol and every request that mixes the image with
others, and postprocessing it again gives byte-for-byte the answer of the first time. Entries are keyed by
(model version, BLAKE2b of the image file's bytes): the pipeline hashes base64 text after decoding it, so
one image sent as base64 (Paddle Serving, V2 JSON) and as raw bytes (V2 binary) shares one entry. A new model
version is a new Pipeline with a new cache: that is the invalidation. The cache lives on the event loop's
thread: no locks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

_DIGEST_BYTES = 16
_ENTRY_OVERHEAD = 200  # bytes per entry beyond the row: the key, the dict slot, the array header


class ResponseCache:
    """LRU of output rows, bounded by `max_bytes` (rows plus a fixed overhead per entry)."""

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"response cache size must be > 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def key(version: str, image: bytes) -> bytes:
        """The entry key of one image file (its encoded bytes, base64 already decoded) for one model version."""
        digest = hashlib.blake2b(image, digest_size=_DIGEST_BYTES, person=b"resnest-cache")
        digest.update(version.encode())
        return digest.digest()

    def get(self, key: bytes) -> np.ndarray | None:
        """The row stored under `key` (read-only), counting a hit or a miss."""
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return row

    def put(self, key: bytes, row: np.ndarray) -> None:
        """Keep a copy of `row`, evicting the least recently used entries beyond the size limit."""
        size = row.nbytes + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        old = self._rows.pop(key, None)
        if old is not None:
            self.used_bytes -= old.nbytes + _ENTRY_OVERHEAD
        kept = np.array(row, copy=True)
        kept.flags.writeable = False
        self._rows[key] = kept
        self.used_bytes += size
        while self.used_bytes > self.max_bytes:
            _, evicted = self._rows.popitem(last=False)
            self.used_bytes -= evicted.nbytes + _ENTRY_OVERHEAD

    def clear(self) -> int:
        """Drop every entry (a model reload: its answers may change); returns how many were dropped."""
        dropped = len(self._rows)
        self._rows.clear()
        self.used_bytes = 0
        return dropped
