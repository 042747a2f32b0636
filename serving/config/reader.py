"""Reading one mapping of config.yml by the schema's Settings: strict types, ranges and choices, unknown keys
with a suggestion, defaults logged at DEBUG. Generic; the rules that tie keys together are serving.config.loader's."""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnest_serving.serving.config.schema import Setting, settings_of
from resnest_serving.serving.config.yaml_file import ConfigError, type_name

_LOGGER = logging.getLogger("resnest_serving.serving.config.loader")
MISSING = object()


class Section:
    """One mapping of the config being read, with its dotted path for messages; reads keys by their Setting."""

    def __init__(self, data: Any, path: str, schema: type):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"[CONF] {path}: expected a mapping (nested key: value lines), "
                              f"got {type_name(data)} {data!r}")
        self.data = data
        self.path = path
        self.schema = schema
        known = [f.name for f, _ in settings_of(schema)]
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"[CONF] {self.key(str(key))}: keys must be strings, got {type_name(key)} {key!r}")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError(f"[CONF] {self.key(key)}: unknown key {key!r}; {hint}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def sub(self, name: str, schema: type) -> Section:
        return Section(self.raw(name), self.key(name), schema)

    def fail(self, name: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"[CONF] {self.key(name)}: got {value!r}; {allowed}")

    def type_error(self, name: str, value: Any, expected: str) -> ConfigError:
        hint = ""
        if isinstance(value, bool) and "integer" in expected:
            hint = " (YAML true/false/yes/no/on/off are booleans, not integers)"
        elif isinstance(value, str) and "integer" in expected and value.strip().lstrip("+-").isdigit():
            hint = " (remove the quotes)"
        elif isinstance(value, str) and "boolean" in expected:
            hint = " (write true or false without quotes)"
        return ConfigError(f"[CONF] {self.key(name)}: expected {expected}, got {type_name(value)} {value!r}{hint}")

    def get(self, name: str, default: Any = MISSING) -> tuple[Any, bool]:
        """(value, given). None in the file counts as not given, as in Paddle Serving; defaults are logged."""
        value = self.data.get(name)
        if value is None:
            if default is not MISSING and default is not None and default != ():
                _LOGGER.debug("[CONF] %s not set, use default: %s", self.key(name), default)
            return (None if default is MISSING else default), False
        return value, True

    def read(self, name: str, spec: Setting, default: Any = MISSING, base_dir: Path | None = None) -> Any:
        """The key's value checked against its Setting, or the default when it is not given."""
        value, given = self.get(name, default)
        if not given:
            return value
        reader = READERS[spec.kind]
        return reader(self, name, value, spec, base_dir)


def read_int(section: Section, name: str, value: Any, spec: Setting, _base: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise section.type_error(name, value, "an integer")
    _check_range(section, name, value, spec)
    return value


def read_number(section: Section, name: str, value: Any, spec: Setting, _base: Path | None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise section.type_error(name, value, "a number")
    if not math.isfinite(value):  # NaN passes every comparison below; inf is no one's intended limit
        raise section.fail(name, value, "must be a finite number")
    _check_range(section, name, value, spec)
    return float(value)


def _check_range(section: Section, name: str, value: float, spec: Setting) -> None:
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            raise section.fail(name, value, f"allowed: {low} to {high}")
        raise section.fail(name, value, f"must be >= {low}" if low is not None else f"must be <= {high}")


def read_bool(section: Section, name: str, value: Any, _spec: Setting, _base: Path | None) -> bool:
    if not isinstance(value, bool):
        raise section.type_error(name, value, "a boolean (true or false)")
    return value


def read_str(section: Section, name: str, value: Any, spec: Setting, _base: Path | None) -> str:
    if not isinstance(value, str):
        raise section.type_error(name, value, "a string")
    if spec.normalize is not None:
        value = spec.normalize(value)
    if spec.non_empty and not value.strip():
        raise section.fail(name, value, "must not be empty")
    if spec.choices is not None and value not in spec.choices:
        raise section.fail(name, value, "allowed: " + ", ".join(repr(c) for c in spec.choices))
    return value


def read_port(section: Section, name: str, value: Any, _spec: Setting, _base: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise section.type_error(name, value, "an integer port")
    if value != 0 and not 1024 <= value <= 65535:
        raise section.fail(name, value, "allowed: 1024-65535, or 0 to let the OS pick a free port")
    return value


def read_path(section: Section, name: str, value: Any, spec: Setting, base_dir: Path | None) -> Path:
    text = read_str(section, name, value, Setting("str", "", non_empty=True), base_dir)
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return Path(os.path.normpath(path.absolute()))


def read_str_list(section: Section, name: str, value: Any, _spec: Setting, _base: Path | None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise section.type_error(name, value, "a list of strings, e.g. [\"a\", \"b\"]")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"[CONF] {section.key(name)}[{i}]: expected a non-empty string, got "
                              f"{type_name(item)} {item!r}")
    return tuple(value)


READERS: dict[str, Callable[[Section, str, Any, Setting, Path | None], Any]] = {
    "int": read_int, "number": read_number, "bool": read_bool, "str": read_str, "port": read_port,
    "path": read_path, "str_list": read_str_list,
}


def read_plain(section: Section, base_dir: Path) -> dict[str, Any]:
    """Every key of the section's schema that its Setting alone describes (not sections, not custom)."""
    return {f.name: section.read(f.name, spec, f.default, base_dir) for f, spec in settings_of(section.schema)
            if spec.kind in READERS}
