"""Test helpers importable from any test module (tests/ is on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

from pathlib import Path

from serving.launcher import ServerProcess  # noqa: F401  (re-exported for tests)

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, model_dir: Path, op: dict | None = None, top: dict | None = None) -> Path:
    """A PaddleClas-style config.yml for `model_dir` with every front door on an ephemeral port."""
    import yaml

    config = {"worker_num": 1, "rpc_port": 0, "http_port": 0, "brpc_port": 0, "dag": {"is_thread_op": False},
              "op": {"imagenet": {"concurrency": 1, "local_service_conf": {
                  "model_config": str(model_dir), "device_type": 0, "devices": "", "client_type": "local_predictor",
                  "fetch_list": ["prediction"], "thread_num": 1}, **(op or {})}}, **(top or {})}
    path.write_text(yaml.safe_dump(config))
    return path
