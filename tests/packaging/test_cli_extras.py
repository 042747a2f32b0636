"""The root CLI on an install without an extra, in this venv with the extra's modules blocked (a fresh
interpreter each, so nothing imported earlier hides the block); tests/packaging/test_install.py runs the real
client-only install."""

from __future__ import annotations

import subprocess
import sys

import pytest

RUN = "import sys\n{setup}\nfrom resnest_serving import cli\n{patch}\nraise SystemExit(cli.main({argv!r}))\n"


def run_cli(argv: list[str], blocked: tuple[str, ...], patch: str = "") -> subprocess.CompletedProcess:
    setup = "\n".join(f"sys.modules[{name!r}] = None" for name in blocked)  # `import name` then fails
    code = RUN.format(setup=setup, patch=patch, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("argv", "blocked", "extra"), [
    (["serve", "--config", "config.yml"], ("simplejpeg",), "server"),
    (["export", "--arch", "ResNeSt_tiny", "--random-init", "--out", "never"], ("paddle",), "export"),
])
def test_checked_before_the_command_starts(argv, blocked, extra):
    proc = run_cli(argv, blocked)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"({blocked[0]} is not installed): pip install 'resnest-serving[{extra}]'" in lines[0]


def test_a_module_imported_late_names_the_extra_too():
    """A module the up-front check does not list (here PyYAML, with the check emptied) fails where the command
    imports it, and still gives the one line naming the command's extra."""
    proc = run_cli(["serve", "--config", "config.yml"], ("yaml",), patch="cli.EXTRAS['server'] = ()")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "resnest serve needs the server extra (yaml is not installed): pip install 'resnest-serving[server]'" \
        in lines[0]
