"""serving.repository.manager: the rules of starting, switching, draining, refusing and unloading versions,
on real exported bundles in numbered folders and the real ServingCore routing. The engines are stood in for
(`Standin`: a pipeline whose answers the test releases), since what is tested is when the manager starts,
switches and stops them; tests/e2e/test_versions.py runs the same rules with real engines in a real server."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from resnest_serving.pipeline.errors import ErrorCode
from resnest_serving.pipeline.types import Request, Response
from resnest_serving.serving.config.loader import parse_config
from resnest_serving.serving.core import ServedModel, ServingCore
from resnest_serving.serving.errors import ErrorKind, ServingError
from resnest_serving.serving.metrics import Metrics
from resnest_serving.serving.repository.manager import IndexEntry, ModelRepository
from resnest_serving.serving.repository.versions import ModelVersion

LOGGER = "resnest_serving.serving.repository"


class Standin:
    """The part of a Pipeline the manager and the core use; `gate` holds every answer until it is set."""

    def __init__(self, version: int):
        self.version = version
        self.ready = False
        self.stopped = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def start(self) -> None:
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.stopped = True

    def abort(self, reason: str) -> int:
        return 0

    async def infer(self, request: Request) -> Response:
        await self.gate.wait()
        return Response(keys=["label"], values=[f"v{self.version}"])


class Starter:
    """The manager's start_version: a started Standin, or the failure given for that version number."""

    def __init__(self, failing: dict[int, str] | None = None):
        self.failing = failing or {}
        self.started: dict[int, Standin] = {}
        self.calls: list[int] = []

    async def __call__(self, model: ServedModel, version: ModelVersion) -> Standin:
        self.calls.append(version.version)
        if version.version in self.failing:
            raise ValueError(self.failing[version.version])
        pipeline = Standin(version.version)
        await pipeline.start()
        self.started[version.version] = pipeline
        return pipeline


@pytest.fixture
def folder(tmp_path, tiny_model_dir) -> Path:
    """A versioned model folder holding version 1."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model / "1")
    return model


def repository(folder: Path, starter: Starter, top: dict | None = None, op: dict | None = None
               ) -> tuple[ModelRepository, ServedModel]:
    """The repository of a one-model core serving version 1 of `folder` (a Standin)."""
    config = parse_config({"rpc_port": 0, **(top or {}),
                           "op": {"m": {"local_service_conf": {"model_config": str(folder)}, **(op or {})}}},
                          folder.parent)
    first = Standin(1)
    first.ready = True  # started
    model = ServedModel("m", config.op[0], first, version=1, versioned=True)
    core = ServingCore([model], Metrics())
    return ModelRepository(core, starter, config.model_repository_poll_s, drain_timeout_s=5.0), model


def ask(core: ServingCore, version: int | None = None) -> asyncio.Task:
    return asyncio.ensure_future(core.infer_version(Request(["image"], ["x"], name="m"), version))


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


def test_load_switches_first_then_drains_the_old_version(folder, tiny_model_dir):
    async def main():
        starter = Starter()
        repo, model = repository(folder, starter)
        old = model.versions[1].pipeline
        old.gate.clear()
        held = ask(repo.core)  # routed to version 1, answered only when the gate opens
        await asyncio.sleep(0.01)
        shutil.copytree(tiny_model_dir, folder / "2")
        load = asyncio.ensure_future(repo.load("m"))
        while set(model.versions) != {2}:
            await asyncio.sleep(0.005)
        assert not old.stopped and model.versions[2].pipeline.ready  # switched; 1 drains
        assert repo.index() == [IndexEntry("m", "1", "UNLOADING", "finishing the requests in flight"),
                                IndexEntry("m", "2", "READY", "")]
        response, answered = await ask(repo.core)  # a new request goes to 2 while 1 still drains
        assert (response.values, answered) == (["v2", "2"], 2)
        assert not load.done()
        old.gate.set()
        await load
        response, answered = await held
        assert (response.values, answered, old.stopped) == (["v1", "1"], 1, True)
        assert repo.index() == [IndexEntry("m", "2", "READY", "")]

    asyncio.run(main())


def test_a_version_that_fails_to_start_is_never_switched_to(folder, tiny_model_dir, caplog):
    async def main():
        starter = Starter({2: "start-up check failed: outputs differ"})
        repo, model = repository(folder, starter)
        shutil.copytree(tiny_model_dir, folder / "2")
        with pytest.raises(ServingError) as info:
            await repo.load("m")
        assert info.value.kind is ErrorKind.INVALID and "version 2: start-up check failed" in info.value.message
        assert set(model.versions) == {1} and not model.versions[1].pipeline.stopped  # latest 1 kept 1
        assert repo.index() == [IndexEntry("m", "1", "READY", ""),
                                IndexEntry("m", "2", "UNAVAILABLE", "version 2: start-up check failed: outputs differ")]
        assert (await ask(repo.core))[1] == 1

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(main())
    assert len(errors(caplog)) == 1 and "not switched to it (serving 1)" in errors(caplog)[0]


def test_polling_refuses_a_broken_version_once_until_its_files_change(folder, tiny_model_dir, caplog):
    async def main():
        starter = Starter({2: "broken weights"})
        repo, model = repository(folder, starter, top={"model_repository_poll_s": 0.02})
        repo.start_polling()
        shutil.copytree(tiny_model_dir, folder / "2")
        await asyncio.sleep(0.4)  # many polls
        assert starter.calls == [2] and set(model.versions) == {1}
        starter.failing.clear()
        (folder / "2" / "resnest_meta.json").touch()  # its files changed: offered again, and it starts now
        for _ in range(200):
            if set(model.versions) == {2}:
                break
            await asyncio.sleep(0.01)
        assert starter.calls == [2, 2] and set(model.versions) == {2} and model.versions[2].pipeline.ready
        await repo.stop()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        asyncio.run(main())
    assert len([e for e in errors(caplog) if "version 2" in e]) == 1


def test_unload_refuses_new_requests_and_load_serves_again(folder):
    async def main():
        repo, model = repository(folder, Starter())
        first = model.versions[1].pipeline
        await repo.unload("m")
        await repo.unload("m")  # a no-op
        assert first.stopped and repo.core.ready  # an unloaded model does not make the server unready
        response, answered = await ask(repo.core)
        assert (response.err_no, answered) == (int(ErrorCode.NO_SERVICE), 0)
        assert response.err_msg == "model 'm' is unloaded; load it with POST /v2/repository/models/m/load"
        assert repo.index() == [IndexEntry("m", "", "UNAVAILABLE", "unloaded")]
        await repo.load("m")
        assert (await ask(repo.core))[0].values == ["v1", "1"] and repo.index() == [IndexEntry("m", "1", "READY", "")]

    asyncio.run(main())


def test_unknown_names_and_unloadable_folders(folder):
    async def main():
        repo, model = repository(folder, Starter())
        for call in (repo.load, repo.unload):
            with pytest.raises(ServingError) as info:
                await call("zzz")
            assert info.value.kind is ErrorKind.NOT_FOUND and "'zzz'" in info.value.message
        await repo.unload("m")
        shutil.rmtree(folder / "1")
        (folder / "1").mkdir()
        with pytest.raises(ServingError) as info:
            await repo.load("m")
        assert info.value.kind is ErrorKind.INVALID and "version 1" in info.value.message
        assert model.unloaded and not model.versions

    asyncio.run(main())


def test_specific_policy_serves_both_and_routes_by_number(folder, tiny_model_dir):
    async def main():
        repo, model = repository(folder, Starter(), op={"version_policy": {"all": {}}})
        shutil.copytree(tiny_model_dir, folder / "2")
        await repo.load("m")
        assert set(model.versions) == {1, 2}
        assert (await ask(repo.core))[1] == 2 and (await ask(repo.core, 1))[1] == 1
        response, answered = await ask(repo.core, 3)
        assert answered == 0 and "has no version 3 in service; it serves 1, 2" in response.err_msg

    asyncio.run(main())


def test_check_paths_accepts_a_versioned_folder_it_can_serve(folder):
    from resnest_serving.serving.config.files import check_paths
    from resnest_serving.serving.config.yaml_file import ConfigError

    def config(policy: dict | None = None):
        op = {"local_service_conf": {"model_config": str(folder)}, **({"version_policy": policy} if policy else {})}
        return parse_config({"rpc_port": 0, "op": {"m": op}}, folder.parent)

    check_paths(config())
    with pytest.raises(ConfigError, match=r"op\.m\.version_policy \(specific 5\)"):
        check_paths(config({"specific": {"versions": [5]}}))
    shutil.rmtree(folder / "1")
    (folder / "1").mkdir()
    with pytest.raises(ConfigError, match="version 1: .* is empty"):
        check_paths(config())
