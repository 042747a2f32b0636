"""`resnest_meta.json` inside `serving_server/`: what Paddle Serving's files do not record but the server needs
(preprocessing sizes, label file, architecture, provenance). Paddle Serving ignores the extra file; a
serving dir made by Paddle Serving's own `convert` has none, and sensible defaults apply."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

META_FILE = "resnest_meta.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BundleMeta:
    """Preprocessing and labelling facts of an exported model."""

    arch: str = ""
    resize_short: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_num: int = 1000
    softmax: bool = True
    label_file: str = ""  # file name inside serving_server/, "" = none
    onnx_file: str = ""  # file name inside serving_server/, "" = none
    int8_onnx_file: str = ""  # the post-training-quantized ONNX model, "" = none
    precision_checks: dict = field(default_factory=dict)  # precision -> engine -> accuracy vs fp32 (pipeline/accuracy.py)
    source: dict = field(default_factory=dict)  # checkpoint path, format, layout: provenance only

    def write(self, directory: Path) -> None:
        (directory / META_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> BundleMeta | None:
        """The bundle's meta, or None when the dir has no meta file (a foreign Paddle Serving dir)."""
        path = directory / META_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def resize_short_for_crop(crop: int) -> int:
    """PaddleClas's resize_short for a crop size: 256 for 224, 288 for 256, else the crop itself (320, 416)."""
    return {224: 256, 256: 288}.get(crop, crop)
