"""Image decode and PaddleClas inference preprocessing, per image (runs in worker threads: OpenCV
releases the GIL).

PaddleClas steps (reference §8): cv2 decode (BGR) → resize the short side to `resize_short` with
Python's round() and cv2 bilinear → centre crop → BGR→RGB → /255 → ImageNet mean/std → CHW float32.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import cv2
import numpy as np

from export.bundle_meta import IMAGENET_MEAN, IMAGENET_STD
from pipeline.errors import ErrorCode, PipelineError

cv2.setNumThreads(1)  # parallelism comes from the pipeline's thread pool, not from inside one resize


@dataclass(frozen=True)
class PreprocessSpec:
    resize_short: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding


def _bad(key: str, why: str) -> PipelineError:
    return PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"image {key!r}: {why}")


def b64decode_image(key: str, value: str | bytes) -> bytes:
    """Standard base64 → bytes; whitespace and missing padding are tolerated, other characters are not."""
    if not value:
        raise _bad(key, "empty value; expected a base64-encoded image")
    try:
        raw = value.encode("ascii") if isinstance(value, str) else value
        raw = b"".join(raw.split())
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _bad(key, f"value is not valid base64 ({exc})") from None
    if not data:
        raise _bad(key, "base64 decodes to zero bytes")
    return data


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels; None if Pillow cannot tell."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def decode_image(key: str, data: bytes, max_pixels: int) -> np.ndarray:
    """Encoded bytes → BGR uint8 HWC, refusing non-images, truncated JPEGs and oversized images."""
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise _bad(key, f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels exceeds the limit of {max_pixels}")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise _bad(key, f"truncated JPEG: no end-of-image marker ({len(data)} bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise _bad(key, f"not a decodable image ({len(data)} bytes starting {data[:8].hex()})")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise _bad(key, f"{img.shape[1]}x{img.shape[0]} pixels exceeds the limit of {max_pixels}")
    return img


class Preprocessor:
    """Callable turning one encoded image into the model's CHW float32 input."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        std = np.asarray(spec.std, np.float32)
        # (x/255 - mean)/std == x * scale - shift, with the channel order already RGB
        self._scale = (1.0 / (255.0 * std)).reshape(1, 1, 3)
        self._shift = (np.asarray(spec.mean, np.float32) / std).reshape(1, 1, 3)

    def resize_crop(self, key: str, img: np.ndarray) -> np.ndarray:
        """Short side to resize_short (Python round, bilinear), then the centre crop_size square."""
        h, w = img.shape[:2]
        percent = self.spec.resize_short / min(h, w)
        new_w, new_h = int(round(w * percent)), int(round(h * percent))
        crop = self.spec.crop_size
        if new_w < crop or new_h < crop:
            raise _bad(key, f"{w}x{h} image resizes to {new_w}x{new_h}, smaller than the {crop} crop")
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        top, left = (new_h - crop) // 2, (new_w - crop) // 2
        return img[top:top + crop, left:left + crop]

    def __call__(self, key: str, value: str | bytes) -> np.ndarray:
        """A base64-encoded image (a request value) → the model's input."""
        return self.from_bytes(key, b64decode_image(key, value))

    def from_bytes(self, key: str, data: bytes) -> np.ndarray:
        """Encoded image bytes → the model's input."""
        return self.from_bgr(key, decode_image(key, data, self.spec.max_pixels))

    def from_bgr(self, key: str, img: np.ndarray) -> np.ndarray:
        """A decoded BGR uint8 image → normalized RGB CHW float32."""
        rgb = self.resize_crop(key, img)[:, :, ::-1]
        out = rgb.astype(np.float32) * self._scale - self._shift
        return np.ascontiguousarray(out.transpose(2, 0, 1))
