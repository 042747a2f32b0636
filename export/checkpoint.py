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

import json
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from export.resnest import ARCHS, ArchSpec, ResNeSt, arch_spec, build_model

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


class CheckpointError(ValueError):
    """A file that is not a usable ResNeSt checkpoint, or one that does not fit the requested variant."""


class SourceFormat(StrEnum):
    PDPARAMS = "pdparams"
    TORCH = "torch"
    SAFETENSORS = "safetensors"


class Layout(StrEnum):
    PADDLE_DEVELOP = "paddle-develop"  # PaddleClas develop: split-attention conv3 has a bias
    PADDLE_RELEASE_2_5 = "paddle-release2.5"  # PaddleClas release/2.5: no conv3 bias
    TORCH = "torch"  # zhanghang1989/ResNeSt `resnest` package and timm (same keys)


_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
_SUFFIXES = {".pdparams": SourceFormat.PDPARAMS, ".safetensors": SourceFormat.SAFETENSORS}
_SUFFIXES.update({s: SourceFormat.TORCH for s in _TORCH_SUFFIXES})
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_SUFFIXES)  # checkpoint file name endings read_checkpoint accepts
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_PADDLE_BIG_PARAMS = "UnpackBigParamInfor@@"
_SHOW = 5  # how many keys of each kind an error message lists


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class RawCheckpoint:
    """What a file held: its arrays under their original names, and how they were found."""

    state: dict[str, np.ndarray]
    source_format: SourceFormat
    wrapper_key: str | None = None  # "state_dict"/"model"/... when the weights were nested in a dict
    stripped_prefix: str | None = None  # e.g. "module." when every key had it


def detect_format(path: str | Path) -> SourceFormat:
    """Tell the source format from the file's name and first bytes; CheckpointError if it is none of them."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a checkpoint file "
                              f"({', '.join(sorted(_SUFFIXES))})")
    name = path.name.lower()
    by_name = next((fmt for suffix, fmt in _SUFFIXES.items() if name.endswith(suffix)), None)
    if by_name is None:
        raise CheckpointError(f"{path}: unsupported checkpoint file extension {path.suffix or '(none)'!r}; "
                              f"expected one of {', '.join(sorted(_SUFFIXES))}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        content = SourceFormat.TORCH  # torch.save's zip archive (torch >= 1.6)
    elif _looks_like_safetensors(head, size):
        content = SourceFormat.SAFETENSORS
    elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        content = SourceFormat.PDPARAMS if by_name is SourceFormat.PDPARAMS else SourceFormat.TORCH
        if by_name is SourceFormat.SAFETENSORS:
            raise CheckpointError(f"{path}: not a safetensors file (it holds a Python pickle); "
                                  "rename it to .pdparams or .pth according to what wrote it")
    else:
        raise CheckpointError(f"{path}: not a checkpoint: the content is neither a pickle (.pdparams, "
                              f"legacy .pth), a zip archive (.pth) nor a safetensors header "
                              f"(first bytes {head[:8]!r})")
    if content is not by_name:
        log.warning("%s: the extension says %s but the content is %s; reading it as %s",
                    path, by_name.value, content.value, content.value)
    return content


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read any supported checkpoint file into float32 numpy arrays under the file's own key names."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt is SourceFormat.PDPARAMS:
        obj: object = _read_pdparams(path)
    elif fmt is SourceFormat.TORCH:
        obj = _read_torch(path)
    else:
        obj = _read_safetensors(path)
    state, wrapper = _unwrap(obj, path)
    state, prefix = _strip_prefix(state)
    if wrapper or prefix:
        log.debug("%s: weights found under %r, prefix %r stripped", path, wrapper, prefix)
    return RawCheckpoint(state, fmt, wrapper, prefix)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a checkpoint file's arrays (float32 where floating) under the file's own key names."""
    return read_checkpoint(path).state


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts and tuples only, so that a .pdparams file cannot run code on load."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"), ("builtins", "tuple"),
        ("_codecs", "encode"),  # protocol-2 pickles (older paddle) store bytes this way
    }

    def find_class(self, module: str, name: str):
        # numpy 1.x pickles name numpy.core.*, numpy 2.x pickles numpy._core.*; either loads under either.
        canonical = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (canonical, name) not in self._ALLOWED:
            torch_hint = " (it looks like a PyTorch checkpoint: rename it to .pth)"
            hint = torch_hint if module.startswith("torch") else ""
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a .pdparams file should hold "
                                         f"only arrays{hint}")
        if canonical.startswith("numpy._core") and int(np.__version__.split(".")[0]) < 2:
            canonical = "numpy.core" + canonical[len("numpy._core"):]
        return super().find_class(canonical, name)


def _read_pdparams(path: Path) -> object:
    # Same result as paddle.load(path, return_numpy=True), without paddle and without executing pickled code.
    try:
        with path.open("rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: not a readable .pdparams file: {e}") from e
    except Exception as e:  # truncated or corrupt pickles raise EOFError, ValueError, KeyError, ...
        raise CheckpointError(f"{path}: not a readable .pdparams file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a .pdparams file should hold a dict of arrays, this one holds a "
                              f"{type(obj).__name__}")
    obj.pop(_PADDLE_NAME_TABLE, None)
    big = obj.pop(_PADDLE_BIG_PARAMS, None)  # paddle.save splits >1 GiB arrays under pickle protocol 2/3
    if isinstance(big, dict):
        for key, info in big.items():
            obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    return _untuple(obj)


def _untuple(obj: object) -> object:
    """paddle.save pickles a Tensor outside a plain state dict as (name, ndarray): keep the array."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, Mapping):
        return {k: _untuple(v) for k, v in obj.items()}
    return obj


def _read_torch(path: Path) -> object:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs torch, which is not installed "
                              "(pip install torch), or convert the file to .safetensors first") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to unpickle: it holds Python objects other than tensors "
                              f"(loaded with weights_only=True: {first}); save model.state_dict() instead of "
                              "the model object") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e

    def to_numpy(value: object) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.float()
            return value.numpy()
        if isinstance(value, Mapping):
            return {k: to_numpy(v) for k, v in value.items()}
        return value

    return to_numpy(obj)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors)") from e
    out: dict[str, np.ndarray] = {}
    bf16: list[str] = []
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                try:
                    out[key] = f.get_tensor(key)
                except TypeError:  # numpy has no bfloat16
                    bf16.append(key)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    if bf16:
        out.update(_read_safetensors_bf16(path, bf16))
    return out


def _read_safetensors_bf16(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Decode BF16 tensors by hand: 8-byte header length, JSON header, then raw little-endian data."""
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        out = {}
        for key in keys:
            meta = header[key]
            if meta["dtype"] != "BF16":
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            f.seek(8 + header_len + start)
            raw = np.frombuffer(f.read(end - start), dtype="<u2").astype(np.uint32) << 16
            out[key] = raw.view(np.float32).reshape(meta["shape"])
    return out


def _is_array_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, np.ndarray) for v in obj.values())


def _unwrap(obj: object, path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """Find the state dict in what a file held: the dict itself, or one nested under a usual key."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    wrapper = None
    if not _is_array_dict(obj):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, np.ndarray) for v in inner.values()):
                obj, wrapper = inner, key
                break
    arrays = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not arrays:
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise CheckpointError(f"{path}: no arrays found (top-level keys: {keys or 'none'}); expected a state "
                              f"dict, possibly nested under {' / '.join(map(repr, _WRAPPER_KEYS))}")
    others = [str(k) for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if others:
        log.warning("%s: ignoring %d non-array entries: %s", path, len(others), ", ".join(others[:_SHOW]))
    state = {k: (np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v)
             for k, v in arrays.items()}
    return state, wrapper


def _strip_prefix(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
    stripped = ""
    while True:
        prefix = next((p for p in _STRIP_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state, stripped or None
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped += prefix


# ---------------------------------------------------------------------------------------------- layouts

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
    shown = ", ".join(keys[:_SHOW]) or "none"
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
        return f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""

    if missing:
        shown = ", ".join(f"{k} {_fmt_shape(expected[k])}" for k in missing[:_SHOW])
        lines.append(f"  missing ({len(missing)}): {shown}{more(missing)}")
    if unexpected:
        shown = ", ".join(f"{k} {_fmt_shape(tuple(state[k].shape))}" for k in unexpected[:_SHOW])
        lines.append(f"  unexpected ({len(unexpected)}): {shown}{more(unexpected)}")
    if mismatched:
        shown = ", ".join(f"{k} expected {_fmt_shape(want)}, got {_fmt_shape(got)}"
                          for k, want, got in mismatched[:_SHOW])
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
