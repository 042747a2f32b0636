"""Shared fixtures: where ../shared lives, and the real test images in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import REPO_ROOT, ServerProcess, serving, teardown_problems, write_config


def shared_dir() -> Path:
    """../shared beside the checkout (CI lays it there); RESNEST_SHARED overrides."""
    return Path(os.environ.get("RESNEST_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "data" / "images").is_dir():
        pytest.fail(f"shared data not found at {path} (set RESNEST_SHARED)")
    return path


@pytest.fixture(scope="session")
def image_paths(shared: Path) -> list[Path]:
    return sorted((shared / "data" / "images").glob("*.*"))


@pytest.fixture(scope="session")
def label_file(shared: Path) -> Path:
    return shared / "data" / "imagenet1k_label_list.txt"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, label_file: Path):
    """ResNeSt_tiny with random weights, exported once per session (with ONNX) by the real exporter."""
    from resnest_serving.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny") / "bundle"
    return export(ExportOptions(arch="ResNeSt_tiny", out=out, random_init=True, seed=7, label_file=label_file))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_export) -> Path:
    return tiny_export.server_dir


VARIANTS = ("ResNeSt50_fast_1s1x64d", "ResNeSt50", "ResNeSt101", "ResNeSt200", "ResNeSt269")


@pytest.fixture(scope="session")
def variant_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every published variant exported once (random init, with ONNX): ResNeSt50 at its own 224x224, the
    others at 64x64 (the same blocks and channel widths, which decide which kernels run, in a fraction of
    the time)."""
    from resnest_serving.export.exporter import ExportOptions, export

    root = tmp_path_factory.mktemp("variants")
    small = {"crop_size": 64, "resize_short": 72}
    return {arch: export(ExportOptions(arch=arch, out=root / arch, random_init=True,
                                       **({} if arch == "ResNeSt50" else small))).server_dir
            for arch in VARIANTS}


@pytest.fixture(scope="session")
def heldout_digits() -> tuple[dict[str, bytes], list[int]]:
    """The demo's 360 held-out digits as named PNGs, with their labels."""
    from resnest_serving.demo.digits import load_heldout

    pngs, labels = load_heldout()
    return {f"digit{i:03d}.png": png for i, png in enumerate(pngs)}, [int(x) for x in labels]


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory, heldout_digits, image_paths):
    """The trained demo model exported as `resnest demo` does: int8 calibrated on 64 held-out digits,
    bf16/int8 checked against fp32 on the other 296 and on the shared images."""
    from resnest_serving.demo.digits import ARCH, CHECKPOINT_PATH, LABELS_PATH
    from resnest_serving.export.exporter import ExportOptions
    from resnest_serving.export_command import export_model

    digits = heldout_digits[0]
    names = list(digits)
    return export_model(ExportOptions(
        arch=ARCH, out=tmp_path_factory.mktemp("demo") / "bundle", checkpoint=CHECKPOINT_PATH, label_file=LABELS_PATH,
        int8=True, calibration_images={n: digits[n] for n in names[:64]},
        check_images={"digits-heldout": {n: digits[n] for n in names[64:]},
                      "shared-images": {p.name: p.read_bytes() for p in image_paths}}))


@pytest.fixture
def server_factory(tmp_path, tiny_model_dir):
    """Start servers: server_factory(op={...}, top={...}, model_dir=...). At teardown each one still running
    is stopped with SIGTERM and must exit 0, and no server's log may hold a Python traceback."""
    started: list[ServerProcess] = []

    def start(op: dict | None = None, top: dict | None = None, model_dir: Path | None = None,
              overrides: dict | None = None) -> ServerProcess:
        cfg = write_config(tmp_path / f"config{len(started)}.yml", model_dir or tiny_model_dir, op, top)
        server = ServerProcess(cfg, overrides)
        started.append(server)
        return server

    yield start
    problems = [problem for server in started for problem in teardown_problems(server)]
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory, tiny_model_dir):
    """One shared server (top-k 3, batching on) for read-only protocol tests; at the end of the session it
    must stop with exit code 0 and no traceback in its log."""
    cfg = write_config(tmp_path_factory.mktemp("srv") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "batch_size": 4, "auto_batching_timeout": 5})
    with serving(cfg) as server:
        yield server


def _split_radix(self, x):
    import paddle

    return paddle.split(x, self.radix, axis=1)


@pytest.fixture(scope="session")
def split_model_dir(tmp_path_factory):
    """ResNeSt_tiny cut into radix parts with `paddle.split` (as exported before this project switched to
    `slice`): Paddle 3.3's oneDNN fails on it at batch >= 2 unless the ISA is capped at AVX2."""
    from resnest_serving.export.exporter import ExportOptions, export
    from resnest_serving.export.resnest import SplatConv

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SplatConv, "_radix_slices", _split_radix)
        return export(ExportOptions(arch="ResNeSt_tiny", out=tmp_path_factory.mktemp("split") / "bundle",
                                    random_init=True)).server_dir
