"""serving.repository: versions on disk, the version policy and change detection, on real exported bundles
(the session's tiny export copied into numbered folders)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from resnest_serving.serving.config.yaml_file import ConfigError
from resnest_serving.serving.repository.policy import DEFAULT_POLICY, VersionPolicy, parse_policy, select
from resnest_serving.serving.repository.versions import (
    EXPORT_FOLDER,
    SERVER_CONF,
    RepositoryError,
    scan_repository,
)
from resnest_serving.serving.repository.watcher import RepositoryWatcher, plan_change

LOGGER = "resnest_serving.serving.repository"
KEY = "op.resnest.version_policy"


def add_version(model: Path, number: int | str, source: Path, inner: bool = False) -> Path:
    """Copy the exported serving_server into model/<number>/ (or model/<number>/serving_server/)."""
    target = model / str(number) / (EXPORT_FOLDER if inner else "")
    shutil.copytree(source, target)
    return model / str(number)


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


# --- versions on disk ---

def test_unversioned_bundle_is_version_1(tiny_model_dir):
    scan = scan_repository(tiny_model_dir)
    assert not scan.versioned
    assert scan.numbers == (1,)
    assert scan.versions[0].directory == tiny_model_dir.resolve()
    assert scan.versions[0].bundle.params_file.name.endswith(".pdiparams")
    assert scan.problems == ()
    assert "unversioned layout" in scan.summary() and "served as version 1" in scan.summary()


def test_numbered_layout_files_in_n_or_in_n_serving_server(tiny_model_dir, tmp_path, caplog):
    model = tmp_path / "model"
    add_version(model, 1, tiny_model_dir)
    add_version(model, 2, tiny_model_dir, inner=True)  # as `resnest export --out model/2` writes it
    add_version(model, 10, tiny_model_dir)
    (model / "README").write_text("notes")
    (model / "serving_client").mkdir()
    (model / ".3.partial").mkdir()
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    scan = scan_repository(model)
    assert scan.versioned and scan.numbers == (1, 2, 10) and scan.problems == ()  # numeric order, not text
    assert scan.versions[0].directory == (model / "1").resolve()
    assert scan.versions[1].directory == (model / "2" / EXPORT_FOLDER).resolve()
    assert scan.versions[1].path == model / "2"
    assert scan.summary().endswith("loadable versions: 1, 2, 10")
    debug = " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "README: ignored (a file, not a version folder)" in debug
    assert "serving_client: ignored (not a version number" in debug
    assert ".3.partial: ignored (hidden)" in debug


def test_broken_version_folders_are_reported_and_good_ones_listed(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    add_version(model, 1, tiny_model_dir)
    no_params = add_version(model, 2, tiny_model_dir)
    next(no_params.glob("*.pdiparams")).unlink()
    corrupt = add_version(model, 3, tiny_model_dir)
    (corrupt / SERVER_CONF).write_text("feed_var { name: ")
    (model / "4").mkdir()
    no_conf = add_version(model, 5, tiny_model_dir)
    for conf in no_conf.glob("serving_server_conf*"):
        conf.unlink()
    add_version(model, "06", tiny_model_dir)
    add_version(model, 7, tiny_model_dir)
    (model / "8").write_text("not a folder")

    scan = scan_repository(model)
    assert scan.numbers == (1, 7)
    messages = {p.path.name: p.message for p in scan.problems}
    assert set(messages) == {"2", "3", "4", "5", "06", "8"}
    assert messages["2"].startswith("version 2: ") and "no .pdiparams file" in messages["2"]
    assert messages["3"].startswith("version 3: ") and "not a valid GeneralModelConfig text" in messages["3"]
    assert messages["4"] == f"version 4: {model / '4'} is empty; copy an exported serving_server folder's files into it"
    assert f"no {SERVER_CONF} in {model / '5'} or {model / '5' / EXPORT_FOLDER}" in messages["5"]
    assert "without leading zeros" in messages["06"] and "rename it to '6'" in messages["06"]
    assert "is a file" in messages["8"]
    assert scan.on_disk == {1, 2, 3, 4, 5, 7, 8}
    assert "2 broken" not in scan.summary() and "6 broken" in scan.summary()


def test_mixed_layout_is_refused_naming_both(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    add_version(model, 1, tiny_model_dir)
    add_version(model, 2, tiny_model_dir)
    with pytest.raises(RepositoryError, match="mixes the two layouts") as info:
        scan_repository(model)
    assert SERVER_CONF in str(info.value) and "(1, 2)" in str(info.value)


def test_folder_without_a_model_is_refused(tiny_export, tmp_path):
    with pytest.raises(RepositoryError, match="does not exist"):
        scan_repository(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError, match=r"holds no model: .* no numbered version folders"):
        scan_repository(tmp_path / "empty")
    with pytest.raises(RepositoryError, match=r"did you mean .*serving_server"):
        scan_repository(tiny_export.out)  # the export's root, not its serving_server


# --- version policy ---

@pytest.mark.parametrize(("value", "expected"), [
    (None, VersionPolicy("latest", 1)),
    ({"latest": {"num_versions": 2}}, VersionPolicy("latest", 2)),
    ({"latest": None}, VersionPolicy("latest", 1)),
    ({"latest": {}}, VersionPolicy("latest", 1)),
    ({"specific": {"versions": [3, 1]}}, VersionPolicy("specific", versions=(1, 3))),
    ({"all": {}}, VersionPolicy("all")),
    ({"all": None}, VersionPolicy("all")),
])
def test_policy_forms(value, expected):
    assert parse_policy(value, KEY) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("latest", f"[CONF] {KEY}: expected a mapping with one of latest, specific, all, got a string 'latest'; "
               "write e.g. {latest: {num_versions: 1}}"),
    ([1], f"[CONF] {KEY}: expected a mapping with one of latest, specific, all, got a list [1]"),
    ({}, f"[CONF] {KEY}: give exactly one of latest, specific, all; got none"),
    ({"latest": {}, "all": {}}, f"[CONF] {KEY}: give exactly one of latest, specific, all; got latest, all"),
    ({"lastest": {}}, f"[CONF] {KEY}.lastest: unknown key 'lastest'; did you mean 'latest'?"),
    ({"latest": {"num_version": 2}}, f"[CONF] {KEY}.latest.num_version: unknown key 'num_version'; did you mean "
                                     "'num_versions'?"),
    ({"latest": {"num_versions": 0}}, f"[CONF] {KEY}.latest.num_versions: got 0; must be >= 1"),
    ({"latest": {"num_versions": "2"}}, f"[CONF] {KEY}.latest.num_versions: expected an integer, got a string '2' "
                                        "(remove the quotes)"),
    ({"latest": 2}, f"[CONF] {KEY}.latest: expected a mapping (nested key: value lines), got an integer 2"),
    ({"specific": {}}, f"[CONF] {KEY}.specific.versions: not set; give a non-empty list of version numbers"),
    ({"specific": {"versions": []}}, f"[CONF] {KEY}.specific.versions: expected a non-empty list of version "
                                     "numbers, e.g. [1, 3], got a list []"),
    ({"specific": {"versions": [1, 0]}}, f"[CONF] {KEY}.specific.versions[1]: expected a version number (an "
                                         "integer >= 1), got an integer 0"),
    ({"specific": {"versions": [1, True]}}, f"[CONF] {KEY}.specific.versions[1]: expected a version number"),
    ({"specific": {"versions": [2, 2]}}, f"[CONF] {KEY}.specific.versions: got [2, 2]; each version once"),
    ({"all": {"num_versions": 1}}, f"[CONF] {KEY}.all: got {{'num_versions': 1}}; all takes no keys; write all: {{}}"),
])
def test_bad_policy_values(value, message):
    with pytest.raises(ConfigError) as info:
        parse_policy(value, KEY)
    assert str(info.value).startswith(message)


def test_select_each_form():
    available = [3, 1, 7, 2]
    assert select(DEFAULT_POLICY, available).versions == (7,)
    assert select(VersionPolicy("latest", 3), available).versions == (2, 3, 7)
    assert select(VersionPolicy("latest", 9), available).versions == (1, 2, 3, 7)
    assert select(VersionPolicy("all"), available).versions == (1, 2, 3, 7)
    assert select(DEFAULT_POLICY, []).versions == ()
    ok = select(VersionPolicy("specific", versions=(1, 3)), available)
    assert ok.versions == (1, 3) and ok.error(available) is None
    partly = select(VersionPolicy("specific", versions=(2, 4, 5)), available)
    assert partly.versions == (2,) and partly.missing == (4, 5)
    assert partly.error(available) == ("version_policy specific names versions 4, 5, not among the servable "
                                       "versions on disk (servable: 1, 2, 3, 7)")


# --- change detection ---

def test_plan_change(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    for number in (1, 2, 3):
        add_version(model, number, tiny_model_dir)
    offered = scan_repository(model).versions
    change = plan_change(DEFAULT_POLICY, {1}, offered, {1, 2, 3})
    assert [v.version for v in change.added] == [3] and change.removed == (1,) and change.unchanged == ()
    assert change.describe() == "load 3; unload 1; keep none"
    change = plan_change(VersionPolicy("all"), {1, 2}, offered, {1, 2, 3})
    assert [v.version for v in change.added] == [3] and change.removed == () and change.unchanged == (1, 2)
    # a served version still on disk but not offered (its files changing) stays; one gone from disk goes
    change = plan_change(VersionPolicy("latest", 2), {2, 9}, offered[:1], {1, 2})
    assert [v.version for v in change.added] == [1] and change.removed == (9,) and change.unchanged == (2,)
    # nothing servable: keep what is served, say why
    change = plan_change(DEFAULT_POLICY, {4}, (), set())
    assert change.empty and change.unchanged == (4,)
    assert change.problems == ("no servable version on disk; keeping 4 in service",)
    change = plan_change(VersionPolicy("specific", versions=(2, 5)), {2}, offered, {1, 2, 3})
    assert change.empty and "names version 5" in change.problems[0]


def test_version_being_copied_is_loaded_only_once_stable(tiny_model_dir, tmp_path, caplog):
    model = tmp_path / "model"
    add_version(model, 1, tiny_model_dir)
    watcher = RepositoryWatcher(model)
    served: set[int] = set()
    assert watcher.step(served).empty  # first look: nothing is known to be stable yet
    change = watcher.step(served)
    assert [v.version for v in change.added] == [1]
    served = {1}

    # version 2 copied file by file, one file between two polls: loadable before the copy ends, but never
    # offered while files keep appearing
    target = model / "2"
    target.mkdir()
    meta = tiny_model_dir / "resnest_meta.json"  # last: it names the label file, which must come before it
    files = sorted((p for p in tiny_model_dir.iterdir() if p != meta), key=lambda p: "prototxt" not in p.name)
    files.append(meta)
    assert files[-1].name == "resnest_meta.json"
    loadable_early = False
    for source in files:
        shutil.copy2(source, target / source.name)
        change = watcher.step(served)
        assert change.empty, f"offered after copying {source.name}"
        loadable_early |= source != files[-1] and 2 in scan_repository(model).numbers
    assert loadable_early
    assert errors(caplog) == []  # not yet stable, so not reported as broken either
    change = watcher.step(served)
    assert [v.version for v in change.added] == [2] and change.removed == (1,)
    assert change.added[0].directory == target.resolve()
    served = {2}
    assert watcher.step(served).empty

    # a weights file rewritten in place (same names, new size) is a change: not offered until stable again
    add_version(model, 3, tiny_model_dir)
    params = next((model / "3").glob("*.pdiparams"))
    assert watcher.step(served).empty
    params.write_bytes(params.read_bytes()[:100])
    assert watcher.step(served).empty


def test_unversioned_layout_is_watched_as_version_1(tiny_model_dir):
    watcher = RepositoryWatcher(tiny_model_dir)
    watcher.step(set())
    change = watcher.step(set())
    assert [(v.version, v.directory) for v in change.added] == [(1, tiny_model_dir.resolve())]
    assert watcher.step({1}).empty


def test_broken_version_reported_once_and_removal_unloads(tiny_model_dir, tmp_path, caplog):
    model = tmp_path / "model"
    add_version(model, 1, tiny_model_dir)
    add_version(model, 2, tiny_model_dir)
    broken = add_version(model, 3, tiny_model_dir)
    next(broken.glob("*.pdiparams")).unlink()
    watcher = RepositoryWatcher(model, VersionPolicy("all"), name="tiny")
    watcher.step(set())
    assert errors(caplog) == []
    change = watcher.step(set())
    assert [v.version for v in change.added] == [1, 2]
    assert len(errors(caplog)) == 1 and errors(caplog)[0].startswith("model tiny: version 3: ")
    assert watcher.step({1, 2}).empty and len(errors(caplog)) == 1  # once per state of its files

    shutil.rmtree(model / "2")
    change = watcher.step({1, 2})
    assert change.added == () and change.removed == (2,) and change.unchanged == (1,)
    shutil.rmtree(model / "1")
    change = watcher.step({1})
    assert change.empty and change.unchanged == (1,)  # the last version is never unloaded by a poll
    assert "no servable version on disk; keeping 1 in service" in errors(caplog)[-1]


def run_poll(watcher: RepositoryWatcher, served: set[int], scenario, on_change) -> None:
    """Run watcher.poll (20 ms interval, `served` the versions in service) beside the `scenario` coroutine,
    then stop it: the poll must end by itself, without an exception."""

    async def main():
        task = asyncio.create_task(watcher.poll(0.02, on_change, lambda: set(served)))
        try:
            await scenario(task)
        finally:
            watcher.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


async def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_poll_survives_scan_errors_and_failing_changes(tiny_model_dir, tmp_path, caplog):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    add_version(model, 1, tiny_model_dir)  # mixed layout: every scan fails until the top-level files go
    watcher = RepositoryWatcher(model, name="tiny")
    served: set[int] = set()
    changes = []

    async def on_change(change):
        changes.append(change)
        if len(changes) == 1:
            raise RuntimeError("engine start failed")
        served.update(v.version for v in change.added)
        served.difference_update(change.removed)

    async def scenario(task):
        await wait_for(lambda: errors(caplog), "the scan error")
        await asyncio.sleep(0.1)  # several more polls fail the same way
        assert not task.done()
        for item in model.iterdir():
            if item.is_file():
                item.unlink()
        await wait_for(lambda: len(changes) == 1, "the first change")
        # version 1 was not taken (on_change raised): it is not offered again until its files change
        await asyncio.sleep(0.1)
        assert len(changes) == 1 and served == set()
        (model / "1" / "note.txt").write_text("touched")
        await wait_for(lambda: served == {1}, "version 1 in service")
        add_version(model, 2, tiny_model_dir)
        await wait_for(lambda: served == {2}, "version 2 replacing version 1")

    caplog.set_level(logging.INFO, logger=LOGGER)
    run_poll(watcher, served, scenario, on_change)
    lines = errors(caplog)
    assert "mixes the two layouts" in lines[0] and "trying again next poll" in lines[0]
    assert sum("mixes the two layouts" in line for line in lines) == 1  # the same failure is logged once
    assert any("failed: RuntimeError: engine start failed" in line for line in lines)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("can be scanned again" in line for line in infos)
    assert [[v.version for v in c.added] for c in changes] == [[1], [1], [2]]
    assert changes[-1].removed == (1,)


def test_poll_stops_cleanly_and_rejects_bad_interval(tiny_model_dir):
    watcher = RepositoryWatcher(tiny_model_dir)

    async def scenario(task):
        await asyncio.sleep(0.05)

    run_poll(watcher, set(), scenario, lambda change: asyncio.sleep(0))
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        asyncio.run(RepositoryWatcher(tiny_model_dir).poll(0, lambda change: asyncio.sleep(0), set))
