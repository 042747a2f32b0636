"""The configured models' served versions and the one place that starts, switches, drains and stops them: the
poll loop (`model_repository_poll_s`) and the V2 repository API (load/unload/index) both call it.

The rules: a new version is started beside the served ones (its engines' start-up check and the recorded
accuracy check included) and only then switched to, by replacing the model's `versions` mapping in one
assignment (a request reads it once, at routing); a version switched away from keeps answering the requests
already routed to it and is stopped once none is left. A version that fails to start is never switched to:
what was served keeps serving, one ERROR line says why, and the watcher does not offer it again until its
files change. When a new version failed, the change's unloads wait for the next poll, so the number of served
versions never drops because of a broken upload."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resnest_serving.serving.errors import ErrorKind, ServingError
from resnest_serving.serving.repository.policy import DEFAULT_POLICY, VersionPolicy
from resnest_serving.serving.repository.versions import ModelVersion, RepositoryError, scan_repository
from resnest_serving.serving.repository.watcher import RepositoryChange, RepositoryWatcher, plan_change

if TYPE_CHECKING:
    from resnest_serving.pipeline.pipeline import Pipeline
    from resnest_serving.serving.core import ServedModel, ServedVersion, ServingCore

_LOGGER = logging.getLogger("resnest_serving.serving.repository")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"

StartVersion = Callable[["ServedModel", ModelVersion], Awaitable["Pipeline"]]
"""Start one version of a model: its pipeline, engines started and checked, `await pipeline.start()` done;
raises when the version cannot serve (its engines stopped again)."""


@dataclass(frozen=True)
class IndexEntry:
    """One row of the V2 repository index (Triton's RepositoryIndexResponse.ModelIndex)."""

    name: str
    version: str  # "" for a model with nothing loaded
    state: str  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str  # "" when READY; why otherwise


def policy_of(model: ServedModel) -> VersionPolicy:
    """The model's parsed `op.<name>.version_policy` (the default, latest 1, when the op has none)."""
    return getattr(model.op, "version_policy", None) or DEFAULT_POLICY


class ModelRepository:
    """The configured models' versions: what is served, loading, refused; the one place that starts, switches,
    drains and stops versions (the poll loop and the V2 repository API both call it)."""

    def __init__(self, core: ServingCore, start_version: StartVersion, poll_s: float = 0.0,
                 drain_timeout_s: float = 10.0):
        self.core = core
        self.start_version = start_version
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self._locks = {name: asyncio.Lock() for name in core.models}
        self._loading: dict[str, set[int]] = {name: set() for name in core.models}
        self._refused: dict[str, dict[int, str]] = {name: {} for name in core.models}
        self._watchers: dict[str, RepositoryWatcher] = {}
        self._polls: dict[str, asyncio.Task] = {}
        core.repository = self

    # ---- the poll loop ----------------------------------------------------------------------------------

    def start_polling(self) -> None:
        """One poll task per versioned model when `poll_s` > 0 (call it on the event loop)."""
        if self.poll_s > 0:
            for model in self.core.models.values():
                if model.versioned and not model.unloaded:
                    self._watch(model)

    def _watch(self, model: ServedModel) -> None:
        lsc = model.op.local_service_conf
        watcher = RepositoryWatcher(lsc.model_config, policy_of(model), model.op.label_file, model.name)
        self._watchers[model.name] = watcher

        async def on_change(change: RepositoryChange) -> None:
            async with self._locks[model.name]:
                if not model.unloaded:
                    await self._apply(model, change.added, change.removed)

        self._polls[model.name] = asyncio.create_task(watcher.poll(self.poll_s, on_change, lambda: set(model.versions)),
                                                      name=f"repository-poll-{model.name}")

    async def _unwatch(self, name: str) -> None:
        watcher, task = self._watchers.pop(name, None), self._polls.pop(name, None)
        if watcher is not None:
            watcher.stop()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        """End every poll loop (server shutdown; the server stops the pipelines)."""
        for name in list(self._polls):
            await self._unwatch(name)

    # ---- the contract's API -----------------------------------------------------------------------------

    def index(self) -> list[IndexEntry]:
        """One entry per version of every configured model that is served, loading, draining or refused; an
        unloaded model with nothing left is one entry with version ""."""
        entries = []
        for name, model in self.core.models.items():
            rows: dict[int, IndexEntry] = {}
            folder = model.op.local_service_conf.model_config
            refused = self._refused[name]
            for number in [n for n in refused if not (folder / str(n)).exists()]:  # its folder is gone
                del refused[number]
            for number, reason in refused.items():
                rows[number] = IndexEntry(name, str(number), UNAVAILABLE, reason)
            for number in self._loading[name]:
                rows[number] = IndexEntry(name, str(number), LOADING, "loading")
            for number in model.draining:
                rows[number] = IndexEntry(name, str(number), UNLOADING, "finishing the requests in flight")
            for number, served in model.versions.items():
                ready = served.pipeline.ready
                rows[number] = IndexEntry(name, str(number), READY if ready else UNAVAILABLE, "" if ready else
                                          "not ready")
            if model.unloaded and not model.versions and not model.draining and not self._loading[name]:
                rows = {0: IndexEntry(name, "", UNAVAILABLE, "unloaded")}
            entries += [rows[number] for number in sorted(rows)]
        return entries

    async def load(self, name: str) -> None:
        """Scan `name`'s folder now and apply its version policy (a new version started, checked, switched
        to; the old one drained); an unloaded model is loaded again. ServingError NOT_FOUND for a name not in
        the config; INVALID, saying why, when nothing could be loaded (what was served keeps serving)."""
        model = self._model(name)
        async with self._locks[name]:
            directory = model.op.local_service_conf.model_config
            try:
                scan = await asyncio.to_thread(scan_repository, directory, model.op.label_file)
            except (RepositoryError, OSError) as exc:
                raise ServingError(ErrorKind.INVALID, f"model {name!r}: {exc}") from None
            for problem in scan.problems:
                _LOGGER.error("model %s: %s", name, problem.message)
            served = set() if model.unloaded else set(model.versions)
            change = plan_change(policy_of(model), served, scan.versions, scan.on_disk)
            for problem in change.problems:
                _LOGGER.error("model %s: %s", name, problem)
            failures = await self._apply(model, change.added, change.removed)
            if name in self._watchers:
                self._watchers[name].record_refused(change, set(model.versions))
            if not model.versions or (change.added and len(failures) == len(change.added)):
                why = "; ".join(failures + list(change.problems) + [p.message for p in scan.problems])
                raise ServingError(ErrorKind.INVALID, f"model {name!r}: nothing could be loaded: "
                                   f"{why or 'no servable version on disk'}")
            if model.versioned and self.poll_s > 0 and name not in self._watchers:
                self._watch(model)

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests are refused (NOT_FOUND, err_no 3002), requests in flight finish,
        then its workers stop. ServingError NOT_FOUND for a name not in the config; unloading an unloaded model
        is a no-op."""
        model = self._model(name)
        await self._unwatch(name)
        async with self._locks[name]:
            if model.unloaded:
                return
            model.unloaded = True
            gone, model.versions = list(model.versions.values()), {}
            _LOGGER.info("model %s: unloaded; stopping version(s) %s once their requests in flight finish", name,
                         ", ".join(str(v.number) for v in gone))
            await self._drain(model, gone)

    # ---- starting, switching, draining ------------------------------------------------------------------

    def _model(self, name: str) -> ServedModel:
        model = self.core.models.get(name)
        if model is None:
            served = ", ".join(repr(n) for n in self.core.models)
            raise ServingError(ErrorKind.NOT_FOUND, f"unknown model {name[:200]!r}; this server's config has "
                               f"{served}", 3002)
        return model

    async def _apply(self, model: ServedModel, added: tuple[ModelVersion, ...], removed: tuple[int, ...]
                     ) -> list[str]:
        """Start `added`, switch to what started, drain and stop `removed` (kept when an added version
        failed); returns why each failed version was refused."""
        from resnest_serving.serving.core import ServedVersion

        started: dict[int, ServedVersion] = {}
        failures: list[str] = []
        for version in added:
            number = version.version
            self._loading[model.name].add(number)
            try:
                pipeline = await self.start_version(model, version)
            except Exception as exc:  # any failure to start: the version is refused, the server goes on
                reason = f"version {number}: {_why(exc)}"
                keeping = ", ".join(str(v) for v in sorted(model.versions)) or "nothing"
                _LOGGER.error("model %s: %s; not switched to it (serving %s); it is tried again when its files "
                              "change", model.name, reason, keeping)
                self._refused[model.name][number] = reason
                failures.append(reason)
            else:
                started[number] = ServedVersion(number, pipeline)
                self._refused[model.name].pop(number, None)
            finally:
                self._loading[model.name].discard(number)
        keep_removed = bool(failures)
        if keep_removed and removed:
            _LOGGER.info("model %s: keeping version(s) %s until the next look (a new version failed)", model.name,
                         ", ".join(str(v) for v in removed))
        new = {n: v for n, v in model.versions.items() if keep_removed or n not in removed} | started
        gone = [v for n, v in model.versions.items() if n not in new]
        if not started and not gone:
            return failures
        model.versions = dict(sorted(new.items()))  # the switch: one assignment, read once per request
        if started and model.unloaded:
            model.unloaded = False
        _LOGGER.info("model %s: serving version(s) %s%s", model.name, ", ".join(str(n) for n in model.versions),
                     f"; draining {', '.join(str(v.number) for v in gone)}" if gone else "")
        await self._drain(model, gone)
        return failures

    async def _drain(self, model: ServedModel, gone: list[ServedVersion]) -> None:
        """Let the requests routed to each version in `gone` finish (up to drain_timeout_s, then answer the
        rest with err_no 3001), then stop its pipeline."""
        for served in gone:
            model.draining[served.number] = served
        try:
            for served in gone:
                try:
                    await asyncio.wait_for(served.drained(), self.drain_timeout_s)
                except TimeoutError:
                    count = served.pipeline.abort(f"model {model.name} version {served.number} was switched away "
                                                  f"from and its requests did not finish within "
                                                  f"{self.drain_timeout_s:g} s; retry the request")
                    _LOGGER.warning("model %s: version %d: answered %d request(s) still in flight with err_no 3001 "
                                    "after %g s of draining", model.name, served.number, count,
                                    self.drain_timeout_s)
                model.draining.pop(served.number, None)
                await served.pipeline.stop()
                _LOGGER.info("model %s: version %d stopped", model.name, served.number)
        finally:
            for served in gone:
                model.draining.pop(served.number, None)


def _why(exc: BaseException) -> str:
    """The exception in one line (engine errors quote multi-line library messages)."""
    text = re.sub(r"\s*\n\s*", " ", str(exc).strip()) or type(exc).__name__
    return text if isinstance(exc, (ValueError, RepositoryError)) else f"{type(exc).__name__}: {text}"
