"""Turning what a caller has (file paths, encoded bytes, numpy arrays) into base64 strings for requests."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from resnest_serving.protocol.b64 import encode_text

__all__ = ["IMAGE_SUFFIXES", "ImageInput", "encode_image", "image_bytes", "list_images", "named_images",
           "shrink_image"]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray]
"""A file path, the bytes of an encoded image file (JPEG, PNG, ...), or a uint8 pixel array
(H×W gray, H×W×3 BGR/RGB, H×W×4 BGRA/RGBA)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def image_bytes(image: ImageInput, *, channel_order: str = "bgr") -> bytes:
    """Encoded image-file bytes for one input; arrays are encoded as PNG (lossless)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        return _encode_png(image, channel_order)
    raise TypeError(f"unsupported image type {type(image).__name__}: give a path, bytes or a uint8 array")


def encode_image(image: ImageInput, *, channel_order: str = "bgr") -> str:
    """Base64 text of one image, as Paddle Serving's PaddleClas example sends it."""
    return encode_text(image_bytes(image, channel_order=channel_order))


def named_images(images: Any) -> list[tuple[str, ImageInput]]:
    """``(key, image)`` pairs in request order.

    ``images`` may be one image, a sequence of images (keys ``image_0``, ``image_1``, ...), a 4-D array
    (a batch of H×W×C arrays), or a mapping ``{key: image}`` whose keys are sent as they are.
    """
    if isinstance(images, Mapping):
        pairs = [(str(k), v) for k, v in images.items()]
    else:
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
            items: list[Any] = [images]
        elif isinstance(images, np.ndarray):
            items = list(images) if images.ndim == 4 else [images]
        elif isinstance(images, Iterable):
            items = list(images)
        else:
            raise TypeError(f"unsupported images argument of type {type(images).__name__}")
        pairs = [(f"image_{i}", v) for i, v in enumerate(items)]
    if not pairs:
        raise ValueError("no images given")
    return pairs


def shrink_image(data: bytes, short_side: int, quality: int = 95) -> bytes:
    """An encoded image whose short side is at least twice ``short_side``, resized (area averaging, EXIF
    orientation applied) so that its short side is exactly ``short_side``, and re-encoded (JPEG quality
    ``quality``; PNG stays PNG). Give the model's resize target (``resize_short``: 256 for 224 models): the
    server then resizes nothing and crops, and the upload and the server's decode shrink with the image.
    Anything smaller, or not decodable here, is returned unchanged (the server judges it)."""
    cv2 = _opencv("shrinking images on the client (--client-resize)")
    if short_side < 1:
        raise ValueError(f"the short side to resize to must be >= 1, got {short_side}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or min(img.shape[:2]) < 2 * short_side:
        return data
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    size = (short_side, max(short_side, round(h * scale))) if w <= h else (max(short_side, round(w * scale)), short_side)
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    is_png = data[:8] == b"\x89PNG\r\n\x1a\n"
    ok, buf = cv2.imencode(".png" if is_png else ".jpg", small, [] if is_png else [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else data


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _opencv(what: str):
    """OpenCV, imported on first use: only arrays and resizing need it, and the base install leaves it out."""
    try:
        import cv2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs OpenCV, which is not installed: "
                                  "pip install 'resnest-serving[images]'", name="cv2") from None
    return cv2


def _encode_png(array: np.ndarray, channel_order: str) -> bytes:
    cv2 = _opencv("an image given as an array")
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    order = channel_order.lower()
    if order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    if order == "rgb" and array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"cannot encode array of shape {array.shape} as PNG")
    return buf.tobytes()
