"""Load and validate Paddle Serving 0.9's pipeline `config.yml` (plus this server's extra keys).

The schema and defaults are Paddle Serving's (`ServerYamlConfChecker`, `Op.init_from_dict`); see
`docs/configuration.md`. Differences are deliberate and documented there: unknown keys, YAML booleans
used as integers and anything this server cannot honour are errors (`ConfigError`) that name the key
path, the value and what is allowed, so a bad config stops start-up before any port is bound.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.engines.choose import ENGINE_CHOICES

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "DagConfig",
    "LocalServiceConf",
    "OpConfig",
    "ServerConfig",
    "TracerConfig",
    "apply_overrides",
    "check_paths",
    "load_config",
    "parse_config",
    "parse_override",
]

MIB = 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 64 * MIB
DEFAULT_RPC_TIMEOUT_MS = 20000

CLIENT_TYPES = ("local_predictor", "brpc", "grpc")
SUPPORTED_DEVICE_TYPES = {-1: "auto: CPU if devices is empty, else GPU", 0: "CPU", 1: "GPU", 2: "GPU + TensorRT"}
UNSUPPORTED_DEVICE_TYPES = {3: "ARM CPU (Paddle-Lite)", 4: "Kunlun XPU", 5: "Ascend 310", 6: "Ascend 910"}
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # op / service names appear in REST URLs: /{name}/{method}

# Known keys per section. Paddle Serving's own keys first, then ours.
_TOP_KEYS = (
    "rpc_port", "http_port", "worker_num", "build_dag_each_worker", "grpc_gateway_port", "dag", "op",
    "host", "brpc_port", "service_name", "max_request_bytes", "shutdown_grace_s", "log_level",
)
_DAG_KEYS = (
    "is_thread_op", "retry", "client_type", "use_profile", "channel_size", "tracer",
    "channel_recv_frist_arrive", "enable_prometheus", "prometheus_port",
)
_TRACER_KEYS = ("interval_s",)
_OP_KEYS = (
    "concurrency", "timeout", "retry", "batch_size", "auto_batching_timeout", "server_endpoints",
    "fetch_list", "client_config", "client_type", "use_encryption_model", "encryption_key",
    "local_service_conf",
    "topk", "label_file", "engine", "max_images_per_request", "max_image_pixels", "max_queue_images",
)
_LSC_KEYS = (
    "model_config", "client_type", "workdir", "thread_num", "device_type", "devices", "mem_optim",
    "ir_optim", "precision", "use_calib", "use_mkldnn", "mkldnn_cache_capacity", "mkldnn_op_list",
    "mkldnn_bf16_op_list", "min_subgraph_size", "fetch_list",
    "server_endpoints", "rpc_timeout_ms",
)


class ConfigError(ValueError):
    """A config.yml problem; the message names the key path, the value and what is allowed."""


# --------------------------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True)
class TracerConfig:
    """`dag.tracer`: Paddle Serving's PerformanceTracer period; `interval_s >= 1` enables it."""

    interval_s: int = -1


@dataclass(frozen=True)
class DagConfig:
    """`dag:` section. Mostly Paddle Serving DAG tuning knobs that this server accepts for compatibility."""

    is_thread_op: bool = True
    retry: int = 1
    client_type: str = "brpc"
    use_profile: bool = False
    channel_size: int = 0
    tracer: TracerConfig = field(default_factory=TracerConfig)
    channel_recv_frist_arrive: bool = False  # [sic], Paddle Serving's spelling
    enable_prometheus: bool = False
    prometheus_port: int | None = None


@dataclass(frozen=True)
class LocalServiceConf:
    """`op.<name>.local_service_conf`: the model and how to run it.

    `client_type` is the effective one (op level or here); `server_endpoints` given here is moved to
    `OpConfig.server_endpoints`, Paddle Serving's own place for it.
    """

    model_config: Path
    client_type: str = "local_predictor"
    workdir: str = ""
    thread_num: int = 2
    device_type: int = -1
    devices: tuple[int, ...] = ()
    mem_optim: bool = True
    ir_optim: bool = True  # Paddle Serving: False; ours: True (deliberate, see docs/configuration.md)
    precision: str = "fp32"
    use_calib: bool = False
    use_mkldnn: bool = True  # Paddle Serving: False; ours: True (deliberate, see docs/configuration.md)
    mkldnn_cache_capacity: int = 0
    mkldnn_op_list: tuple[str, ...] | None = None
    mkldnn_bf16_op_list: tuple[str, ...] | None = None
    min_subgraph_size: int = 3
    fetch_list: tuple[str, ...] | None = None
    rpc_timeout_ms: int = DEFAULT_RPC_TIMEOUT_MS

    @property
    def device(self) -> str:
        """"cpu", "gpu" or "tensorrt", resolving device_type -1 from `devices` as Paddle Serving does."""
        if self.device_type == 2:
            return "tensorrt"
        if self.device_type == 1 or (self.device_type == -1 and self.devices):
            return "gpu"
        return "cpu"

    @property
    def use_gpu(self) -> bool:
        return self.device in ("gpu", "tensorrt")


@dataclass(frozen=True)
class OpConfig:
    """`op.<name>`: the one model op (PaddleClas: `imagenet`) with batching, limits and post-processing."""

    name: str
    local_service_conf: LocalServiceConf
    concurrency: int = 1
    timeout: int = -1  # ms; <= 0 means no timeout
    retry: int = 1
    batch_size: int = 1
    auto_batching_timeout: int = -1  # ms
    server_endpoints: tuple[str, ...] = ()
    fetch_list: tuple[str, ...] | None = None
    client_config: Path | None = None
    use_encryption_model: bool = False
    encryption_key: str | None = None
    # our additions
    topk: int = 1
    label_file: Path | None = None
    engine: str = "auto"
    max_images_per_request: int = 32
    max_image_pixels: int = 40_000_000
    max_queue_images: int = 1024

    @property
    def client_type(self) -> str:
        return self.local_service_conf.client_type

    @property
    def is_remote(self) -> bool:
        """True when the model runs on another process/host (client_type brpc + server_endpoints)."""
        return self.local_service_conf.client_type == "brpc"

    @property
    def timeout_s(self) -> float | None:
        """Per-call timeout in seconds, None when disabled (timeout <= 0), as Paddle Serving reads it."""
        return self.timeout / 1000.0 if self.timeout > 0 else None

    @property
    def auto_batching_timeout_s(self) -> float | None:
        """Batch wait in seconds; None when <= 0 or batch_size == 1 (Paddle Serving's rule)."""
        if self.auto_batching_timeout <= 0 or self.batch_size == 1:
            return None
        return self.auto_batching_timeout / 1000.0

    @property
    def effective_fetch_list(self) -> tuple[str, ...] | None:
        """local_service_conf.fetch_list overrides the op-level one (Paddle Serving's rule)."""
        lsc = self.local_service_conf.fetch_list
        return lsc if lsc is not None else self.fetch_list


@dataclass(frozen=True)
class ServerConfig:
    """The whole config.yml, validated. Ports are None when that front door is off (0 = OS picks)."""

    op: OpConfig
    rpc_port: int | None = None
    http_port: int | None = None
    worker_num: int = 1
    build_dag_each_worker: bool = False
    grpc_gateway_port: int | None = None
    dag: DagConfig = field(default_factory=DagConfig)
    # our additions
    host: str = "127.0.0.1"
    brpc_port: int | None = None
    service_name: str = ""  # "" = the op's name
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    config_file: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.service_name:
            object.__setattr__(self, "service_name", self.op.name)

    @property
    def ports(self) -> dict[str, int]:
        """The front doors that are on: key name -> port (0 = ephemeral)."""
        named = {"rpc_port": self.rpc_port, "http_port": self.http_port, "brpc_port": self.brpc_port}
        if self.dag.enable_prometheus:
            named["dag.prometheus_port"] = self.dag.prometheus_port
        return {k: v for k, v in named.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain config.yml-shaped dict (paths as strings) for logging; `parse_config` accepts it back."""
        top = _plain(self, skip=("op", "dag", "config_file"))
        top["dag"] = _plain(self.dag)
        op = _plain(self.op, skip=("name", "local_service_conf"))
        lsc = _plain(self.op.local_service_conf)
        lsc["devices"] = ",".join(str(d) for d in self.op.local_service_conf.devices)
        op["local_service_conf"] = lsc
        top["op"] = {self.op.name: op}
        return top


def _plain(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    """One dataclass level as a dict of YAML-friendly values."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, TracerConfig):
            value = _plain(value)
        out[f.name] = value
    return out


# --------------------------------------------------------------------------------------------------
# YAML reading and overrides


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


def _read_yaml(path: Path) -> dict[str, Any]:
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
                          f"got {_type_name(data)}")
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


# --------------------------------------------------------------------------------------------------
# Typed getters


_MISSING = object()


def _type_name(value: Any) -> str:
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


class _Section:
    """One mapping of the config being read, with its dotted path for messages."""

    def __init__(self, data: Any, path: str, known: Iterable[str]):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"[CONF] {path}: expected a mapping (nested key: value lines), "
                              f"got {_type_name(data)} {data!r}")
        self.data = data
        self.path = path
        known = tuple(known)
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"[CONF] {self.key(str(key))}: keys must be strings, got {_type_name(key)} "
                                  f"{key!r}")
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

    def _fetch(self, name: str, default: Any) -> tuple[Any, bool]:
        """(value, given). None in the file counts as not given, as in Paddle Serving."""
        value = self.data.get(name)
        if value is None:
            if default is _MISSING or default is None:  # optional keys: nothing to report
                return None, False
            _LOGGER.debug("[CONF] %s not set, use default: %s", self.key(name), default)
            return default, False
        return value, True

    def fail(self, name: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"[CONF] {self.key(name)}: got {value!r}; {allowed}")

    def type_error(self, name: str, value: Any, expected: str) -> ConfigError:
        got = _type_name(value)
        hint = ""
        if isinstance(value, bool) and "integer" in expected:
            hint = " (YAML true/false/yes/no/on/off are booleans, not integers)"
        elif isinstance(value, str) and "integer" in expected and value.strip().lstrip("+-").isdigit():
            hint = " (remove the quotes)"
        elif isinstance(value, str) and "boolean" in expected:
            hint = " (write true or false without quotes)"
        return ConfigError(f"[CONF] {self.key(name)}: expected {expected}, got {got} {value!r}{hint}")

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        value, given = self._fetch(name, default)
        if not given:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.type_error(name, value, "an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if minimum is not None and maximum is not None:
                allowed = f"allowed: {minimum} to {maximum}"
            else:
                allowed = f"must be >= {minimum}" if minimum is not None else f"must be <= {maximum}"
            raise self.fail(name, value, allowed)
        return value

    def number(self, name: str, default: Any = _MISSING, *, minimum: float | None = None) -> Any:
        value, given = self._fetch(name, default)
        if not given:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.type_error(name, value, "a number")
        if minimum is not None and value < minimum:
            raise self.fail(name, value, f"must be >= {minimum}")
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value, given = self._fetch(name, default)
        if given and not isinstance(value, bool):
            raise self.type_error(name, value, "a boolean (true or false)")
        return value

    def string(self, name: str, default: Any = _MISSING, *, choices: Iterable[str] | None = None,
               normalize: Callable[[str], str] | None = None, non_empty: bool = False) -> Any:
        value, given = self._fetch(name, default)
        if not given:
            return value
        if not isinstance(value, str):
            raise self.type_error(name, value, "a string")
        if normalize is not None:
            value = normalize(value)
        if non_empty and not value.strip():
            raise self.fail(name, value, "must not be empty")
        if choices is not None and value not in choices:
            raise self.fail(name, value, "allowed: " + ", ".join(repr(c) for c in choices))
        return value

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        value, given = self._fetch(name, default)
        if not given:
            return value
        if not isinstance(value, list):
            raise self.type_error(name, value, "a list of strings, e.g. [\"a\", \"b\"]")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(f"[CONF] {self.key(name)}[{i}]: expected a non-empty string, "
                                  f"got {_type_name(item)} {item!r}")
        return tuple(value)

    def port(self, name: str) -> int | None:
        value, given = self._fetch(name, _MISSING)
        if not given:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.type_error(name, value, "an integer port")
        if value != 0 and not 1024 <= value <= 65535:
            raise self.fail(name, value, "allowed: 1024-65535, or 0 to let the OS pick a free port")
        return value

    def file_path(self, name: str, base_dir: Path) -> Path | None:
        value = self.string(name, None, non_empty=True)
        if value is None:
            return None
        return _resolve(value, base_dir)


def _resolve(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path.absolute()))


def _cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, so containers/taskset are respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------------
# Parsing


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Read, override and validate a config.yml; relative paths resolve against the file's folder."""
    path = Path(path).expanduser()
    data = _read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return replace(parse_config(data, path.resolve().parent), config_file=path.resolve())


def parse_config(data: Mapping[str, Any], base_dir: Path) -> ServerConfig:
    """Validate an already-loaded config dict; relative paths in it resolve against `base_dir`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"[CONF] the top level must be a mapping, got {_type_name(data)}")
    base_dir = Path(base_dir).expanduser().absolute()
    top = _Section(dict(data), "", _TOP_KEYS)

    rpc_port = top.port("rpc_port")
    http_port = top.port("http_port")
    brpc_port = top.port("brpc_port")
    grpc_gateway_port = top.integer("grpc_gateway_port", None)
    worker_num = top.integer("worker_num", 1, minimum=1)
    build_dag_each_worker = top.boolean("build_dag_each_worker", False)
    host = top.string("host", "127.0.0.1", normalize=str.strip, non_empty=True)
    max_request_bytes = top.integer("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES, minimum=1024,
                                    maximum=2**31 - 1)
    shutdown_grace_s = top.number("shutdown_grace_s", 10.0, minimum=0)
    log_level = top.string("log_level", "INFO", normalize=str.upper, choices=LOG_LEVELS)

    if rpc_port is None and http_port is None and brpc_port is None:
        raise ConfigError("[CONF] Failed to prepare_server: rpc_port or http_port can not be None. "
                          "Set rpc_port (gRPC), http_port (REST) and/or brpc_port (bRPC).")

    dag = _parse_dag(top)
    op = _parse_op(top, base_dir, worker_num)

    service_name = top.string("service_name", op.name, non_empty=True)
    if not _NAME_RE.match(service_name):
        raise top.fail("service_name", service_name, "allowed characters: letters, digits, '_', '-', '.'")

    ports = {"rpc_port": rpc_port, "http_port": http_port, "brpc_port": brpc_port}
    if dag.enable_prometheus:
        ports["dag.prometheus_port"] = dag.prometheus_port
    _check_ports(ports, worker_num)

    return ServerConfig(
        op=op, rpc_port=rpc_port, http_port=http_port, worker_num=worker_num,
        build_dag_each_worker=build_dag_each_worker, grpc_gateway_port=grpc_gateway_port, dag=dag,
        host=host, brpc_port=brpc_port, service_name=service_name, max_request_bytes=max_request_bytes,
        shutdown_grace_s=shutdown_grace_s, log_level=log_level,
    )


def _check_ports(ports: dict[str, int | None], worker_num: int) -> None:
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port is None:
            continue
        if port == 0:
            if worker_num > 1:
                raise ConfigError(f"[CONF] {name}: got 0 with worker_num {worker_num}; the worker processes "
                                  "share their ports, so give a fixed port (1024-65535) or use worker_num: 1")
            continue
        if port in seen:
            raise ConfigError(f"[CONF] {name}: got {port}, which {seen[port]} already uses; each front door "
                              "needs its own port")
        seen[port] = name


def _parse_dag(top: _Section) -> DagConfig:
    dag = _Section(top.raw("dag"), "dag", _DAG_KEYS)
    tracer = _Section(dag.raw("tracer"), "dag.tracer", _TRACER_KEYS)
    enable_prometheus = dag.boolean("enable_prometheus", False)
    prometheus_port = dag.port("prometheus_port")
    if enable_prometheus and prometheus_port is None:
        raise ConfigError("[CONF] dag.prometheus_port: not set, but dag.enable_prometheus is true; give a port "
                          "(Prometheus metrics are also always served at GET /metrics on http_port)")
    return DagConfig(
        is_thread_op=dag.boolean("is_thread_op", True),
        retry=dag.integer("retry", 1, minimum=1),
        client_type=dag.string("client_type", "brpc", choices=("brpc", "grpc")),
        use_profile=dag.boolean("use_profile", False),
        channel_size=dag.integer("channel_size", 0, minimum=0),
        tracer=TracerConfig(interval_s=tracer.integer("interval_s", -1)),
        channel_recv_frist_arrive=dag.boolean("channel_recv_frist_arrive", False),
        enable_prometheus=enable_prometheus,
        prometheus_port=prometheus_port,
    )


def _parse_op(top: _Section, base_dir: Path, worker_num: int) -> OpConfig:
    ops = top.raw("op")
    if ops is None or ops == {}:
        raise ConfigError("[CONF] op: not set; this server needs exactly one op, e.g. "
                          "op: {imagenet: {local_service_conf: {model_config: ...}}}")
    if not isinstance(ops, dict):
        raise top.type_error("op", ops, "a mapping of op name -> op settings")
    if len(ops) != 1:
        raise ConfigError(f"[CONF] op: got {len(ops)} ops ({', '.join(map(repr, ops))}); this server runs "
                          "exactly one model op (PaddleClas: imagenet)")
    name = next(iter(ops))
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"[CONF] op: op name {name!r} is not allowed; use letters, digits, '_', '-', '.' "
                          "(it is also the service name in REST URLs)")
    op = _Section(ops[name], f"op.{name}", _OP_KEYS)
    lsc = _Section(op.raw("local_service_conf"), f"op.{name}.local_service_conf", _LSC_KEYS)

    concurrency = op.integer("concurrency", 1, minimum=1)
    batch_size = op.integer("batch_size", 1, minimum=1)
    use_encryption_model = op.boolean("use_encryption_model", False)
    if use_encryption_model:
        raise op.fail("use_encryption_model", True, "encrypted models are not supported by this server; "
                      "use false (or leave it out)")
    encryption_key = op.string("encryption_key", None)

    endpoints: tuple[str, ...] = _merged(op, lsc, "server_endpoints", _endpoints) or ()
    client_type = _merged(op, lsc, "client_type", _client_type)
    if client_type is None:
        client_type = "brpc" if endpoints else "local_predictor"
        _LOGGER.debug("[CONF] %s not set, use default: %s", lsc.key("client_type"), client_type)
    if client_type == "local_predictor" and endpoints:
        raise lsc.fail("client_type", client_type, "server_endpoints is set, which means a remote model server: "
                       "use client_type: brpc, or remove server_endpoints to run the model in-process")
    if client_type == "brpc" and not endpoints:
        raise ConfigError(f"[CONF] {op.key('server_endpoints')}: not set, but client_type is 'brpc'; give the "
                          "model server(s) as [\"host:port\", ...] (this server does not start a local C++ "
                          "Serving as Paddle Serving does), or use client_type: local_predictor")

    if not lsc.has("model_config"):
        raise ConfigError(f"[CONF] {lsc.key('model_config')}: not set; give the serving_server folder written "
                          "by `resnest export` (or Paddle Serving's convert), relative to the config file")
    model_config = lsc.file_path("model_config", base_dir)

    device_type = _device_type(lsc)
    devices = _devices(lsc)
    if client_type == "local_predictor":
        if device_type in (1, 2) and not devices:
            raise lsc.fail("devices", lsc.raw("devices") or "", f"device_type {device_type} "
                           f"({SUPPORTED_DEVICE_TYPES[device_type]}) needs GPU ids, e.g. devices: \"0\"")
        if device_type == 0 and devices:
            _LOGGER.warning("[CONF] %s is ignored because device_type is 0 (CPU)", lsc.key("devices"))

    if lsc.has("thread_num"):
        thread_num = lsc.integer("thread_num", minimum=1)
    else:
        thread_num = max(1, _cpu_count() // (concurrency * worker_num))
        _LOGGER.debug("[CONF] %s not set, use default: %s (cores %d // (concurrency %d * worker_num %d))",
                      lsc.key("thread_num"), thread_num, _cpu_count(), concurrency, worker_num)

    precision = lsc.string("precision", "fp32", normalize=str.lower, choices=PRECISIONS)
    use_mkldnn = lsc.boolean("use_mkldnn", True)

    local = LocalServiceConf(
        model_config=model_config,
        client_type=client_type,
        workdir=lsc.string("workdir", ""),
        thread_num=thread_num,
        device_type=device_type,
        devices=devices,
        mem_optim=lsc.boolean("mem_optim", True),
        ir_optim=lsc.boolean("ir_optim", True),
        precision=precision,
        use_calib=lsc.boolean("use_calib", False),
        use_mkldnn=use_mkldnn,
        mkldnn_cache_capacity=lsc.integer("mkldnn_cache_capacity", 0, minimum=0),
        mkldnn_op_list=lsc.str_list("mkldnn_op_list", None),
        mkldnn_bf16_op_list=lsc.str_list("mkldnn_bf16_op_list", None),
        min_subgraph_size=lsc.integer("min_subgraph_size", 3, minimum=0),
        fetch_list=_fetch_list(lsc),
        rpc_timeout_ms=lsc.integer("rpc_timeout_ms", DEFAULT_RPC_TIMEOUT_MS, minimum=1),
    )

    max_images_per_request = op.integer("max_images_per_request", 32, minimum=1)
    max_queue_images = op.integer("max_queue_images", 1024, minimum=1)
    if max_queue_images < max_images_per_request:
        raise op.fail("max_queue_images", max_queue_images, f"must be >= max_images_per_request "
                      f"({max_images_per_request}), or no full-size request could ever be queued")

    return OpConfig(
        name=name,
        local_service_conf=local,
        concurrency=concurrency,
        timeout=op.integer("timeout", -1),
        retry=op.integer("retry", 1, minimum=1),
        batch_size=batch_size,
        auto_batching_timeout=op.integer("auto_batching_timeout", -1),
        server_endpoints=endpoints,
        fetch_list=_fetch_list(op),
        client_config=op.file_path("client_config", base_dir),
        use_encryption_model=use_encryption_model,
        encryption_key=encryption_key,
        topk=op.integer("topk", 1, minimum=1),
        label_file=op.file_path("label_file", base_dir),
        engine=op.string("engine", "auto", normalize=str.lower, choices=ENGINE_CHOICES),
        max_images_per_request=max_images_per_request,
        max_image_pixels=op.integer("max_image_pixels", 40_000_000, minimum=1),
        max_queue_images=max_queue_images,
    )


def _merged(op: _Section, lsc: _Section, name: str, read: Callable[[_Section, str], Any]) -> Any:
    """A key accepted at op level (Paddle Serving's place) or in local_service_conf; both must agree."""
    at_op = read(op, name) if op.has(name) else None
    at_lsc = read(lsc, name) if lsc.has(name) else None
    if at_op and at_lsc and at_op != at_lsc:
        raise ConfigError(f"[CONF] {lsc.key(name)}: got {lsc.raw(name)!r}, but {op.key(name)} is "
                          f"{op.raw(name)!r}; give it in one place only")
    return at_op or at_lsc


def _endpoints(section: _Section, name: str) -> tuple[str, ...]:
    value = section.raw(name)
    if isinstance(value, str):  # tolerate a single "host:port" or a comma-separated string
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise section.type_error(name, value, "a list of \"host:port\" strings")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"[CONF] {section.key(name)}[{i}]: expected a \"host:port\" string, got "
                              f"{_type_name(item)} {item!r}")
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"[CONF] {section.key(name)}[{i}]: got {item!r}; expected \"host:port\" with "
                              "port 1-65535, e.g. \"127.0.0.1:9292\"")
        out.append(item.strip())
    return tuple(out)


def _client_type(section: _Section, name: str) -> str:
    value = section.string(name, normalize=str.strip)
    if value in ("grpc", "pipeline_grpc"):
        raise section.fail(name, value, "gRPC model clients are not supported by this server; use 'brpc' "
                           "(a remote model server, with server_endpoints) or 'local_predictor' (in-process)")
    if value not in CLIENT_TYPES:
        raise section.fail(name, value, "allowed: 'local_predictor' (in-process), 'brpc' (remote model "
                           "server via server_endpoints); 'grpc' is Paddle Serving's but not supported here")
    return value


def _device_type(lsc: _Section) -> int:
    value = lsc.integer("device_type", -1)
    if value in UNSUPPORTED_DEVICE_TYPES:
        raise lsc.fail("device_type", value, f"{UNSUPPORTED_DEVICE_TYPES[value]} is not supported by this "
                       "server; supported: " + _device_choices())
    if value not in SUPPORTED_DEVICE_TYPES:
        raise lsc.fail("device_type", value, "allowed: " + _device_choices())
    return value


def _device_choices() -> str:
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED_DEVICE_TYPES.items())


def _devices(lsc: _Section) -> tuple[int, ...]:
    value = lsc.raw("devices")
    if value is None:
        _LOGGER.debug("[CONF] %s not set, use default: ''", lsc.key("devices"))
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `devices: 0` (unquoted) is an int in YAML; Paddle Serving wants "0"
    if not isinstance(value, str):
        raise lsc.type_error("devices", value, "a string of GPU ids, e.g. \"0\" or \"0,1\" (\"\" = CPU)")
    if not value.strip():
        return ()
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise lsc.fail("devices", value, "allowed: \"\" (CPU) or comma-separated GPU ids, e.g. \"0\" or "
                           "\"0,1\"")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise lsc.fail("devices", value, "each GPU id may appear once")
    return tuple(ids)


def _fetch_list(section: _Section) -> tuple[str, ...] | None:
    value = section.str_list("fetch_list", None)
    if value is not None and not value:
        raise section.fail("fetch_list", [], "list at least one fetch alias (e.g. [\"prediction\"]) or leave "
                           "it out to fetch every output")
    return value


# --------------------------------------------------------------------------------------------------
# Filesystem checks


SERVER_CONF_FILES = ("serving_server_conf.prototxt", "serving_server_conf.stream.prototxt")


def check_paths(config: ServerConfig) -> None:
    """Check that the files the config names exist (kept apart so parsing can be tested without a model)."""
    op = config.op
    lsc_path = f"op.{op.name}.local_service_conf"
    model_dir = op.local_service_conf.model_config
    if not model_dir.exists():
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} does not exist (relative paths "
                          "resolve against the config file's folder)")
    if not model_dir.is_dir():
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} is not a folder; give the "
                          "serving_server folder")
    if not any((model_dir / name).is_file() for name in SERVER_CONF_FILES):
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} has no "
                          f"{SERVER_CONF_FILES[0]}; is it a Paddle Serving serving_server folder?")
    if op.label_file is not None and not op.label_file.is_file():
        raise ConfigError(f"[CONF] op.{op.name}.label_file: {str(op.label_file)!r} is not a file")
    if op.client_config is not None and not op.client_config.exists():
        raise ConfigError(f"[CONF] op.{op.name}.client_config: {str(op.client_config)!r} does not exist")
