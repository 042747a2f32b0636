"""Checkpoint readers and layout converters: trained ResNeSt weights → our Paddle model (`export.resnest`).

Sources
- PaddleClas `.pdparams` (paddle.save of `model.state_dict()`, structured names), either layout:
  develop (split-attention `conv2.conv3.bias` present) or release/2.5 (no such bias; zero-filled here, which
  is exact: release/2.5 models were trained without that bias).
- PyTorch `.pth`/`.pt`/`.bin`/`.ckpt`/`.pth.tar` (torch.load, weights_only=True; torch is imported only for
  these).
- `.safetensors` (read with the safetensors package's numpy backend; torch not needed), in any of the layouts.

PyTorch naming: the authors' `resnest` package (zhanghang1989/ResNeSt) and timm's `resnest*` models use
the same state_dict keys for every parameter (checked against timm/models/resnest.py,
timm/layers/split_attn.py and timm/models/resnet.py): deep stem `conv1.{0,1,3,4,6}` + `bn1`; blocks
`layerN.i.{conv1,bn1,conv3,bn3}`; split attention `conv2.{conv,bn0,fc1,bn1,fc2}`; shortcut
`downsample.{1,2}` (index 0 is a param-less AvgPool2d in `resnest`, nn.Identity or AvgPool2d in timm);
classifier `fc`. What differs has no parameters: the avd pool is `avd_layer` in `resnest` and
`avd_first`/`avd_last` in timm, timm adds Identity `bn2`/`act*`/`drop_block` modules, and timm sizes the
attention width with make_divisible(.., 8), which gives the same widths for every published variant. timm
training checkpoints wrap the weights under "state_dict" (and "state_dict_ema"); a timm model built with
num_classes=0 has no `fc` and is refused as missing keys. timm has no radix-1 1s1x64d model.
So one converter, `Layout.TORCH`, serves both.

Numerics of a PyTorch source: its avd AvgPool2d counts padding (count_include_pad=True), so the model is built
with `avg_pool_exclusive=False`. Its shortcut AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) has no
padding, so exclusiveness does not matter there; its ceil_mode (`shortcut_ceil_mode=True`) only matters for
odd feature maps, which the published input sizes (224/256/320/416) never produce.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from resnest_serving.export.checkpoint_files import (
    SHOW,
    SUPPORTED_SUFFIXES,
    CheckpointError,
    RawCheckpoint,
    SourceFormat,
    detect_format,
    read_checkpoint,
    read_state_dict,
)
from resnest_serving.export.resnest import ARCHS, ArchSpec, ResNeSt, arch_spec, build_model

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "Converted",
    "Layout",
    "RawCheckpoint",
    "SUPPORTED_SUFFIXES",
    "SourceFormat",
    "convert_to_paddle",
    "detect_format",
    "detect_layout",
    "expected_shapes",
    "guess_arch",
    "load_checkpoint_model",
    "read_checkpoint",
    "read_state_dict",
    "validate_state_dict",
]


class Layout(StrEnum):
    PADDLE_DEVELOP = "paddle-develop"  # PaddleClas develop: split-attention conv3 has a bias
    PADDLE_RELEASE_2_5 = "paddle-release2.5"  # PaddleClas release/2.5: no conv3 bias
    TORCH = "torch"  # zhanghang1989/ResNeSt `resnest` package and timm (same keys)




_TORCH_BLOCK_KEY = re.compile(r"^layer[1-4]\.\d+\.(conv2\.fc1|conv2\.bn0|downsample\.\d)\.")
_PADDLE_BLOCK_KEY = re.compile(r"^layer[1-4]\.layer[1-4]_bottleneck_\d+\.")
_PADDLE_UNSTRUCTURED = re.compile(r"^(conv1_(weight|scale|offset|mean|variance)|fc_(weights|offset)"
                                  r"|layer[1-4]_bottleneck_\d+_\w+)$")


def detect_layout(state: Mapping[str, np.ndarray]) -> Layout:
    """Tell the key layout of a state dict (original names); CheckpointError if it is not a ResNeSt one."""
    keys = list(state)
    paddle = any(k.startswith("stem.") or _PADDLE_BLOCK_KEY.match(k) for k in keys)
    torch = any(k.startswith("conv1.0.") or _TORCH_BLOCK_KEY.match(k) for k in keys)
    if paddle and torch:
        raise CheckpointError("the checkpoint mixes PaddleClas names (stem.*, layerN.layerN_bottleneck_i.*) "
                              "with PyTorch names (conv1.0.*, layerN.i.*); it is not one model's state dict")
    if paddle:
        if any(k.endswith(".conv2.conv3.bias") for k in keys):
            return Layout.PADDLE_DEVELOP
        return Layout.PADDLE_RELEASE_2_5
    if torch:
        return Layout.TORCH
    if keys and sum(bool(_PADDLE_UNSTRUCTURED.match(k)) for k in keys) > len(keys) // 2:
        raise CheckpointError("the checkpoint uses Paddle parameter names (e.g. conv1_weight, fc_weights): "
                              "it was saved with use_structured_name=False, which is not supported; load it "
                              "in PaddleClas and save model.state_dict() with paddle.save")
    shown = ", ".join(keys[:SHOW]) or "none"
    raise CheckpointError(f"unrecognised key layout: neither PaddleClas ResNeSt "
                          f"(stem.conv1._conv.weight, ...) nor PyTorch ResNeSt/timm "
                          f"(conv1.0.weight, layer1.0.conv2.fc1.weight, ...); "
                          f"{len(keys)} keys, first: {shown}")


@dataclass
class Converted:
    """A state dict in our Paddle layout, and what the conversion had to do to get there."""

    state: dict[str, np.ndarray]
    layout: Layout
    zero_filled_biases: int = 0  # release/2.5: split-attention conv3 biases added as zeros
    folded_biases: int = 0  # torch: split-attention fc1 biases folded into the following BN mean
    dropped_keys: int = 0  # torch: BN num_batches_tracked counters


_BN_PARAMS = {"weight": "weight", "bias": "bias", "running_mean": "_mean", "running_var": "_variance"}
_TORCH_STEM = {
    "conv1.0": "stem.conv1._conv", "conv1.1": "stem.conv1._batch_norm",
    "conv1.3": "stem.conv2._conv", "conv1.4": "stem.conv2._batch_norm",
    "conv1.6": "stem.conv3._conv", "bn1": "stem.conv3._batch_norm",
}
_TORCH_BLOCK = {
    "conv1": "conv1._conv", "bn1": "conv1._batch_norm",
    "conv2.conv": "conv2.conv1._conv", "conv2.bn0": "conv2.conv1._batch_norm",
    "conv2.fc1": "conv2.conv2._conv", "conv2.bn1": "conv2.conv2._batch_norm",
    "conv2.fc2": "conv2.conv3",
    "conv3": "conv3._conv", "bn3": "conv3._batch_norm",
    "downsample.1": "conv4", "downsample.2": "_batch_norm",
}
_TORCH_BLOCK_PREFIX = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _torch_name(key: str) -> str | None:
    """Our Paddle name for a PyTorch ResNeSt key (None for keys with no counterpart)."""
    module, _, param = key.rpartition(".")
    if module == "fc" and param in ("weight", "bias"):
        return f"out.{param}"
    target = _TORCH_STEM.get(module)
    if target is None:
        m = _TORCH_BLOCK_PREFIX.match(module)
        if m is None or m.group(3) not in _TORCH_BLOCK:
            return None
        n, i, sub = m.groups()
        target = f"layer{n}.layer{n}_bottleneck_{i}.{_TORCH_BLOCK[sub]}"
    if target.endswith("_batch_norm"):
        return f"{target}.{_BN_PARAMS[param]}" if param in _BN_PARAMS else None
    return f"{target}.{param}" if param in ("weight", "bias") else None


def convert_to_paddle(state: Mapping[str, np.ndarray], layout: Layout | str) -> Converted:
    """Rename/reshape a state dict from `layout` into our Paddle layout (float32 arrays).

    Keys with no counterpart are kept under their original name, so validation reports them as unexpected.
    """
    layout = Layout(layout)
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    if layout is Layout.PADDLE_DEVELOP:
        return Converted(out, layout)
    if layout is Layout.PADDLE_RELEASE_2_5:
        filled = 0
        for key in [k for k in out if k.endswith(".conv2.conv3.weight")]:
            bias = key[: -len("weight")] + "bias"
            if bias not in out:
                out[bias] = np.zeros(out[key].shape[0], dtype=np.float32)
                filled += 1
        if filled:
            log.info("release/2.5 layout: zero-filled %d split-attention conv2.conv3.bias tensors "
                     "(exact: that layout has no such bias)", filled)
        return Converted(out, layout, zero_filled_biases=filled)

    converted: dict[str, np.ndarray] = {}
    fc1_biases: dict[str, np.ndarray] = {}
    dropped = 0
    for key, value in out.items():
        if key.endswith(".num_batches_tracked"):
            dropped += 1
            continue
        if key.endswith(".conv2.fc1.bias") and _TORCH_BLOCK_PREFIX.match(key):
            fc1_biases[key] = value
            continue
        name = _torch_name(key)
        if name is None:
            converted[key] = value  # reported as unexpected by validation
        elif name == "out.weight":
            # Linear: torch [out, in] → paddle [in, out]
            converted[name] = np.ascontiguousarray(value.T) if value.ndim == 2 else value
        else:
            converted[name] = value
    # PaddleClas's split-attention conv2 is a bias-free conv + BN; the original fc1 has a bias b before its
    # BN: BN(x + b) with mean μ equals BN(x) with mean μ - b.
    folded = 0
    for key, bias in fc1_biases.items():
        mean_key = _torch_name(key[: -len("fc1.bias")] + "bn1.running_mean")
        mean = converted.get(mean_key) if mean_key else None
        if mean is None or mean.shape != bias.shape:
            converted[key] = bias  # nothing to fold into: reported by validation
            continue
        converted[mean_key] = mean - bias
        folded += 1
    return Converted(converted, layout, folded_biases=folded, dropped_keys=dropped)


# ---------------------------------------------------------------------------------------------- validation


def expected_shapes(model: ResNeSt) -> dict[str, tuple[int, ...]]:
    """Key → shape of a built model's state dict."""
    return {k: tuple(int(d) for d in v.shape) for k, v in model.state_dict().items()}


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def guess_arch(state: Mapping[str, np.ndarray]) -> str | None:
    """Name the ARCHS variant whose structure a Paddle-layout state dict has (None if none fits).

    Weights cannot tell avd_first from avd_last; the only radix-1 variant is the avd_first one.
    """
    try:
        blocks = [re.match(r"^layer([1-4])\.layer\1_bottleneck_(\d+)\.", k) for k in state]
        seen = {m.groups() for m in blocks if m}
        layers = tuple(sum(1 for n, _ in seen if n == str(i)) for i in range(1, 5))
        stem_width = state["stem.conv1._conv.weight"].shape[0]
        block = "layer1.layer1_bottleneck_0."
        base_planes = state[block + "conv3._conv.weight"].shape[0] // 4
        group_width = state[block + "conv1._conv.weight"].shape[0]
        radix = state[block + "conv2.conv1._conv.weight"].shape[0] // group_width
    except (KeyError, IndexError, ZeroDivisionError):
        return None
    found = (layers, radix, stem_width, base_planes)
    for name, spec in ARCHS.items():
        if spec.groups == 1 and spec.bottleneck_width == 64 and \
                (spec.layers, spec.radix, spec.stem_width, spec.base_planes) == found:
            return name
    return None


def validate_state_dict(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *,
                        arch: str, layout: Layout | str, source: str = "checkpoint") -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys (the first few, and counts)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, expected[k], tuple(state[k].shape)) for k in expected
                  if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return
    layout = Layout(layout)
    lines = [f"{source} does not fit {arch} (layout detected: {layout.value}, converted to our Paddle "
             f"layout): {len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
             f"mis-shaped keys (expected {len(expected)} keys, got {len(state)})"]

    def more(items: list) -> str:
        return f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""

    if missing:
        shown = ", ".join(f"{k} {_fmt_shape(expected[k])}" for k in missing[:SHOW])
        lines.append(f"  missing ({len(missing)}): {shown}{more(missing)}")
    if unexpected:
        shown = ", ".join(f"{k} {_fmt_shape(tuple(state[k].shape))}" for k in unexpected[:SHOW])
        lines.append(f"  unexpected ({len(unexpected)}): {shown}{more(unexpected)}")
    if mismatched:
        shown = ", ".join(f"{k} expected {_fmt_shape(want)}, got {_fmt_shape(got)}"
                          for k, want, got in mismatched[:SHOW])
        lines.append(f"  mis-shaped ({len(mismatched)}): {shown}{more(mismatched)}")
    guess = guess_arch(state)
    if guess and guess.lower() != arch.lower():
        lines.append(f"  the checkpoint's structure matches {guess}, not {arch}")
    raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a model's weights came from and what loading them involved."""

    path: str
    arch: str
    spec: ArchSpec
    source_format: SourceFormat
    layout: Layout
    class_num: int
    num_tensors: int
    num_elements: int
    zero_filled_biases: int = 0
    folded_biases: int = 0
    dropped_keys: int = 0
    wrapper_key: str | None = None
    stripped_prefix: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        d["source_format"] = self.source_format.value
        d["layout"] = self.layout.value
        return d


def load_checkpoint_model(arch: str, path: str | Path,
                          class_num: int | None = None) -> tuple[ResNeSt, CheckpointInfo]:
    """Read, convert and validate a checkpoint, and return the model (eval mode) carrying its weights.

    `arch` is an ARCHS name (case-insensitive) or "auto" to pick the variant from the checkpoint's structure.
    `class_num` defaults to the checkpoint's classifier width; if given, it must match it.
    PyTorch sources are built with avg_pool_exclusive=False so that they reproduce their source's numerics.
    """
    path = Path(path)
    raw = read_checkpoint(path)
    layout = detect_layout(raw.state)
    conv = convert_to_paddle(raw.state, layout)
    if arch.lower() == "auto":
        guessed = guess_arch(conv.state)
        if guessed is None:
            raise CheckpointError(f"{path}: could not tell the ResNeSt variant from the checkpoint "
                                  f"(layout {layout.value}); pass one of {', '.join(ARCHS)}")
        arch = guessed
    spec = arch_spec(arch)  # raises ValueError for unknown names
    name = next(k for k, v in ARCHS.items() if v is spec)
    out_weight = conv.state.get("out.weight")
    ckpt_classes = int(out_weight.shape[1]) if out_weight is not None and out_weight.ndim == 2 else None
    overrides: dict = {"class_num": class_num or ckpt_classes or spec.class_num}
    if layout is Layout.TORCH:
        overrides["avg_pool_exclusive"] = False
        overrides["shortcut_ceil_mode"] = True
    model = build_model(spec, **overrides)
    source = f"{path}" + (f" (class_num={class_num} requested, the checkpoint has {ckpt_classes})"
                          if class_num and ckpt_classes and class_num != ckpt_classes else "")
    validate_state_dict(conv.state, expected_shapes(model), arch=name, layout=layout, source=source)
    missing, unexpected = model.set_state_dict(conv.state)
    if missing or unexpected:  # cannot happen after validation; Paddle only warns, so check anyway
        raise CheckpointError(f"{path}: Paddle did not set {len(missing)} keys and ignored {len(unexpected)}")
    model.eval()
    info = CheckpointInfo(
        path=str(path), arch=name, spec=model.spec, source_format=raw.source_format, layout=layout,
        class_num=model.spec.class_num, num_tensors=len(conv.state),
        num_elements=int(sum(v.size for v in conv.state.values())),
        zero_filled_biases=conv.zero_filled_biases, folded_biases=conv.folded_biases,
        dropped_keys=conv.dropped_keys, wrapper_key=raw.wrapper_key, stripped_prefix=raw.stripped_prefix,
    )
    log.info("loaded %s: %s, %s layout, %d tensors, class_num %d", path.name, name, layout.value,
             info.num_tensors, info.class_num)
    return model, info
