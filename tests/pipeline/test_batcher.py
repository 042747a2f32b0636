"""Dynamic batcher: batches close at batch_size or after the timeout, and every request gets its own rows.
Uses a real engine (ONNX Runtime in its worker process) on the tiny model; batch composition is read from
the observer."""

from __future__ import annotations

import asyncio

import numpy as np

from resnest_serving.pipeline.batcher import DynamicBatcher, QueueFull
from resnest_serving.pipeline.engines import open_runtime, start_engines
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from support import BatchRecorder


def inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


async def started_engine(model_dir):
    return (await start_engines(ModelBundle.load(model_dir), "onnxruntime", EngineOptions(), 1, 8))[0]


def test_each_request_gets_its_own_rows(tiny_model_dir):
    runtime, _ = open_runtime(ModelBundle.load(tiny_model_dir), ("onnxruntime",), EngineOptions(), 8)
    requests = [inputs(n, seed) for seed, n in enumerate([1, 2, 1, 3, 1])]
    want = [runtime.infer(x) for x in requests]
    recorder = BatchRecorder()

    async def main():
        batcher = DynamicBatcher([await started_engine(tiny_model_dir)], batch_size=8, timeout_ms=50, max_queue_images=1024, observer=recorder)
        await batcher.start()
        got = await asyncio.gather(*(batcher.submit(x) for x in requests))
        await batcher.stop()
        return got

    got = asyncio.run(main())
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max()
    assert sum(r for _, r in recorder.batches) == 5 and max(i for i, _ in recorder.batches) > 1


def test_batch_closes_at_size_and_timeout(tiny_model_dir):
    recorder = BatchRecorder()

    async def main():
        batcher = DynamicBatcher([await started_engine(tiny_model_dir)], batch_size=2, timeout_ms=200, max_queue_images=1024, observer=recorder)
        await batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.submit(inputs(1, 0))  # alone: waits for the timeout
        waited = loop.time() - t0
        await asyncio.gather(*(batcher.submit(inputs(1, i)) for i in range(4)))  # full batches of 2
        await batcher.stop()
        return waited

    waited = asyncio.run(main())
    assert waited >= 0.19
    assert recorder.batches == [(1, 1), (2, 2), (2, 2)]  # the four queued together: two full batches


def test_queue_limit(tiny_model_dir):

    async def main():
        batcher = DynamicBatcher([await started_engine(tiny_model_dir)], batch_size=1, timeout_ms=-1, max_queue_images=2)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(inputs(2, 0)))
            await asyncio.sleep(0)
            try:
                await batcher.submit(inputs(1, 1))
            except QueueFull as exc:
                return str(exc), await first
        finally:
            await batcher.stop()

    message, rows = asyncio.run(main())
    assert "max_queue_images 2" in message and rows.shape[0] == 2


def test_waits_only_for_announced_arrivals(tiny_model_dir):
    """With wait_for_arrivals, a lone request does not wait out the timeout; an announced one is waited for."""
    recorder = BatchRecorder()

    async def main():
        batcher = DynamicBatcher([await started_engine(tiny_model_dir)], batch_size=4, timeout_ms=30_000, max_queue_images=1024, observer=recorder,
                                 wait_for_arrivals=True)
        await batcher.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.submit(inputs(1, 0))  # nothing announced: runs at once
        alone = loop.time() - t0

        batcher.announce()  # a second request is "in preprocessing"

        async def late():
            await asyncio.sleep(0.2)
            batcher.withdraw()
            return await batcher.submit(inputs(1, 2))

        first, second = await asyncio.gather(batcher.submit(inputs(1, 1)), late())
        await batcher.stop()
        return alone

    alone = asyncio.run(main())
    assert alone < 15  # far below the 30 s it would wait if it waited for nothing
    assert recorder.batches[0] == (1, 1) and recorder.batches[1] == (2, 2)  # the second batch waited
