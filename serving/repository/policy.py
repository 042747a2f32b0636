"""The version policy of one model (Triton's three forms): which of the loadable versions on disk are served.

    version_policy: {latest: {num_versions: 2}}   # the 2 highest-numbered loadable versions (default: 1)
    version_policy: {specific: {versions: [1, 3]}}
    version_policy: {all: {}}

Parsed from the YAML value of the config key with the config's own reader, so errors read like every other
config error (the key's path, the bad value, what is allowed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resnest_serving.serving.config.reader import Section
from resnest_serving.serving.config.schema import Setting, section, setting, settings_of
from resnest_serving.serving.config.yaml_file import ConfigError, type_name

FORMS = ("latest", "specific", "all")
EXAMPLES = {"latest": "{latest: {num_versions: 1}}", "specific": "{specific: {versions: [1, 3]}}", "all": "{all: {}}"}


@dataclass(frozen=True)
class LatestKeys:
    """`version_policy.latest`."""

    num_versions: int = setting(1, "Serve the N highest-numbered loadable versions.", origin="ours", minimum=1)


@dataclass(frozen=True)
class SpecificKeys:
    """`version_policy.specific`."""

    versions: tuple[int, ...] = setting((), "Serve exactly these versions; one missing on disk is an error.",
                                        origin="ours", kind="custom", type_doc="non-empty list of int")


@dataclass(frozen=True)
class AllKeys:
    """`version_policy.all`: no keys."""


@dataclass(frozen=True)
class PolicyKeys:
    """`version_policy`: exactly one of its keys."""

    latest: LatestKeys = section(LatestKeys, "The highest-numbered versions (Triton's default form).")
    specific: SpecificKeys = section(SpecificKeys, "Named versions.")
    all: AllKeys = section(AllKeys, "Every loadable version.")


@dataclass(frozen=True)
class VersionPolicy:
    """One parsed policy: `form` is latest, specific or all."""

    form: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.form == "latest":
            return f"latest {self.num_versions}"
        if self.form == "specific":
            return "specific " + ", ".join(str(v) for v in self.versions)
        return "all"

    def as_yaml(self) -> dict[str, Any]:
        """The config.yml value that parses back to this policy."""
        if self.form == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.form == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}


DEFAULT_POLICY = VersionPolicy()


@dataclass(frozen=True)
class Selection:
    """The versions to serve (sorted) and the `specific` versions that are not among the available ones (not on
    disk, broken, or refused by the server)."""

    versions: tuple[int, ...]
    missing: tuple[int, ...] = ()

    def error(self, available: Iterable[int]) -> str | None:
        """The message for the missing versions, or None."""
        if not self.missing:
            return None
        names = ", ".join(str(v) for v in self.missing)
        servable = ", ".join(str(v) for v in sorted(available)) or "none"
        word = "version" if len(self.missing) == 1 else "versions"
        return (f"version_policy specific names {word} {names}, not among the servable versions on disk "
                f"(servable: {servable})")


def parse_policy(value: Any, path: str) -> VersionPolicy:
    """The policy of the YAML value at config key `path` (None: the default, latest 1); ConfigError naming
    the key, the value and what is allowed."""
    if value is None:
        return DEFAULT_POLICY
    if not isinstance(value, dict):
        form = value.strip() if isinstance(value, str) else ""
        example = EXAMPLES.get(form, EXAMPLES["latest"])
        raise ConfigError(f"[CONF] {path}: expected a mapping with one of {', '.join(FORMS)}, got "
                          f"{type_name(value)} {value!r}; write e.g. {example}")
    keys = Section(value, path, PolicyKeys)
    given = [form for form in FORMS if form in keys.data]
    if len(given) != 1:
        got = f"got {', '.join(given)}" if given else "got none"
        raise ConfigError(f"[CONF] {path}: give exactly one of {', '.join(FORMS)}; {got}")
    form = given[0]
    if form == "all":
        if keys.raw("all"):
            raise keys.fail("all", keys.raw("all"), "all takes no keys; write all: {}")
        return VersionPolicy("all")
    if form == "latest":
        latest = keys.sub("latest", LatestKeys)
        count = latest.read("num_versions", _setting(LatestKeys, "num_versions"), 1)
        return VersionPolicy("latest", num_versions=count)
    specific = keys.sub("specific", SpecificKeys)
    return VersionPolicy("specific", versions=_read_versions(specific))


def _setting(schema: type, name: str) -> Setting:
    return next(spec for f, spec in settings_of(schema) if f.name == name)


def _read_versions(keys: Section) -> tuple[int, ...]:
    value = keys.raw("versions")
    expected = "a non-empty list of version numbers, e.g. [1, 3]"
    if value is None:
        raise ConfigError(f"[CONF] {keys.key('versions')}: not set; give {expected}")
    if not isinstance(value, list) or not value:
        raise keys.type_error("versions", value, expected)
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ConfigError(f"[CONF] {keys.key('versions')}[{i}]: expected a version number (an integer >= 1), "
                              f"got {type_name(item)} {item!r}")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise keys.fail("versions", value, f"each version once; listed more than once: {twice}")
    return tuple(sorted(value))


def select(policy: VersionPolicy, available: Iterable[int]) -> Selection:
    """The versions to serve among the loadable `available` ones, sorted; `specific` versions that are not
    available are reported in `missing`, and the others are still served."""
    available_set = set(available)
    loadable = sorted(available_set)
    if policy.form == "all":
        return Selection(tuple(loadable))
    if policy.form == "latest":
        return Selection(tuple(loadable[-policy.num_versions:]))
    wanted = sorted(set(policy.versions))
    return Selection(tuple(v for v in wanted if v in available_set), tuple(v for v in wanted if v not in available_set))
