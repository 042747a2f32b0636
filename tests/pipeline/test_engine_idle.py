"""Engine workers do not busy-wait between batches: right after a batch, a worker process uses next to no
CPU while it waits for the next one (OpenMP and ONNX Runtime thread pools spin by default, which on a
machine with few cores takes CPU from the front doors)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bench.load_points import cpu_seconds
from resnest_serving.pipeline.engines import start_engines
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions


@pytest.mark.parametrize(("kind", "streams"), [("paddle", 1), ("onnxruntime", 1), ("openvino", 1), ("openvino", 2)])
def test_worker_is_idle_between_batches(tiny_model_dir, kind, streams):
    """streams 2: OpenVINO's batch split over two streams (a second compiled model, its own threads)."""
    bundle = ModelBundle.load(tiny_model_dir)
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)

    async def main() -> list[float]:
        (engine,) = await start_engines(bundle, kind, EngineOptions(thread_num=2, batch_streams=streams), 1, 4)
        idle = []
        try:
            for _ in range(3):
                await engine.infer(x)
                before = cpu_seconds(engine.pid)
                await asyncio.sleep(0.4)  # spinning OpenMP threads would burn up to 2 cores x 0.2 s here
                idle.append(cpu_seconds(engine.pid) - before)
        finally:
            await engine.close()
        return idle

    started = time.monotonic()
    idle = asyncio.run(main())
    assert time.monotonic() - started < 120
    assert min(idle) <= 0.03, f"{kind} worker used {idle} CPU-s in 0.4 s idle windows after a batch"
