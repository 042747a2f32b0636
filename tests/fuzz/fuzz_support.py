"""Shared settings for the fuzz suite (tests/fuzz/).

Every fuzz test runs a fixed number of derandomized Hypothesis examples, so CI runs are repeatable and the
whole folder stays well under a minute on two busy cores. RESNEST_FUZZ_EXAMPLES multiplies every count
for long runs, e.g. `RESNEST_FUZZ_EXAMPLES=50 pytest tests/fuzz` (which also turns derandomization off,
so each long run explores new inputs; a failure is printed with its reproducing example).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("RESNEST_FUZZ_EXAMPLES", "1") or 1))


def fuzz(examples: int):
    """@settings for one fuzz test: `examples` (times RESNEST_FUZZ_EXAMPLES), no per-example deadline
    (shared CI machines), derandomized unless scaled up, no example database (nothing written in the
    checkout)."""
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture])


def encoded(fmt: str, width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(fmt, pixels)
    assert ok
    return buf.tobytes()


mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]),
                               st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)


def mutate(data: bytes, steps) -> bytes:
    out = bytearray(data)
    for kind, where, value in steps:
        if not out:
            break
        i = int(where * len(out))
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "cut":
            del out[i:]
        elif kind == "insert":
            out[i:i] = bytes([value]) * (value % 7 + 1)
        else:
            del out[i:i + value % 32 + 1]
    return bytes(out)
