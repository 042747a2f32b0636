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
