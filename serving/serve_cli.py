"""`resnest serve`: start the pipeline server from a Paddle Serving config.yml."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over gRPC, REST, bRPC and the Open Inference Protocol from a Paddle Serving "
                      "config.yml",
        description="Start the pipeline server: Paddle Serving's PipelineService over gRPC (rpc_port), REST "
                    "(http_port) and bRPC (brpc_port), and the Open Inference Protocol (KServe V2: REST /v2/... on "
                    "http_port, gRPC inference.GRPCInferenceService on rpc_port; tritonclient works unchanged). "
                    "The config is Paddle Serving's pipeline config.yml (PaddleClas's works unchanged apart from "
                    "model_config); see docs/configuration.md.")
    p.add_argument("--config", type=Path, required=True, help="config.yml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set rpc_port=0 --set op.imagenet.concurrency=2 "
                        "(value parsed as YAML; repeatable)")
    p.add_argument("--model-server", action="store_true",
                   help="run only the model: C++ Serving's GeneralModelService over bRPC on brpc_port (required) "
                        "and HTTP on http_port, for pipelines with client_type: brpc + server_endpoints")
    p.add_argument("--ready-file", type=Path, metavar="PATH",
                   help="once every port listens, write {pid, service, host, ports} there as JSON (for scripts "
                        "that start the server)")
    ray = p.add_argument_group(
        "scale out on Ray Serve", "Deploy the same pipeline as a Ray Serve application: N replicas, each with its "
        "own engines and batcher, behind Ray's gRPC proxy (PipelineService on rpc_port) and HTTP proxy (REST, "
        "health, metrics on http_port). Needs the ray extra: pip install 'resnest-serving[ray]'.")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run on Ray Serve; ADDRESS of an existing cluster (e.g. auto or ray://head:10001), none "
                          "to start a local Ray instance")
    ray.add_argument("--ray-min-replicas", type=int, metavar="N",
                     help="replicas at least (default 1; also the initial number)")
    ray.add_argument("--ray-max-replicas", type=int, metavar="N",
                     help="replicas at most (default: --ray-min-replicas, i.e. no autoscaling)")
    ray.add_argument("--ray-target-ongoing", type=float, metavar="R",
                     help="autoscaling target: requests in flight per replica (default 2)")
    ray.add_argument("--ray-max-ongoing", type=int, metavar="N",
                     help="requests one replica accepts at once (default max(5, 2 x target, 2 x batch_size))")
    ray.add_argument("--ray-replica-cpus", type=float, metavar="C",
                     help="CPUs Ray reserves per replica (default op concurrency x thread_num; may be fractional)")
    p.set_defaults(func=run)


RAY_FLAGS = {"ray_min_replicas": "min_replicas", "ray_max_replicas": "max_replicas",
             "ray_target_ongoing": "target_ongoing", "ray_max_ongoing": "max_ongoing",
             "ray_replica_cpus": "replica_cpus"}


def ray_options(args: argparse.Namespace):
    """The --ray-* flags as serving.ray.app.RayOptions (ValueError for a --ray-* flag without --ray)."""
    given = {field: getattr(args, flag) for flag, field in RAY_FLAGS.items() if getattr(args, flag, None) is not None}
    if args.ray is None:
        if given:
            names = ", ".join("--" + flag.replace("_", "-") for flag in RAY_FLAGS if getattr(args, flag) is not None)
            raise ValueError(f"{names} only apply with --ray")
        return None
    if args.model_server:
        raise ValueError("--model-server and --ray do not combine: Ray Serve has no bRPC proxy")
    from resnest_serving.serving.ray.app import RayOptions

    options = RayOptions(address=args.ray or None, **given)
    options.validate()
    return options


def run(args: argparse.Namespace) -> int:
    from resnest_serving.serving.config.loader import load_config, parse_override
    from resnest_serving.serving.server import run as run_server

    options = ray_options(args)
    overrides = dict(parse_override(item) for item in args.overrides)
    config = load_config(args.config, overrides)
    logging.getLogger().setLevel(config.log_level if args.log_level.upper() == "INFO" else args.log_level.upper())
    if args.model_server:
        from resnest_serving.serving.split.model_server import run_model_server

        return run_model_server(config, args.ready_file)
    if options is not None:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError("--ray needs Ray Serve: pip install 'resnest-serving[ray]'")
        from resnest_serving.serving.ray.local import run_ray

        return run_ray(config, options, args.ready_file)
    return run_server(config, args.ready_file)
