"""The demo's images: scikit-learn's 8x8 handwritten digits rendered as PNG files, and the committed
held-out set. Training (`demo/train.py`), the demo client and the tests all go through these functions, so
the model sees exactly what the server sees.

Rendering (`digit_to_bgr`): a digit's values 0..16 (16 = ink) become grey levels
`255 - round(v * 255 / 16)`, i.e. dark ink on white paper; the 8x8 grid gets a one-cell white margin
(10x10) and is enlarged 8x with nearest-neighbour interpolation (cv2.INTER_NEAREST; at an integer factor
every cell is an exact 8x8 block) to an 80x80 image with three equal BGR channels. PNG is lossless, so
`cv2.imdecode` of `digit_to_png(...)` gives that image back bit for bit. The server's preprocessing
(ResNeSt_tiny: resize the short side to 72, centre crop 64) then keeps the whole digit: the margin is 7.2 px
after the resize and the crop trims 4 px per side.

scikit-learn is needed only to train; nothing here imports it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec

__all__ = [
    "ARCH",
    "CHECKPOINT_PATH",
    "DEMO_DIR",
    "HELDOUT_PATH",
    "IMAGE_SIZE",
    "LABELS_PATH",
    "META_PATH",
    "decode_png",
    "digit_to_bgr",
    "digit_to_png",
    "load_heldout",
    "load_heldout_arrays",
    "preprocess_pngs",
]

DEMO_DIR = Path(__file__).resolve().parent
ARCH = "ResNeSt_tiny"
CHECKPOINT_PATH = DEMO_DIR / "resnest_digits.pdparams"
LABELS_PATH = DEMO_DIR / "digit_labels.txt"
HELDOUT_PATH = DEMO_DIR / "heldout_digits.npz"
META_PATH = DEMO_DIR / "demo_model.json"

MARGIN = 1  # white cells around the 8x8 grid
SCALE = 8  # pixels per cell
IMAGE_SIZE = (8 + 2 * MARGIN) * SCALE  # 80
PAPER = 255  # background grey level


def _check_digit(pixels: np.ndarray) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.shape != (8, 8):
        raise ValueError(f"expected an 8x8 digit, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 16):
        raise ValueError(f"digit values must be in 0..16, got {arr.min()}..{arr.max()}")
    return arr


def digit_to_bgr(pixels: np.ndarray) -> np.ndarray:
    """An 8x8 digit (values 0..16, 16 = ink) → 80x80x3 uint8 BGR image, dark ink on white."""
    arr = _check_digit(pixels).astype(np.float64)
    grey = (PAPER - np.round(arr * 255.0 / 16.0)).astype(np.uint8)
    grey = np.pad(grey, MARGIN, constant_values=PAPER)
    big = cv2.resize(grey, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(np.repeat(big[:, :, None], 3, axis=2))


def encode_png(bgr: np.ndarray) -> bytes:
    """A BGR uint8 image → PNG bytes (lossless)."""
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("cv2.imencode failed to write a PNG")
    return buf.tobytes()


def digit_to_png(pixels8x8: np.ndarray) -> bytes:
    """An 8x8 digit (values 0..16) → the PNG bytes the demo sends to the server."""
    return encode_png(digit_to_bgr(pixels8x8))


def decode_png(data: bytes) -> np.ndarray:
    """Encoded image bytes → BGR uint8, exactly as the server decodes (cv2.imdecode, IMREAD_COLOR)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"not a decodable image ({len(data)} bytes)")
    return img


def preprocess_pngs(pngs: list[bytes], resize_short: int = 72, crop_size: int = 64) -> np.ndarray:
    """PNG bytes → NCHW float32 batch through the server's decode and `Preprocessor.from_bgr`."""
    pre = Preprocessor(PreprocessSpec(resize_short=resize_short, crop_size=crop_size))
    if not pngs:
        return np.zeros((0, 3, crop_size, crop_size), np.float32)
    return np.stack([pre.from_bgr(f"digit{i}", decode_png(png)) for i, png in enumerate(pngs)])


def load_heldout_arrays(path: str | Path = HELDOUT_PATH) -> tuple[np.ndarray, np.ndarray]:
    """The committed held-out set: (N, 8, 8) uint8 digits with values 0..16, and (N,) int64 labels."""
    with np.load(Path(path)) as data:
        images = data["images"].astype(np.uint8)
        labels = data["labels"].astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (8, 8) or len(images) != len(labels):
        raise ValueError(f"{path}: expected images (N, 8, 8) and labels (N,), got {images.shape}, {labels.shape}")
    return images, labels


def load_heldout(path: str | Path = HELDOUT_PATH) -> tuple[list[bytes], np.ndarray]:
    """The committed held-out set as PNG bytes (one per digit) and (N,) int64 labels."""
    images, labels = load_heldout_arrays(path)
    return [digit_to_png(img) for img in images], labels
