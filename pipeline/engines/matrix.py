"""Check every engine and precision on this machine: each runs its start-up check (batch sizes 1..N, same
answer for the same image at every size) on each model, and fp32 engines are compared with ONNX Runtime
(whose CPU kernels do not depend on oneDNN or ONEDNN_MAX_CPU_ISA).

    python -m resnest_serving.pipeline.engines.matrix MODEL_DIR [MODEL_DIR ...] [--max-batch 8] [--json]

Run it under ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE to check the code paths of another CPU generation
(the tests do). Exit status 1 when any engine that should run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from resnest_serving.pipeline.engines.base import EngineError
from resnest_serving.pipeline.engines.choose import AUTO_ORDER, RUNTIMES, open_runtime
from resnest_serving.pipeline.engines.cpu import describe
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

PRECISIONS = ("fp32", "bf16", "int8")
# fp32 against ONNX Runtime: float rounding moves a random-weight ResNeSt50's peaked softmax by up to ~4e-4
# (logits of ~70 differ by ~4e-4 between engines); a wrong kernel moves it far more, or changes the top-1.
FP32_TOLERANCE = 1e-3


def check_model(model_dir: Path, max_batch: int, threads: int = 1) -> list[dict]:
    """One row per (engine, precision): status "ok", "failed" (with why) or "unavailable" (with why)."""
    bundle = ModelBundle.load(model_dir)
    size = bundle.meta.crop_size
    batch = np.random.default_rng(1).standard_normal((max_batch, 3, size, size)).astype(np.float32)
    reference = None
    rows = []
    for kind in ("onnxruntime", *[k for k in AUTO_ORDER if k != "onnxruntime"]):
        for precision in PRECISIONS:
            options = EngineOptions(thread_num=threads, precision=precision)
            row = {"model": str(model_dir), "arch": bundle.meta.arch, "engine": kind, "precision": precision}
            why = RUNTIMES[kind].unavailable(bundle, options)
            if why:
                rows.append({**row, "status": "unavailable", "why": why})
                continue
            try:
                runtime, _ = open_runtime(bundle, (kind,), options, max_batch)
                out = runtime.infer(batch)
                runtime.close()
            except EngineError as exc:
                rows.append({**row, "status": "failed", "why": str(exc)})
                continue
            if precision == "fp32":
                if reference is None:
                    reference = out
                why = fp32_difference(out, reference)
                if why:
                    rows.append({**row, "status": "failed", "why": why})
                    continue
            rows.append({**row, "status": "ok"})
    return rows


def fp32_difference(out: np.ndarray, reference: np.ndarray) -> str | None:
    """Why `out` is not the reference's answer up to float rounding, or None."""
    delta = float(np.abs(out - reference).max())
    if delta > FP32_TOLERANCE:
        return f"differs from onnxruntime fp32 by {delta:.2g} (max |Δprob|), more than {FP32_TOLERANCE:g}"
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * FP32_TOLERANCE  # rows whose top-1 rounding cannot flip
    if (out.argmax(1) != reference.argmax(1))[clear].any():
        return "a different top-1 class than onnxruntime fp32"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="serving_server folders")
    parser.add_argument("--max-batch", type=int, default=8, help="batch sizes 1..N (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="math threads per engine (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args(argv)
    rows = [row for model in args.models for row in check_model(model, args.max_batch, args.threads)]
    if args.json:
        sys.stdout.write("".join(json.dumps(row) + "\n" for row in rows))
    else:
        sys.stdout.write(f"CPU: {describe()}\n")
        for row in rows:
            why = f": {row['why']}" if "why" in row else ""
            sys.stdout.write(f"{row['arch'] or row['model']:<24} {row['engine']:<12} {row['precision']:<5} "
                             f"{row['status']}{why}\n")
    return 1 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
