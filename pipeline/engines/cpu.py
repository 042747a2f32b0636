"""What this CPU can run fast: the instruction sets behind bf16 and int8 inference.

Reduced precision is only worth serving where the CPU has the instructions for it; elsewhere oneDNN and
OpenVINO emulate it slowly or refuse at compile time. `ONEDNN_MAX_CPU_ISA` caps the instruction sets that
oneDNN (inside Paddle Inference and OpenVINO's CPU plugin) may use, so a cap below the needed level counts
as "not available" too.

Every capability check in the project reads `cpu_flags()`; for tests only, `RESNEST_CPU_FLAGS` overrides it
(see there), so the refusals can be tested on any CPU.
"""

from __future__ import annotations

import os

from resnest_serving.protocol.machine import cpu_flags as proc_cpu_flags
from resnest_serving.protocol.machine import cpu_model

# oneDNN's ONEDNN_MAX_CPU_ISA values, lowest first (oneDNN docs, "CPU dispatcher control").
ISA_LEVELS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
              "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
              "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


FLAGS_OVERRIDE = "RESNEST_CPU_FLAGS"  # for tests only: the flags to assume (see `cpu_flags`)


def flags_override() -> str | None:
    """The RESNEST_CPU_FLAGS in force (stripped), or None when unset or empty."""
    value = os.environ.get(FLAGS_OVERRIDE, "").strip()
    return value or None


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (as /proc/cpuinfo names them): the one place every capability check
    (bf16, VNNI, AMX, AVX-512) reads.

    For tests only, `RESNEST_CPU_FLAGS` overrides the answer, so the "refused" path of reduced precision can
    be tested on any CPU: `-avx512_bf16,-amx_bf16` removes flags from the real ones, `+flag` adds one, and
    plain names replace the whole set (`avx2 avx512f`; `none` for no flags at all). Commas or spaces
    separate. Worker processes inherit the variable, so they see the same flags as the server. Claiming a
    flag the CPU lacks only makes an engine try instructions that are not there (emulated or failing)."""
    override = flags_override()
    if override is None:
        return proc_cpu_flags()
    tokens = override.replace(",", " ").split()
    plain = {t.lower() for t in tokens if t[0] not in "+-"}
    flags = set() if plain else set(proc_cpu_flags())
    flags |= plain - {"none"}
    for token in tokens:
        if token[0] == "+":
            flags.add(token[1:].lower())
        elif token[0] == "-":
            flags.discard(token[1:].lower())
    return frozenset(flags)


def cpu_name() -> str:
    """The CPU model, with a note when RESNEST_CPU_FLAGS overrides its flags."""
    override = flags_override()
    return f"{cpu_model()}, flags as {FLAGS_OVERRIDE}={override!r} says" if override else cpu_model()


def isa_cap() -> str | None:
    """The ONEDNN_MAX_CPU_ISA in force (upper case), or None when unset or ALL."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    return value if value and value != "ALL" else None


def _cap_allows(level: str) -> bool:
    cap = isa_cap()
    if cap is None or cap not in ISA_LEVELS:
        return True
    return ISA_LEVELS.index(cap) >= ISA_LEVELS.index(level)


def has_any(names: tuple[str, ...]) -> bool:
    """Whether the CPU (as `cpu_flags` sees it) has any of these flags."""
    flags = cpu_flags()
    return any(name in flags for name in names)


def precision_unsupported(precision: str, onednn: bool = True) -> str | None:
    """Why this CPU cannot run `precision` fast, or None when it can. `onednn`: the engine runs on oneDNN
    (Paddle Inference, OpenVINO), so ONEDNN_MAX_CPU_ISA applies to it too. Every reason that holds is
    named (the CPU's flags first, then the ISA cap), so the text under a cap is the same on every CPU."""
    reasons = []
    if precision == "bf16":
        if not has_any(BF16_FLAGS):
            reasons.append(f"this CPU ({cpu_name()}) has no bf16 instructions ({' or '.join(BF16_FLAGS)})")
        if onednn and not _cap_allows("AVX512_CORE_BF16"):
            reasons.append(f"ONEDNN_MAX_CPU_ISA={isa_cap()} rules out the bf16 instructions "
                           "(needs AVX512_CORE_BF16 or above)")
        advice = "bf16 would be emulated, slower than fp32: use precision fp32 (or int8 on a CPU with VNNI)"
    elif precision == "int8":
        if not has_any(INT8_FLAGS):
            reasons.append(f"this CPU ({cpu_name()}) has no int8 dot-product instructions "
                           f"({' or '.join(INT8_FLAGS)})")
        if onednn and not (_cap_allows("AVX512_CORE_VNNI") or ("avx_vnni" in cpu_flags() and _cap_allows("AVX2_VNNI"))):
            reasons.append(f"ONEDNN_MAX_CPU_ISA={isa_cap()} rules out the VNNI instructions int8 needs")
        advice = "int8 would be no faster than fp32: use precision fp32"
    else:
        return None
    return f"{'; '.join(reasons)}; {advice}" if reasons else None


def describe() -> str:
    """One line for logs: CPU model, the reduced-precision instruction sets it has, and any override."""
    flags = cpu_flags()
    have = [f for f in ("avx2", "avx512f", *INT8_FLAGS, *BF16_FLAGS) if f in flags]
    cap = f", ONEDNN_MAX_CPU_ISA={isa_cap()}" if isa_cap() else ""
    if flags_override():
        cap += f", {FLAGS_OVERRIDE}={flags_override()!r} (tests only)"
    return f"{cpu_model()}, {os.cpu_count()} cores ({' '.join(have) or 'no AVX2'}{cap})"
