"""Image decode and PaddleClas inference preprocessing, per image (runs in worker threads: OpenCV
releases the GIL).

PaddleClas steps (../shared/reference/paddle_serving_protocol.md §8): cv2 decode (BGR) → resize the short side to
`resize_short` with Python's round() and cv2 bilinear → centre crop → BGR→RGB → /255 → ImageNet mean/std → CHW
float32. The server stops after the crop and hands its local engines the uint8 RGB pixels; the rest runs inside
the engine (`pipeline.pixels`). It decodes JPEGs straight to RGB instead of flipping BGR after the crop: bilinear
resizing treats each channel alone, so the pixels are the same, without a strided copy (~0.2 ms per image).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from resnest_serving.pipeline.errors import ErrorCode, PipelineError
from resnest_serving.pipeline.pixels import Normalizer
from resnest_serving.protocol.b64 import decode_strict
from resnest_serving.protocol.bundle_meta import IMAGENET_MEAN, IMAGENET_STD

cv2.setNumThreads(1)  # parallelism comes from the pipeline's thread pool, not from inside one resize


@dataclass(frozen=True)
class PreprocessSpec:
    resize_short: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    max_aspect_ratio: float = 20.0  # long side / short side, also checked before decoding
    jpeg_dct_scaling: bool = False  # decode big JPEGs at 1/2..1/8 scale (libjpeg DCT scaling), short side kept >= resize_short


def _bad(key: str, why: str) -> PipelineError:
    return PipelineError(ErrorCode.INPUT_PARAMS_ERROR, f"image {key!r}: {why}")


def b64decode_image(key: str, value: str | bytes) -> bytes:
    """Standard base64 → bytes; whitespace and missing padding are tolerated, other characters are not."""
    if not value:
        raise _bad(key, "empty value; expected a base64-encoded image")
    try:
        data = decode_strict(value)  # what clients send: canonical base64
    except ValueError:
        try:  # whitespace (MIME line breaks) or no padding: the same bytes, a slower path
            raw = value.encode("ascii") if isinstance(value, str) else value
            raw = b"".join(raw.split())
            data = decode_strict(raw + b"=" * (-len(raw) % 4))
        except ValueError as exc:  # UnicodeEncodeError and binascii.Error are ValueErrors
            raise _bad(key, f"value is not valid base64 ({exc})") from None
    if not data:
        raise _bad(key, "base64 decodes to zero bytes")
    return data


# Formats whose headers are read (dimensions checked) before any pixel is decoded. Everything else that
# OpenCV could decode (TIFF, HDR, EXR, PNM, JPEG 2000, ...) is refused: their headers are not checked here.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
Image.MAX_IMAGE_PIXELS = None  # this module applies its own limits, with a specific error, before decoding

# EXIF orientation → the flips/rotation that bring the stored pixels upright (as cv2.imdecode does).
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1]}


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF orientation (JPEG)


def read_header(key: str, data: bytes) -> ImageHeader:
    """The format and size of an encoded image, from its header alone; unknown or refused formats and
    unreadable headers are errors (err_no 5000)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format or "", img.size
            fmt = "JPEG" if fmt == "MPO" else fmt  # a JPEG with an MPF segment (phone photos): its first image
            orientation = int(img.getexif().get(0x0112, 1)) if fmt == "JPEG" else 1
    except UnidentifiedImageError:
        raise _bad(key, f"not a decodable image ({len(data)} bytes starting {data[:8].hex()}: not a known image "
                        "format)") from None
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise _bad(key, f"not a decodable image ({len(data)} bytes starting {data[:8].hex()}: "
                        f"{str(exc)[:120] or type(exc).__name__})") from None
    if fmt not in ACCEPTED_FORMATS:
        raise _bad(key, f"{fmt} images are not accepted; send {', '.join(ACCEPTED_FORMATS)}")
    if width < 1 or height < 1:
        raise _bad(key, f"{fmt} header says {width}x{height}")
    return ImageHeader(fmt, width, height, orientation if orientation in _ORIENT else 1)


def check_limits(key: str, header: ImageHeader, max_pixels: int, max_aspect_ratio: float) -> None:
    """Refuse, before decoding, an image whose pixel count or aspect ratio is over the limits."""
    w, h = header.width, header.height
    if w * h > max_pixels:
        raise _bad(key, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (max_image_pixels)")
    if max(w, h) > max_aspect_ratio * min(w, h):
        raise _bad(key, f"{w}x{h} has an aspect ratio of {max(w, h) / min(w, h):.4g}, over the limit of "
                        f"{max_aspect_ratio:g} (max_aspect_ratio)")


def decode_image(key: str, data: bytes, max_pixels: int, max_aspect_ratio: float = 20.0,
                 min_short_side: int = 0, rgb: bool = False) -> np.ndarray:
    """Encoded bytes → BGR uint8 HWC (upright, as cv2.imdecode gives), or RGB with `rgb`. Headers are checked against the
    limits first; JPEGs are decoded strictly (any corrupt or missing data is an error), PNGs by libpng,
    which checks every chunk's CRC. `min_short_side` > 0: a JPEG whose short side is at least twice that is
    decoded at a libjpeg DCT scale (1/2 ... 1/8) that keeps the short side >= min_short_side: about half the
    decode time of a large photo, with pixels that differ slightly from a full decode (README "Engines and
    precision" records the effect)."""
    header = read_header(key, data)
    check_limits(key, header, max_pixels, max_aspect_ratio)
    scaled = header.format == "JPEG" and 0 < 2 * min_short_side <= min(header.width, header.height)
    if header.format == "JPEG":
        size = {"min_height": min_short_side, "min_width": min_short_side} if scaled else {}
        try:
            img = simplejpeg.decode_jpeg(data, colorspace="RGB" if rgb else "BGR", strict=True, **size)
        except ValueError as exc:
            raise _bad(key, f"corrupt JPEG ({len(data)} bytes): {exc}") from None
        img = np.ascontiguousarray(_ORIENT[header.orientation](img)) if header.orientation != 1 else img
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise _bad(key, f"corrupt {header.format} ({len(data)} bytes): the decoder gave up")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img
    want = {(header.width, header.height), (header.height, header.width)}
    if scaled:  # libjpeg rounds each scaled side up: ceil(side * M / 8)
        want = {(-(-w * m // 8), -(-h * m // 8)) for w, h in want for m in range(1, 9)}
    if (img.shape[1], img.shape[0]) not in want:
        raise _bad(key, f"decoded {img.shape[1]}x{img.shape[0]}, but the header says {header.width}x{header.height}")
    return img


class Preprocessor:
    """Callable turning one encoded image into the model's input: the cropped uint8 RGB pixels (`pixels*`,
    what the server hands its local engines) or the normalized float32 CHW tensor (`__call__`, `from_*`)."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self.normalize = Normalizer(spec.mean, spec.std)

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

    def pixels(self, key: str, value: str | bytes) -> np.ndarray:
        """A base64-encoded image (a request value) → its cropped RGB pixels."""
        return self.pixels_from_bytes(key, b64decode_image(key, value))

    def pixels_from_bytes(self, key: str, data: bytes) -> np.ndarray:
        """Encoded image bytes → the cropped RGB pixels, uint8 [crop, crop, 3]."""
        min_short_side = self.spec.resize_short if self.spec.jpeg_dct_scaling else 0
        rgb = decode_image(key, data, self.spec.max_pixels, self.spec.max_aspect_ratio, min_short_side, rgb=True)
        return np.ascontiguousarray(self.resize_crop(key, rgb))

    def pixels_from_bgr(self, key: str, img: np.ndarray) -> np.ndarray:
        """A decoded BGR uint8 image → the cropped RGB pixels, uint8 [crop, crop, 3] (contiguous)."""
        return cv2.cvtColor(self.resize_crop(key, img), cv2.COLOR_BGR2RGB)

    def __call__(self, key: str, value: str | bytes) -> np.ndarray:
        """A base64-encoded image (a request value) → the model's float input."""
        return self.normalize(self.pixels(key, value))

    def from_bytes(self, key: str, data: bytes) -> np.ndarray:
        """Encoded image bytes → the model's float input."""
        return self.normalize(self.pixels_from_bytes(key, data))

    def from_bgr(self, key: str, img: np.ndarray) -> np.ndarray:
        """A decoded BGR uint8 image → normalized RGB CHW float32."""
        return self.normalize(self.pixels_from_bgr(key, img))
