"""A lone small image is preprocessed on the event loop (no thread hops) when the server is otherwise idle; more
images, a big one, or a request arriving while another is in the pool, the batcher or an engine go to the
preprocessing threads, so open batches wait for them; both paths answer byte for byte alike and
refuse a bad image with the same message. A real ONNX Runtime worker process runs the tiny model."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np

import resnest_serving.pipeline.pipeline as pipeline_module
from resnest_serving.pipeline.errors import ErrorCode
from resnest_serving.pipeline.pipeline import Pipeline
from resnest_serving.pipeline.types import Request
from support import BatchRecorder, pipeline_settings, run_pipeline


def record_threads(pipeline: Pipeline) -> list[str]:
    """The name of the thread that preprocessed each image, in the order they ran."""
    names: list[str] = []
    prepare = pipeline._prepare

    def recording(key, value):
        names.append(threading.current_thread().name)
        return prepare(key, value)

    pipeline._prepare = recording
    return names


def test_lone_small_image_inline_others_in_the_pool(tiny_model_dir, image_paths, monkeypatch):
    values = [base64.b64encode(path.read_bytes()).decode() for path in image_paths[:2]]
    assert all(len(v) <= pipeline_module.INLINE_MAX_BYTES for v in values)

    async def scenario(pipeline: Pipeline, _observer) -> None:
        threads = record_threads(pipeline)
        loop_thread = threading.current_thread().name
        lone = await pipeline.infer(Request(keys=["a"], values=values[:1]))
        assert lone.err_no == 0 and threads == [loop_thread]

        threads.clear()
        pair = await pipeline.infer(Request(keys=["a", "b"], values=values))
        assert pair.err_no == 0 and len(threads) == 2 and all(t.startswith("preprocess") for t in threads)
        assert np.allclose(pair.probs[0], lone.probs[0], atol=1e-6)  # batch of 2 vs 1: last-digit differences

        threads.clear()
        monkeypatch.setattr(pipeline_module, "INLINE_MAX_BYTES", len(values[0]) - 1)  # now too big to inline
        pooled = await pipeline.infer(Request(keys=["a"], values=values[:1]))
        assert threads[0].startswith("preprocess") and pooled.probs.tobytes() == lone.probs.tobytes()
        monkeypatch.undo()

        threads.clear()  # a lone image arriving while another request's images are in the pool: the pool too
        both = await asyncio.gather(pipeline.infer(Request(keys=["a", "b"], values=values)),
                                    pipeline.infer(Request(keys=["a"], values=values[:1])))
        assert [r.err_no for r in both] == [0, 0] and all(t.startswith("preprocess") for t in threads)

    run_pipeline(tiny_model_dir, pipeline_settings(), scenario)


def test_lone_image_arriving_while_another_is_in_the_batcher_is_announced_and_shares_its_batch(
        tiny_model_dir, image_paths):
    values = [base64.b64encode(path.read_bytes()).decode() for path in image_paths[:2]]

    async def scenario(pipeline: Pipeline, recorder: BatchRecorder) -> None:
        threads = record_threads(pipeline)
        loop_thread = threading.current_thread().name
        first, second = await asyncio.gather(  # the first is decoded inline and queued before the second starts
            pipeline.infer(Request(keys=["a"], values=values[:1])), pipeline.infer(Request(keys=["b"], values=values[1:])))
        assert first.err_no == second.err_no == 0
        assert threads[0] == loop_thread and threads[1].startswith("preprocess")
        assert recorder.batches == [(2, 2)]  # the open batch waited for the announced second request

    run_pipeline(tiny_model_dir, pipeline_settings(auto_batching_timeout_ms=5000), scenario, BatchRecorder())


def test_bad_lone_image_refused_alike_inline_and_in_the_pool(tiny_model_dir, image_paths, monkeypatch):
    bad = base64.b64encode(b"\xff\xd8\xff not really a jpeg").decode()

    async def scenario(pipeline: Pipeline, _observer) -> None:
        inline = await pipeline.infer(Request(keys=["photo"], values=[bad]))
        monkeypatch.setattr(pipeline_module, "INLINE_MAX_BYTES", -1)
        pooled = await pipeline.infer(Request(keys=["photo"], values=[bad]))
        assert inline.err_no == pooled.err_no == ErrorCode.INPUT_PARAMS_ERROR
        assert inline.err_msg == pooled.err_msg and "'photo'" in inline.err_msg
        monkeypatch.undo()
        good = await pipeline.infer(Request(keys=["photo"], values=[base64.b64encode(image_paths[0].read_bytes())
                                                                    .decode()]))
        assert good.err_no == 0  # still serving

    run_pipeline(tiny_model_dir, pipeline_settings(), scenario)
