"""The `resnest` command: one entry point, a subcommand per job, each defined next to the code it drives."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

# Paddle warns on import that it found no C++ compiler cache: it compiles nothing here.
warnings.filterwarnings("ignore", message="No ccache found")


def build_parser() -> argparse.ArgumentParser:
    from resnest_serving import export_command as export_cli

    parser = argparse.ArgumentParser(prog="resnest", description="Export, serve and load-test ResNeSt classifiers "
                                     "(wire-compatible with Paddle Serving 0.9).")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export_cli.add_parser(sub)
    for module in _optional_commands():
        module.add_parser(sub)
    return parser


def _optional_commands() -> list:
    """Subcommands from the other packages (imported lazily so `resnest export` stays light)."""
    import importlib

    modules = []
    for name in ("client.predict_cli", "serving.serve_cli", "client.bench_cli", "serving.tune", "demo.cli"):
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules


def setup_logging(level: str) -> None:
    """One line per event on stderr; force=True because importing paddle installs its own handler."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from resnest_serving.pipeline.engines.base import EngineError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, EngineError) as exc:
        logging.getLogger("resnest").error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
