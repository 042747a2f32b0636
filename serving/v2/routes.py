"""The Open Inference Protocol's REST routes, declared once: which `/v2` paths exist, the method each takes
(GET routes answer HEAD too), which carry a request body and which are open (no token). The REST door
dispatches by `match`; the HTTP guard asks `takes_body` whether to read a body and `is_open` whether a
token is needed. `/v2/health/*` are answered with the other health checks (serving.doors.security)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from resnest_serving.protocol.v2 import is_v2_path


class Endpoint(Enum):
    """A V2 REST endpoint and the method it takes."""

    SERVER_METADATA = ("server_metadata", "GET")  # GET /v2
    REPOSITORY_INDEX = ("repository_index", "POST")  # POST /v2/repository/index
    REPOSITORY_LOAD = ("repository_load", "POST")  # POST /v2/repository/models/{name}/load
    REPOSITORY_UNLOAD = ("repository_unload", "POST")  # POST /v2/repository/models/{name}/unload
    MODEL_METADATA = ("model_metadata", "GET")  # GET /v2/models/{name}[/versions/{version}]
    MODEL_READY = ("model_ready", "GET")  # GET .../ready (open: no token)
    MODEL_CONFIG = ("model_config", "GET")  # GET .../config
    INFER = ("infer", "POST")  # POST .../infer

    def __init__(self, key: str, method: str) -> None:
        self.key, self.method = key, method


MODEL_ACTIONS = {"": Endpoint.MODEL_METADATA, "ready": Endpoint.MODEL_READY, "config": Endpoint.MODEL_CONFIG,
                 "infer": Endpoint.INFER}
"""The last path segment after /v2/models/{name}[/versions/{version}]."""
REPOSITORY_ACTIONS = {"load": Endpoint.REPOSITORY_LOAD, "unload": Endpoint.REPOSITORY_UNLOAD}
"""The last path segment after /v2/repository/models/{name} (the model repository extension)."""


@dataclass(frozen=True)
class Route:
    """A matched V2 path: the endpoint and the model name and version it names ("" when none)."""

    endpoint: Endpoint
    name: str = ""
    version: str = ""

    def allows(self, method: str) -> bool:
        return method == self.endpoint.method or (self.endpoint.method == "GET" and method == "HEAD")


def match(path: str) -> Route | None:
    """The route of a V2 path (slashes around it ignored), or None for no such endpoint."""
    if not is_v2_path(path):
        return None
    parts = path.strip("/").split("/")[1:]
    if not parts:
        return Route(Endpoint.SERVER_METADATA)
    if parts == ["repository", "index"]:
        return Route(Endpoint.REPOSITORY_INDEX)
    if len(parts) == 4 and parts[:2] == ["repository", "models"] and parts[3] in REPOSITORY_ACTIONS:
        return Route(REPOSITORY_ACTIONS[parts[3]], parts[2])
    if len(parts) < 2 or parts[0] != "models":
        return None
    name, rest, version = parts[1], parts[2:], ""
    if rest[:1] == ["versions"]:
        if len(rest) < 2:
            return None
        version, rest = rest[1], rest[2:]
    endpoint = MODEL_ACTIONS.get(rest[0] if rest else "") if len(rest) <= 1 else None
    return Route(endpoint, name, version) if endpoint is not None else None


def takes_body(method: str, path: str) -> bool:
    """Whether a request is read before its handler runs: a POST to a route that takes POST."""
    route = match(path)
    return method == "POST" and route is not None and route.endpoint.method == "POST"


def is_open(path: str) -> bool:
    """Model readiness (`/v2/models/{name}[/versions/{v}]/ready`): answered without a token, as on gRPC."""
    route = match(path)
    return route is not None and route.endpoint is Endpoint.MODEL_READY

