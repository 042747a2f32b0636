"""uint8 pixels to the engine: every engine (Paddle Inference, ONNX Runtime, OpenVINO) at fp32 gives the cropped
uint8 images of the real test images the answers of today's float path (numpy preprocessing + float32 input)
within 1e-5, in process and through the worker's shared memory, at 224x224 and at the tiny model's 64x64;
the reduced precisions agree with their own float path; the exported files are not changed; the batcher
never mixes the two forms in one batch."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from resnest_serving.pipeline.accuracy import preprocess_images
from resnest_serving.pipeline.batcher import DynamicBatcher
from resnest_serving.pipeline.engines import AUTO_ORDER, RUNTIMES, open_runtime, start_engines
from resnest_serving.pipeline.engines.base import CONSISTENCY_TOLERANCE, WARM_UP_SEED
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions
from support import BatchRecorder

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny_224_dir(tmp_path_factory, label_file) -> Path:
    """ResNeSt_tiny at a 224x224 crop (resize 256), as the published models take."""
    from resnest_serving.export.exporter import ExportOptions, export

    return export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path_factory.mktemp("tiny224") / "bundle", random_init=True,
                                seed=11, label_file=label_file, crop_size=224, resize_short=256)).server_dir


@pytest.fixture(scope="module", params=["64", "224"])
def bundle_and_images(request, tiny_model_dir, tiny_224_dir, image_paths):
    """(bundle, pixels uint8 [N, H, W, 3], tensors float32 [N, 3, H, W]) of the shared test images."""
    bundle = ModelBundle.load(tiny_model_dir if request.param == "64" else tiny_224_dir)
    images = {p.name: p.read_bytes() for p in image_paths}
    pixels, tensors = preprocess_images(bundle, images, pixels=True), preprocess_images(bundle, images)
    size = bundle.meta.crop_size
    assert pixels.dtype == np.uint8 and pixels.shape == (len(images), size, size, 3)
    assert tensors.dtype == np.float32 and tensors.shape == (len(images), 3, size, size)
    return bundle, pixels, tensors


@pytest.mark.parametrize("kind", AUTO_ORDER)
def test_pixels_get_the_float_paths_answers_in_process(bundle_and_images, kind):
    bundle, pixels, tensors = bundle_and_images
    runtime, _ = open_runtime(bundle, (kind,), EngineOptions(), 4)
    try:
        for rows in (slice(0, 1), slice(0, 4), slice(1, 4)):
            got, want = runtime.infer(pixels[rows]), runtime.infer(tensors[rows])
            assert got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE, (kind, rows)
    finally:
        runtime.close()


@pytest.mark.parametrize("kind", AUTO_ORDER)
def test_pixels_through_shared_memory_get_the_float_paths_answers(bundle_and_images, kind):
    """One worker, both forms one after the other, a batch larger than max_batch (run in chunks): each
    gets the in-process float answers; a pixel row takes a quarter of a float row's bytes."""
    bundle, pixels, tensors = bundle_and_images
    runtime, _ = open_runtime(bundle, (kind,), EngineOptions(), 4)
    want = np.concatenate([runtime.infer(tensors[i:i + 4]) for i in range(0, len(tensors), 4)])
    runtime.close()

    async def main():
        (engine,) = await start_engines(bundle, kind, EngineOptions(), 1, 4)
        try:
            row_bytes = engine._pixels[0].nbytes, engine._tensors[0].nbytes
            return row_bytes, [await engine.infer(pixels), await engine.infer(tensors), await engine.infer(pixels[:2])]
        finally:
            await engine.close()

    (pixel_row, tensor_row), (from_pixels, from_tensors, first_two) = asyncio.run(main())
    size = bundle.meta.crop_size
    assert (pixel_row, tensor_row) == (size * size * 3, size * size * 3 * 4)
    for got in (from_pixels, from_tensors):
        assert got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE, kind
    assert np.abs(first_two - want[:2]).max() <= TOLERANCE


def test_the_exported_files_are_not_changed(tiny_model_dir):
    """The pixel input is added in memory: the bundle's files stay as exported, so old bundles keep working."""
    files = sorted(p for p in Path(tiny_model_dir).iterdir() if p.is_file())
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    for kind in ("onnxruntime", "openvino"):
        open_runtime(ModelBundle.load(tiny_model_dir), (kind,), EngineOptions(), 2)[0].close()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == before


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precisions_take_pixels(demo_export, image_paths, heldout_digits, precision):
    """Where an engine runs bf16/int8 here, pixels get the answers of the same images as float input at that
    precision (within its start-up tolerance), and the digits the top-1 of fp32."""
    bundle = ModelBundle.load(demo_export.server_dir)
    images = {p.name: p.read_bytes() for p in image_paths}
    pixels, tensors = preprocess_images(bundle, images, pixels=True), preprocess_images(bundle, images)
    digits = preprocess_images(bundle, dict(list(heldout_digits[0].items())[:64]), pixels=True)
    ran, refused = [], []
    for kind in AUTO_ORDER:
        options = EngineOptions(thread_num=1, precision=precision)
        reason = RUNTIMES[kind].unavailable(bundle, options)
        if reason:
            refused.append(reason)
            continue
        runtime, _ = open_runtime(bundle, (kind,), options, 8)
        reference, _ = open_runtime(bundle, (kind,), EngineOptions(thread_num=1), 8)
        assert np.abs(runtime.infer(pixels) - runtime.infer(tensors)).max() <= CONSISTENCY_TOLERANCE[precision], kind
        top1 = [np.concatenate([engine.infer(digits[i:i + 8]) for i in range(0, 64, 8)]).argmax(1)
                for engine in (runtime, reference)]
        assert np.mean(top1[0] == top1[1]) >= 0.95, kind
        runtime.close()
        reference.close()
        ran.append(kind)
    if not ran:  # the refused path (a CPU without the instructions, or under an ISA cap): each engine says why
        assert len(refused) == len(AUTO_ORDER) and all(precision in reason for reason in refused), refused


def test_the_batcher_never_mixes_pixels_and_tensors(tiny_model_dir, image_paths):
    """Requests queued as pixel, pixel, tensor, tensor, pixel: three batches (2, 2, 1), each request its own
    answers (the rule does not depend on the size: the tiny model's 64x64 is enough)."""
    bundle = ModelBundle.load(tiny_model_dir)
    images = {p.name: p.read_bytes() for p in image_paths}
    pixels, tensors = preprocess_images(bundle, images, pixels=True), preprocess_images(bundle, images)
    runtime, _ = open_runtime(bundle, ("onnxruntime",), EngineOptions(), 8)
    want = runtime.infer(tensors)
    recorder = BatchRecorder()
    requests = [pixels[0:1], pixels[1:2], tensors[2:3], tensors[3:4], pixels[4:5]]

    async def main():
        engines = await start_engines(bundle, "onnxruntime", EngineOptions(), 1, 8)
        batcher = DynamicBatcher(engines, batch_size=8, timeout_ms=1, max_queue_images=64, observer=recorder)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in requests))
        finally:
            await batcher.stop()

    got = asyncio.run(main())
    assert recorder.batches == [(2, 2), (2, 2), (1, 1)]
    assert np.abs(np.concatenate(got) - want).max() <= TOLERANCE


def test_a_wrong_conversion_fails_start_up_and_rounding_does_not(demo_export, caplog):
    """The start-up check tells a conversion bug (here: channels swapped) from float rounding that a model
    amplifies (random-init deep variants move by up to 1 for a 1e-6 relative nudge of their input): a pixel
    answer must stay within 10x of the model's own response to that nudge. The trained demo model: a random-init
    tiny one answers nearly uniformly whatever the channels."""
    bundle = ModelBundle.load(demo_export.server_dir)

    class Swapped(RUNTIMES["onnxruntime"]):
        def infer_pixels(self, pixels):
            return super().infer_pixels(np.ascontiguousarray(pixels[..., ::-1]))

    class Sensitive(RUNTIMES["onnxruntime"]):  # pixels off by float rounding, in a model that amplifies it
        def infer_pixels(self, pixels):
            out = super().infer_pixels(pixels)
            out[:, 0] += 3e-3
            return out

        def infer_tensor(self, tensor):
            out = super().infer_tensor(tensor)
            size = self.bundle.meta.crop_size
            warm_up = np.random.default_rng(WARM_UP_SEED).integers(0, 256, (len(tensor), size, size, 3), np.uint8)
            if not np.array_equal(tensor, self.normalize(warm_up)):  # the check's nudged input moves the answer
                out[:, 0] += 1e-3
            return out

    swapped = Swapped(bundle, EngineOptions(thread_num=1))
    with pytest.raises(Exception, match=r"uint8 pixels get a different answer .* > 10x the"):
        swapped.warm_up(2)
    swapped.close()
    sensitive = Sensitive(bundle, EngineOptions(thread_num=1))
    with caplog.at_level("INFO", logger="resnest_serving.pipeline.engines.base"):
        assert set(sensitive.warm_up(3)) == {1, 2, 3}
    sensitive.close()
    assert [r.message for r in caplog.records].count(next(
        r.message for r in caplog.records if "float rounding, not the conversion" in r.message)) == 1
