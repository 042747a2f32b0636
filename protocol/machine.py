"""What /proc says about this machine (the CPU model, its instruction-set flags, any `name: value` field), read
in one place for the two sides that report it: the engines (`pipeline/engines/cpu.py`, which also decides bf16
and int8 from the flags) and the benchmark reports' machine fingerprint (`client/fingerprint.py`).

It lives in `protocol/` because that is the one package both sides may import (the client shares nothing else
with the server side), and what it reads is a fact both state, like the wire facts here.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
MEMINFO = "/proc/meminfo"


def proc_field(path: str, name: str) -> str:
    """The value of the first `name: value` line of a /proc file ("" where there is none or it cannot be read)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(name):
            return line.partition(":")[2].strip()
    return ""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as /proc/cpuinfo names them (empty where there is none, e.g. not Linux)."""
    return frozenset(proc_field(CPUINFO, "flags").split())


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo's `model name`, else what the platform module says)."""
    return proc_field(CPUINFO, "model name") or platform.processor() or platform.machine()
