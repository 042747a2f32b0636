"""The two forms a batch reaches an engine in, and the one numpy statement of the conversion between them.

- **pixels**: the cropped images as the front door leaves them, uint8 ``[N, H, W, 3]`` (RGB, HWC): 1 byte per
  value, a quarter of the float form through shared memory. Local engines convert them inside their graph.
- **tensor**: the model's own input, float32 ``[N, 3, H, W]`` (/255, mean/std normalized, CHW): what the
  Open Inference Protocol's FP32 input, a model server's GeneralModelService and the remote engine's wire carry.

``Normalizer`` is PaddleClas's normalization (/255, ImageNet mean/std, HWC → CHW) written once: the
preprocessing of the float form, Paddle's worker-side conversion, the warm-up's cross-check of the
in-graph conversions, and the constants those graphs are built with. Kept free of OpenCV so engine
worker processes can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PIXEL_DTYPE = np.uint8


def is_pixels(batch: np.ndarray) -> bool:
    """True for a pixel batch (uint8), False for a tensor batch (the model's float input)."""
    return batch.dtype == PIXEL_DTYPE


class Normalizer:
    """uint8 RGB ``[..., H, W, 3]`` → float32 ``[..., 3, H, W]``, as ``x * scale - shift`` per channel
    (== (x/255 - mean)/std)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        std_ = np.asarray(std, np.float32)
        self.scale = (1.0 / (255.0 * std_)).astype(np.float32)  # per RGB channel
        self.shift = (np.asarray(mean, np.float32) / std_).astype(np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = pixels.astype(np.float32) * self.scale - self.shift
        return np.ascontiguousarray(np.moveaxis(out, -1, -3))
