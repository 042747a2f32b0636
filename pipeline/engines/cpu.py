"""What this CPU can run fast: the instruction sets behind bf16 and int8 inference.

Reduced precision is only worth serving where the CPU has the instructions for it; elsewhere oneDNN and
OpenVINO emulate it slowly or refuse at compile time. `ONEDNN_MAX_CPU_ISA` caps the instruction sets that
oneDNN (inside Paddle Inference and OpenVINO's CPU plugin) may use, so a cap below the needed level counts
as "not available" too.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# oneDNN's ONEDNN_MAX_CPU_ISA values, lowest first (oneDNN docs, "CPU dispatcher control").
ISA_LEVELS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
              "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The `flags` of /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_cap() -> str | None:
    """The ONEDNN_MAX_CPU_ISA in force (upper case), or None when unset or ALL."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    return value if value and value != "ALL" else None


def _cap_allows(level: str) -> bool:
    cap = isa_cap()
    if cap is None or cap not in ISA_LEVELS:
        return True
    return ISA_LEVELS.index(cap) >= ISA_LEVELS.index(level)


def precision_unsupported(precision: str, onednn: bool = True) -> str | None:
    """Why this CPU cannot run `precision` fast, or None when it can. `onednn`: the engine runs on oneDNN
    (Paddle Inference, OpenVINO), so ONEDNN_MAX_CPU_ISA applies to it too."""
    flags = cpu_flags()
    if precision == "bf16":
        if not any(f in flags for f in BF16_FLAGS):
            return (f"this CPU ({cpu_name()}) has no bf16 instructions ({' or '.join(BF16_FLAGS)}); bf16 would "
                    "be emulated, slower than fp32: use precision fp32 (or int8 on a CPU with VNNI)")
        if onednn and not _cap_allows("AVX512_CORE_BF16"):
            return f"ONEDNN_MAX_CPU_ISA={isa_cap()} rules out the bf16 instructions (needs AVX512_CORE_BF16 or above)"
    elif precision == "int8":
        if not any(f in flags for f in INT8_FLAGS):
            return (f"this CPU ({cpu_name()}) has no int8 dot-product instructions ({' or '.join(INT8_FLAGS)}); "
                    "int8 would be no faster than fp32: use precision fp32")
        if onednn and not (_cap_allows("AVX512_CORE_VNNI") or ("avx_vnni" in flags and _cap_allows("AVX2_VNNI"))):
            return f"ONEDNN_MAX_CPU_ISA={isa_cap()} rules out the VNNI instructions int8 needs"
    return None


def describe() -> str:
    """One line for logs: CPU model and the reduced-precision instruction sets it has."""
    flags = cpu_flags()
    have = [f for f in ("avx2", "avx512f", *INT8_FLAGS, *BF16_FLAGS) if f in flags]
    cap = f", ONEDNN_MAX_CPU_ISA={isa_cap()}" if isa_cap() else ""
    return f"{cpu_name()}, {os.cpu_count()} cores ({' '.join(have) or 'no AVX2'}{cap})"
