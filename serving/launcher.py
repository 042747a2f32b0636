"""Start `resnest serve` (or `resnest serve --model-server`) as a child process and learn its bound ports from
the JSON file it writes once every port listens (`--ready-file`), for the demo, the benchmarks and the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A real server subprocess; `ports` maps each front door ("grpc", "http", "brpc", ...) to its port.
    With `wait=False` the constructor returns at once (start several, then `wait_ready()` each)."""

    def __init__(self, config_path: Path, overrides: dict | None = None, timeout: float = 60.0,
                 extra_args: list[str] | None = None, echo: bool = False, wait: bool = True):
        self._dir = tempfile.TemporaryDirectory(prefix="resnest-ready-")
        self.ready_file = Path(self._dir.name) / "ready.json"
        args = [sys.executable, "-m", "resnest_serving.cli", "serve", "--config", str(Path(config_path).resolve()),
                "--ready-file", str(self.ready_file)]
        for key, value in (overrides or {}).items():
            args += ["--set", f"{key}={value}"]
        args += extra_args or []
        self.echo = echo
        self.timeout = timeout
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.info: dict = {}
        # errors="replace": native libraries may write bytes that are not UTF-8 (a corrupt model's contents);
        # the reader thread must not die on them, or the pipe fills and the server blocks on its next log line
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_ready()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if self.echo:
                sys.stderr.write(line)

    def wait_ready(self) -> ServerProcess:
        """Block until the server wrote its ready file; RuntimeError with its log if it exits or times out."""
        deadline = time.monotonic() + self.timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start (exit code {self.proc.returncode}):\n" + self.log)
            time.sleep(0.05)
        self.info = json.loads(self.ready_file.read_text())
        self.ports = self.info["ports"]
        return self

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports['http']}{path}"

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._dir.cleanup()


def write_config(path: Path, model_dir: Path, op: dict | None = None, top: dict | None = None,
                 lsc: dict | None = None) -> Path:
    """A PaddleClas-style config.yml serving `model_dir` as op `imagenet`, every front door on a free port.
    `op`/`top`/`lsc` add or replace keys of the op, the top level and local_service_conf."""
    import yaml

    local = {"model_config": str(Path(model_dir).resolve()), "device_type": 0, "devices": "",
             "client_type": "local_predictor", "fetch_list": ["prediction"], **(lsc or {})}
    config = {"worker_num": 1, "rpc_port": 0, "http_port": 0, "brpc_port": 0, "dag": {"is_thread_op": False},
              "op": {"imagenet": {"concurrency": 1, "local_service_conf": local, **(op or {})}}, **(top or {})}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
