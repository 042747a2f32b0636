"""Load and validate Paddle Serving 0.9's pipeline `config.yml` (plus this server's keys) into the frozen
dataclasses of `serving.config.schema`, where every key, its default and allowed values are declared once.

Differences from Paddle Serving are deliberate and documented in docs/configuration.md: unknown keys, YAML
booleans used as integers and anything this server cannot honour are errors (`ConfigError`) that name the
key path, the value and what is allowed, so a bad config stops start-up before any port is bound.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from resnest_serving.protocol.endpoints import split_host_port
from resnest_serving.serving.config.reader import (
    Section,
    read_bool,
    read_int,
    read_path,
    read_plain,
    read_str,
    read_str_list,
)
from resnest_serving.serving.config.schema import (
    CLIENT_TYPES,
    AuthConfig,
    DagConfig,
    LocalServiceConf,
    OpConfig,
    ServerConfig,
    Setting,
    TlsConfig,
    TracerConfig,
)
from resnest_serving.serving.config.yaml_file import (
    ConfigError,
    apply_overrides,
    parse_override,
    read_yaml,
    type_name,
)
from resnest_serving.serving.repository.policy import parse_policy

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "DagConfig",
    "LocalServiceConf",
    "OpConfig",
    "ServerConfig",
    "TracerConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
    "parse_override",
    "to_dict",
]

SUPPORTED_DEVICE_TYPES = {-1: "auto: CPU if devices is empty, else GPU", 0: "CPU", 1: "GPU", 2: "GPU + TensorRT"}
UNSUPPORTED_DEVICE_TYPES = {3: "ARM CPU (Paddle-Lite)", 4: "Kunlun XPU", 5: "Ascend 310", 6: "Ascend 910"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")  # op / service names appear in REST URLs: /{name}/{method}


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
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return replace(parse_config(data, path.resolve().parent), config_file=path.resolve())


def parse_config(data: Mapping[str, Any], base_dir: Path) -> ServerConfig:
    """Validate an already-loaded config dict; relative paths in it resolve against `base_dir`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"[CONF] the top level must be a mapping, got {type_name(data)}")
    base_dir = Path(base_dir).expanduser().absolute()
    top = Section(dict(data), "", ServerConfig)
    values = read_plain(top, base_dir)
    if all(values[k] is None for k in ("rpc_port", "http_port", "brpc_port")):
        raise ConfigError("[CONF] Failed to prepare_server: rpc_port or http_port can not be None. "
                          "Set rpc_port (gRPC), http_port (REST) and/or brpc_port (bRPC).")
    dag = _parse_dag(top.sub("dag", DagConfig), base_dir)
    ops = _parse_ops(top, base_dir, values["worker_num"])
    if top.has("service_name") and len(ops) > 1:
        raise top.fail("service_name", top.raw("service_name"), f"it names the model of a one-op config; with "
                       f"{len(ops)} ops each op's name is its model's name: remove service_name")
    service_name = read_str(top, "service_name", top.raw("service_name"), Setting("str", "", non_empty=True),
                             None) if top.has("service_name") else ops[0].name if len(ops) == 1 else "resnest-serving"
    if not _NAME_RE.match(service_name):
        raise top.fail("service_name", service_name, "allowed characters: letters, digits, '_', '-', '.'")
    tls = TlsConfig(**read_plain(top.sub("tls", TlsConfig), base_dir))
    if (tls.cert_file is None) != (tls.key_file is None) or (tls.client_ca_file and not tls.cert_file):
        raise ConfigError("[CONF] tls: give cert_file and key_file together (client_ca_file needs them too); got "
                          f"cert_file={_text(tls.cert_file)}, key_file={_text(tls.key_file)}, "
                          f"client_ca_file={_text(tls.client_ca_file)}")
    auth = AuthConfig(**read_plain(top.sub("auth", AuthConfig), base_dir))
    config = ServerConfig(op=ops, dag=dag, service_name=service_name, tls=tls, auth=auth, **values)
    _check_ports(config.ports, config.worker_num)
    _check_model_control(config)
    return config


def _check_model_control(config: ServerConfig) -> None:
    """Load/unload calls (`model_control: explicit`) decide what is served, so nothing else may: not polling
    (Triton's poll and explicit modes exclude each other too), not several worker processes (a call would
    reach one of them)."""
    if config.model_control != "explicit":
        return
    if config.model_repository_poll_s > 0:
        raise ConfigError(f"[CONF] model_control: explicit and model_repository_poll_s: "
                          f"{config.model_repository_poll_s:g} both decide which versions are served; choose one "
                          "(set model_repository_poll_s: 0, or model_control: none)")
    if config.worker_num > 1:
        raise ConfigError(f"[CONF] model_control: explicit needs worker_num: 1 (got {config.worker_num}): a load or "
                          "unload call reaches only one of the worker processes sharing the ports")


def _text(path: Path | None) -> str:
    return "absent" if path is None else repr(str(path))


def _check_ports(ports: dict[str, int], worker_num: int) -> None:
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port == 0:
            if worker_num > 1:
                raise ConfigError(f"[CONF] {name}: got 0 with worker_num {worker_num}; the worker processes "
                                  "share their ports, so give a fixed port (1024-65535) or use worker_num: 1")
            continue
        if port in seen:
            raise ConfigError(f"[CONF] {name}: got {port}, which {seen[port]} already uses; each front door "
                              "needs its own port")
        seen[port] = name


def _parse_dag(dag: Section, base_dir: Path) -> DagConfig:
    values = read_plain(dag, base_dir)
    if values["enable_prometheus"] and values["prometheus_port"] is None:
        raise ConfigError("[CONF] dag.prometheus_port: not set, but dag.enable_prometheus is true; give a port "
                          "(Prometheus metrics are also always served at GET /metrics on http_port)")
    return DagConfig(tracer=TracerConfig(**read_plain(dag.sub("tracer", TracerConfig), base_dir)), **values)


def _parse_ops(top: Section, base_dir: Path, worker_num: int) -> tuple[OpConfig, ...]:
    """Every op, in config order: one model each, named by its op name (case-sensitive: `a` and `A` are two)."""
    ops = top.raw("op")
    if ops is None or ops == {}:
        raise ConfigError("[CONF] op: not set; this server needs at least one op (one per model), e.g. "
                          "op: {imagenet: {local_service_conf: {model_config: ...}}}")
    if not isinstance(ops, dict):
        raise top.type_error("op", ops, "a mapping of op name -> op settings")
    parsed = tuple(_parse_op(ops, name, base_dir, worker_num) for name in ops)
    folded: dict[str, str] = {}
    for op in parsed:
        if op.name.lower() in folded:
            _LOGGER.warning("[CONF] op: %r and %r differ only in case; they are two models (names are "
                            "case-sensitive)", folded[op.name.lower()], op.name)
        folded.setdefault(op.name.lower(), op.name)
    return parsed


def _parse_op(ops: dict, name: Any, base_dir: Path, worker_num: int) -> OpConfig:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"[CONF] op: op name {name!r} is not allowed; use letters, digits, '_', '-', '.' "
                          "(it is also the service name in REST URLs)")
    op = Section(ops[name], f"op.{name}", OpConfig)
    lsc = op.sub("local_service_conf", LocalServiceConf)
    values = read_plain(op, base_dir)
    if op.has("use_encryption_model") and read_bool(op, "use_encryption_model", op.raw("use_encryption_model"),
                                                     Setting("bool", ""), None):
        raise op.fail("use_encryption_model", True, "encrypted models are not supported by this server; use "
                      "false (or leave it out)")
    if values["max_queue_images"] < values["max_images_per_request"]:
        raise op.fail("max_queue_images", values["max_queue_images"], f"must be >= max_images_per_request "
                      f"({values['max_images_per_request']}), or no full-size request could ever be queued")

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
    if values["client_config"] is not None and client_type != "brpc":
        raise op.fail("client_config", op.raw("client_config"), "it names the remote model's client prototxt and "
                      "is used only with client_type: brpc (server_endpoints); remove it for an in-process model")
    local = _parse_local(lsc, base_dir, client_type, endpoints, values["concurrency"] * worker_num)
    if local.batch_streams > 1 and values["engine"] not in ("openvino", "auto"):
        raise lsc.fail("batch_streams", local.batch_streams, f"engine is {values['engine']!r}, and only OpenVINO "
                       "splits a batch over streams; use engine: openvino (or auto), or remove it")
    policy = parse_policy(op.raw("version_policy"), op.key("version_policy"))
    return OpConfig(name=name, local_service_conf=local, server_endpoints=endpoints, client_type=client_type,
                    fetch_list=_fetch_list(op), version_policy=policy, **values)


def _parse_local(lsc: Section, base_dir: Path, client_type: str, endpoints: tuple[str, ...],
                 processes: int) -> LocalServiceConf:
    if not lsc.has("model_config"):
        raise ConfigError(f"[CONF] {lsc.key('model_config')}: not set; give the serving_server folder written "
                          "by `resnest export` (or Paddle Serving's convert), relative to the config file")
    device_type, devices = _device_type(lsc), _devices(lsc)
    if client_type == "local_predictor":
        if device_type in (1, 2) and not devices:
            raise lsc.fail("devices", lsc.raw("devices") or "", f"device_type {device_type} "
                           f"({SUPPORTED_DEVICE_TYPES[device_type]}) needs GPU ids, e.g. devices: \"0\"")
        if device_type == 0 and devices:
            _LOGGER.warning("[CONF] %s is ignored because device_type is 0 (CPU)", lsc.key("devices"))
    if lsc.has("thread_num"):
        thread_num = read_int(lsc, "thread_num", lsc.raw("thread_num"), Setting("int", "", minimum=1), None)
    else:
        thread_num = max(1, _cpu_count() // processes)
        _LOGGER.debug("[CONF] %s not set, use default: %s (cores %d // (concurrency x worker_num %d))",
                      lsc.key("thread_num"), thread_num, _cpu_count(), processes)
    return LocalServiceConf(
        model_config=read_path(lsc, "model_config", lsc.raw("model_config"), Setting("path", ""), base_dir),
        client_type=client_type, thread_num=thread_num, device_type=device_type, devices=devices,
        fetch_list=_fetch_list(lsc), server_endpoints=endpoints, **read_plain(lsc, base_dir))


def _merged(op: Section, lsc: Section, name: str, read: Callable[[Section, str], Any]) -> Any:
    """A key accepted at op level (Paddle Serving's place) or in local_service_conf; both must agree."""
    at_op = read(op, name) if op.has(name) else None
    at_lsc = read(lsc, name) if lsc.has(name) else None
    if at_op and at_lsc and at_op != at_lsc:
        raise ConfigError(f"[CONF] {lsc.key(name)}: got {lsc.raw(name)!r}, but {op.key(name)} is "
                          f"{op.raw(name)!r}; give it in one place only")
    return at_op or at_lsc


def _endpoints(section: Section, name: str) -> tuple[str, ...]:
    value = section.raw(name)
    if isinstance(value, str):  # tolerate a single "host:port" or a comma-separated string
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise section.type_error(name, value, "a list of \"host:port\" strings")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"[CONF] {section.key(name)}[{i}]: expected a \"host:port\" string, got "
                              f"{type_name(item)} {item!r}")
        try:
            split_host_port(item)
        except ValueError:
            raise ConfigError(f"[CONF] {section.key(name)}[{i}]: got {item!r}; expected \"host:port\" with "
                              "port 1-65535, e.g. \"127.0.0.1:9292\"") from None
        out.append(item.strip())
    return tuple(out)


def _client_type(section: Section, name: str) -> str:
    value = read_str(section, name, section.raw(name), Setting("str", "", normalize=str.strip), None)
    if value in ("grpc", "pipeline_grpc"):
        raise section.fail(name, value, "gRPC model clients are not supported by this server; use 'brpc' "
                           "(a remote model server, with server_endpoints) or 'local_predictor' (in-process)")
    if value not in CLIENT_TYPES:
        raise section.fail(name, value, "allowed: 'local_predictor' (in-process), 'brpc' (remote model "
                           "server via server_endpoints); 'grpc' is Paddle Serving's but not supported here")
    return value


def _device_type(lsc: Section) -> int:
    value, _ = lsc.get("device_type", -1)
    value = read_int(lsc, "device_type", value, Setting("int", ""), None)
    if value in UNSUPPORTED_DEVICE_TYPES:
        raise lsc.fail("device_type", value, f"{UNSUPPORTED_DEVICE_TYPES[value]} is not supported by this "
                       "server; supported: " + _device_choices())
    if value not in SUPPORTED_DEVICE_TYPES:
        raise lsc.fail("device_type", value, "allowed: " + _device_choices())
    return value


def _device_choices() -> str:
    return ", ".join(f"{k} ({v})" for k, v in SUPPORTED_DEVICE_TYPES.items())


def _devices(lsc: Section) -> tuple[int, ...]:
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
            raise lsc.fail("devices", value, "allowed: \"\" (CPU) or comma-separated GPU ids, e.g. \"0\" or \"0,1\"")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise lsc.fail("devices", value, "each GPU id may appear once")
    return tuple(ids)


def _fetch_list(section: Section) -> tuple[str, ...] | None:
    if not section.has("fetch_list"):
        return None
    value = read_str_list(section, "fetch_list", section.raw("fetch_list"), Setting("str_list", ""), None)
    if not value:
        raise section.fail("fetch_list", [], "list at least one fetch alias (e.g. [\"prediction\"]) or leave it "
                           "out to fetch every output")
    return value


# --------------------------------------------------------------------------------------------------
# Back to YAML


def to_dict(config: ServerConfig) -> dict[str, Any]:
    """The effective config in config.yml shape (plain types), for logging; `parse_config` accepts it back."""
    top = _plain(config, skip=("op", "config_file"))
    top["op"] = {}
    for op in config.op:
        top["op"][op.name] = _plain(op, skip=("name",))
        top["op"][op.name]["local_service_conf"]["devices"] = ",".join(str(d) for d in op.local_service_conf.devices)
        top["op"][op.name]["version_policy"] = op.version_policy.as_yaml() if op.version_policy else None
    if len(config.op) > 1:
        top.pop("service_name")
    return top


def _plain(obj: Any, skip: Iterable[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "__dataclass_fields__"):
            value = _plain(value)
        out[f.name] = value
    return out
