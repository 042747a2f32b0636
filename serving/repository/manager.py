"""The configured models' served versions and the one place that starts, switches, drains and stops them: the
poll loop (`model_repository_poll_s`) and the V2 repository API (load/unload/index) both call it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

_LOGGER = logging.getLogger("resnest_serving.serving.repository")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the V2 repository index (Triton's RepositoryIndexResponse.ModelIndex)."""

    name: str
    version: str  # "" for a model with nothing loaded
    state: str  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str  # "" when READY; why otherwise


class ModelRepository:
    """The configured models' versions: what is served, loading, refused; the one place that starts, switches,
    drains and stops versions (the poll loop and the V2 repository API both call it)."""

    def index(self) -> list[IndexEntry]:
        """One entry per configured model and served/loading version."""
        raise NotImplementedError

    async def load(self, name: str) -> None:
        """Scan `name`'s folder now and apply its version policy; load an unloaded model again."""
        raise NotImplementedError

    async def unload(self, name: str) -> None:
        """Stop serving `name`: new requests refused, requests in flight finish, then its workers stop."""
        raise NotImplementedError
