"""PyTorch ResNeSt (the authors' `resnest` package) → our Paddle model: same logits on the same input."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

try:  # mandatory: the only check against the authors' PyTorch ResNeSt must not vanish as a skip
    import resnest.torch as rt
    import torch
except ImportError as exc:
    raise ImportError(f"torch parity needs the test extras ({exc}): pip install torch==2.13.0 && pip install "
                      "--no-deps resnest==0.0.5 (make test does)") from exc

from resnest_serving.export.checkpoint import CheckpointError, Layout, SourceFormat, load_checkpoint_model  # noqa: E402

pytestmark = pytest.mark.torch

VARIANTS = {"ResNeSt50": "resnest50", "ResNeSt50_fast_1s1x64d": "resnest50_fast_1s1x64d"}


def randomized(fn_name: str, seed: int = 0):
    """A `resnest.torch` model with random weights, including BN statistics and every bias, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(rt, fn_name)(pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)  # the split-attention fc1/fc2 and the classifier
    return model.eval()


@pytest.fixture(scope="module")
def sources():
    """arch → (torch model, input, torch logits), each built once per module and only when asked for."""
    cache: dict[str, tuple] = {}

    def get(arch: str) -> tuple:
        if arch not in cache:
            model = randomized(VARIANTS[arch])
            x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                logits = model(x).numpy()
            cache[arch] = model, x.numpy(), logits
        return cache[arch]

    return get


def assert_parity(model, x: np.ndarray, expected: np.ndarray) -> None:
    with paddle.no_grad():
        got = model(paddle.to_tensor(x)).numpy()
    assert got.shape == expected.shape
    err = np.abs(got - expected).max()
    assert err <= 1e-4 * np.abs(expected).max(), f"max |Δlogit| {err} vs max |logit| {np.abs(expected).max()}"


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_pth_parity(sources, arch, tmp_path):
    model, x, expected = sources(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    loaded, info = load_checkpoint_model(arch, path)
    assert (info.source_format, info.layout) == (SourceFormat.TORCH, Layout.TORCH)
    assert info.spec.avg_pool_exclusive is False and info.class_num == 1000
    assert info.folded_biases == 16 and info.dropped_keys == 71  # 16 blocks; 71 BatchNorms
    assert_parity(loaded, x, expected)


def test_safetensors_from_torch_parity(sources, tmp_path):
    arch = "ResNeSt50"
    model, x, expected = sources(arch)
    from safetensors.torch import save_file

    path = tmp_path / f"{arch}.safetensors"
    save_file(model.state_dict(), str(path))
    loaded, info = load_checkpoint_model(arch, path)
    assert (info.source_format, info.layout) == (SourceFormat.SAFETENSORS, Layout.TORCH)
    assert_parity(loaded, x, expected)


def test_timm_style_training_checkpoint(sources, tmp_path):
    """timm uses the same parameter names as `resnest`; its training checkpoints wrap them in a dict, and
    DataParallel adds `module.`."""
    arch = "ResNeSt50_fast_1s1x64d"
    model, x, expected = sources(arch)
    path = tmp_path / "checkpoint.pth.tar"
    wrapped = {"epoch": 3, "arch": "resnest50d", "version": 2,
               "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, path)
    loaded, info = load_checkpoint_model(arch, path)
    assert (info.wrapper_key, info.stripped_prefix) == ("state_dict", "module.")
    assert_parity(loaded, x, expected)


def test_whole_module_pickle_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), path)
    with pytest.raises(CheckpointError, match="refused to unpickle.*save model.state_dict"):
        load_checkpoint_model("ResNeSt50", path)


def test_torch_zip_named_pdparams_is_read_as_torch(sources, tmp_path, caplog):
    arch = "ResNeSt50"
    model, x, expected = sources(arch)
    path = tmp_path / "misnamed.pdparams"
    torch.save(model.state_dict(), path)
    loaded, info = load_checkpoint_model(arch, path)
    assert info.source_format is SourceFormat.TORCH
    assert any("content is torch" in r.getMessage() for r in caplog.records)
    assert_parity(loaded, x, expected)


def test_odd_input_size_parity(sources, tmp_path):
    arch = "ResNeSt50_fast_1s1x64d"
    model, _, _ = sources(arch)
    x = torch.rand(1, 3, 200, 200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / "m.pth"
    torch.save(model.state_dict(), path)
    loaded, _ = load_checkpoint_model(arch, path)
    assert_parity(loaded, x.numpy(), expected)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt"])
def test_every_torch_suffix_loads(sources, suffix, tmp_path):
    """The other PyTorch file names the exporter accepts (HF `pytorch_model.bin`, Lightning `.ckpt`)."""
    model, x, expected = sources("ResNeSt50_fast_1s1x64d")
    path = tmp_path / f"weights{suffix}"
    torch.save({"state_dict": model.state_dict()} if suffix == ".ckpt" else model.state_dict(), path)
    loaded, info = load_checkpoint_model("ResNeSt50_fast_1s1x64d", path)
    assert info.source_format == SourceFormat.TORCH
    assert_parity(loaded, x, expected)
