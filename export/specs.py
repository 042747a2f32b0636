"""ResNeSt variants: hyper-parameters and PaddleClas preprocessing sizes (no Paddle import, so the CLI
and config checks stay light)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ArchSpec:
    """Hyper-parameters of one ResNeSt variant plus its PaddleClas preprocessing sizes."""

    layers: tuple[int, int, int, int]
    radix: int
    stem_width: int
    avd_first: bool
    groups: int = 1
    bottleneck_width: int = 64
    base_planes: int = 64
    class_num: int = 1000
    resize_short: int = 256
    crop_size: int = 224
    attention_bias: bool = True
    avg_pool_exclusive: bool = True
    shortcut_ceil_mode: bool = False  # PyTorch ResNeSt's shortcut pool rounds up (matters at odd sizes only)

    def to_dict(self) -> dict:
        return asdict(self)


# PaddleClas ppcls/arch/backbone/model_zoo/resnest.py (develop) and ppcls/configs/ImageNet/ResNeSt/*.yaml.
ARCHS: dict[str, ArchSpec] = {
    "ResNeSt50_fast_1s1x64d": ArchSpec((3, 4, 6, 3), radix=1, stem_width=32, avd_first=True),
    "ResNeSt50": ArchSpec((3, 4, 6, 3), radix=2, stem_width=32, avd_first=False),
    "ResNeSt101": ArchSpec((3, 4, 23, 3), radix=2, stem_width=64, avd_first=False,
                           resize_short=288, crop_size=256),
    "ResNeSt200": ArchSpec((3, 24, 36, 3), radix=2, stem_width=64, avd_first=False,
                           resize_short=320, crop_size=320),
    "ResNeSt269": ArchSpec((3, 30, 48, 8), radix=2, stem_width=64, avd_first=False,
                           resize_short=416, crop_size=416),
    # Small nets with the same blocks (split attention radix 2, avg-down, avd), for tests and the demo.
    "ResNeSt_tiny": ArchSpec((1, 1, 1, 1), radix=2, stem_width=8, avd_first=False, base_planes=8,
                             class_num=10, resize_short=72, crop_size=64),
}


def arch_spec(name: str, **overrides) -> ArchSpec:
    """Look up a variant by name (case-insensitive) and apply overrides such as class_num."""
    by_lower = {k.lower(): k for k in ARCHS}
    key = by_lower.get(name.lower())
    if key is None:
        raise ValueError(f"unknown ResNeSt variant {name!r}; known: {', '.join(ARCHS)}")
    return replace(ARCHS[key], **overrides) if overrides else ARCHS[key]
