"""Preprocessing equals a plain NumPy/cv2 re-statement of PaddleClas's steps; bad images get clear errors."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from pipeline.errors import ErrorCode, PipelineError
from pipeline.preprocess import Preprocessor, PreprocessSpec, b64decode_image, decode_image


def paddleclas_reference(path, resize_short=256, crop=224) -> np.ndarray:
    """PaddleClas deploy/python/preprocess.py, step by step: decode, RGB, ResizeImage, CropImage,
    NormalizeImage(scale 1/255, ImageNet mean/std), ToCHW."""
    img = cv2.imread(str(path))
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    percent = float(resize_short) / min(w, h)
    w2, h2 = int(round(w * percent)), int(round(h * percent))
    img = cv2.resize(img, (w2, h2))
    x0, y0 = (w2 - crop) // 2, (h2 - crop) // 2
    img = img[y0:y0 + crop, x0:x0 + crop, :]
    mean = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3)).astype("float32")
    std = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3)).astype("float32")
    img = (img.astype("float32") * np.float32(1.0 / 255.0) - mean) / std
    return img.transpose((2, 0, 1))


@pytest.mark.parametrize("resize_short,crop", [(256, 224), (288, 256), (320, 320)])
def test_matches_paddleclas_steps(image_paths, resize_short, crop):
    pre = Preprocessor(PreprocessSpec(resize_short, crop))
    for path in image_paths:
        got = pre(path.name, base64.b64encode(path.read_bytes()).decode())
        want = paddleclas_reference(path, resize_short, crop)
        assert got.shape == (3, crop, crop) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5, path.name


def test_base64_tolerates_whitespace_and_missing_padding():
    assert b64decode_image("k", "aGVsbG8\n") == b"hello"
    assert b64decode_image("k", "aGVsbG8=") == b"hello"


@pytest.mark.parametrize("value,message", [
    ("", "empty value"),
    ("!!not base64!!", "not valid base64"),
    (" \n", "zero bytes"),
])
def test_bad_base64(value, message):
    with pytest.raises(PipelineError, match=message) as info:
        b64decode_image("image", value)
    assert info.value.code == ErrorCode.INPUT_PARAMS_ERROR
    assert "'image'" in info.value.message


def test_not_an_image_and_truncated_jpeg(image_paths):
    with pytest.raises(PipelineError, match="not a decodable image"):
        decode_image("a", b"hello world", 10**8)
    jpeg = image_paths[0].read_bytes()
    with pytest.raises(PipelineError, match="truncated JPEG"):
        decode_image("b", jpeg[: len(jpeg) // 2], 10**8)


def test_pixel_limit_checked_before_decoding():
    ok, png = cv2.imencode(".png", np.zeros((1000, 2000, 3), np.uint8))
    with pytest.raises(PipelineError, match="2000x1000 = 2000000 pixels exceeds the limit of 1000000"):
        decode_image("big", png.tobytes(), 1_000_000)
    assert decode_image("big", png.tobytes(), 2_000_000).shape == (1000, 2000, 3)


def test_tiny_image_is_upscaled_like_paddleclas():
    """An 8x8 image is enlarged to the short side (72, bilinear) and centre-cropped (64), as PaddleClas's
    ResizeImage(resize_short) + CropImage + NormalizeImage + ToCHWImage do, computed here step by step."""
    bgr = np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", bgr)
    out = Preprocessor(PreprocessSpec(72, 64))("d", base64.b64encode(png.tobytes()))
    big = cv2.resize(bgr, (72, 72), interpolation=cv2.INTER_LINEAR)[4:68, 4:68, ::-1].astype(np.float32)
    want = ((big / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).transpose(2, 0, 1)
    assert out.shape == (3, 64, 64) and np.abs(out - want).max() < 1e-5
