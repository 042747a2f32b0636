"""`resnest serve`: start the pipeline server from a Paddle Serving config.yml."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over gRPC, REST and bRPC from a Paddle Serving config.yml",
        description="Start the pipeline server. The config is Paddle Serving's pipeline config.yml "
                    "(PaddleClas's works unchanged apart from model_config); see docs/configuration.md.")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.config import load_config, parse_override
    from serving.server import run as run_server

    overrides = dict(parse_override(item) for item in args.overrides)
    config = load_config(args.config, overrides)
    logging.getLogger().setLevel(config.log_level if args.log_level.upper() == "INFO" else args.log_level.upper())
    if args.model_server:
        from serving.model_server import run_model_server

        return run_model_server(config, args.ready_file)
    return run_server(config, args.ready_file)
