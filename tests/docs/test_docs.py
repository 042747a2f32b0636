"""The docs run as written: every ```bash/```sh/```console block and every ```python snippet of README.md,
docs/*.md and deploy/README.md runs, in document order, from the root of a copy of this checkout (with
`../shared` beside it, as on a fresh clone), against real servers on 127.0.0.1.

- The copy gets what `make demo` leaves behind first (`resnest demo`, i.e. `make demo` without the venv
  step and with a 2 s load test): `demo_out/bundle` and `demo_out/bench_images`.
- `resnest serve ...` lines start the server in the background (the test adds `--ready-file` and waits for
  it); a block that starts a server first stops the servers of earlier blocks, and every server is
  stopped at the end (exit status 0 required). docs/clients.md's output comes from the server its first
  paragraph names, which the test starts before that file's blocks.
- ```console blocks run their `$ ` lines (the rest is output); the block's last command must exit 0, or the
  status given by a `<!-- docs-test: exit N -->` line just before the block.
- A block preceded by `<!-- docs-test: skip (why) -->` is not run (GPU, docker, a cluster, the internet,
  minutes of benchmarking); each skip is reported with its reason (`pytest -rs`).
- Python snippets run each in a fresh interpreter; those that import tritonclient run in the environment
  `$RESNEST_TRITON_PYTHON` (tritonclient pins protobuf < 7, README "Call it from Triton/KServe clients").
Outputs are ```text (or yaml) blocks and are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import shared_dir

from support import REPO_ROOT

RUN_LANGS = ("bash", "sh", "console", "python")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
BLOCK_TIMEOUT_S = 300
# The server a file's examples were produced with, named in its prose (started before its blocks).
FILE_SERVER = {"docs/clients.md": "resnest serve --config configs/config.yml --set op.imagenet.topk=3"}
SETUP = [sys.executable, "-m", "resnest_serving.cli", "demo", "--shared", "../shared", "--bench-seconds", "2", "--show", "1"]


def doc_files() -> list[str]:
    return ["README.md", *sorted(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md")), "deploy/README.md"]


@dataclass(frozen=True)
class Block:
    """One fenced block: file, first line number, language, text and the docs-test marker before it."""

    file: str
    line: int
    lang: str
    text: str
    marker: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}:{self.lang}"

    @property
    def skip_reason(self) -> str | None:
        match = re.fullmatch(r"skip\s*\((.+)\)", self.marker)
        return match[1] if match else None

    @property
    def expected_exit(self) -> int:
        match = re.fullmatch(r"exit\s+(\d+)", self.marker)
        return int(match[1]) if match else 0

    @property
    def starts_server(self) -> bool:
        return self.lang != "python" and re.search(r"^\$?\s*resnest serve\b", self.text, re.M) is not None


def blocks_of(file: str) -> list[Block]:
    """The fenced blocks of `file` in the languages that run."""
    lines = (REPO_ROOT / file).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous.strip())
        if opening[1] in RUN_LANGS:
            found.append(Block(file, i + 1, opening[1], "\n".join(lines[i + 1:end]) + "\n",
                               marker[1] if marker else ""))
        i = end + 1
    return found


ALL_BLOCKS = [block for file in doc_files() for block in blocks_of(file)]


def console_commands(text: str) -> str:
    """The `$ ` commands of a console block, continuation lines (after a trailing backslash) included."""
    commands, continued = [], False
    for line in text.splitlines():
        if continued:
            commands.append(line)
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


# `resnest serve` in the background (its log and pid recorded for the test), waiting for its ready file.
SHELL_PREAMBLE = r"""
resnest() {
    if [ "${1:-}" = serve ]; then
        local ready
        ready=$(mktemp -u "$DOCS_TMP/ready.XXXXXX")
        command resnest "$@" --ready-file "$ready" >"$ready.log" 2>&1 &
        echo "$! $ready.log" >>"$DOCS_SERVERS"
        for _ in $(seq 1 1500); do
            [ -s "$ready" ] && return 0
            kill -0 $! 2>/dev/null || { echo "resnest serve exited:"; cat "$ready.log"; return 1; }
            sleep 0.2
        done
        echo "resnest serve not ready after 300 s:"; cat "$ready.log"; return 1
    fi
    command resnest "$@"
}
"""


class Session:
    """The copy of the checkout the blocks run in, and the servers they started."""

    def __init__(self, root: Path, tmp: Path):
        self.root, self.tmp = root, tmp
        self.servers_file = tmp / "servers.txt"
        self.servers_file.touch()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    "DOCS_TMP": str(tmp), "DOCS_SERVERS": str(self.servers_file),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RESNEST_TOKEN", None)
        self.current_file: str | None = None

    def run(self, argv: list[str], timeout: float = BLOCK_TIMEOUT_S) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)

    def shell(self, script: str, strict: bool) -> subprocess.CompletedProcess:
        path = self.tmp / "block.sh"
        path.write_text(("set -eo pipefail\n" if strict else "") + SHELL_PREAMBLE + script)
        return self.run(["bash", str(path)])

    def python(self, code: str) -> subprocess.CompletedProcess:
        path = self.tmp / "block.py"
        path.write_text(code)
        python = sys.executable
        if re.search(r"^\s*(import|from) tritonclient", code, re.M):
            python = os.environ.get("RESNEST_TRITON_PYTHON") or pytest.fail(
                "set RESNEST_TRITON_PYTHON to the tritonclient environment (make venv-test builds .venv-triton)")
            python = str(REPO_ROOT / python)  # relative to the checkout (as `make test` gives it); absolute stays
        return self.run([python, str(path)])

    def stop_servers(self) -> list[str]:
        """SIGTERM every server started so far; the problems (not stopping, a traceback in its log)."""
        problems = []
        for line in self.servers_file.read_text().splitlines():
            pid, log = int(line.split()[0]), Path(line.split()[1])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                problems.append(f"server {pid} had exited before the end:\n{log.read_text()[-2000:]}")
                continue
            deadline = time.monotonic() + 60
            while Path(f"/proc/{pid}").exists() and _state(pid) != "Z" and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
                os.kill(pid, signal.SIGKILL)
                problems.append(f"server {pid} did not stop within 60 s of SIGTERM")
            text = log.read_text()
            if "Traceback" in text:
                problems.append(f"server {pid} logged a traceback:\n{text[-3000:]}")
        self.servers_file.write_text("")
        return problems


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def checkout_copy(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of this checkout, copied to dest/resnest-serving,
    with dest/shared pointing at the shared data (so `../shared` works as on a fresh clone)."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    root = dest / "resnest-serving"
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    (dest / "shared").symlink_to(shared_dir())
    return root


@pytest.fixture(scope="module")
def session(tmp_path_factory, shared):
    dest = tmp_path_factory.mktemp("docs")
    state = Session(checkout_copy(dest), dest)
    started = time.perf_counter()
    setup = state.run(SETUP)
    assert setup.returncode == 0, f"resnest demo failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
    print(f"setup (resnest demo) took {time.perf_counter() - started:.0f} s")
    yield state
    problems = state.stop_servers()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_block_runs_as_written(block: Block, session: Session):
    if block.skip_reason:
        pytest.skip(f"{block.id}: {block.skip_reason}")
    if block.file != session.current_file:
        session.current_file = block.file
        if block.file in FILE_SERVER:
            problems = session.stop_servers()
            assert not problems, "\n".join(problems)
            started = session.shell(FILE_SERVER[block.file] + "\n", strict=True)
            assert started.returncode == 0, started.stdout + started.stderr
    if block.starts_server:
        problems = session.stop_servers()
        assert not problems, "\n".join(problems)
    if block.lang == "python":
        result = session.python(block.text)
    else:
        script = console_commands(block.text) if block.lang == "console" else block.text
        result = session.shell(script, strict=block.expected_exit == 0)
    assert result.returncode == block.expected_exit, (
        f"{block.id} exited {result.returncode} (expected {block.expected_exit}):\n--- block\n{block.text}"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    assert "Traceback" not in result.stderr or block.expected_exit != 0, result.stderr[-4000:]


def test_every_skip_says_why():
    """Markers are `skip (reason)` or `exit N`; anything else is a typo that would silently run or skip."""
    for block in ALL_BLOCKS:
        assert block.marker == "" or block.skip_reason or re.fullmatch(r"exit\s+\d+", block.marker), block.id
    for file in doc_files():
        text = (REPO_ROOT / file).read_text(encoding="utf-8")
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("<!--") and "docs-test:" in line:
                assert MARKER.match(line.strip()), f"{file}:{line_no}: malformed marker {line!r}"
