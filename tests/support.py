"""Test helpers importable from any test module (tests/ is on sys.path via pytest's `pythonpath`)."""

from __future__ import annotations

from pathlib import Path

from serving import launcher
from serving.launcher import ServerProcess  # noqa: F401  (re-exported for tests)

REPO_ROOT = launcher.REPO_ROOT


def write_config(path: Path, model_dir: Path, op: dict | None = None, top: dict | None = None,
                 lsc: dict | None = None) -> Path:
    """launcher.write_config with one math thread per engine instance (tests share 2 cores)."""
    return launcher.write_config(path, model_dir, op, top, lsc={"thread_num": 1, **(lsc or {})})
