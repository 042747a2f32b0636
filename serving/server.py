"""The server process: one asyncio loop hosting the gRPC, REST and bRPC front doors over the served models
(one pipeline per op, routed by name in serving.core).

`run(config)` serves until SIGTERM/SIGINT, then stops accepting, lets requests in flight finish (up to
`shutdown_grace_s`) and returns 0. With `worker_num > 1` it starts that many worker processes that
share the ports (SO_REUSEPORT), each a full copy of the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from resnest_serving.pipeline.accuracy import recorded_check
from resnest_serving.pipeline.engines import Engine, start_engines
from resnest_serving.pipeline.pipeline import Pipeline, PipelineSettings
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import DEVICE_CODES, EngineOptions
from resnest_serving.serving.config.files import check_paths
from resnest_serving.serving.config.loader import ServerConfig
from resnest_serving.serving.config.schema import OpConfig
from resnest_serving.serving.core import ServedModel, ServedVersion, ServingCore
from resnest_serving.serving.doors.connections import ConnectionLimits, DoorSettings
from resnest_serving.serving.doors.security import (
    TokenSet,
    door_security_line,
    server_ssl_context,
    warn_if_exposed,
    warn_if_readable_by_others,
)
from resnest_serving.serving.metrics import Metrics, Tracer
from resnest_serving.serving.repository.manager import ModelRepository
from resnest_serving.serving.repository.policy import DEFAULT_POLICY, select
from resnest_serving.serving.repository.versions import (
    BUNDLE_FILES,
    UNVERSIONED,
    ModelVersion,
    scan_repository,
)
from resnest_serving.serving.v2.model import V2Models

log = logging.getLogger(__name__)


def engine_options(op: OpConfig) -> EngineOptions:
    """Paddle Serving's local_service_conf → our Paddle Inference switches (one op's)."""
    lsc = op.local_service_conf
    return EngineOptions(device_type=DEVICE_CODES[lsc.device], thread_num=lsc.thread_num,
                         use_mkldnn=lsc.use_mkldnn, mkldnn_cache_capacity=lsc.mkldnn_cache_capacity,
                         mkldnn_op_list=lsc.mkldnn_op_list, mkldnn_bf16_op_list=lsc.mkldnn_bf16_op_list,
                         ir_optim=lsc.ir_optim, mem_optim=lsc.mem_optim, precision=lsc.precision,
                         min_subgraph_size=lsc.min_subgraph_size, use_calib=lsc.use_calib,
                         max_batch_size=op.batch_size, batch_streams=lsc.batch_streams)


def door_settings(config: ServerConfig) -> DoorSettings:
    """What every front door enforces, from the config: body size, connection limits, TLS, tokens."""
    return DoorSettings(config.max_request_bytes, ConnectionLimits.from_config(config), server_ssl_context(config.tls),
                        TokenSet.load(config.auth))


def pipeline_settings(config: ServerConfig, op: OpConfig, name: str) -> PipelineSettings:
    """The pipeline settings of the op served as model `name`."""
    return PipelineSettings(service_name=name, topk=op.topk, batch_size=op.batch_size,
                            auto_batching_timeout_ms=op.auto_batching_timeout, timeout_ms=op.timeout,
                            max_images_per_request=op.max_images_per_request,
                            max_image_pixels=op.max_image_pixels, max_aspect_ratio=op.max_aspect_ratio,
                            jpeg_dct_scaling=op.jpeg_dct_scaling,
                            max_queue_images=op.max_queue_images,
                            preprocess_threads=max(1, min(4, os.cpu_count() or 1)), retry=config.dag.retry,
                            log_profile=config.dag.use_profile, response_cache_mb=op.response_cache_mb)


def load_bundle(op: OpConfig, bundle: ModelBundle | None = None) -> ModelBundle:
    """The op's bundle (`bundle`, a version's, or the one in model_config), its fetch alias checked against
    the op's fetch_list."""
    if bundle is None:
        bundle = ModelBundle.load(op.local_service_conf.model_config, op.label_file)
    fetch_list = op.effective_fetch_list
    if fetch_list is not None and bundle.fetch_alias not in fetch_list:
        raise ValueError(f"[CONF] op.{op.name}.fetch_list: {list(fetch_list)} does not name the model's fetch "
                         f"alias {bundle.fetch_alias!r} (serving_server_conf.prototxt)")
    return bundle


async def start_op_engines(op: OpConfig, bundle: ModelBundle) -> list[Engine]:
    """The op's engine instances, loaded and warmed up at every batch size (the slow part of start-up):
    local engines in worker processes, or the remote model server(s) of `client_type: brpc`."""
    if op.is_remote:
        from resnest_serving.serving.config.loader import ConfigError
        from resnest_serving.serving.split.remote_engine import (
            RemoteSecurity,
            create_remote_engines,
            with_client_config,
        )

        try:
            security = RemoteSecurity.from_config(op.local_service_conf, f"op.{op.name}.local_service_conf")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if op.client_config is not None:
            bundle = with_client_config(bundle, op.client_config)
        return create_remote_engines(bundle, op.server_endpoints, op.concurrency,
                                     op.local_service_conf.rpc_timeout_ms / 1000.0, security=security)
    engines = await start_engines(bundle, op.engine, engine_options(op), op.concurrency, op.batch_size,
                                  list(op.local_service_conf.devices) or None)
    report = engines[0].report
    if report.precision != "fp32":
        check = recorded_check(bundle, report.precision, report.kind)
        if check:
            log.info("model %s: accuracy check: %s", op.name, check)
        else:
            log.warning("model %s: no accuracy check of %s on %s is recorded for this model: export it with "
                        "--check-images DIR to measure what %s costs", op.name, report.precision, report.kind,
                        report.precision)
    return engines


async def build_pipeline(config: ServerConfig, op: OpConfig, name: str, metrics: Metrics,
                         version: ModelVersion | None = None) -> Pipeline:
    """Load the op's model (or `version` of it) and start its engine instances; the pipeline serves it as
    model `name`."""
    bundle = load_bundle(op, version.bundle if version else None)
    engines = await start_op_engines(op, bundle)
    return Pipeline(bundle, engines, pipeline_settings(config, op, name), metrics.for_model(name),
                    version=str(version.version if version else UNVERSIONED))


async def start_pipeline(config: ServerConfig, op: OpConfig, name: str, metrics: Metrics,
                         version: ModelVersion | None = None) -> Pipeline:
    """One model (or one `version` of it) loaded, checked, started and logged (its start-up lines name it);
    on a failure nothing of it is left running."""
    started = time.perf_counter()
    pipeline = await build_pipeline(config, op, name, metrics, version)
    try:
        await pipeline.start()
    except BaseException:
        await pipeline.stop()
        raise
    bundle = pipeline.bundle
    where = (f"remote model at {', '.join(op.server_endpoints)} over bRPC" if op.is_remote else
             f"{op.concurrency} engine instance(s) x {op.local_service_conf.thread_num} thread(s) on "
             f"{op.local_service_conf.device}")
    label = f"model {name!r}" + (f" version {version.version}" if version else "")
    log.info("%s: %s (%s, input %d, %d classes) %s; loaded in %.2f s", label, bundle.directory,
             bundle.meta.arch or "unknown arch", bundle.meta.crop_size, bundle.meta.class_num, where,
             time.perf_counter() - started)
    return pipeline


def versions_at_start(op: OpConfig, name: str) -> list[ModelVersion] | None:
    """The versions `op.<name>.version_policy` picks in a versioned model_config (None: the unversioned layout,
    served as version 1 as always); ValueError when it picks none."""
    model_dir = op.local_service_conf.model_config
    if op.is_remote or any((model_dir / f).is_file() for f in BUNDLE_FILES):
        return None
    scan = scan_repository(model_dir, op.label_file)
    log.info("model %s: %s", name, scan.summary())
    for problem in scan.problems:
        log.error("model %s: %s", name, problem.message)
    policy = op.version_policy or DEFAULT_POLICY
    selection = select(policy, scan.numbers)
    if (missing := selection.error(scan.numbers)) is not None:
        log.error("model %s: %s", name, missing)
    if not selection.versions:
        raise ValueError(f"model {name}: {model_dir}: no servable version for version_policy {policy.describe()}"
                         f" (loadable: {', '.join(str(n) for n in scan.numbers) or 'none'})")
    return [v for v in scan.versions if v.version in selection.versions]


async def start_model(config: ServerConfig, op: OpConfig, name: str, metrics: Metrics) -> ServedModel:
    """One model with the versions its policy picks (the unversioned layout: version 1), started."""
    versions = versions_at_start(op, name)
    if versions is None:
        return ServedModel(name, op, await start_pipeline(config, op, name, metrics))
    model = ServedModel(name, op, versioned=True)
    started: dict[int, ServedVersion] = {}
    try:
        for version in versions:
            started[version.version] = ServedVersion(version.version, await start_pipeline(config, op, name, metrics,
                                                                                           version))
    except BaseException:
        await asyncio.gather(*(v.pipeline.stop() for v in started.values()), return_exceptions=True)
        raise
    model.versions = started
    return model


def engine_line(model: ServedModel) -> str:
    """'kind precision' of the model's engines, or 'remote' (the ready file's `engine`)."""
    report = getattr(model.pipeline.batcher.engines[0], "report", None)
    return f"{report.kind} {report.precision}" if report else "remote"


@dataclass
class Server:
    """All front doors of one process over the served models (one pipeline each)."""

    config: ServerConfig
    reuse_port: bool = False
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        from resnest_serving.serving.doors.brpc_door import register_pipeline
        from resnest_serving.serving.doors.brpc_server import BrpcServer
        from resnest_serving.serving.doors.grpc_door import start_grpc
        from resnest_serving.serving.doors.rest_door import start_rest

        config = self.config
        self.metrics = Metrics()
        self.models: list[ServedModel] = []
        try:
            for name, op in config.models.items():
                self.models.append(await start_model(config, op, name, self.metrics))
        except BaseException:
            await asyncio.gather(*(v.pipeline.stop() for model in self.models for v in model.versions.values()),
                                 return_exceptions=True)
            raise
        self.core = ServingCore(self.models, self.metrics)
        self.repository = ModelRepository(
            self.core, lambda model, version: start_pipeline(config, model.op, model.name, self.metrics, version),
            config.model_repository_poll_s, config.shutdown_grace_s)
        self.v2 = V2Models(self.core, config.model_control)  # the Open Inference Protocol's view, both its doors
        self._grpc = self._rest = self._brpc = self._prometheus = None
        door = door_settings(config)
        self.tokens = door.tokens
        warn_if_exposed(config.host, config.tls, door.tokens)
        warn_secret_files(config)
        grace = config.shutdown_grace_s + 1.0  # the pipeline answers what is left at grace; this is a backstop
        if config.rpc_port is not None:
            self._grpc, self.ports["grpc"] = await start_grpc(self.core, config.host, config.rpc_port, door,
                                                              config.tls, self.reuse_port, v2=self.v2)
        if config.http_port is not None:
            self._rest, self.ports["http"] = await start_rest(self.core, config.host, config.http_port, door,
                                                              self.reuse_port, shutdown_timeout_s=grace,
                                                              v2=self.v2)
        if config.brpc_port is not None:
            self._brpc = BrpcServer(max_body_size=config.max_request_bytes, limits=door.limits,
                                    ssl_context=door.ssl_context, tokens=door.tokens)
            register_pipeline(self._brpc, self.core)
            await self._brpc.start(config.host, config.brpc_port, reuse_port=self.reuse_port)
            self.ports["brpc"] = self._brpc.port
        if config.dag.enable_prometheus:
            self._prometheus, self.ports["prometheus"] = await start_rest(
                self.core, config.host, config.dag.prometheus_port, door, self.reuse_port, metrics_only=True,
                shutdown_timeout_s=grace)
        listening = " ".join(f"{k}={config.host}:{v}" for k, v in self.ports.items())
        log.info("service %r listening %s, models %s (pid %d)", config.service_name, listening,
                 ", ".join(repr(name) for name in self.core.models), os.getpid())
        log.info("%s", door_security_line(list(self.ports), config.tls, door.tokens))
        self._tracer = Tracer(self.metrics, config.dag.tracer.interval_s) if config.dag.tracer.interval_s >= 1 else None
        if self._tracer is not None:
            self._tracer.start()
        self.repository.start_polling()

    async def stop(self) -> None:
        """Stop accepting on every front door and let requests in flight finish; at `shutdown_grace_s`,
        answer those still running with err_no 3001 (none is dropped), then stop the pipeline."""
        grace = self.config.shutdown_grace_s
        log.info("stopping: finishing requests in flight (grace %g s)", grace)
        await self.repository.stop()
        backstop = grace + 1.0  # the doors' own limit; the pipeline has answered everything by then
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(backstop))
        for runner in (self._rest, self._prometheus):
            if runner is not None:
                stops.append(runner.cleanup())
        if self._brpc is not None:
            stops.append(self._brpc.stop(backstop))
        doors = [asyncio.ensure_future(stop) for stop in stops]
        _done, pending = await asyncio.wait(doors, timeout=grace) if doors else (set(), set())
        if pending:
            count = sum(pipeline.abort(f"server shutting down: the request did not finish within "
                                       f"shutdown_grace_s ({grace:g} s); retry it") for pipeline in self._pipelines())
            log.warning("stopping: grace of %g s over; answered %d request(s) still in flight with err_no 3001",
                        grace, count)
            await asyncio.wait(pending, timeout=backstop - grace + 1.0)
        for door in doors:
            if not door.done():
                door.cancel()
                log.warning("stopping: a front door did not stop within %g s; cancelled", backstop)
            elif door.exception() is not None:
                log.warning("stopping: a front door failed to stop cleanly: %r", door.exception())
        if self._tracer is not None:
            await self._tracer.stop()
        for pipeline in self._pipelines():
            await pipeline.stop()
        log.info("stopped")

    def _pipelines(self) -> list[Pipeline]:
        """Every pipeline running: the served versions and those draining."""
        return [v.pipeline for model in self.models for v in (*model.versions.values(), *model.draining.values())]


def warn_secret_files(config: ServerConfig) -> None:
    """A WARNING for each secret file of the config (token files, TLS private keys) readable by others."""
    files = {"auth.token_file": config.auth.token_file, "tls.key_file": config.tls.key_file}
    for op in config.op:
        lsc = op.local_service_conf
        files[f"op.{op.name}.local_service_conf.rpc_token_file"] = lsc.rpc_token_file
        files[f"op.{op.name}.local_service_conf.rpc_tls_key_file"] = lsc.rpc_tls_key_file
    warn_if_readable_by_others(files)


async def wait_for_stop_signal(tokens: TokenSet) -> None:
    """Return at SIGTERM or SIGINT; meanwhile SIGHUP reads the token file again (rotation without a restart).
    Call it after start-up: importing paddle installs its own SIGTERM handler, which must not win."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if tokens.path is not None:
        loop.add_signal_handler(signal.SIGHUP, tokens.reload)
    await stop.wait()


def write_ready_file(path: Path | None, service: str, host: str, ports: dict[str, int], engine: str = "") -> None:
    """Announce that every front door is listening: JSON {"pid", "service", "host", "ports": {door: port},
    "engine"}, written atomically (what `serving.launcher` waits for; logs are for people, not programs)."""
    if path is None:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "service": service, "host": host, "ports": ports,
                               "engine": engine}))
    tmp.replace(path)


async def serve(config: ServerConfig, reuse_port: bool = False, ready_file: Path | None = None) -> int:
    """Run one server until SIGTERM/SIGINT."""
    server = Server(config, reuse_port=reuse_port)
    await server.start()
    write_ready_file(ready_file, config.service_name, config.host, server.ports,
                     ", ".join(engine_line(model) for model in server.models))
    await wait_for_stop_signal(server.tokens)
    await server.stop()
    return 0


def _worker_main(config: ServerConfig, index: int, ready_file: Path | None) -> None:
    from resnest_serving.serving.logs import setup_logging

    setup_logging(config.log_level)
    log.info("worker %d starting", index)
    raise SystemExit(asyncio.run(serve(config, reuse_port=True, ready_file=ready_file if index == 0 else None)))


def run(config: ServerConfig, ready_file: Path | None = None) -> int:
    """Serve `config` in this process, or in `worker_num` processes sharing the ports; `ready_file`: see
    write_ready_file (with several workers, the first one writes it)."""
    check_paths(config)
    if config.worker_num == 1:
        return asyncio.run(serve(config, ready_file=ready_file))
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_worker_main, args=(config, i, ready_file), name=f"resnest-worker-{i}")
               for i in range(config.worker_num)]
    for worker in workers:
        worker.start()

    def forward(signum, _frame):
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    def forward_hup(signum, _frame):
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward_hup)
    log.info("started %d worker processes: %s", len(workers), [w.pid for w in workers])
    codes = []
    for worker in workers:
        worker.join()
        codes.append(worker.exitcode)
        if worker.exitcode != 0:
            forward(signal.SIGTERM, None)
    log.info("workers exited with %s", codes)
    return 0 if all(code == 0 for code in codes) else 1
