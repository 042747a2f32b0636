"""Reading config.yml as data: a strict YAML loader (no duplicate keys, no Python objects, errors with line
and column) and `--set KEY=VALUE` overrides. Validation is `serving.config.loader`'s job."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config.yml problem; the message names the key path, the value and what is allowed."""


def type_name(value: Any) -> str:
    """"an integer", "a list", ... for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse the file; YAML errors become ConfigError with the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"[CONF] cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}: {problem}" if context else problem
        raise ConfigError(f"[CONF] {path}: invalid YAML{where}: {detail}") from exc
    if data is None:
        raise ConfigError(f"[CONF] {path}: the file is empty; expected a mapping with rpc_port/http_port, "
                          "dag and op")
    if not isinstance(data, dict):
        raise ConfigError(f"[CONF] {path}: the top level must be a mapping (key: value lines), "
                          f"got {type_name(data)}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`"op.imagenet.concurrency=2"` -> `("op.imagenet.concurrency", 2)`; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"[CONF] override {text!r}: expected KEY=VALUE, e.g. op.imagenet.concurrency=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"[CONF] override {text!r}: the value is not valid YAML: {exc}") from exc
    return key.strip(), value


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `data`.

    Dotted keys address nested keys (`"op.imagenet.concurrency": 2`); nested dicts merge key by key;
    a None value removes the key (back to its default). The input is not modified.
    """
    result = _deep_copy(data)
    for key, value in (overrides or {}).items():
        parts = key.split(".") if isinstance(key, str) else [key]
        target = result
        for i, part in enumerate(parts[:-1]):
            node = target.get(part)
            if node is None:
                node = target[part] = {}
            elif not isinstance(node, dict):
                raise ConfigError(f"[CONF] override {key!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            target = node
        _merge_into(target, parts[-1], value)
    return result


def _merge_into(target: dict[str, Any], key: Any, value: Any) -> None:
    if value is None:
        target.pop(key, None)
    elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
        for sub_key, sub_value in value.items():
            _merge_into(target[key], sub_key, sub_value)
    else:
        target[key] = _deep_copy(value)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
