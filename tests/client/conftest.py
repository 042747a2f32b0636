"""Servers for the client tests: real `resnest serve` subprocesses on loopback (tiny random model),
started once per session and shared by every module here."""

from __future__ import annotations

import importlib
import socket
import sys

import pytest
from support import REPO_ROOT, ServerProcess, write_config


def _real_client_package() -> None:
    """With ``pythonpath = ["tests"]`` and the ``pytest`` script (not ``python -m pytest``), ``import
    client`` finds tests/client as a namespace package: submodules still load (the editable install's
    finder maps them) but ``client/__init__`` never runs, so ``from client import PipelineClient``
    fails. Put the repo root on sys.path and swap in the real package (submodules stay the same objects)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    module = sys.modules.get("client")
    if module is not None and getattr(module, "__file__", None) is None:
        del sys.modules["client"]
    importlib.import_module("client")


_real_client_package()


@pytest.fixture(scope="session")
def topk_server(tmp_path_factory, tiny_model_dir):
    """top-k 3 (label/prob plus class_ids/scores/label_names), dynamic batching on."""
    cfg = write_config(tmp_path_factory.mktemp("client_srv") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "batch_size": 4, "auto_batching_timeout": 2})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def top1_server(tmp_path_factory, tiny_model_dir):
    """PaddleClas's own shape: label/prob only (topk 1)."""
    cfg = write_config(tmp_path_factory.mktemp("client_srv1") / "config.yml", tiny_model_dir, op={"topk": 1})
    server = ServerProcess(cfg)
    yield server
    server.stop()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
