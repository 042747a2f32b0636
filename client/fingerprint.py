"""The machine a benchmark ran on, written into every benchmark report so that two reports can be
compared knowingly: CPU model and the instruction sets that decide engine speed, cores, memory, the
frequency governor, the load before the run, and the versions of the engines and of this project."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from resnest_serving.protocol.machine import MEMINFO, cpu_flags, cpu_model, proc_field

__all__ = ["machine_fingerprint"]

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
GOVERNOR = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
PACKAGES = ("resnest-serving", "paddlepaddle", "openvino", "onnxruntime", "grpcio", "numpy", "opencv-python-headless")


def _mem_total_gib() -> float | None:
    value = proc_field(MEMINFO, "MemTotal").split()
    return round(int(value[0]) / 2**20, 1) if value and value[0].isdigit() else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_fingerprint() -> dict[str, Any]:
    """What decides a benchmark's figures on this machine, read now (call it just before the run: the
    load average is part of it). Fields that cannot be read here are None."""
    flags = cpu_flags()
    try:
        governor = Path(GOVERNOR).read_text().strip() or None
    except OSError:
        governor = None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _mem_total_gib(),
        "governor": governor,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
    }
