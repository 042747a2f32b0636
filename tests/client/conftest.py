"""Servers for the client tests: real `resnest serve` subprocesses on loopback (tiny random model),
started once per session and shared by every module here."""

from __future__ import annotations

import socket

import pytest

from support import ServerProcess, write_config


@pytest.fixture(scope="session")
def topk_server(tiny_server):
    """top-k 3 (label/prob plus class_ids/scores/label_names), dynamic batching on: the shared server."""
    return tiny_server


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
