"""The response cache inside the pipeline (tiny model, a real ONNX Runtime worker process): hits answer byte
for byte as misses without a batch, a partial hit sends only the misses to the engine, tensor requests and a
pipeline without the cache touch no counter, bad values are reported as without the cache."""

from __future__ import annotations

import base64

import numpy as np

from resnest_serving.pipeline.pipeline import Pipeline, StageObserver
from resnest_serving.pipeline.types import Request, Response
from support import pipeline_settings, run_pipeline


class Recorder(StageObserver):
    """Engine batches (images each) and the cache counters, as the pipeline reports them."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.hits = self.misses = self.used_bytes = 0
        self.models: set[str] = set()

    def batch_done(self, images: int, requests: int, queue_wait_s: float, infer_s: float) -> None:
        self.batches.append(images)

    def response_cache(self, model: str, hits: int, misses: int, used_bytes: int) -> None:
        self.models.add(model)
        self.hits += hits
        self.misses += misses
        self.used_bytes = used_bytes


def run(model_dir, cache_mb: float, scenario) -> None:
    """Start a pipeline over one real engine process, run `await scenario(pipeline, recorder)`, stop it."""
    run_pipeline(model_dir, pipeline_settings(response_cache_mb=cache_mb), scenario, Recorder())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def same(a: Response, b: Response) -> bool:
    return (a.err_no, a.keys, a.values) == (b.err_no, b.keys, b.values) and a.probs.tobytes() == b.probs.tobytes()


def test_hit_equals_miss_skips_the_engine_and_base64_shares_entries_with_bytes(tiny_model_dir, image_paths):
    jpeg = image_paths[0].read_bytes()

    async def scenario(pipeline: Pipeline, rec: Recorder) -> None:
        first = await pipeline.infer(Request(keys=["image"], values=[b64(jpeg)]))
        assert first.err_no == 0 and rec.batches == [1] and (rec.hits, rec.misses) == (0, 1)
        again = await pipeline.infer(Request(keys=["image"], values=[b64(jpeg)]))
        as_bytes = await pipeline.infer(Request(keys=["image"], values=[], images=[jpeg]))
        assert same(first, again) and same(first, as_bytes)
        assert rec.batches == [1] and (rec.hits, rec.misses) == (2, 1)  # no engine batch for a hit
        assert rec.models == {"imagenet"} and 0 < rec.used_bytes <= pipeline.cache.max_bytes

        profiled = await pipeline.infer(Request(keys=["image", "pipeline.profile"], values=[b64(jpeg), "1"]))
        assert profiled.values[-1].startswith("cache:1/1 preprocess:0.000ms inference:0.000ms postprocess:")

    run(tiny_model_dir, 1, scenario)


def test_partial_hit_runs_only_the_misses_and_keeps_request_order(tiny_model_dir, image_paths):
    a, b = (p.read_bytes() for p in image_paths[:2])
    answers: dict[str, Response] = {}

    async def uncached(pipeline: Pipeline, rec: Recorder) -> None:
        answers["plain"] = await pipeline.infer(Request(keys=["x", "y"], values=[b64(a), b64(b)]))
        assert pipeline.cache is None and rec.batches == [2] and rec.models == set()  # off: no counter moves

    async def cached(pipeline: Pipeline, rec: Recorder) -> None:
        await pipeline.infer(Request(keys=["y"], values=[b64(b)]))
        answers["partial"] = await pipeline.infer(Request(keys=["x", "y"], values=[b64(a), b64(b)]))
        assert rec.batches == [1, 1] and (rec.hits, rec.misses) == (1, 2)  # only `a` went to the engine
        answers["full"] = await pipeline.infer(Request(keys=["x", "y"], values=[b64(a), b64(b)]))
        assert rec.batches == [1, 1] and (rec.hits, rec.misses) == (3, 2)

    run(tiny_model_dir, 0, uncached)
    run(tiny_model_dir, 0.5, cached)
    assert same(answers["plain"], answers["partial"]) and same(answers["plain"], answers["full"])


def test_tensor_requests_bypass_and_bad_values_are_reported_as_without_the_cache(tiny_model_dir, image_paths):
    jpeg = image_paths[0].read_bytes()

    async def scenario(pipeline: Pipeline, rec: Recorder) -> None:
        crop = pipeline.preprocess.spec.crop_size
        tensor = np.zeros((2, 3, crop, crop), np.float32)
        for _ in range(2):
            answer = await pipeline.infer(Request(keys=["a", "b"], values=[], tensor=tensor))
            assert answer.err_no == 0
        assert rec.batches == [2, 2] and rec.models == set() and len(pipeline.cache) == 0

        bad = await pipeline.infer(Request(keys=["ok", "bad"], values=[b64(jpeg), "not base64!"]))
        assert bad.err_no == 5000 and "image 'bad': value is not valid base64" in bad.err_msg
        assert len(pipeline.cache) == 0  # nothing answered, nothing stored
        assert (await pipeline.infer(Request(keys=["ok"], values=[b64(jpeg)]))).err_no == 0

    run(tiny_model_dir, 1, scenario)
