"""Checkpoint readers, layout detection/conversion and validation (no torch needed)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from resnest_serving.export.checkpoint import (
    CheckpointError,
    Layout,
    SourceFormat,
    convert_to_paddle,
    detect_layout,
    guess_arch,
    load_checkpoint_model,
    read_checkpoint,
    read_state_dict,
)
from resnest_serving.export.resnest import ResNeSt, build_model

TINY = "ResNeSt_tiny"


def random_state(model: ResNeSt, seed: int = 0) -> dict[str, np.ndarray]:
    """The model's weights with BN statistics, BN affine params and biases randomized (so that folding or
    zero-fill mistakes show in the outputs), set back into the model."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        a = value.numpy()
        if key.endswith(("._variance", "_batch_norm.weight")):
            a = rng.uniform(0.5, 1.5, a.shape)
        elif key.endswith(("._mean", ".bias")):
            a = rng.normal(0.0, 0.2, a.shape)
        state[key] = np.asarray(a, dtype=np.float32)
    model.set_state_dict(state)
    return state


@pytest.fixture(scope="module")
def tiny() -> tuple[ResNeSt, dict[str, np.ndarray]]:
    paddle.seed(0)
    model = build_model(TINY)
    return model, random_state(model)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    # 64 keeps every feature map even: an odd one (e.g. at 56) breaks the current shortcut pool, see
    # test_torch_parity.py::test_odd_input_size_parity.
    return np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)


def run(model: ResNeSt, x: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


def save_pdparams(state: dict[str, np.ndarray], path: Path) -> Path:
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------------- round trips


def test_pdparams_develop_round_trip(tiny, x, tmp_path):
    model, state = tiny
    path = tmp_path / "tiny.pdparams"
    paddle.save(model.state_dict(), str(path))
    loaded, info = load_checkpoint_model(TINY, path)
    assert (info.source_format, info.layout) == (SourceFormat.PDPARAMS, Layout.PADDLE_DEVELOP)
    assert info.arch == TINY and info.class_num == 10 and info.zero_filled_biases == 0
    assert info.spec.avg_pool_exclusive is True
    assert info.num_tensors == len(state) and info.num_elements == sum(v.size for v in state.values())
    assert not loaded.training
    np.testing.assert_array_equal(run(loaded, x), run(model, x))
    assert info.to_dict()["layout"] == "paddle-develop"


def test_pdparams_release25_zero_fills_biases(tiny, x, tmp_path, caplog):
    model, state = tiny
    release = {k: v for k, v in state.items() if not k.endswith(".conv2.conv3.bias")}
    assert len(state) - len(release) == 4  # one block per stage in the tiny net
    path = save_pdparams(release, tmp_path / "release.pdparams")
    with caplog.at_level(logging.INFO, logger="resnest_serving.export.checkpoint"):
        loaded, info = load_checkpoint_model(TINY, path)
    assert info.layout is Layout.PADDLE_RELEASE_2_5 and info.zero_filled_biases == 4
    zero_fill_lines = [r.getMessage() for r in caplog.records if "zero-filled" in r.getMessage()]
    assert len(zero_fill_lines) == 1 and "zero-filled 4 " in zero_fill_lines[0]

    reference = build_model(TINY)
    reference.set_state_dict({k: (np.zeros_like(v) if k.endswith(".conv2.conv3.bias") else v)
                              for k, v in state.items()})
    np.testing.assert_array_equal(run(loaded, x), run(reference, x))
    assert not np.allclose(run(loaded, x), run(model, x))  # the biases mattered: the check is meaningful


def test_safetensors_round_trip(tiny, x, tmp_path):
    model, state = tiny
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    loaded, info = load_checkpoint_model(TINY, path)
    assert (info.source_format, info.layout) == (SourceFormat.SAFETENSORS, Layout.PADDLE_DEVELOP)
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


def test_pdparams_reader_matches_paddle_load(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "tiny.pdparams"
    paddle.save(model.state_dict(), str(path))
    ours, theirs = read_state_dict(path), paddle.load(str(path), return_numpy=True)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value)


def test_pdparams_pickle_protocol_2(tiny, x, tmp_path):
    """Older Paddle (1.x/2.x fluid.dygraph.save_dygraph) wrote protocol-2 pickles with a name table."""
    model, state = tiny
    legacy = dict(state, **{"StructuredToParameterName@@": {k: f"param_{i}" for i, k in enumerate(state)}})
    path = tmp_path / "legacy.pdparams"
    path.write_bytes(pickle.dumps(legacy, protocol=2))
    loaded, info = load_checkpoint_model(TINY, path)
    assert info.layout is Layout.PADDLE_DEVELOP
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


def test_pdparams_numpy1_pickle_names(tmp_path, recwarn):
    """numpy 1.x pickles name numpy.core.multiarray; they load without numpy 2's deprecation warning."""
    data = pickle.dumps({"a": np.arange(3, dtype=np.float32)}, protocol=2)
    path = tmp_path / "np1.pdparams"
    path.write_bytes(data.replace(b"numpy._core", b"numpy.core"))
    np.testing.assert_array_equal(read_state_dict(path)["a"], [0, 1, 2])
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def write_bf16_safetensors(state: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Write float32 arrays as BF16 (truncated) by hand; return the float32 values they stand for."""
    header, blobs, offset, truncated = {}, [], 0, {}
    for key, value in state.items():
        bits = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
        truncated[key] = (bits.astype(np.uint32) << 16).view(np.float32)
        blob = bits.tobytes()
        header[key] = {"dtype": "BF16", "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    return truncated


def test_safetensors_bf16_without_torch(tiny, tmp_path):
    _, state = tiny
    truncated = write_bf16_safetensors(state, tmp_path / "bf16.safetensors")
    read = read_state_dict(tmp_path / "bf16.safetensors")
    assert read.keys() == state.keys()
    for key, value in read.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, truncated[key])


def test_class_num_inferred_from_classifier(x, tmp_path):
    model = build_model(TINY, class_num=7)
    random_state(model, seed=3)
    path = tmp_path / "seven.pdparams"
    paddle.save(model.state_dict(), str(path))
    loaded, info = load_checkpoint_model(TINY, path)
    assert info.class_num == 7 and loaded.spec.class_num == 7
    assert run(loaded, x).shape == (2, 7)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(TINY, path, class_num=10)
    msg = str(err.value)
    assert "class_num=10 requested, the checkpoint has 7" in msg
    assert "out.weight expected [256, 10], got [256, 7]" in msg
    assert "out.bias expected [10], got [7]" in msg


def test_arch_auto_and_case_insensitive(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "tiny.pdparams"
    paddle.save(model.state_dict(), str(path))
    assert load_checkpoint_model("auto", path)[1].arch == TINY
    assert load_checkpoint_model("resnest_TINY", path)[1].arch == TINY


def test_nested_and_prefixed_pdparams(tiny, x, tmp_path):
    model, state = tiny
    path = tmp_path / "wrapped.pdparams"
    wrapped = {f"module.{k}": paddle.to_tensor(v) for k, v in state.items()}
    paddle.save({"model": wrapped, "epoch": 5}, str(path))
    raw = read_checkpoint(path)
    assert (raw.wrapper_key, raw.stripped_prefix) == ("model", "module.")
    loaded, info = load_checkpoint_model(TINY, path)
    assert info.wrapper_key == "model" and info.stripped_prefix == "module."
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


# ---------------------------------------------------------------------------------------------- torch naming

# An independent inverse of the documented mapping (PaddleClas → PyTorch ResNeSt/timm names), so that the
# torch converter is exercised without torch; test_torch_parity.py checks it against the real thing.
_STEM = {"stem.conv1._conv": "conv1.0", "stem.conv1._batch_norm": "conv1.1", "stem.conv2._conv": "conv1.3",
         "stem.conv2._batch_norm": "conv1.4", "stem.conv3._conv": "conv1.6", "stem.conv3._batch_norm": "bn1"}
_BLOCK = {"conv1._conv": "conv1", "conv1._batch_norm": "bn1", "conv2.conv1._conv": "conv2.conv",
          "conv2.conv1._batch_norm": "conv2.bn0", "conv2.conv2._conv": "conv2.fc1",
          "conv2.conv2._batch_norm": "conv2.bn1", "conv2.conv3": "conv2.fc2", "conv3._conv": "conv3",
          "conv3._batch_norm": "bn3", "conv4": "downsample.1", "_batch_norm": "downsample.2"}
_BN = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}


def to_torch_names(state: dict[str, np.ndarray], seed: int = 5) -> dict[str, np.ndarray]:
    """PaddleClas-layout weights renamed as the `resnest` package would save them, with a random fc1 bias
    compensated in the following BN mean, and num_batches_tracked counters."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key == "out.weight":
            out["fc.weight"] = np.ascontiguousarray(value.T)
            continue
        if key == "out.bias":
            out["fc.bias"] = value
            continue
        module, _, param = key.rpartition(".")
        if module in _STEM:
            target = _STEM[module]
        else:
            layer, block, sub = module.split(".", 2)
            target = f"{layer}.{block.rsplit('_', 1)[1]}.{_BLOCK[sub]}"
        if module.endswith("_batch_norm"):
            out[f"{target}.{_BN[param]}"] = value
            if param == "weight":
                out[f"{target}.num_batches_tracked"] = np.array(7, dtype=np.int64)
        else:
            out[f"{target}.{param}"] = value
    for key in [k for k in out if k.endswith(".conv2.fc1.weight")]:
        bias = rng.normal(0.0, 0.3, out[key].shape[0]).astype(np.float32)
        out[key[: -len("weight")] + "bias"] = bias
        mean = key[: -len("fc1.weight")] + "bn1.running_mean"
        out[mean] = out[mean] + bias  # BN(fc1(x) + b) with mean μ + b == PaddleClas BN(conv(x)) with mean μ
    return out


def test_torch_layout_converted_without_torch(x, tmp_path):
    source = build_model(TINY, avg_pool_exclusive=False)
    state = random_state(source, seed=4)
    torch_state = to_torch_names(state)
    assert detect_layout(torch_state) is Layout.TORCH
    path = tmp_path / "tiny_torch.safetensors"
    save_file(torch_state, str(path))
    loaded, info = load_checkpoint_model(TINY, path)
    assert info.layout is Layout.TORCH and info.spec.avg_pool_exclusive is False
    n_bn = sum(k.endswith("_batch_norm.weight") for k in state)
    assert (info.folded_biases, info.dropped_keys) == (4, n_bn)
    np.testing.assert_allclose(run(loaded, x), run(source, x), rtol=1e-5, atol=1e-5)


def test_convert_to_paddle_torch_details():
    state = {"fc.weight": np.arange(6, dtype=np.float32).reshape(3, 2), "fc.bias": np.ones(3, np.float32),
             "layer2.0.conv2.fc1.weight": np.ones((4, 2, 1, 1), np.float32),
             "layer2.0.conv2.fc1.bias": np.full(4, 0.5, np.float32),
             "layer2.0.conv2.bn1.running_mean": np.full(4, 2.0, np.float32),
             "layer2.0.conv2.bn1.running_var": np.ones(4, np.float32),
             "layer2.0.bn1.num_batches_tracked": np.array(3),
             "layer2.0.weird.weight": np.ones(1, np.float64)}
    conv = convert_to_paddle(state, "torch")
    s = conv.state
    np.testing.assert_array_equal(s["out.weight"], state["fc.weight"].T)
    block = "layer2.layer2_bottleneck_0."
    np.testing.assert_array_equal(s[block + "conv2.conv2._batch_norm._mean"], np.full(4, 1.5))
    assert "layer2.layer2_bottleneck_0.conv2.conv2._conv.weight" in s
    assert "layer2.layer2_bottleneck_0.conv2.conv2._batch_norm._variance" in s
    assert "layer2.0.weird.weight" in s  # unknown keys keep their name and fail validation later
    assert not any("fc1.bias" in k or "num_batches_tracked" in k for k in s)
    assert (conv.folded_biases, conv.dropped_keys) == (1, 1)
    assert all(v.dtype == np.float32 for v in s.values())


# ---------------------------------------------------------------------------------------------- errors


def error_for(arch: str, path: Path, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_model(arch, path, **kw)
    return str(err.value)


def test_missing_keys_refused(tiny, tmp_path):
    _, state = tiny
    dropped = ["layer3.layer3_bottleneck_0.conv4.weight", "stem.conv2._batch_norm._mean"]
    path = save_pdparams({k: v for k, v in state.items() if k not in dropped}, tmp_path / "m.pdparams")
    msg = error_for(TINY, path)
    assert "does not fit ResNeSt_tiny" in msg and "layout detected: paddle-develop" in msg
    assert "2 missing, 0 unexpected, 0 mis-shaped" in msg
    assert "layer3.layer3_bottleneck_0.conv4.weight [128, 64, 1, 1]" in msg
    assert "stem.conv2._batch_norm._mean [8]" in msg
    assert str(path) in msg


def test_many_missing_keys_are_summarised(tiny, tmp_path):
    _, state = tiny
    kept = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    msg = error_for(TINY, save_pdparams(kept, tmp_path / "m.pdparams"))
    n = len(state) - len(kept)
    assert f"{n} missing" in msg and f"missing ({n}): " in msg and f"({n - 5} more)" in msg


def test_unexpected_keys_refused(tiny, tmp_path):
    _, state = tiny
    extra = dict(state, **{"head.fc.weight": np.zeros((3, 4), np.float32)})
    msg = error_for(TINY, save_pdparams(extra, tmp_path / "m.pdparams"))
    assert "0 missing, 1 unexpected, 0 mis-shaped" in msg and "head.fc.weight [3, 4]" in msg


def test_misshaped_keys_refused(tiny, tmp_path):
    _, state = tiny
    bad = dict(state, **{"stem.conv1._conv.weight": np.zeros((8, 3, 5, 5), np.float32)})
    path = tmp_path / "m.safetensors"
    save_file(bad, str(path))
    msg = error_for(TINY, path)
    assert "1 mis-shaped" in msg
    assert "stem.conv1._conv.weight expected [8, 3, 3, 3], got [8, 3, 5, 5]" in msg


def test_wrong_arch_named_in_error(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "tiny.pdparams"
    paddle.save(model.state_dict(), str(path))
    msg = error_for("ResNeSt50_fast_1s1x64d", path)
    assert "does not fit ResNeSt50_fast_1s1x64d" in msg and "paddle-develop" in msg
    assert "matches ResNeSt_tiny" in msg
    assert "expected [32, 3, 3, 3], got [8, 3, 3, 3]" in msg


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("garbage.pdparams", b"\x00\x17 random garbage \xff\xfe" * 4, "not a checkpoint"),
    ("truncated.pdparams", b"\x80\x04\x95\x10\x00\x00\x00", "not a readable .pdparams file"),
    ("garbage.pth", b"this is not a torch file at all", "not a checkpoint"),
    ("garbage.safetensors", b"hello world, no header here", "not a checkpoint"),
    ("badheader.safetensors", (20).to_bytes(8, "little") + b"{not json at all!!!}",
     "not a readable safetensors"),
    ("pickled.safetensors", pickle.dumps({"a": 1}, protocol=4), "not a safetensors file"),
    ("empty.pdparams", b"", "empty file"),
    ("weights.txt", b"stem.conv1._conv.weight 1 2 3", "unsupported checkpoint file extension '.txt'"),
    ("list.pdparams", pickle.dumps([np.zeros(3)], protocol=2), "holds a list"),
    ("scalars.pdparams", pickle.dumps({"epoch": 3}, protocol=2), "no arrays found"),
])
def test_not_a_checkpoint(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_torch_is_needed_only_for_torch_files(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    path = tmp_path / "model.pth"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    with pytest.raises(CheckpointError, match="needs torch, which is not installed"):
        read_state_dict(path)
    _, state = tiny
    save_file(to_torch_names(state), str(tmp_path / "torch_named.safetensors"))
    _, info = load_checkpoint_model(TINY, tmp_path / "torch_named.safetensors")
    assert info.layout is Layout.TORCH


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.pdparams")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pdparams_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"stem.conv1._conv.weight": _Exploit(marker)}, protocol=4))
    with pytest.raises(CheckpointError, match=r"refused to load (posix|os|nt)\.system"):
        read_state_dict(path)
    assert not marker.exists()


def test_layout_detection_errors():
    with pytest.raises(CheckpointError, match="use_structured_name=False"):
        detect_layout({"conv1_weight": np.zeros(1), "conv1_scale": np.zeros(1), "fc_weights": np.zeros(1)})
    with pytest.raises(CheckpointError, match="unrecognised key layout.*features.0.weight"):
        detect_layout({"features.0.weight": np.zeros(1)})
    with pytest.raises(CheckpointError, match="mixes"):
        detect_layout({"stem.conv1._conv.weight": np.zeros(1), "conv1.0.weight": np.zeros(1)})


def test_guess_arch(tiny):
    _, state = tiny
    assert guess_arch(state) == TINY
    assert guess_arch({"foo": np.zeros(1)}) is None
