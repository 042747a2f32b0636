"""Change detection for one model's folder: from the served versions and a fresh scan, which versions to load
and which to unload, and the asyncio loop that polls for it.

A version folder is offered for loading only once it is complete and stable: loadable, and with the same file
names, sizes and mtimes in two consecutive scans, so that a copy in progress is never loaded half-way. A served
version stays served while its folder exists (even while its files change or break: it runs from memory); it
is unloaded when its folder is gone or the policy prefers others, never when nothing else would be served. A
version that the server did not take into service (its load or check failed) is not offered again until its
files change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from resnest_serving.serving.repository.policy import DEFAULT_POLICY, VersionPolicy, select
from resnest_serving.serving.repository.versions import (
    Fingerprint,
    ModelVersion,
    RepositoryError,
    scan_repository,
)

_LOGGER = logging.getLogger("resnest_serving.serving.repository")


@dataclass(frozen=True)
class RepositoryChange:
    """What to do to reach the policy: load `added`, unload `removed`; `problems` say what keeps the policy
    from being met (a `specific` version not on disk, no servable version at all)."""

    added: tuple[ModelVersion, ...]
    removed: tuple[int, ...]
    unchanged: tuple[int, ...]
    problems: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed

    def describe(self) -> str:
        def names(versions: Sequence[int]) -> str:
            return ", ".join(str(v) for v in versions) or "none"

        return (f"load {names([v.version for v in self.added])}; unload {names(self.removed)}; "
                f"keep {names(self.unchanged)}")


def plan_change(policy: VersionPolicy, served: Collection[int], offered: Sequence[ModelVersion],
                on_disk: Collection[int]) -> RepositoryChange:
    """The change from `served` to what `policy` picks among the `offered` versions (loadable and stable)
    and the served ones whose folders are still `on_disk`."""
    served = set(served)
    by_number = {v.version: v for v in offered}
    candidates = set(by_number) | (served & set(on_disk))
    selection = select(policy, candidates)
    problems = [message] if (message := selection.error(candidates)) else []
    if not selection.versions:
        if served:
            problems.append(f"no servable version on disk; keeping {', '.join(str(v) for v in sorted(served))} "
                            "in service")
        return RepositoryChange((), (), tuple(sorted(served)), tuple(problems))
    wanted = set(selection.versions)
    return RepositoryChange(tuple(by_number[v] for v in sorted(wanted - served)), tuple(sorted(served - wanted)),
                            tuple(sorted(served & wanted)), tuple(problems))


@dataclass(frozen=True)
class Observation:
    """One scan as the watcher sees it: the versions it offers and every version number with a folder."""

    offered: tuple[ModelVersion, ...]
    on_disk: frozenset[int]


class RepositoryWatcher:
    """Polls one model's folder. `step` is one blocking look (scan + plan); `poll` repeats it on the event
    loop, scanning in a thread, and hands each non-empty change to the server."""

    def __init__(self, model_dir: Path, policy: VersionPolicy = DEFAULT_POLICY, label_file: Path | None = None,
                 name: str = ""):
        self.model_dir = Path(model_dir)
        self.policy = policy
        self.label_file = label_file
        self.name = name or self.model_dir.name
        self._previous: dict[Path, Fingerprint] = {}  # every entry's files at the last scan
        self._reported: dict[Path, Fingerprint] = {}  # broken entries already logged, as they were then
        self._refused: dict[int, Fingerprint] = {}  # versions the server did not take, as they were then
        self._problems: set[str] = set()  # plan problems logged, each once while it lasts
        self._scan_error: str | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None

    def observe(self) -> Observation:
        """Scan the folder (blocking: run it off the event loop) and keep what is needed to judge stability;
        a broken entry is logged (ERROR) once it is stable, once per state of its files."""
        scan = scan_repository(self.model_dir, self.label_file)
        current = {v.path: v.fingerprint for v in scan.versions} | {p.path: p.fingerprint for p in scan.problems}
        previous, self._previous = self._previous, current
        offered = []
        for version in scan.versions:
            if previous.get(version.path) != version.fingerprint:
                _LOGGER.debug("model %s: version %d is new or changing; offered once unchanged for one poll",
                              self.name, version.version)
            elif self._refused.get(version.version) != version.fingerprint:
                offered.append(version)
        for problem in scan.problems:
            if previous.get(problem.path) == problem.fingerprint != self._reported.get(problem.path):
                _LOGGER.error("model %s: %s", self.name, problem.message)
                self._reported[problem.path] = problem.fingerprint
        self._reported = {path: fp for path, fp in self._reported.items() if path in current}
        self._refused = {v: fp for v, fp in self._refused.items() if v in scan.on_disk}
        return Observation(tuple(offered), scan.on_disk)

    def plan(self, served: Collection[int], observation: Observation) -> RepositoryChange:
        """The change for `served`, logging each new problem of the policy once (ERROR)."""
        change = plan_change(self.policy, served, observation.offered, observation.on_disk)
        for message in set(change.problems) - self._problems:
            _LOGGER.error("model %s: %s", self.name, message)
        self._problems = set(change.problems)
        return change

    def step(self, served: Collection[int]) -> RepositoryChange:
        """One blocking look: scan, then plan against `served`."""
        return self.plan(served, self.observe())

    def record_refused(self, change: RepositoryChange, served: Collection[int]) -> list[int]:
        """Remember the versions of `change` that are not in `served` after the server applied it: they are
        not offered again until their files change. Returns them."""
        left_out = [v for v in change.added if v.version not in set(served)]
        for version in left_out:
            self._refused[version.version] = version.fingerprint
            _LOGGER.warning("model %s: version %d was not taken into service; it is offered again when its files "
                            "change", self.name, version.version)
        return [v.version for v in left_out]

    async def poll(self, interval_s: float, on_change: Callable[[RepositoryChange], Awaitable[None]],
                   served: Callable[[], Collection[int]]) -> None:
        """Look every `interval_s` seconds until `stop()` (or cancellation) and await `on_change` with each
        non-empty change; `served()` gives the versions in service. Nothing raises out of the loop: a failed
        scan or a failing `on_change` is an ERROR line and the next poll tries again."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._wake = asyncio.Event()
        _LOGGER.info("model %s: watching %s every %g s (version policy: %s)", self.name, self.model_dir,
                     interval_s, self.policy.describe())
        while not self._stopping:
            await self._poll_once(on_change, served)
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), interval_s)
            except TimeoutError:
                pass
        _LOGGER.debug("model %s: stopped watching %s", self.name, self.model_dir)

    def stop(self) -> None:
        """End `poll` after its current step (call it on the event loop); a stopped watcher stays stopped."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    async def _poll_once(self, on_change: Callable[[RepositoryChange], Awaitable[None]],
                         served: Callable[[], Collection[int]]) -> None:
        try:
            observation = await asyncio.to_thread(self.observe)
        except (RepositoryError, OSError) as exc:
            self._scan_failed(str(exc))
            return
        except Exception:  # a bug in the scan: the traceback is worth having, the loop goes on
            _LOGGER.exception("model %s: scanning %s failed", self.name, self.model_dir)
            return
        if self._scan_error is not None:
            _LOGGER.info("model %s: %s can be scanned again", self.name, self.model_dir)
            self._scan_error = None
        if self._stopping:
            return
        try:
            await self._apply(self.plan(served(), observation), on_change, served)
        except Exception:  # a bug in `served`, the plan or its record: the traceback is worth having, the loop goes on
            _LOGGER.exception("model %s: deciding or recording the versions to serve failed", self.name)

    async def _apply(self, change: RepositoryChange, on_change: Callable[[RepositoryChange], Awaitable[None]],
                     served: Callable[[], Collection[int]]) -> None:
        if change.empty:
            return
        _LOGGER.info("model %s: versions on disk changed: %s", self.name, change.describe())
        try:
            await on_change(change)
        except Exception as exc:
            _LOGGER.error("model %s: applying the change (%s) failed: %s: %s", self.name, change.describe(),
                          type(exc).__name__, exc)
        self.record_refused(change, served())

    def _scan_failed(self, message: str) -> None:
        """One ERROR line per distinct failure; the same failure again is DEBUG (a poll every few seconds
        would otherwise repeat it forever)."""
        level = logging.DEBUG if message == self._scan_error else logging.ERROR
        _LOGGER.log(level, "model %s: cannot scan the model folder (trying again next poll): %s", self.name,
                    message)
        self._scan_error = message
