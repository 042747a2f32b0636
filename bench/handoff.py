"""The engine hand-off alone: what a batch costs to cross to an engine worker process and back, apart from
the model. On a near-zero-cost model (by default a "trivial" bundle: ResNeSt_tiny's export at a 224x224 crop
whose ONNX model is replaced by global average pooling + a linear layer + softmax, ~0.1 ms; ONNX Runtime and
OpenVINO run it, Paddle would run the tiny network itself, so it is left out by default) each engine is timed twice on the same batches, interleaved in blocks: called in this process (the engine's own
run time) and through `ProcessEngine` (copy into shared memory, pipe message, the worker waking, the same
run, the reply waking the event loop, the answer copied out). Their difference (medians) is the hand-off
per batch. Also printed: the bytes per image written to shared memory in each input form, uint8 pixels
(what the front door sends now) and float32 tensors (what it sent before, and what FP32 tensor requests
still send).

    python -m bench.handoff [--engines onnxruntime openvino] [--batches 1 4] [--calls 400] [--model-dir DIR]

Not a test: the machines are shared and noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from resnest_serving.pipeline.engines import AUTO_ORDER, open_runtime, start_engines
from resnest_serving.pipeline.pixels import Normalizer
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

BLOCK = 25  # calls per block; blocks of the two ways alternate so both see the same machine load


def ensure_tiny(out_dir: Path, crop: int) -> Path:
    """ResNeSt_tiny, random weights, at `crop` (resize_short = crop * 8/7), exported once and reused."""
    from resnest_serving.export.exporter import ExportOptions, export

    target = out_dir / f"ResNeSt_tiny-{crop}"
    if not (target / "serving_server" / "inference.onnx").is_file():
        export(ExportOptions(arch="ResNeSt_tiny", out=target, random_init=True, force=True, crop_size=crop,
                             resize_short=round(crop * 8 / 7)))
    return target / "serving_server"


def ensure_trivial(out_dir: Path, crop: int) -> Path:
    """The tiny export at `crop` with its ONNX model replaced by avg-pool + linear + softmax (same input name
    and classes): an engine whose run costs next to nothing, so the hand-off is what is left."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    target = out_dir / f"trivial-{crop}" / "serving_server"
    if not (target / "inference.onnx").is_file():
        shutil.copytree(ensure_tiny(out_dir, crop), target, dirs_exist_ok=True)
        feed = onnx.load(str(target / "inference.onnx")).graph.input[0]
        classes = ModelBundle.load(target).meta.class_num
        weight = np.random.default_rng(0).standard_normal((3, classes)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("GlobalAveragePool", [feed.name], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
            "trivial", [feed], [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
            [numpy_helper.from_array(weight, "weight")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(target / "inference.onnx"))
    return target


async def measure(bundle: ModelBundle, kind: str, threads: int, batches: list[int], calls: int) -> list[dict]:
    """Rows of median µs per batch, in process and through the worker, for each batch size and form."""
    size, max_batch = bundle.meta.crop_size, max(batches)
    options = EngineOptions(thread_num=threads)
    pixels = np.random.default_rng(0).integers(0, 256, (max_batch, size, size, 3), np.uint8)
    runtime, _ = open_runtime(bundle, (kind,), options, max_batch)
    tensors = runtime.normalize(pixels)
    (engine,) = await start_engines(bundle, kind, options, 1, max_batch)
    rows = []
    try:
        for form, batch in (("uint8 pixels", pixels), ("float32 tensor", tensors)):
            for bs in batches:
                x = batch[:bs]
                local, remote = [], []
                for _ in range(max(1, calls // BLOCK)):
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        runtime.infer(x)
                        local.append(time.perf_counter() - started)
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        await engine.infer(x)
                        remote.append(time.perf_counter() - started)
                alone, trip = float(np.median(local)) * 1e6, float(np.median(remote)) * 1e6
                rows.append({"engine": kind, "form": form, "batch": bs, "engine_us": alone, "round_trip_us": trip,
                             "handoff_us": trip - alone, "shm_bytes_per_image": int(x[0].nbytes)})
    finally:
        await engine.close()
        runtime.close()
    return rows


def normalize_us(bundle: ModelBundle, calls: int) -> float:
    """Median µs of the numpy conversion of one image (what the front door did before)."""
    size = bundle.meta.crop_size
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), np.uint8)
    normalize = Normalizer(bundle.meta.mean, bundle.meta.std)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        normalize(pixels)
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported serving_server (default: the trivial model)")
    parser.add_argument("--crop", type=int, default=224, help="crop size of the default model")
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "openvino"], choices=AUTO_ORDER)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4], help="batch sizes")
    parser.add_argument("--calls", type=int, default=400, help="calls per way, batch size and form")
    parser.add_argument("--threads", type=int, default=1, help="math threads of the engine")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bundle = ModelBundle.load(args.model_dir or ensure_trivial(args.out, args.crop))
    size = bundle.meta.crop_size
    rows = [row for kind in args.engines
            for row in asyncio.run(measure(bundle, kind, args.threads, args.batches, args.calls))]
    name = bundle.directory.parent.name if args.model_dir is None else bundle.meta.arch or "model"
    print(f"Engine hand-off, {name} {size}x{size}, {args.threads} thread(s), medians of "
          f"{args.calls} calls (interleaved blocks of {BLOCK})\n")
    print("| engine | form | batch | engine alone µs | through the worker µs | hand-off µs/batch | shm bytes/image |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['form']} | {r['batch']} | {r['engine_us']:.0f} | {r['round_trip_us']:.0f} | "
              f"{r['handoff_us']:.0f} | {r['shm_bytes_per_image']:,} |")
    pixel, tensor = size * size * 3, size * size * 3 * 4
    print(f"\nbytes per image through shared memory: {pixel:,} as uint8 pixels, {tensor:,} as float32 "
          f"(before: every image as float32), {tensor / pixel:.0f}x fewer")
    print(f"the front door no longer converts: numpy /255, mean/std and CHW cost {normalize_us(bundle, args.calls):.0f} µs "
          "per image (median, one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
