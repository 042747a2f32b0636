"""Checkpoint files → arrays by name: PaddleClas `.pdparams` (a restricted unpickler: arrays and dicts only),
PyTorch `.pth`/`.pt`/`.bin`/`.ckpt`/`.pth.tar` (torch.load, weights_only=True; torch imported only for these)
and `.safetensors` (numpy backend). Which layout the names follow, and the conversion to our model, is
`export.checkpoint`'s job."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

log = logging.getLogger("resnest_serving.export.checkpoint")
SHOW = 5  # how many keys of each kind a message lists

__all__ = ["SUPPORTED_SUFFIXES", "CheckpointError", "RawCheckpoint", "SourceFormat", "detect_format",
           "read_checkpoint", "read_state_dict"]


class CheckpointError(ValueError):
    """A file that is not a usable ResNeSt checkpoint, or one that does not fit the requested variant."""


class SourceFormat(StrEnum):
    PDPARAMS = "pdparams"
    TORCH = "torch"
    SAFETENSORS = "safetensors"


_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
_SUFFIXES = {".pdparams": SourceFormat.PDPARAMS, ".safetensors": SourceFormat.SAFETENSORS}
_SUFFIXES.update({s: SourceFormat.TORCH for s in _TORCH_SUFFIXES})
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_SUFFIXES)  # checkpoint file name endings read_checkpoint accepts
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_PADDLE_BIG_PARAMS = "UnpackBigParamInfor@@"


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
                    tensor = f.get_tensor(key)
                except TypeError:  # numpy has no bfloat16
                    bf16.append(key)
                    continue
                # with ml_dtypes imported (onnx does), numpy has bfloat16: widen it as the by-hand path does
                out[key] = tensor.astype(np.float32) if tensor.dtype.name == "bfloat16" else tensor
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
        log.warning("%s: ignoring %d non-array entries: %s", path, len(others), ", ".join(others[:SHOW]))
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
