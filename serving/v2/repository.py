"""The Open Inference Protocol's model repository extension, load and unload (Triton's
extension_model_repository), as one set of rules for the REST and gRPC doors: whether this server takes them
at all (`model_control: explicit`, as Triton's `--model-control-mode=explicit`), and which request parameters
it refuses. Loading reads only the configured `model_config` folders, so a request cannot carry a model
(`config`, `file:<path>`); there are no ensembles, so no model has dependents to unload with it. A parameter
this server would not honour is refused with the reason, never ignored."""

from __future__ import annotations

import json
from typing import Any

from resnest_serving.serving.errors import ErrorKind, ServingError, invalid

LOAD, UNLOAD = "load", "unload"
EXPLICIT = "explicit"
"""The `model_control` value that opens load and unload (the default, "none", refuses them)."""
TOLERATED = {UNLOAD: {"unload_dependents": False}}
"""Parameters accepted with exactly this value, because it asks for what this server does anyway
(tritonclient's unload_model always sends `unload_dependents`, false unless asked otherwise)."""


def check_request(action: str, name: str, parameters: dict[str, Any], model_control: str) -> None:
    """Refuse a load/unload request (ServingError) unless model control is explicit, `name` is given and
    every parameter is one this server honours."""
    if model_control != EXPLICIT:
        raise ServingError(ErrorKind.FORBIDDEN, f"model {action} is off on this server (model_control: "
                           f"{model_control}); set model_control: explicit in config.yml to allow "
                           "/v2/repository/models/{name}/load and /unload")
    if not name:
        raise invalid(f"model {action}: no model name; call /v2/repository/models/{{name}}/{action}")
    for key, value in parameters.items():
        if key in TOLERATED.get(action, {}) and value is TOLERATED[action][key]:
            continue
        raise invalid(_refusal(action, key, value))


def _refusal(action: str, key: str, value: Any) -> str:
    """Why parameter `key` of a load/unload request is refused, in words that say what to do instead."""
    if action == LOAD and key == "config":
        return ("load parameter 'config' is not supported: this server takes each model's settings from its op "
                "in config.yml, not from the request; load it without parameters")
    if action == LOAD and key.startswith("file:"):
        return (f"load parameter {key[:200]!r} is not supported: model files are not taken from the request; put "
                "a numbered version folder (e.g. 2/) in the model's model_config folder and load it without "
                "parameters")
    if action == UNLOAD and key == "unload_dependents":
        return (f"unload parameter unload_dependents: {json.dumps(value, default=str)} is not supported: this "
                "server has no ensembles, so a model has no dependents; send false or leave it out")
    allowed = " but unload_dependents: false" if action == UNLOAD else ""
    return f"unknown {action} parameter {key[:200]!r}; this server takes no parameters{allowed}"


def rest_parameters(action: str, data: Any) -> dict[str, Any]:
    """The `parameters` object of a REST load/unload body (already parsed; None for an empty body)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise invalid(f"the {action} request body must be a JSON object, got {type(data).__name__}")
    params = data.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid(f"{action} request: 'parameters' must be an object, got {type(params).__name__}")
    unknown = sorted(set(data) - {"parameters"})
    if unknown:
        raise invalid(f"{action} request: unknown key(s) {', '.join(repr(k[:100]) for k in unknown[:5])}; the body "
                      "may hold only 'parameters'")
    return params
