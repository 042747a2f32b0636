"""Start `resnest serve` as a child process and learn its bound ports from its start-up log line
(`service '<name>' listening grpc=H:P http=H:P brpc=H:P (pid N)`): for the demo, benchmarks and tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"service '[^']*' listening")


class ServerProcess:
    """`resnest serve` as a real subprocess on loopback with ephemeral ports, parsed from its start-up log."""

    def __init__(self, config_path: Path, overrides: dict | None = None, timeout: float = 60.0,
                 extra_args: list[str] | None = None, echo: bool = False):
        args = [sys.executable, "-m", "serving.cli", "serve", "--config", str(config_path)]
        for key, value in (overrides or {}).items():
            args += ["--set", f"{key}={value}"]
        args += extra_args or []
        self.echo = echo
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
        for line in self.proc.stderr:
            self.lines.append(line)
            if self.echo:
                sys.stderr.write(line)
            if LISTENING.search(line):
                self.ports = {k: int(v) for k, v in re.findall(r"(\w+)=[\w.:\[\]]+:(\d+)", line)}
                self._ready.set()
        self._ready.set()

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
        except Exception:
            self.proc.kill()
            return self.proc.wait()


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
