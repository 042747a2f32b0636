"""Shared fixtures: where ../shared lives, and the real test images in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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


class ServerProcess:
    """`resnest serve` as a real subprocess on loopback with ephemeral ports, parsed from its start-up log."""

    def __init__(self, config_path: Path, overrides: dict | None = None, timeout: float = 60.0):
        import subprocess
        import sys
        import threading

        args = [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path)]
        for key, value in (overrides or {}).items():
            args += ["--set", f"{key}={value}"]
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self.ports:
            self.stop()
            raise RuntimeError("server did not start:\n" + self.log)

    def _read(self) -> None:
        import re

        for line in self.proc.stderr:
            self.lines.append(line)
            if " listening " in line and "service " in line:
                self.ports = {k: int(v) for k, v in re.findall(r"(\w+)=[\w.:\[\]]+:(\d+)", line)}
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except Exception:
            self.proc.kill()
            return self.proc.wait()


def write_config(path: Path, model_dir: Path, op: dict | None = None, top: dict | None = None) -> Path:
    """A PaddleClas-style config.yml for `model_dir` with every front door on an ephemeral port."""
    import yaml

    config = {"worker_num": 1, "rpc_port": 0, "http_port": 0, "brpc_port": 0, "dag": {"is_thread_op": False},
              "op": {"imagenet": {"concurrency": 1, "local_service_conf": {
                  "model_config": str(model_dir), "device_type": 0, "devices": "", "client_type": "local_predictor",
                  "fetch_list": ["prediction"], "thread_num": 1}, **(op or {})}}, **(top or {})}
    path.write_text(yaml.safe_dump(config))
    return path


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


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_model_dir):
    """One shared server (top-k 3, batching on) for read-only protocol tests in a module."""
    cfg = write_config(tmp_path_factory.mktemp("srv") / "config.yml", tiny_model_dir,
                       op={"topk": 3, "batch_size": 4, "auto_batching_timeout": 5})
    server = ServerProcess(cfg)
    yield server
    server.stop()
