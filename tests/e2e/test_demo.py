"""`resnest demo` end to end (shortened load test): the trained demo model served over every protocol
answers exactly like the in-process model, at the held-out accuracy recorded by training, and the demo
leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from resnest_serving.demo.digits import META_PATH
from support import REPO_ROOT


def test_demo_end_to_end(tmp_path, shared):
    proc = subprocess.run([sys.executable, "-m", "resnest_serving.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--shared", str(shared), "--bench-seconds", "2", "--show", "3"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    recorded = json.loads(META_PATH.read_text())["heldout_accuracy"]
    inproc = float(re.search(r"in-process held-out accuracy: ([\d.]+)%", out).group(1)) / 100
    assert inproc >= recorded - 0.005
    for protocol in ("grpc", "http", "brpc"):
        served = float(re.search(rf"{protocol}: accuracy ([\d.]+)%", out).group(1)) / 100
        assert served == inproc, protocol
    successes = int(re.search(r"^successes\s+(\d+)$", out, re.M).group(1))
    errors = int(re.search(r"^errors\s+(\d+)$", out, re.M).group(1))
    assert successes > 0 and errors == 0, out  # the load test ran and every answer checked out
    assert re.search(r"int8 on onnxruntime( vs fp32: digits-heldout 296 images|: not checked)", out)  # checks ran
    assert "server stopped (exit code 0)" in out
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the demo left its server running"
