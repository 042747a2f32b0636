"""Scale out on Ray Serve: the same pipeline in N replicas behind Ray Serve's gRPC and HTTP proxies.

Each replica is one `PipelineReplica` actor holding the bundle, the engine worker process(es) and the
project's dynamic batcher (`serving.server.build_pipeline` + `serving.core.ServingCore`, unchanged). Ray
Serve's gRPC proxy serves Paddle Serving's `PipelineService/inference` on the config's `rpc_port` (the
deployment's `inference` method receives the decoded protobuf Request), its HTTP proxy serves REST
`POST /{name}/{method}`, `/health/*` and `/metrics` on `http_port` (the deployment's `__call__`, with the JSON
mapping of `serving.rest_adapter`). bRPC has no Ray proxy and is not offered here.

Batching policy: the project's batcher inside each replica (batch_size, auto_batching_timeout as in
config.yml), not `@serve.batch`; a replica accepts up to `max_ongoing_requests` concurrent requests so
that they can meet in one batch. Autoscaling: Ray's `autoscaling_config` (min/max replicas, target ongoing
requests per replica).

Entry points: `run_ray` (`resnest serve --ray [ADDRESS]`) and `app_builder` (`serve run
serving.ray_app:app_builder config=...`, and the KubeRay RayService in deploy/).
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnest_serving.serving.config import ServerConfig

log = logging.getLogger(__name__)

GRPC_SERVICER = "resnest_serving.protocol.pipeline_service_pb2_grpc.add_PipelineServiceServicer_to_server"
DEPLOYMENT_NAME = "ResNeStPipeline"


@dataclass(frozen=True)
class RayOptions:
    """Where to run and how many replicas. `address` None starts a local Ray instance."""

    address: str | None = None
    min_replicas: int = 1
    max_replicas: int | None = None  # None: equal to min_replicas (a fixed number of replicas)
    target_ongoing: float = 2.0
    max_ongoing: int | None = None  # None: see effective_max_ongoing
    replica_cpus: float | None = None  # None: op.concurrency x thread_num (what the engines really use)

    def validate(self) -> None:
        """ValueError naming the flag for a bad combination."""
        if self.min_replicas < 1:
            raise ValueError(f"--ray-min-replicas must be >= 1, got {self.min_replicas} (with no replica "
                             "nothing answers /health/ready)")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"--ray-max-replicas ({self.max_replicas}) must be >= --ray-min-replicas "
                             f"({self.min_replicas})")
        if not self.target_ongoing > 0:
            raise ValueError(f"--ray-target-ongoing must be > 0, got {self.target_ongoing}")
        if self.max_ongoing is not None and self.max_ongoing < 1:
            raise ValueError(f"--ray-max-ongoing must be >= 1, got {self.max_ongoing}")
        if self.replica_cpus is not None and self.replica_cpus < 0:
            raise ValueError(f"--ray-replica-cpus must be >= 0, got {self.replica_cpus}")

    def effective_max_ongoing(self, config: ServerConfig) -> int:
        """Requests one replica accepts at once: enough for the autoscaling target and for a full batch
        to form (2 x batch_size), at least Ray's default of 5."""
        if self.max_ongoing is not None:
            return self.max_ongoing
        return max(5, math.ceil(2 * self.target_ongoing), 2 * config.op.batch_size)

    def effective_replica_cpus(self, config: ServerConfig) -> float:
        if self.replica_cpus is not None:
            return self.replica_cpus
        return float(config.op.concurrency * config.op.local_service_conf.thread_num)


class PipelineReplica:
    """One Ray Serve replica: a full pipeline (engines, batcher) serving the gRPC and HTTP proxies."""

    async def __init__(self, config: ServerConfig):
        from resnest_serving.serving.connections import DoorSettings
        from resnest_serving.serving.core import ServingCore
        from resnest_serving.serving.metrics import Metrics
        from resnest_serving.serving.rest_adapter import RestAdapter
        from resnest_serving.serving.security import TokenSet
        from resnest_serving.serving.server import build_pipeline

        from resnest_serving.cli import setup_logging

        setup_logging(config.log_level)
        started = time.perf_counter()
        self.config = config
        self.metrics = Metrics()
        self.pipeline = await build_pipeline(config, self.metrics)
        await self.pipeline.start()
        self.core = ServingCore(self.pipeline, self.metrics)
        self.tokens = TokenSet.load(config.auth)
        self.rest = RestAdapter(self.core, DoorSettings(config.max_request_bytes, tokens=self.tokens))
        log.info("ray replica pid %d: service %r ready (%s) in %.2f s", os.getpid(), config.service_name,
                 self.engine_name(), time.perf_counter() - started)

    def engine_name(self) -> str:
        report = getattr(self.pipeline.batcher.engines[0], "report", None)
        return f"{report.kind} {report.precision}" if report else "remote"

    async def describe(self) -> dict[str, Any]:
        """Which process answered and what it runs (for the ready file, scripts and tests)."""
        return {"pid": os.getpid(), "engine": self.engine_name(), "service": self.config.service_name}

    async def inference(self, request, grpc_context=None):
        """gRPC PipelineService/inference, called by Ray Serve's gRPC proxy with the decoded Request (and,
        because of the parameter's name, the call's context: its metadata carries the token). A request over
        `max_request_bytes` gets RESOURCE_EXHAUSTED with grpcio's own wording, as from `resnest serve`."""
        size, limit = request.ByteSize(), self.config.max_request_bytes
        if size > limit:
            import grpc
            from resnest_serving.pipeline.errors import ErrorCode
            from resnest_serving.protocol import pipeline_service_pb2 as pb

            self.metrics.request_done("grpc", int(ErrorCode.INPUT_PARAMS_ERROR), 0.0)
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                grpc_context.set_details(f"SERVER: Received message larger than max ({size} vs. {limit}) "
                                         "(max_request_bytes)")
            return pb.Response()
        if self.tokens.enabled:
            metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
            if not self.tokens.accepts(metadata.get("authorization")):
                import grpc
                from resnest_serving.protocol import pipeline_service_pb2 as pb

                grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
                grpc_context.set_details("missing or invalid bearer token: send metadata 'authorization: Bearer "
                                         "<token>'")
                return pb.Response()
        return await self.core.infer_proto(request, "grpc")

    async def __call__(self, request):
        """HTTP, called by Ray Serve's HTTP proxy with a Starlette request: answered by the same
        RestAdapter.answer as `resnest serve`'s aiohttp server, after the same token check."""
        from resnest_serving.pipeline.errors import ErrorCode
        from resnest_serving.serving.http_guard import (
            BodyRefused,
            ascii_int,
            decoded_body,
            gateway_error,
            open_path_refusal,
            read_bounded,
            too_large,
            unauthenticated,
        )
        from resnest_serving.serving.rest_adapter import rest_takes_body
        from resnest_serving.serving.security import is_open_path

        # the same order as serving.http_guard: open paths, token, method, size, then the body is read
        path, method, headers = request.url.path, request.method, request.headers
        has_body = headers.get("content-length", "0").strip() != "0" or "transfer-encoding" in headers
        refusal = open_path_refusal(method, path, has_body) if is_open_path(path) else None
        if refusal is not None:
            return _starlette(gateway_error(refusal.status, refusal.grpc_code, refusal.message))
        refused = unauthenticated(self.tokens, path, headers.get("authorization"),
                                  request.client.host if request.client else "")
        if refused is not None:
            return _starlette(refused)
        if not (has_body and rest_takes_body(method, path)):
            return _starlette(await self.rest.answer(path, method, b""))
        limit = self.config.max_request_bytes
        try:
            declared = ascii_int(headers.get("content-length", ""))
            if declared is not None and declared > limit:  # refused before reading it
                raise too_large(limit)
            body = await decoded_body(await read_bounded(request.stream(), limit),
                                      headers.get("content-encoding", ""), limit)
        except BodyRefused as exc:
            self.metrics.request_done("http", int(ErrorCode.INPUT_PARAMS_ERROR), 0.0)
            return _starlette(gateway_error(exc.status, exc.grpc_code, exc.message))
        return _starlette(await self.rest.answer(request.url.path, request.method, body))

    async def check_health(self) -> None:
        """Ray's periodic health check: a replica whose pipeline stopped is replaced."""
        if not self.pipeline.ready:
            raise RuntimeError("pipeline not ready")

    async def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            await pipeline.stop()


def _starlette(response):
    """An aiohttp web.Response built by serving.rest_adapter → the same status, body and content type."""
    from starlette.responses import Response

    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    headers.setdefault("Content-Type", response.content_type)
    return Response(response.body, status_code=response.status, headers=headers)


def replica_resources(config: ServerConfig, options: RayOptions) -> dict[str, float]:
    """What Ray reserves per replica: CPUs (see RayOptions) and, for a GPU config, one GPU per engine
    instance (Ray sets CUDA_VISIBLE_DEVICES, so the replica sees its GPU(s) as 0, 1, ...)."""
    resources = {"num_cpus": options.effective_replica_cpus(config)}
    if config.op.local_service_conf.device != "cpu" and not config.op.is_remote:
        resources["num_gpus"] = float(min(config.op.concurrency, len(config.op.local_service_conf.devices) or 1))
    return resources


def check_ray_config(config: ServerConfig) -> None:
    """Refuse what Ray Serve cannot honour (rather than serve without it)."""
    if config.tls.enabled:
        raise ValueError("tls: is not applied with --ray (Ray Serve's proxies terminate the connections; its gRPC "
                         "proxy has no TLS): terminate TLS in front of Ray (ingress, load balancer) and drop tls:")


def build_app(config: ServerConfig, options: RayOptions):
    """The Ray Serve application: one deployment of PipelineReplica with the autoscaling bounds."""
    from ray import serve

    options.validate()
    check_ray_config(config)
    autoscaling = {"min_replicas": options.min_replicas,
                   "max_replicas": options.max_replicas if options.max_replicas is not None else options.min_replicas,
                   "initial_replicas": options.min_replicas,
                   "target_ongoing_requests": options.target_ongoing}
    deployment = serve.deployment(
        PipelineReplica, name=DEPLOYMENT_NAME, autoscaling_config=autoscaling,
        max_ongoing_requests=options.effective_max_ongoing(config),
        ray_actor_options=replica_resources(config, options),
        graceful_shutdown_timeout_s=config.shutdown_grace_s, health_check_period_s=5.0,
        health_check_timeout_s=30.0,
        max_constructor_retry_count=3,  # a replica that cannot load its model fails the deploy, not loops
        # Ray's per-request access log only at DEBUG, as `resnest serve` logs requests.
        logging_config={"log_level": config.log_level, "enable_access_log": config.log_level == "DEBUG"})
    return deployment.bind(config)


def app_builder(args: dict[str, Any]):
    """Application builder for `serve run serving.ray_app:app_builder config=PATH` and serveConfigV2
    (KubeRay): args `config` (path, required), `overrides` ({key: value} as --set), `min_replicas`,
    `max_replicas`, `target_ongoing`, `max_ongoing`, `replica_cpus`."""
    from resnest_serving.serving.config import load_config

    args = dict(args)
    if "config" not in args:
        raise ValueError("application args need 'config': the path of config.yml")
    config = load_config(args.pop("config"), args.pop("overrides", None) or None)
    known = {"min_replicas": int, "max_replicas": int, "target_ongoing": float, "max_ongoing": int,
             "replica_cpus": float}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"unknown application args {unknown}; known: config, overrides, {', '.join(known)}")
    return build_app(config, RayOptions(**{key: known[key](value) for key, value in args.items()}))


def replica_failure(app_name: str) -> str | None:
    """The last error line of the deployment's status message (a replica's constructor traceback)."""
    from ray import serve

    try:
        deployment = serve.status().applications[app_name].deployments[DEPLOYMENT_NAME]
    except (KeyError, RuntimeError):
        return None
    lines = [line.strip() for line in deployment.message.splitlines()
             if re.match(r"^\s*[\w.]+(Error|Exception|Unavailable): ", line)]
    return lines[-1] if lines else None


BIND_HOST_ENV = "RESNEST_RAY_BIND_HOST"
ANY_HOSTS = ("[::]", "0.0.0.0", "")


def is_loopback_host(host: str) -> bool:
    from resnest_serving.protocol.endpoints import is_loopback

    return is_loopback(host)


def bind_only_config_host() -> None:
    """Ray worker-process setup hook (`runtime_env.worker_process_setup_hook`) for a local instance whose
    config `host` is loopback: Ray Serve binds its gRPC proxy and each replica's inter-deployment gRPC
    server on every interface (`[::]:port`, hard-coded in Ray 2.x); this hook rewrites those addresses to
    the host in $RESNEST_RAY_BIND_HOST before any of them is bound. Ray's own processes already stay on
    loopback through the node address (see `run_ray`)."""
    host = os.environ.get(BIND_HOST_ENV)
    if not host:
        return
    try:
        from ray._common import tls_utils
        from ray.serve._private import default_impl, replica

        add_grpc_address, add_port = default_impl.add_grpc_address, tls_utils.add_port_to_grpc_server
        replica.add_port_to_grpc_server  # noqa: B018  (present in the Ray versions this hook knows)
    except (ImportError, AttributeError) as exc:  # another Ray version: say so rather than fail every worker
        log.warning("cannot keep Ray Serve's gRPC servers on %s with this Ray version (%s): they bind every "
                    "interface", host, exc)
        return
    bracketed = f"[{host}]" if ":" in host else host

    def rebind(address: str) -> str:
        where, _, port = address.rpartition(":")
        return f"{bracketed}:{port}" if where in ANY_HOSTS else address

    default_impl.add_grpc_address = lambda server, address: add_grpc_address(server, rebind(address))
    replica.add_port_to_grpc_server = lambda server, address: add_port(server, rebind(address))


def local_runtime_env(host: str) -> dict[str, Any]:
    """The runtime env of a local Ray instance (its workers import the installed `resnest_serving`, like the
    driver). When the config `host` is loopback, every process Ray starts stays on loopback: Ray takes the node address 127.0.0.1 under
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (GCS, raylet, workers and agents then bind it; Ray replaces
    `_node_ip_address="127.0.0.1"` with the machine's address), and the setup hook moves Ray Serve's
    `[::]` binds to `host`. The variables are inherited by every process Ray starts."""
    if not is_loopback_host(host):
        return {}
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # read at import time: set it too when ray was imported already
        constants.ENABLE_RAY_CLUSTER = False
    os.environ[BIND_HOST_ENV] = host
    return {"worker_process_setup_hook": f"{__name__}.bind_only_config_host"}


def bound_addresses(host: str, ports: dict[str, int], local: bool) -> str:
    """What is really bound, for the start-up log: the doors, and where Ray's own processes listen."""
    loopback = local and is_loopback_host(host)
    doors = " ".join(f"{door}={host if door == 'http' or loopback else '[::]'}:{port}" for door, port in ports.items())
    if loopback:
        return f"{doors}; Ray's own processes (GCS, raylet, workers, agents) on 127.0.0.1 only"
    return (f"{doors}; Ray Serve's gRPC proxy and Ray's own processes (GCS, raylet, workers, agents) listen on "
            "every interface of the node: keep it on a private network")


def free_port(host: str) -> int:
    """A port free on `host` now (Ray's proxies need a fixed port; the config's 0 means any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_ray(config: ServerConfig, options: RayOptions, ready_file: Path | None = None) -> int:
    """`resnest serve --ray`: deploy the application (starting a local Ray instance when `options.address`
    is None), write the ready file, serve until SIGTERM/SIGINT, then delete the application (and stop the
    local Ray instance)."""
    from resnest_serving.serving.config import check_paths
    from resnest_serving.serving.server import write_ready_file

    options.validate()
    check_paths(config)
    check_ray_config(config)
    if config.http_port is None:
        raise ValueError("--ray needs http_port: Ray Serve's HTTP proxy serves REST and the health endpoints")
    if config.brpc_port is not None:
        log.warning("brpc_port %d is not served with --ray: Ray Serve has gRPC and HTTP proxies only",
                    config.brpc_port)
    if config.worker_num > 1:
        log.warning("worker_num %d is ignored with --ray: replicas (--ray-min-replicas/--ray-max-replicas) "
                    "take its place", config.worker_num)
    if config.op.is_remote:
        log.warning("client_type brpc: every replica calls the remote model server(s) %s", config.op.server_endpoints)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = options.address is None
    runtime_env = local_runtime_env(config.host) if local else None
    import ray
    from ray import serve

    http_port = config.http_port or free_port(config.host)
    ports = {"http": http_port}
    grpc_options: dict[str, Any] = {}
    if config.rpc_port is not None:
        ports = {"grpc": config.rpc_port or free_port(config.host), **ports}
        grpc_options = {"port": ports["grpc"], "grpc_servicer_functions": [GRPC_SERVICER]}
    stop = threading.Event()

    def on_signal(*_) -> None:
        stop.set()

    # Before ray.init (a SIGTERM during start-up still ends in the orderly shutdown below) and again after:
    # ray.init installs its own SIGTERM handler, which exits at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if local:
        # Loopback node address: a single-machine instance keeps Ray's own traffic off the network.
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, namespace="resnest",
                 runtime_env=runtime_env)
    else:
        ray.init(address=options.address, namespace="resnest")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": config.host, "port": http_port}, grpc_options=grpc_options or None)
        started = time.perf_counter()
        try:
            handle = serve.run(build_app(config, options), name=config.service_name, route_prefix="/")
        except RuntimeError as exc:
            raise ValueError(f"the Ray Serve application did not start: "
                             f"{replica_failure(config.service_name) or exc}") from None
        info = handle.describe.remote().result()
        bound = f"{options.min_replicas}..{options.max_replicas or options.min_replicas}"
        log.info("ray serve application %r: %s replica(s) of %s running in %.1f s; listening %s", config.service_name,
                 bound, info["engine"], time.perf_counter() - started, bound_addresses(config.host, ports, local))
        write_ready_file(ready_file, config.service_name, config.host, ports, f"ray {info['engine']}")
        while not stop.wait(1.0):
            pass
        log.info("stopping: deleting the ray serve application %r", config.service_name)
        serve.delete(config.service_name)
        if local:
            serve.shutdown()
    finally:
        ray.shutdown()
    log.info("stopped")
    return 0
