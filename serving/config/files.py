"""The files a parsed config names, checked before anything starts: the model folder, label file, TLS and
token files, and the switches that depend on the model on disk or on the installed Paddle build (kept apart
from `serving.config.loader` so that parsing can be tested without a model)."""

from __future__ import annotations

import ssl

from resnest_serving.serving.config.schema import OpConfig, ServerConfig
from resnest_serving.serving.config.yaml_file import ConfigError

SERVER_CONF_FILES = ("serving_server_conf.prototxt", "serving_server_conf.stream.prototxt")


def _check_op_lists(op: OpConfig, lsc_path: str) -> None:
    """mkldnn_op_list / mkldnn_bf16_op_list act only on Paddle Inference running a legacy `.pdmodel`: Paddle
    3.3's PIR executor runs the same oneDNN primitives with or without them (measured with ONEDNN_VERBOSE),
    and the other engines do not read them. Anywhere else they are refused rather than ignored."""
    lsc = op.local_service_conf
    given = [name for name in ("mkldnn_op_list", "mkldnn_bf16_op_list") if getattr(lsc, name)]
    if not given or op.is_remote:
        return
    from resnest_serving.protocol.bundle import find_model_files

    try:
        model_file = find_model_files(lsc.model_config)[0]
    except (FileNotFoundError, ValueError):
        return  # reported by the model loader, with its own message
    if op.engine != "paddle" or model_file.suffix == ".json":
        why = (f"engine is {op.engine!r} (only engine: paddle reads it)" if op.engine != "paddle"
               else f"{model_file.name} is a Paddle 3 (PIR) model, on which Paddle 3.3 ignores it")
        raise ConfigError(f"[CONF] {lsc_path}.{given[0]}: has no effect here: {why}; it works only with engine: "
                          "paddle and a legacy .pdmodel model. Remove it")


def _check_gpu_build(op: OpConfig, lsc_path: str) -> None:
    """device_type 1/2 on a CPU-only Paddle: refused before anything starts, saying how to run on CPU."""
    lsc = op.local_service_conf
    if op.is_remote or lsc.device == "cpu":
        return
    device_type = 2 if lsc.device == "tensorrt" else 1
    import paddle  # only for GPU configs: the server process does not need Paddle otherwise

    if not paddle.is_compiled_with_cuda():
        raise ConfigError(f"[CONF] {lsc_path}.device_type: device_type {device_type} needs a GPU build of Paddle "
                          "(paddlepaddle-gpu) and the installed paddlepaddle is CPU-only; to run on CPU set "
                          f'device_type: 0 and devices: "" (--set {lsc_path}.device_type=0 '
                          f"--set '{lsc_path}.devices=\"\"')")


def check_paths(config: ServerConfig) -> None:
    """Check that the files the config names exist (kept apart so parsing can be tested without a model)."""
    for op in config.op:
        _check_op_paths(op)
    for key, path in (("tls.cert_file", config.tls.cert_file), ("tls.key_file", config.tls.key_file),
                      ("tls.client_ca_file", config.tls.client_ca_file), ("auth.token_file", config.auth.token_file)):
        if path is not None and not path.is_file():
            raise ConfigError(f"[CONF] {key}: {str(path)!r} is not a file")
    from resnest_serving.serving.doors.security import (  # read them now, before any model is loaded
        TokenSet,
        server_ssl_context,
    )

    try:
        TokenSet.load(config.auth)
        server_ssl_context(config.tls)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[CONF] tls: cannot load the certificate/key files: {exc}") from None


def _check_versioned(op: OpConfig, lsc_path: str) -> None:
    """A model_config that is not a bundle must be a folder of numbered versions of which the version policy
    picks at least one loadable version (broken ones are logged by the server and left out)."""
    from resnest_serving.serving.repository.policy import DEFAULT_POLICY, select
    from resnest_serving.serving.repository.versions import RepositoryError, scan_repository

    model_dir = op.local_service_conf.model_config
    try:
        scan = scan_repository(model_dir, op.label_file)
    except RepositoryError as exc:
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {exc}; is it a Paddle Serving serving_server "
                          "folder?") from None
    policy = op.version_policy or DEFAULT_POLICY
    if not select(policy, scan.numbers).versions:
        why = "; ".join(p.message for p in scan.problems) or "none is loadable"
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} holds no version that "
                          f"op.{op.name}.version_policy ({policy.describe()}) can serve: {why}")


def _check_op_paths(op: OpConfig) -> None:
    """One op's model folder, label file, client config and model-dependent switches."""
    lsc_path = f"op.{op.name}.local_service_conf"
    model_dir = op.local_service_conf.model_config
    if not model_dir.exists():
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} does not exist (relative paths "
                          "resolve against the config file's folder)")
    if not model_dir.is_dir():
        raise ConfigError(f"[CONF] {lsc_path}.model_config: {str(model_dir)!r} is not a folder; give the "
                          "serving_server folder")
    if not any((model_dir / name).is_file() for name in SERVER_CONF_FILES):
        _check_versioned(op, lsc_path)
    _check_gpu_build(op, lsc_path)
    _check_op_lists(op, lsc_path)
    if op.label_file is not None and not op.label_file.is_file():
        raise ConfigError(f"[CONF] op.{op.name}.label_file: {str(op.label_file)!r} is not a file")
    if op.client_config is not None and not op.client_config.exists():
        raise ConfigError(f"[CONF] op.{op.name}.client_config: {str(op.client_config)!r} does not exist")
