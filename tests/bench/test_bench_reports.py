"""The benchmarks' own arithmetic: the engine table's median and min–max over rounds, and the per-process
CPU reading that splits a served request's cost into front door and engine workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.engines import table
from bench.served import process_tree_cpu


def test_engine_table_reports_median_and_range_over_rounds():
    rounds = [{"ms": {"1": 10.0, "4": 24.0}}, {"ms": {"1": 12.0, "4": 20.0}}, {"ms": {"1": 30.0, "4": 28.0}}]
    runs = {("paddle", "fp32"): rounds, ("openvino", "int8"): [{"error": "no VNNI here"}] * 3}
    lines, rows = table("ResNeSt_tiny", 64, 1.0, 100.0, [1, 4], runs)
    paddle = rows[0]["ms_per_image"]
    assert paddle["1"] == {"median": 12.0, "min": 10.0, "max": 30.0}
    assert paddle["4"] == {"median": 6.0, "min": 5.0, "max": 7.0}
    assert "| paddle fp32 | 12.0 [10.0–30.0] (83.3) | 6.0 [5.0–7.0] (166.7) |" in lines[2]
    assert rows[1] == {"arch": "ResNeSt_tiny", "engine": "openvino", "precision": "int8", "error": "no VNNI here"}


def test_process_tree_cpu_counts_the_children_apart():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.5: pass\ntime.sleep(30)"])
    try:
        time.sleep(1.5)
        cpu = process_tree_cpu(os.getpid())
        assert cpu["engine workers"] >= 0.4  # the busy child, counted under the parent's children
        assert cpu["front door"] > 0
    finally:
        child.kill()
        child.wait()
