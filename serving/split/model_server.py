"""A model-only server process: what ``python -m paddle_serving_server.serve`` (C++ Serving) is for a
Paddle Serving pipeline with ``client_type: brpc``.

It loads the op's model and engines from an ordinary config.yml and serves ``GeneralModelService`` over
bRPC on ``brpc_port`` (required) and over HTTP on ``http_port`` (optional, its own port). No image
decoding or top-k here: a pipeline server (``resnest serve`` with ``client_type: brpc`` and
``server_endpoints``) does those and calls this one for the model. SIGTERM/SIGINT stop it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from resnest_serving.protocol.baidu_std import short_service_name
from resnest_serving.protocol.wire import GENERAL_MODEL_SERVICE
from resnest_serving.serving.config.files import check_paths
from resnest_serving.serving.config.loader import ConfigError, ServerConfig
from resnest_serving.serving.doors.security import door_security_line, warn_if_exposed
from resnest_serving.serving.server import (
    door_settings,
    load_bundle,
    start_op_engines,
    wait_for_stop_signal,
    warn_secret_files,
    write_ready_file,
)
from resnest_serving.serving.split.model_service import register_model_service, start_model_http

__all__ = ["check_model_server_config", "run_model_server", "serve_model"]

log = logging.getLogger(__name__)


def check_model_server_config(config: ServerConfig) -> None:
    """Refuse configs a model server cannot honour, naming the key."""
    op = config.only_op("a model server (--model-server)")
    if config.brpc_port is None:
        raise ConfigError("[CONF] brpc_port: not set; a model server serves GeneralModelService over bRPC on "
                          "brpc_port (C++ Serving's default is 9393; 0 = OS picks)")
    if op.is_remote:
        raise ConfigError(f"[CONF] op.{op.name}.local_service_conf.client_type: got 'brpc'; a model server runs "
                          "the model itself: use client_type: local_predictor and no server_endpoints")


async def serve_model(config: ServerConfig, ready_file: Path | None = None) -> int:
    """Load the model, serve GeneralModelService until SIGTERM/SIGINT, stop gracefully; returns 0."""
    from resnest_serving.serving.doors.brpc_server import BrpcServer

    check_model_server_config(config)
    op = config.op[0]  # one op: check_model_server_config refused several
    if config.rpc_port is not None:
        log.warning("rpc_port %d is ignored: a model server speaks bRPC (brpc_port) and HTTP (http_port)",
                    config.rpc_port)
    started = time.perf_counter()
    bundle = load_bundle(op)
    engines = await start_op_engines(op, bundle)
    door = door_settings(config)
    warn_if_exposed(config.host, config.tls, door.tokens)
    warn_secret_files(config)
    brpc = BrpcServer(max_body_size=config.max_request_bytes, limits=door.limits, ssl_context=door.ssl_context,
                      tokens=door.tokens)
    service = register_model_service(
        brpc, bundle, engines, batch_size=op.batch_size, auto_batching_timeout_ms=op.auto_batching_timeout,
        max_queue_images=op.max_queue_images, max_images_per_request=op.max_images_per_request,
        timeout_s=op.timeout_s)
    await service.start()
    log.info("model %s (%s, input %d, %d classes): %d engine instance(s) x %d thread(s) on %s; loaded in "
             "%.2f s", bundle.directory, bundle.meta.arch or "unknown arch", bundle.meta.crop_size,
             bundle.meta.class_num, op.concurrency, op.local_service_conf.thread_num,
             op.local_service_conf.device, time.perf_counter() - started)
    http = None
    try:
        await brpc.start(config.host, config.brpc_port)
        ports = {"brpc": brpc.port}
        if config.http_port is not None:
            http, ports["http"] = await start_model_http(service, config.host, config.http_port, door)
        listening = " ".join(f"{k}={config.host}:{v}" for k, v in ports.items())
        log.info("model server %s: service %r listening %s (pid %d)", bundle.directory,
                 short_service_name(GENERAL_MODEL_SERVICE), listening, os.getpid())
        log.info("%s", door_security_line(list(ports), config.tls, door.tokens))
        write_ready_file(ready_file, short_service_name(GENERAL_MODEL_SERVICE), config.host, ports)
        await wait_for_stop_signal(door.tokens)
        log.info("stopping: finishing calls in flight (grace %.0f s)", config.shutdown_grace_s)
    finally:
        stops = [brpc.stop(config.shutdown_grace_s)]
        if http is not None:
            stops.append(http.cleanup())
        await asyncio.gather(*stops, return_exceptions=True)
        await service.stop()
    log.info("stopped")
    return 0


def run_model_server(config: ServerConfig, ready_file: Path | None = None) -> int:
    """Serve ``config``'s model in this process (one worker; ``worker_num`` > 1 is refused)."""
    check_model_server_config(config)
    check_paths(config)
    if config.worker_num != 1:
        raise ConfigError(f"[CONF] worker_num: got {config.worker_num}; a model server runs one process (use "
                          f"op.{config.op[0].name}.concurrency for more engine instances)")
    return asyncio.run(serve_model(config, ready_file))
