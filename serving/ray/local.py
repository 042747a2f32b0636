"""`resnest serve --ray`: deploy the application of `serving.ray.app` on a Ray instance (a local one, kept on
loopback when the config's host is, or the cluster at ADDRESS), write the ready file, serve until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from resnest_serving.serving.config.loader import ServerConfig
from resnest_serving.serving.ray.app import (
    GRPC_SERVICER,
    RayOptions,
    build_app,
    check_ray_config,
    replica_failure,
)

log = logging.getLogger(__name__)


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
    from resnest_serving.serving.config.files import check_paths
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
    op = config.op[0]  # one op: check_ray_config refused several
    if op.is_remote:
        log.warning("client_type brpc: every replica calls the remote model server(s) %s", op.server_endpoints)
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
