"""The versions of one model on disk. A `model_config` folder is either a serving bundle itself (Paddle
Serving's unversioned layout, served as version 1) or holds numbered version folders `1/`, `2/`, ... (Triton's
layout), each an exported `serving_server/` folder: its files directly in `N/`, or in `N/serving_server/` as
`resnest export --out N` writes them. A scan lists the loadable versions and, for every numbered entry that is
not one, a problem saying why; it never loads a model, so corrupt weights show only when a version is started.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.serving_config import SERVER_CONF, SERVER_STREAM

_LOGGER = logging.getLogger("resnest_serving.serving.repository")
BUNDLE_FILES = (SERVER_CONF, SERVER_STREAM)
EXPORT_FOLDER = "serving_server"  # what `resnest export --out DIR` and Paddle Serving's convert write into DIR
UNVERSIONED = 1  # the version number of a model_config folder that is a bundle itself
_DIGITS = re.compile(r"[0-9]+")

Fingerprint = tuple[tuple[str, int, int], ...]
"""(path relative to the entry, size, mtime in ns) of every file under a version folder, sorted."""


class RepositoryError(ValueError):
    """The folder as a whole cannot be read as a model: missing, not a folder, mixed layout, nothing in it."""


@dataclass(frozen=True)
class ModelVersion:
    """One loadable version: its number, the entry scanned, its bundle and its files when scanned."""

    version: int
    path: Path  # `N/`, or the model_config folder itself in the unversioned layout
    bundle: ModelBundle
    fingerprint: Fingerprint

    @property
    def directory(self) -> Path:
        """The serving_server folder the engines load (`N/` or `N/serving_server/`)."""
        return self.bundle.directory


@dataclass(frozen=True)
class VersionProblem:
    """A numbered entry that is not a loadable version, and why."""

    path: Path
    version: int | None  # None when the name is not a valid version number ("0", "01")
    message: str
    fingerprint: Fingerprint


@dataclass(frozen=True)
class RepositoryScan:
    """What one look at a model_config folder found."""

    model_dir: Path
    versioned: bool
    versions: tuple[ModelVersion, ...]  # sorted by number
    problems: tuple[VersionProblem, ...]  # sorted by entry name

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(v.version for v in self.versions)

    @property
    def on_disk(self) -> frozenset[int]:
        """Every version number with a folder, loadable or not."""
        return frozenset(self.numbers) | {p.version for p in self.problems if p.version is not None}

    def summary(self) -> str:
        """One line for the start-up log: the layout, the loadable versions and how many entries are broken."""
        if not self.versioned:
            return (f"{self.model_dir}: unversioned layout (a serving_server folder), served as version "
                    f"{UNVERSIONED}" + ("" if self.versions else "; not loadable"))
        broken = f"; {len(self.problems)} broken (see the errors)" if self.problems else ""
        found = ", ".join(str(n) for n in self.numbers) or "none"
        return f"{self.model_dir}: versioned layout, loadable versions: {found}{broken}"


def fingerprint(path: Path) -> Fingerprint:
    """Names, sizes and mtimes of the files under `path` (or of `path`, a file). A file removed while we look
    is left out: the next scan differs, which is what a folder still changing should do."""
    if not path.is_dir():
        try:
            stat = path.stat()
        except FileNotFoundError:
            return ()
        return (("", stat.st_size, stat.st_mtime_ns),)
    found = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except FileNotFoundError:
                continue
            found.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def _has_bundle_files(folder: Path) -> list[str]:
    return [name for name in BUNDLE_FILES if (folder / name).is_file()]


def scan_repository(model_dir: Path, label_file: Path | None = None) -> RepositoryScan:
    """The versions in `model_dir` and the problems of its broken version folders; RepositoryError when the
    folder cannot be a model at all. `label_file` overrides each bundle's own, as `op.<name>.label_file` does."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise RepositoryError(f"{model_dir} does not exist")
    if not model_dir.is_dir():
        raise RepositoryError(f"{model_dir} is not a folder; give the serving_server folder or a folder of "
                              "numbered version folders 1/, 2/, ...")
    entries = sorted(model_dir.iterdir())
    bundle_files = _has_bundle_files(model_dir)
    numbered = [e for e in entries if _DIGITS.fullmatch(e.name)]
    if bundle_files and numbered:
        raise RepositoryError(
            f"{model_dir} mixes the two layouts: it is a serving bundle ({', '.join(bundle_files)}) and holds "
            f"numbered version folders ({', '.join(e.name for e in numbered)}); move the bundle's files into a "
            "version folder (e.g. 1/) or remove the numbered folders")
    if bundle_files:
        _LOGGER.debug("%s: unversioned layout, served as version %d", model_dir, UNVERSIONED)
        versions, problems = _check_version(UNVERSIONED, model_dir, label_file)
        return RepositoryScan(model_dir, False, versions, problems)
    for entry in entries:
        if entry not in numbered:
            _LOGGER.debug("%s: ignored (%s)", entry, _why_ignored(entry))
    if not numbered:
        inner = model_dir / EXPORT_FOLDER
        hint = (f"; did you mean {str(inner)!r}? (resnest export --out DIR writes the model into DIR/{EXPORT_FOLDER})"
                if _has_bundle_files(inner) else "")
        raise RepositoryError(f"{model_dir} holds no model: no {SERVER_CONF} (a serving_server folder) and no "
                              f"numbered version folders 1/, 2/, ...; found {[e.name for e in entries][:10]}{hint}")
    versions: list[ModelVersion] = []
    problems: list[VersionProblem] = []
    for entry in numbered:
        found, broken = _scan_entry(entry, label_file)
        versions += found
        problems += broken
    return RepositoryScan(model_dir, True, tuple(sorted(versions, key=lambda v: v.version)), tuple(problems))


def _why_ignored(entry: Path) -> str:
    if entry.name.startswith("."):
        return "hidden"
    if not entry.is_dir():
        return "a file, not a version folder"
    return "not a version number: version folders are named 1, 2, ..."


def _scan_entry(entry: Path, label_file: Path | None) -> tuple[tuple[ModelVersion, ...], tuple[VersionProblem, ...]]:
    """One numbered entry of a versioned folder: a version, or a problem."""
    number = int(entry.name)
    if number == 0 or entry.name != str(number):
        right = f"rename it to {str(number)!r}" if number else "versions start at 1"
        message = (f"{entry}: not a valid version folder name: versions are positive integers without leading "
                   f"zeros (1, 2, ...); {right}")
        return (), (VersionProblem(entry, None, message, fingerprint(entry)),)
    if not entry.exists():  # removed since the listing
        return (), ()
    if not entry.is_dir():
        message = f"version {number}: {entry} is a file; a version is a folder holding an exported serving_server"
        return (), (VersionProblem(entry, number, message, fingerprint(entry)),)
    return _check_version(number, entry, label_file)


def _check_version(number: int, entry: Path, label_file: Path | None
                   ) -> tuple[tuple[ModelVersion, ...], tuple[VersionProblem, ...]]:
    """Read the bundle of one version folder, `entry/` or else `entry/serving_server/` (its fingerprint taken
    first, so that a change during the reading shows in the next scan)."""
    prints = fingerprint(entry)
    bundle_dir = entry
    if not _has_bundle_files(entry) and _has_bundle_files(entry / EXPORT_FOLDER):
        bundle_dir = entry / EXPORT_FOLDER
    if not prints:
        message = f"version {number}: {entry} is empty; copy an exported serving_server folder's files into it"
        return (), (VersionProblem(entry, number, message, prints),)
    if not _has_bundle_files(bundle_dir):
        message = (f"version {number}: no {SERVER_CONF} in {entry} or {entry / EXPORT_FOLDER}; a version folder "
                   "holds an exported serving_server folder's files")
        return (), (VersionProblem(entry, number, message, prints),)
    try:
        bundle = ModelBundle.load(bundle_dir, label_file)
    except (OSError, ValueError, TypeError) as exc:
        return (), (VersionProblem(entry, number, f"version {number}: {exc}", prints),)
    return (ModelVersion(number, entry, bundle, prints),), ()
