"""serving.config.loader: Paddle Serving's config.yml schema, our additions, and the errors for bad configs."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from resnest_serving.serving.config import loader as config_mod
from resnest_serving.serving.config.files import check_paths
from resnest_serving.serving.config.loader import (
    ConfigError,
    DagConfig,
    LocalServiceConf,
    OpConfig,
    ServerConfig,
    apply_overrides,
    load_config,
    parse_config,
    parse_override,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
PADDLECLAS_YML = REPO / "configs" / "paddleclas_config.yml"
EXAMPLE_YML = REPO / "configs" / "config.yml"
LSC = "op.imagenet.local_service_conf"


def minimal(**top: Any) -> dict[str, Any]:
    """Smallest valid config: one port and one op with a model_config."""
    data: dict[str, Any] = {"http_port": 18080,
                            "op": {"imagenet": {"local_service_conf": {"model_config": "model"}}}}
    data.update(top)
    return data


def with_op(op: dict[str, Any] | None = None, lsc: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    data = minimal(**top)
    data["op"]["imagenet"].update(op or {})
    data["op"]["imagenet"]["local_service_conf"].update(lsc or {})
    return data


def parse(data: dict[str, Any], base: Path = Path("/srv/conf")) -> ServerConfig:
    return parse_config(data, base)


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch):
    """Pin the core count the thread_num default is computed from."""
    def pin(n: int) -> None:
        monkeypatch.setattr(config_mod, "_cpu_count", lambda: n)
    pin(8)
    return pin


# ---------------------------------------------------------------------------------------------------
# PaddleClas's own config and our example


def test_paddleclas_config_loads_with_only_model_config_changed(tmp_path: Path, cpus) -> None:
    text = PADDLECLAS_YML.read_text()
    assert re.search(r"^\s+model_config: ", text, re.M)
    model_dir = tmp_path / "ResNeSt50_serving_real"
    text = re.sub(r"^(\s+model_config: ).*$", rf"\g<1>{model_dir.name}", text, count=1, flags=re.M)
    config = load_config(write(tmp_path, text))

    assert (config.rpc_port, config.http_port, config.worker_num) == (9993, 18080, 1)
    assert config.brpc_port is None and config.host == "127.0.0.1"
    assert config.service_name == "imagenet"
    assert config.dag.is_thread_op is False
    op = config.op[0]
    assert op.name == "imagenet" and op.concurrency == 1
    lsc = op.local_service_conf
    assert lsc.model_config == model_dir  # relative to the config file's folder, absolute
    assert lsc.device_type == 1 and lsc.devices == (0,) and lsc.device == "gpu"
    assert lsc.client_type == "local_predictor"
    assert lsc.fetch_list == ("prediction",) and op.effective_fetch_list == ("prediction",)
    assert config.config_file == (tmp_path / "config.yml").resolve()


def test_paddleclas_config_keeps_tipc_sed_line_numbers() -> None:
    lines = PADDLECLAS_YML.read_text().splitlines()
    assert lines[20].strip().startswith("model_config:")
    assert lines[23].strip() == "device_type: 1"
    assert lines[26].strip().startswith('devices: "0"')


def test_example_config_parses() -> None:
    config = load_config(EXAMPLE_YML)
    assert config.op[0].name == "imagenet" and config.service_name == "imagenet"
    assert config.op[0].local_service_conf.model_config == (REPO / "demo_out" / "bundle" / "serving_server").resolve()
    assert config.op[0].local_service_conf.device == "cpu"
    assert len({p for p in config.ports.values() if p}) == len(config.ports)


def test_example_config_comments_every_key() -> None:
    for number, line in enumerate(EXAMPLE_YML.read_text().splitlines(), 1):
        if re.match(r"^\s*[a-z_]+:", line) and not re.match(r"^\s*(dag|op|tracer|imagenet|local_service_conf):\s*$",
                                                           line):
            assert "#" in line, f"configs/config.yml line {number} has no comment: {line!r}"


# ---------------------------------------------------------------------------------------------------
# Defaults


def test_defaults_filled(cpus) -> None:
    config = parse(minimal())
    assert config.rpc_port is None and config.http_port == 18080 and config.brpc_port is None
    assert config.worker_num == 1 and config.build_dag_each_worker is False and config.grpc_gateway_port is None
    assert config.dag == DagConfig()
    assert (config.dag.is_thread_op, config.dag.retry, config.dag.client_type) == (True, 1, "brpc")
    assert (config.dag.use_profile, config.dag.channel_size, config.dag.tracer.interval_s) == (False, 0, -1)
    assert config.dag.channel_recv_frist_arrive is False and config.dag.enable_prometheus is False
    assert config.host == "127.0.0.1" and config.service_name == "imagenet"
    assert config.max_request_bytes == 64 * 1024 * 1024 and config.shutdown_grace_s == 10.0
    assert config.log_level == "INFO"

    op = config.op[0]
    assert (op.concurrency, op.timeout, op.retry, op.batch_size, op.auto_batching_timeout) == (1, -1, 1, 4, -1)
    assert op.server_endpoints == () and op.fetch_list is None and op.client_config is None
    assert op.use_encryption_model is False and op.encryption_key is None
    assert (op.topk, op.label_file, op.engine) == (1, None, "auto")
    assert (op.max_images_per_request, op.max_image_pixels, op.max_queue_images) == (32, 40_000_000, 1024)
    assert op.timeout_s is None and not op.is_remote

    lsc = op.local_service_conf
    assert lsc.model_config == Path("/srv/conf/model")
    assert (lsc.client_type, lsc.workdir, lsc.device_type, lsc.devices) == ("local_predictor", "", -1, ())
    assert (lsc.mem_optim, lsc.ir_optim, lsc.precision, lsc.use_calib) == (True, True, "fp32", False)
    assert (lsc.use_mkldnn, lsc.mkldnn_cache_capacity, lsc.min_subgraph_size) == (True, 0, 3)  # ours: oneDNN on by default
    assert lsc.mkldnn_op_list is None and lsc.mkldnn_bf16_op_list is None and lsc.fetch_list is None
    assert lsc.rpc_timeout_ms == 20000 and lsc.device == "cpu"
    assert lsc.thread_num == 8  # 8 cores // concurrency 1


def test_defaults_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="resnest_serving.serving.config.loader"):
        parse(minimal())
    messages = [r.getMessage() for r in caplog.records]
    assert "[CONF] worker_num not set, use default: 1" in messages
    assert "[CONF] dag.is_thread_op not set, use default: True" in messages
    assert "[CONF] op.imagenet.concurrency not set, use default: 1" in messages
    assert f"[CONF] {LSC}.precision not set, use default: fp32" in messages
    assert len(messages) == len(set(messages))  # one line each
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_values_read_and_derived(cpus) -> None:
    config = parse(with_op(
        op={"concurrency": 2, "timeout": 3000, "batch_size": 8, "auto_batching_timeout": 5, "topk": 5,
            "label_file": "labels.txt", "engine": "ONNXRuntime", "fetch_list": ["a"]},
        lsc={"device_type": 2, "devices": "0, 1", "precision": "FP16", "thread_num": 3, "fetch_list": ["b"]},
        rpc_port=9993, brpc_port=9994, service_name="classify", log_level="debug", shutdown_grace_s=2.5,
        dag={"tracer": {"interval_s": 10}, "enable_prometheus": True, "prometheus_port": 9995}))
    op = config.op[0]
    assert op.timeout_s == 3.0 and op.auto_batching_timeout == 5
    assert op.topk == 5 and op.label_file == Path("/srv/conf/labels.txt") and op.engine == "onnxruntime"
    assert op.effective_fetch_list == ("b",)
    lsc = op.local_service_conf
    assert lsc.devices == (0, 1) and lsc.device == "tensorrt" and lsc.precision == "fp16"
    assert lsc.thread_num == 3
    assert config.service_name == "classify" and config.log_level == "DEBUG" and config.shutdown_grace_s == 2.5
    assert config.dag.tracer.interval_s == 10
    assert config.ports == {"rpc_port": 9993, "http_port": 18080, "brpc_port": 9994,
                            "dag.prometheus_port": 9995}


def test_device_type_auto_from_devices() -> None:
    assert parse(with_op(lsc={"devices": "1"})).op[0].local_service_conf.device == "gpu"
    assert parse(with_op(lsc={"devices": ""})).op[0].local_service_conf.device == "cpu"
    assert parse(with_op(lsc={"devices": 0})).op[0].local_service_conf.devices == (0,)  # unquoted YAML int


def test_to_dict_round_trips(cpus) -> None:
    config = parse(with_op(op={"server_endpoints": ["127.0.0.1:9292"]}, lsc={"devices": "0,1"}, rpc_port=0))
    as_dict = to_dict(config)
    assert as_dict["op"]["imagenet"]["local_service_conf"]["devices"] == "0,1"
    yaml.safe_dump(as_dict)  # plain types only
    assert parse_config(as_dict, Path("/elsewhere")) == config


def test_dataclasses_are_frozen() -> None:
    config = parse(minimal())
    with pytest.raises(AttributeError):
        config.http_port = 1  # type: ignore[misc]
    assert isinstance(config.op[0], OpConfig) and isinstance(config.op[0].local_service_conf, LocalServiceConf)


# ---------------------------------------------------------------------------------------------------
# thread_num default


@pytest.mark.parametrize(("cores", "concurrency", "workers", "expected"),
                         [(8, 1, 1, 8), (8, 2, 1, 4), (8, 3, 1, 2), (8, 2, 2, 2), (2, 4, 1, 1), (1, 1, 1, 1)])
def test_thread_num_default_does_not_oversubscribe(cpus, cores, concurrency, workers, expected) -> None:
    cpus(cores)
    config = parse(with_op(op={"concurrency": concurrency}, worker_num=workers))
    assert config.op[0].local_service_conf.thread_num == expected


def test_thread_num_given_is_kept(cpus) -> None:
    cpus(64)
    assert parse(with_op(lsc={"thread_num": 2})).op[0].local_service_conf.thread_num == 2


# ---------------------------------------------------------------------------------------------------
# server_endpoints / client_type


@pytest.mark.parametrize("where", ["op", "lsc", "both"])
def test_server_endpoints_in_either_place(where: str) -> None:
    endpoints = ["127.0.0.1:9292", "[::1]:9393"]
    op = {"server_endpoints": endpoints} if where in ("op", "both") else {}
    lsc = {"server_endpoints": endpoints} if where in ("lsc", "both") else {}
    config = parse(with_op(op=op, lsc=lsc))
    assert config.op[0].server_endpoints == tuple(endpoints)
    assert config.op[0].client_type == "brpc" and config.op[0].is_remote  # default with endpoints


def test_server_endpoints_in_both_places_must_agree() -> None:
    message = error_of(with_op(op={"server_endpoints": ["127.0.0.1:9292"]},
                               lsc={"server_endpoints": ["127.0.0.1:9393"]}))
    assert f"{LSC}.server_endpoints" in message and "op.imagenet.server_endpoints" in message
    assert "127.0.0.1:9393" in message and "127.0.0.1:9292" in message


def test_op_level_client_type_is_accepted() -> None:
    config = parse(with_op(op={"server_endpoints": ["h:1"], "client_type": "brpc"}))
    assert config.op[0].client_type == "brpc"


def test_bad_endpoint() -> None:
    message = error_of(with_op(op={"server_endpoints": ["127.0.0.1"]}))
    assert "op.imagenet.server_endpoints[0]" in message and "'127.0.0.1'" in message and "host:port" in message


def test_brpc_needs_endpoints() -> None:
    message = error_of(with_op(lsc={"client_type": "brpc"}))
    assert "op.imagenet.server_endpoints" in message and "brpc" in message


def test_local_predictor_with_endpoints_contradicts() -> None:
    message = error_of(with_op(op={"server_endpoints": ["h:1"]}, lsc={"client_type": "local_predictor"}))
    assert f"{LSC}.client_type" in message and "local_predictor" in message


@pytest.mark.parametrize("value", ["grpc", "pipeline_grpc"])
def test_grpc_client_type_not_supported(value: str) -> None:
    message = error_of(with_op(lsc={"client_type": value}))
    assert f"{LSC}.client_type" in message and repr(value) in message
    assert "not supported" in message and "brpc" in message


def test_unknown_client_type() -> None:
    message = error_of(with_op(lsc={"client_type": "http"}))
    assert f"{LSC}.client_type" in message and "'http'" in message and "local_predictor" in message


# ---------------------------------------------------------------------------------------------------
# Errors: ranges and choices


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("rpc_port", 80, "1024-65535"),
    ("http_port", 70000, "1024-65535"),
    ("brpc_port", -1, "1024-65535"),
    ("worker_num", 0, ">= 1"),
    ("max_request_bytes", 10, "1024"),
    ("shutdown_grace_s", -1, ">= 0"),
    ("log_level", "LOUD", "'INFO'"),
])
def test_top_level_ranges(key: str, value: Any, allowed: str) -> None:
    message = error_of(minimal(**{key: value}))
    assert message.startswith(f"[CONF] {key}: got {value!r}")
    assert allowed in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", ["response_cache_mb", "max_aspect_ratio"])
def test_non_finite_numbers_refused(key: str, value: float) -> None:
    """YAML's .nan would pass every range check (NaN compares False); .inf is no one's intended limit."""
    message = error_of(with_op(op={key: value}))
    assert message.startswith(f"[CONF] op.imagenet.{key}: got {value!r}")
    assert "must be a finite number" in message


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("concurrency", 0, ">= 1"),
    ("batch_size", 0, ">= 1"),
    ("retry", 0, ">= 1"),
    ("topk", 0, ">= 1"),
    ("engine", "tensorrt", "'auto', 'openvino', 'onnxruntime', 'paddle'"),
    ("max_images_per_request", 0, ">= 1"),
    ("max_queue_images", 0, ">= 1"),
    ("max_image_pixels", 0, ">= 1"),
    ("response_cache_mb", -1, "0 to 65536"),
])
def test_op_ranges(key: str, value: Any, allowed: str) -> None:
    message = error_of(with_op(op={key: value}))
    assert message.startswith(f"[CONF] op.imagenet.{key}: got {value!r}")
    assert allowed in message


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("thread_num", 0, ">= 1"),
    ("precision", "fp64", "'bf16'"),
    ("device_type", 7, "0 (CPU)"),
    ("device_type", -2, "2 (GPU + TensorRT)"),
    ("devices", "gpu0", "comma-separated GPU ids"),
    ("devices", "0,0", "once"),
    ("mkldnn_cache_capacity", -1, ">= 0"),
    ("rpc_timeout_ms", 0, ">= 1"),
])
def test_local_service_conf_ranges(key: str, value: Any, allowed: str) -> None:
    message = error_of(with_op(lsc={key: value}))
    assert message.startswith(f"[CONF] {LSC}.{key}: got {value!r}")
    assert allowed in message


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("retry", 0, ">= 1"),
    ("channel_size", -1, ">= 0"),
    ("client_type", "http", "'brpc'"),
])
def test_dag_ranges(key: str, value: Any, allowed: str) -> None:
    message = error_of(minimal(dag={key: value}))
    assert message.startswith(f"[CONF] dag.{key}: got {value!r}") and allowed in message


@pytest.mark.parametrize("device_type", [3, 4, 5, 6])
def test_device_types_not_supported_here(device_type: int) -> None:
    message = error_of(with_op(lsc={"device_type": device_type}))
    assert f"{LSC}.device_type: got {device_type}" in message and "not supported by this server" in message
    assert "-1" in message and "2 (GPU + TensorRT)" in message


@pytest.mark.parametrize("device_type", [1, 2])
def test_gpu_device_type_needs_devices(device_type: int) -> None:
    message = error_of(with_op(lsc={"device_type": device_type}))
    assert f"{LSC}.devices" in message and 'devices: "0"' in message


def test_precision_is_case_insensitive() -> None:
    assert parse(with_op(lsc={"precision": "BF16", "use_mkldnn": True})).op[0].local_service_conf.precision == "bf16"


def test_queue_must_hold_a_full_request() -> None:
    message = error_of(with_op(op={"max_images_per_request": 64, "max_queue_images": 32}))
    assert "op.imagenet.max_queue_images: got 32" in message and "64" in message


def test_encryption_not_supported() -> None:
    message = error_of(with_op(op={"use_encryption_model": True, "encryption_key": "k"}))
    assert "op.imagenet.use_encryption_model: got True" in message and "not supported" in message


def test_empty_fetch_list() -> None:
    message = error_of(with_op(lsc={"fetch_list": []}))
    assert f"{LSC}.fetch_list: got []" in message


def test_fetch_list_items_must_be_strings() -> None:
    message = error_of(with_op(op={"fetch_list": ["ok", 3]}))
    assert "op.imagenet.fetch_list[1]" in message and "3" in message


# ---------------------------------------------------------------------------------------------------
# Errors: types


@pytest.mark.parametrize(("data", "path", "value", "hint"), [
    (minimal(rpc_port="9993"), "rpc_port", "'9993'", "remove the quotes"),
    (minimal(worker_num=True), "worker_num", "True", "booleans, not integers"),
    (minimal(worker_num=1.5), "worker_num", "1.5", "an integer"),
    (minimal(build_dag_each_worker=1), "build_dag_each_worker", "1", "a boolean"),
    (minimal(build_dag_each_worker="false"), "build_dag_each_worker", "'false'", "without quotes"),
    (minimal(dag={"is_thread_op": "no"}), "dag.is_thread_op", "'no'", "a boolean"),
    (minimal(dag={"tracer": {"interval_s": "10"}}), "dag.tracer.interval_s", "'10'", "an integer"),
    (minimal(dag=[1]), "dag", "[1]", "a mapping"),
    (minimal(shutdown_grace_s=False), "shutdown_grace_s", "False", "a number"),
    (with_op(op={"concurrency": "2"}), "op.imagenet.concurrency", "'2'", "an integer"),
    (with_op(op={"batch_size": True}), "op.imagenet.batch_size", "True", "booleans, not integers"),
    (with_op(op={"response_cache_mb": "big"}), "op.imagenet.response_cache_mb", "'big'", "a number"),
    (with_op(op={"fetch_list": "prediction"}), "op.imagenet.fetch_list", "'prediction'", "a list"),
    (with_op(op={"server_endpoints": {"a": 1}}), "op.imagenet.server_endpoints", "{'a': 1}", "host:port"),
    (with_op(lsc={"device_type": True}), f"{LSC}.device_type", "True", "booleans, not integers"),
    (with_op(lsc={"devices": [0, 1]}), f"{LSC}.devices", "[0, 1]", "GPU ids"),
    (with_op(lsc={"mem_optim": 1}), f"{LSC}.mem_optim", "1", "a boolean"),
    (with_op(lsc={"model_config": 5}), f"{LSC}.model_config", "5", "a string"),
    (with_op(lsc={"precision": 16}), f"{LSC}.precision", "16", "a string"),
])
def test_type_errors(data: dict[str, Any], path: str, value: str, hint: str) -> None:
    message = error_of(data)
    assert message.startswith(f"[CONF] {path}: expected"), message
    assert value in message and hint in message


def test_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------------
# Errors: structure


@pytest.mark.parametrize(("data", "path", "suggestion"), [
    (minimal(rpc_prot=9993), "rpc_prot", "did you mean 'rpc_port'?"),
    (minimal(dag={"is_thread_ops": True}), "dag.is_thread_ops", "did you mean 'is_thread_op'?"),
    (minimal(dag={"tracer": {"interval": 5}}), "dag.tracer.interval", "did you mean 'interval_s'?"),
    (with_op(op={"concurency": 2}), "op.imagenet.concurency", "did you mean 'concurrency'?"),
    (with_op(lsc={"device": 0}), f"{LSC}.device", "did you mean 'devices'?"),
    (minimal(zzz=1), "zzz", "known keys: rpc_port"),
])
def test_unknown_keys(data: dict[str, Any], path: str, suggestion: str) -> None:
    message = error_of(data)
    assert message.startswith(f"[CONF] {path}: unknown key") and suggestion in message


def test_missing_ports_uses_paddle_message() -> None:
    data = minimal()
    del data["http_port"]
    assert "rpc_port or http_port can not be None" in error_of(data)


def test_brpc_port_alone_is_enough() -> None:
    data = minimal(brpc_port=8010)
    del data["http_port"]
    assert parse(data).ports == {"brpc_port": 8010}


def test_duplicate_ports() -> None:
    message = error_of(minimal(rpc_port=18080))
    assert "rpc_port" in message and "http_port" in message and "18080" in message


def test_prometheus_port_clash_and_requirement() -> None:
    message = error_of(minimal(dag={"enable_prometheus": True, "prometheus_port": 18080}))
    assert "dag.prometheus_port" in message and "18080" in message
    assert "dag.prometheus_port" in error_of(minimal(dag={"enable_prometheus": True}))


def test_port_zero_is_ephemeral_and_may_repeat() -> None:
    config = parse(minimal(http_port=0, rpc_port=0, brpc_port=0))
    assert config.ports == {"rpc_port": 0, "http_port": 0, "brpc_port": 0}


def test_port_zero_needs_one_worker() -> None:
    message = error_of(minimal(http_port=0, worker_num=2))
    assert "http_port: got 0" in message and "worker_num" in message


def test_missing_model_config() -> None:
    data = with_op()
    del data["op"]["imagenet"]["local_service_conf"]["model_config"]
    message = error_of(data)
    assert f"{LSC}.model_config: not set" in message


def test_missing_local_service_conf() -> None:
    data = minimal()
    data["op"]["imagenet"] = {"concurrency": 1}
    assert f"{LSC}.model_config: not set" in error_of(data)


def test_several_ops_are_several_models(caplog) -> None:
    assert "op: not set" in error_of({"http_port": 18080})
    two = minimal()
    two["op"]["other"] = copy.deepcopy(two["op"]["imagenet"])
    two["op"]["other"]["batch_size"] = 8
    config = parse(two)
    assert [op.name for op in config.op] == ["imagenet", "other"]
    assert list(config.models) == ["imagenet", "other"] and config.models["other"].batch_size == 8
    assert config.op[0].batch_size != 8  # each op its own settings
    assert parse_config(to_dict(config), Path(".")).models.keys() == config.models.keys()
    with pytest.raises(ConfigError, match=r"\[CONF\] op: got 2 ops \('imagenet', 'other'\); Ray"):
        config.only_op("Ray")
    assert parse(minimal()).only_op("Ray").name == "imagenet"
    message = error_of({**two, "service_name": "x"})
    assert "service_name: got 'x'" in message and "each op's name is its model's name" in message
    cased = minimal()
    cased["op"]["IMAGENET"] = copy.deepcopy(cased["op"]["imagenet"])
    with caplog.at_level(logging.WARNING):
        assert list(parse(cased).models) == ["imagenet", "IMAGENET"]
    assert "differ only in case" in caplog.text


def test_ray_and_model_server_refuse_several_ops() -> None:
    from resnest_serving.serving.ray.app import check_ray_config
    from resnest_serving.serving.split.model_server import check_model_server_config

    two = minimal(brpc_port=9393)
    two["op"]["other"] = copy.deepcopy(two["op"]["imagenet"])
    with pytest.raises(ConfigError, match=r"\[CONF\] op: got 2 ops \('imagenet', 'other'\); Ray Serve"):
        check_ray_config(parse(two))
    with pytest.raises(ConfigError, match=r"\[CONF\] op: got 2 ops .*; a model server .* serves exactly one"):
        check_model_server_config(parse(two))


def test_bad_op_among_several_is_named() -> None:
    two = minimal()
    two["op"]["other"] = {"concurrency": "2", "local_service_conf": {"model_config": "m"}}
    assert "op.other.concurrency" in error_of(two)


def test_bad_names() -> None:
    data = {"http_port": 1080, "op": {"a/b": {"local_service_conf": {"model_config": "m"}}}}
    assert "'a/b'" in error_of(data)
    message = error_of(minimal(service_name="my service"))
    assert "service_name: got 'my service'" in message


def test_non_mapping_op_settings() -> None:
    message = error_of(minimal(op={"imagenet": ["x"]}))
    assert "op.imagenet: expected a mapping" in message and "['x']" in message


def test_parse_config_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config(["http_port"], Path("."))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Files: YAML problems, paths, overrides


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port: 18080\nop:\n  imagenet: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "invalid YAML" in message and re.search(r"line [34]", message)


def test_duplicate_yaml_key_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port: 18080\nrpc_port: 9993\nhttp_port: 18081\n")
    with pytest.raises(ConfigError, match=r"line 3.*duplicate key 'http_port'"):
        load_config(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("- a\n- b\n", "top level must be a mapping"),
    ("just a string\n", "top level must be a mapping"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
])
def test_non_mapping_top_level(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml")


def test_yaml_python_tags_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_model_config_relative_to_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = write(sub, yaml.safe_dump(with_op(lsc={"model_config": "../models/m"}, op={"label_file": "l.txt"})))
    monkeypatch.chdir(tmp_path.parent)
    config = load_config(path)
    assert config.op[0].local_service_conf.model_config == tmp_path / "models" / "m"
    assert config.op[0].label_file == sub / "l.txt"
    absolute = with_op(lsc={"model_config": str(tmp_path / "abs")})
    assert parse_config(absolute, sub).op[0].local_service_conf.model_config == tmp_path / "abs"


def test_check_paths(tmp_path: Path) -> None:
    config = parse_config(with_op(lsc={"model_config": "model"}), tmp_path)
    with pytest.raises(ConfigError) as info:
        check_paths(config)
    assert f"{LSC}.model_config" in str(info.value) and str(tmp_path / "model") in str(info.value)
    assert "does not exist" in str(info.value)

    (tmp_path / "model").write_text("")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_paths(config)
    (tmp_path / "model").unlink()
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError, match="serving_server_conf.prototxt"):
        check_paths(config)
    (tmp_path / "model" / "serving_server_conf.prototxt").write_text("")
    check_paths(config)

    labelled = parse_config(with_op(lsc={"model_config": "model"}, op={"label_file": "labels.txt"}), tmp_path)
    with pytest.raises(ConfigError, match=r"op\.imagenet\.label_file: .*labels\.txt"):
        check_paths(labelled)
    (tmp_path / "labels.txt").write_text("0 tench\n")
    check_paths(labelled)


def test_onednn_op_lists_refused_where_they_do_nothing(tmp_path: Path) -> None:
    """Paddle 3.3 ignores both lists on PIR (.json) models (ONEDNN_VERBOSE shows the same primitives with and
    without them) and only engine: paddle reads them: refused there, accepted for a legacy .pdmodel."""
    for layout in ("pir", "legacy"):
        model = tmp_path / layout
        model.mkdir()
        (model / "serving_server_conf.prototxt").write_text("")
        (model / ("inference.json" if layout == "pir" else "inference.pdmodel")).write_text("")
        (model / "inference.pdiparams").write_bytes(b"")
    for key in ("mkldnn_op_list", "mkldnn_bf16_op_list"):
        pir = parse_config(with_op(lsc={"model_config": "pir", key: ["conv2d"]}, op={"engine": "paddle"}), tmp_path)
        with pytest.raises(ConfigError, match=rf"{key}: has no effect here: inference.json is a Paddle 3 \(PIR\)"):
            check_paths(pir)
        other = parse_config(with_op(lsc={"model_config": "legacy", key: ["conv2d"]}), tmp_path)
        with pytest.raises(ConfigError, match=rf"{key}: has no effect here: engine is 'auto'"):
            check_paths(other)
        check_paths(parse_config(with_op(lsc={"model_config": "legacy", key: ["conv2d"]}, op={"engine": "paddle"}),
                                 tmp_path))


def test_paddle_switches_from_config_reach_paddle(tiny_model_dir: Path, cpus) -> None:
    """local_service_conf's Paddle Inference switches, from config.yml to Paddle: use_mkldnn, ir_optim and
    mkldnn_cache_capacity show in the real paddle.inference.Config's summary (a capacity of 0, the default,
    leaves Paddle's own 10); mem_optim turns Paddle's memory optimisation on for GPU/TensorRT and is never
    applied on CPU, whatever it says (Paddle 3.3's PIR CPU predictor fails to build with it); use_calib and
    min_subgraph_size reach the TensorRT call (checked as the Config calls: no GPU here)."""
    from resnest_serving.pipeline.engines.paddle_config import config_calls, paddle_config
    from resnest_serving.protocol.bundle import ModelBundle
    from resnest_serving.serving.server import engine_options

    bundle = ModelBundle.load(tiny_model_dir)

    def summary(lsc: dict[str, Any]) -> str:
        options = engine_options(parse(with_op(lsc=lsc)).op[0])
        return paddle_config(bundle.model_file, bundle.params_file, options).summary()

    def option(text: str, name: str) -> str:
        return re.search(rf"\| {name}\s*\| (\S+)\s*\|", text)[1]

    default = summary({})
    assert option(default, "enable_mkldnn") == "true" and option(default, "ir_optim") == "true"
    assert option(default, "mkldnn_cache_capacity") == "10"  # Paddle's own default: 0 leaves it unset
    assert option(summary({"use_mkldnn": False}), "enable_mkldnn") == "false"
    assert option(summary({"ir_optim": False}), "ir_optim") == "false"
    assert option(summary({"mkldnn_cache_capacity": 7}), "mkldnn_cache_capacity") == "7"

    def gpu_calls(**lsc: Any) -> dict[str, tuple]:
        return dict(config_calls(engine_options(parse(with_op(lsc={"devices": "0", **lsc})).op[0])))

    for mem_optim in (True, False):
        assert option(summary({"mem_optim": mem_optim}), "memory_optim") == "false"
        for device_type in (1, 2):
            calls = gpu_calls(device_type=device_type, mem_optim=mem_optim)
            assert ("enable_memory_optim" in calls) == mem_optim, (device_type, calls)
    for use_calib, min_subgraph_size in ((True, 7), (False, 3)):
        trt = gpu_calls(device_type=2, precision="int8", use_calib=use_calib, min_subgraph_size=min_subgraph_size)
        assert trt["enable_tensorrt_engine"][2] == min_subgraph_size and trt["enable_tensorrt_engine"][5] == use_calib


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, PADDLECLAS_YML.read_text())
    config = load_config(path, {"rpc_port": 0, "http_port": 0, "brpc_port": 0,
                                "op": {"imagenet": {"concurrency": 2}},
                                "op.imagenet.local_service_conf.devices": None,
                                "op.imagenet.local_service_conf.device_type": 0})
    assert config.ports == {"rpc_port": 0, "http_port": 0, "brpc_port": 0}
    assert config.op[0].concurrency == 2
    lsc = config.op[0].local_service_conf
    assert lsc.device == "cpu" and lsc.devices == () and lsc.fetch_list == ("prediction",)
    assert lsc.model_config == tmp_path.parent / "ResNeSt50_serving" / "serving_server"  # relative to the file


def test_overrides_are_validated_and_do_not_mutate() -> None:
    data = minimal()
    before = copy.deepcopy(data)
    merged = apply_overrides(data, {"op.imagenet.local_service_conf.thread_num": 0})
    assert data == before
    assert f"{LSC}.thread_num: got 0" in error_of(merged)
    with pytest.raises(ConfigError, match="http_port is not a mapping"):
        apply_overrides(data, {"http_port.x": 1})


def test_parse_override() -> None:
    assert parse_override("op.imagenet.concurrency=2") == ("op.imagenet.concurrency", 2)
    assert parse_override('op.imagenet.local_service_conf.devices=""') == (
        "op.imagenet.local_service_conf.devices", "")
    assert parse_override("brpc_port=") == ("brpc_port", None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("no-equals")


# ---------------------------------------------------------------------------------------------------
# The documentation is written from the schema


def test_configuration_doc_tables_are_current() -> None:
    from resnest_serving.serving.config.docs import DOC, render

    text = DOC.read_text()
    assert render(text) == text, "docs/configuration.md is out of date: run python -m resnest_serving.serving.config.docs"


def test_every_schema_key_is_documented_and_parsed() -> None:
    from resnest_serving.serving.config.docs import DOC
    from resnest_serving.serving.config.schema import settings_of

    text = DOC.read_text()
    from resnest_serving.serving.config.schema import AuthConfig, TlsConfig

    for schema, prefix in ((ServerConfig, ""), (DagConfig, ""), (OpConfig, ""), (LocalServiceConf, ""),
                           (TlsConfig, "tls."), (AuthConfig, "auth.")):
        for f, spec in settings_of(schema):
            assert f"| `{prefix}{f.name}` |" in text or spec.kind == "section", f.name
            assert spec.doc or spec.origin == "compat", f"{f.name} has no meaning written down"


def test_key_coverage_table_is_complete() -> None:
    """docs/configuration.md lists every key with a test that exists."""
    from resnest_serving.serving.config.docs import DOC
    from resnest_serving.serving.config.schema import AuthConfig, TlsConfig, TracerConfig, settings_of

    text = DOC.read_text().split("## Which test covers each key", 1)[1]
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| `")]
    listed = {key.strip("`| ") for row in rows for key in row[0].split(", ")}
    for schema, prefix in ((ServerConfig, ""), (DagConfig, "dag."), (TracerConfig, "dag.tracer."),
                           (OpConfig, "op."), (LocalServiceConf, "local_service_conf."), (TlsConfig, "tls."),
                           (AuthConfig, "auth.")):
        for f, spec in settings_of(schema):
            if spec.kind == "section":
                continue
            key = f"{prefix}{f.name}"
            assert key in listed or (prefix == "" and f.name in listed), f"{key} has no test in the table"
    for row in rows:
        path, _, name = row[1].partition("::")
        source = (REPO / path).read_text()
        assert f"def {name}(" in source, f"{row[1]} does not exist"


@pytest.mark.parametrize(("top", "message"), [
    ({"model_repository_poll_s": 2}, "model_control: explicit and model_repository_poll_s: 2 both decide"),
    ({"worker_num": 2, "rpc_port": 19001, "http_port": 19002}, "model_control: explicit needs worker_num: 1 (got 2)"),
])
def test_explicit_model_control_excludes_polling_and_several_workers(top: dict, message: str) -> None:
    assert message in error_of(minimal(model_control="explicit", **top))
    parse(minimal(model_control="none", **top))  # each alone is fine


def test_batch_streams_is_openvinos_and_reaches_the_engine_options(tmp_path: Path) -> None:
    """batch_streams (1 = no split by default) reaches EngineOptions; a split with an engine that cannot split
    is refused by name, values below 1 too."""
    from resnest_serving.serving.server import engine_options

    config = parse(with_op(lsc={"model_config": "m", "batch_streams": 2}, op={"engine": "openvino"}))
    assert engine_options(config.op[0]).batch_streams == 2
    assert engine_options(parse(with_op(lsc={"model_config": "m"})).op[0]).batch_streams == 1
    for engine in ("paddle", "onnxruntime"):
        with pytest.raises(ConfigError, match=rf"batch_streams: got 2; engine is '{engine}', and only OpenVINO"):
            parse(with_op(lsc={"model_config": "m", "batch_streams": 2}, op={"engine": engine}))
    parse(with_op(lsc={"model_config": "m", "batch_streams": 1}, op={"engine": "paddle"}))  # 1 = off: fine
    with pytest.raises(ConfigError, match=r"batch_streams: got 0; must be >= 1"):
        parse(with_op(lsc={"model_config": "m", "batch_streams": 0}))
