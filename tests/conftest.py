"""Shared fixtures: where ../shared lives, and the real test images in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import REPO_ROOT, ServerProcess, write_config


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
    from export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("tiny") / "bundle"
    return export(ExportOptions(arch="ResNeSt_tiny", out=out, random_init=True, seed=7, label_file=label_file,
                                onnx=True))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_export) -> Path:
    return tiny_export.server_dir


@pytest.fixture
def server_factory(tmp_path, tiny_model_dir):
    """Start servers (stopped at teardown): server_factory(op={...}, top={...}, model_dir=...)."""
    started: list[ServerProcess] = []

    def start(op: dict | None = None, top: dict | None = None, model_dir: Path | None = None,
              overrides: dict | None = None) -> ServerProcess:
        cfg = write_config(tmp_path / f"config{len(started)}.yml", model_dir or tiny_model_dir, op, top)
        server = ServerProcess(cfg, overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory, tiny_model_dir):
    """One shared server (top-k 3, batching on) for read-only protocol tests."""
    cfg = write_config(tmp_path_factory.mktemp("srv") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "batch_size": 4, "auto_batching_timeout": 5})
    server = ServerProcess(cfg)
    yield server
    server.stop()
