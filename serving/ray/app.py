"""Scale out on Ray Serve: the same pipeline in N replicas behind Ray Serve's gRPC and HTTP proxies.

Each replica is one `PipelineReplica` actor holding the bundle, the engine worker process(es) and the
project's dynamic batcher (`serving.server.build_pipeline` + `serving.core.ServingCore`, unchanged). Ray
Serve's gRPC proxy serves Paddle Serving's `PipelineService/inference` on the config's `rpc_port` (the
deployment's `inference` method receives the decoded protobuf Request), its HTTP proxy serves REST
`POST /{name}/{method}`, `/health/*` and `/metrics` on `http_port` (the deployment's `__call__`, with the JSON
mapping of `serving.doors.rest_door`). bRPC has no Ray proxy and is not offered here.

Batching policy: the project's batcher inside each replica (batch_size, auto_batching_timeout as in
config.yml), not `@serve.batch`; a replica accepts up to `max_ongoing_requests` concurrent requests so
that they can meet in one batch. Autoscaling: Ray's `autoscaling_config` (min/max replicas, target ongoing
requests per replica).

Entry points: `app_builder` here (`serve run resnest_serving.serving.ray.app:app_builder config=...`, and the
KubeRay RayService in deploy/), and `serving.ray.local.run_ray` (`resnest serve --ray [ADDRESS]`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from resnest_serving.serving.config.loader import ServerConfig
from resnest_serving.serving.ray.replica import PipelineReplica

log = logging.getLogger(__name__)

RAY = "Ray Serve (--ray)"  # what the one-op check names

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
        return max(5, math.ceil(2 * self.target_ongoing), 2 * config.only_op(RAY).batch_size)

    def effective_replica_cpus(self, config: ServerConfig) -> float:
        if self.replica_cpus is not None:
            return self.replica_cpus
        op = config.only_op(RAY)
        return float(op.concurrency * op.local_service_conf.thread_num)


def replica_resources(config: ServerConfig, options: RayOptions) -> dict[str, float]:
    """What Ray reserves per replica: CPUs (see RayOptions) and, for a GPU config, one GPU per engine
    instance (Ray sets CUDA_VISIBLE_DEVICES, so the replica sees its GPU(s) as 0, 1, ...)."""
    resources = {"num_cpus": options.effective_replica_cpus(config)}
    op = config.only_op(RAY)
    if op.local_service_conf.device != "cpu" and not op.is_remote:
        resources["num_gpus"] = float(min(op.concurrency, len(op.local_service_conf.devices) or 1))
    return resources


def check_ray_config(config: ServerConfig) -> None:
    """Refuse what Ray Serve cannot honour (rather than serve without it): several ops ([CONF] op), TLS."""
    config.only_op(RAY)
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
    """Application builder for `serve run serving.ray.app:app_builder config=PATH` and serveConfigV2
    (KubeRay): args `config` (path, required), `overrides` ({key: value} as --set), `min_replicas`,
    `max_replicas`, `target_ongoing`, `max_ongoing`, `replica_cpus`."""
    from resnest_serving.serving.config.loader import load_config

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
