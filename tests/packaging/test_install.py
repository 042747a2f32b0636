"""The wheel, installed as a user installs it: one top-level package holding every module and data file; the
base install is the client alone and works from a folder holding the user's own `client.py` and `pipeline.py`.

`make` installs the project editable (`pip install -e`); every other test runs on that install, so it is
exercised there, and this module is the one that builds and installs the wheel.

The build (setuptools) and the client-only venv's dependencies (numpy, grpcio, protobuf, aiohttp, tqdm,
prometheus-client) come from the package index pip is configured with: about 10 s and 15 s here; the module
takes about a minute in all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from support import REPO_ROOT, installed_folders, write_config

log = logging.getLogger(__name__)

NOT_INSTALLED = {"bench", "tests"}  # Python folders of the repository that are not part of the package
DATA_FILES = {"protocol": ("*.proto",), "demo": ("*.pdparams", "*.npz", "*.txt", "*.json")}  # setup.cfg package_data
HEAVY = ("paddle", "openvino", "onnxruntime", "onnx", "paddle2onnx", "yaml", "cv2", "PIL", "simplejpeg", "safetensors")
USER_MODULE = "raise ImportError('the user\\'s own {name}.py was imported instead of resnest_serving.{name}')\n"


def _python_folders() -> list[str]:
    """Top-level folders of the repository that hold Python packages, plus the root package itself."""
    return sorted(p.parent.name for p in REPO_ROOT.glob("*/__init__.py"))


def _run(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _listing(venv: Path) -> set[str]:
    site = next(venv.glob("lib/python*/site-packages"))
    return {p.name for p in site.iterdir() if p.name != "__pycache__"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the working tree (a build in place would write build/ into it), with
    pip's build isolation as a user's build has it (setuptools from the index: a few seconds)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for folder in _python_folders():
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src)
    (built,) = out.glob("resnest_serving-*.whl")
    return built


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A user's project folder with a `client.py` and a `pipeline.py` of their own, which fail when imported."""
    folder = tmp_path_factory.mktemp("user_project")
    for name in ("client", "pipeline"):
        (folder / f"{name}.py").write_text(USER_MODULE.format(name=name))
    return folder


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory, wheel) -> tuple[Path, set[str], set[str]]:
    """A fresh venv with the wheel installed without extras; also what its site-packages held before and after
    the wheel alone (`--no-deps`), before the base dependencies were added."""
    venv = tmp_path_factory.mktemp("client_venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    pip = (sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q")
    before = _listing(venv)
    _run(*pip, "--no-deps", wheel)
    after = _listing(venv)
    started = time.monotonic()
    _run(*pip, wheel)
    log.info("client-only dependencies installed in %.0f s", time.monotonic() - started)
    return venv, before, after


def test_setup_py_maps_every_package_folder():
    """A new top-level package folder must be installed (setup.py FOLDERS) or named here as not installed."""
    unmapped = set(_python_folders()) - set(installed_folders()) - NOT_INSTALLED - {"resnest_serving"}
    assert not unmapped, f"setup.py FOLDERS does not install {sorted(unmapped)}"


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"resnest_serving", wheel.name.split("-py3")[0] + ".dist-info"}
    missing = []
    for folder in [*installed_folders(), "resnest_serving"]:
        prefix = "resnest_serving/" if folder == "resnest_serving" else f"resnest_serving/{folder}/"
        sources = [p for p in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
        data = [p for pattern in DATA_FILES.get(folder, ()) for p in (REPO_ROOT / folder).glob(pattern)]
        assert sources, folder
        for pattern in DATA_FILES.get(folder, ()):
            assert list((REPO_ROOT / folder).glob(pattern)), f"no {folder}/{pattern} in the repository"
        missing += [f"{prefix}{p.relative_to(REPO_ROOT / folder).as_posix()}" for p in sources + data]
    assert not [n for n in missing if n not in names], "files of the repository missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "resnest = resnest_serving.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_adds_one_top_level_package(wheel, client_venv):
    venv, before, after = client_venv
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    assert after - before == {"resnest_serving", dist_info} and before <= after
    assert (venv / "bin" / "resnest").is_file()


def test_client_only_install_imports_nothing_heavy(client_venv, user_folder):
    """`from resnest_serving.client import connect` works beside the user's client.py and pipeline.py, none of
    the server's or exporter's packages is installed, and building every subcommand's parser imports none."""
    venv, _, _ = client_venv
    code = ("import importlib.util, json, sys\n"
            "from resnest_serving.client import PipelineClient, connect\n"
            "from resnest_serving.cli import build_parser\n"
            "build_parser()\n"
            f"heavy = {HEAVY!r}\n"
            "print(json.dumps({'file': sys.modules[connect.__module__].__file__,\n"
            "                  'installed': [m for m in heavy if importlib.util.find_spec(m)],\n"
            "                  'imported': [m for m in sys.modules if m.split('.')[0] in heavy]}))\n")
    facts = json.loads(_run(venv / "bin" / "python", "-c", code, cwd=user_folder).stdout)
    assert Path(facts["file"]).is_relative_to(venv) and "site-packages" in facts["file"]
    assert facts["installed"] == [] and facts["imported"] == []


@pytest.mark.parametrize(("args", "extra"), [
    (["serve", "--config", "config.yml"], "server"),
    (["export", "--arch", "ResNeSt_tiny", "--random-init", "--out", "out"], "export"),
    (["tune", "--model-dir", "out"], "server"),
    (["demo", "--out", "out"], "server,export"),
    (["predict", "--model-dir", "out", "client.py"], "server"),
    (["predict", "--client-resize", "256", "--endpoint", "127.0.0.1:9", "client.py"], "images"),
], ids=["serve", "export", "tune", "demo", "predict-model", "predict-client-resize"])
def test_client_only_install_names_the_extra(client_venv, user_folder, args, extra):
    """`--help` works; running the command exits 2 with one line naming the extra, before it does anything."""
    venv, _, _ = client_venv
    assert _run(venv / "bin" / "resnest", args[0], "--help", cwd=user_folder).returncode == 0
    proc = _run(venv / "bin" / "resnest", *args, check=False, cwd=user_folder)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"pip install 'resnest-serving[{extra}]'" in lines[0]
    assert not (user_folder / "out").exists()


def test_served_from_a_user_folder_and_called_by_the_client_only_install(client_venv, user_folder, tmp_path,
                                                                         tiny_model_dir, image_paths):
    """The dev venv's `resnest serve` started in the user's folder answers `resnest predict` and `resnest bench`
    of the client-only install (the engine workers start there too, with that folder on their path)."""
    venv, _, _ = client_venv
    config = write_config(tmp_path / "config.yml", tiny_model_dir)
    ready = Path(tempfile.mkdtemp(dir=tmp_path)) / "ready.json"
    resnest = Path(sys.executable).parent / "resnest"
    server_log = tmp_path / "server.log"
    with server_log.open("w") as stderr:
        server = subprocess.Popen([resnest, "serve", "--config", config, "--ready-file", ready], cwd=user_folder,
                                  stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, f"no start:\n{server_log.read_text()}"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["ports"]["grpc"]
        proc = _run(venv / "bin" / "resnest", "predict", "--endpoint", f"127.0.0.1:{port}", "--json",
                    *image_paths[:2], cwd=user_folder)
        rows = json.loads(proc.stdout)
        assert [r["image"] for r in rows] == [str(p) for p in image_paths[:2]] and all(r["label"] for r in rows)
        _run(venv / "bin" / "resnest", "bench", "--endpoint", f"127.0.0.1:{port}", "--images", image_paths[0].parent,
             "--requests", "4", "--quiet", cwd=user_folder)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0 and "Traceback" not in server_log.read_text(), server_log.read_text()[-4000:]
