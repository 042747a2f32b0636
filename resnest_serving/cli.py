"""The `resnest` command: one entry point, a subcommand per job, each defined next to the code it drives.

The base install is the client, so every subcommand's parser module imports nothing heavy: `resnest --help`,
`predict` and `bench` work without the engines. A command that needs an extra (`EXTRAS`) checks for it before
it starts and, where the extra is missing, says in one line which one to install and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import warnings
from pathlib import Path

# Paddle warns on import that it found no C++ compiler cache: it compiles nothing here.
warnings.filterwarnings("ignore", message="No ccache found")

EXTRAS: dict[str, tuple[str, ...]] = {
    "server": ("cv2", "PIL", "simplejpeg", "yaml"),
    "export": ("paddle",),
}
"""setup.cfg's extras beyond the client, each with the modules a command of it cannot start without (the
engines are not listed: `engine: auto` uses whichever is installed and names the ones that are not)."""

COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {"serve": ("server",), "tune": ("server",), "export": ("export",),
                                              "demo": ("server", "export")}


class MissingExtra(Exception):
    """A command was run on an install that lacks the extra it needs."""

    def __init__(self, command: str, extras: tuple[str, ...], module: str):
        super().__init__(f"resnest {command} needs the {' and '.join(extras)} extra{'s' if len(extras) > 1 else ''} "
                         f"({module} is not installed): pip install 'resnest-serving[{','.join(extras)}]'")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def require_extras(command: str, extras: tuple[str, ...]) -> None:
    """Raise MissingExtra naming `extras` when a module one of them brings is not importable here."""
    for extra in extras:
        for module in EXTRAS[extra]:
            if not _installed(module):
                raise MissingExtra(command, extras, module)


def classify_in_process(model_dir: Path, images: list[Path], k: int) -> list[dict]:
    """`resnest predict --model-dir DIR`: the images classified in this process with the pipeline's own code (the
    server's preprocessing, engine and top-k), as rows shaped like the client's Classification.to_dict(). It
    lives here, above both packages, because the client shares only `protocol/` with the server side."""
    require_extras("predict --model-dir", ("server",))
    from resnest_serving.pipeline.local import LocalClassifier

    classifier = LocalClassifier(model_dir)
    return [{"image": str(path), "label": p.labels[0].replace(",", ""), "prob": p.scores[0],
             "labels": p.labels, "scores": p.scores, "class_ids": p.class_ids}
            for path, p in zip(images, classifier.classify_files(images, k), strict=True)]


def build_parser() -> argparse.ArgumentParser:
    from resnest_serving import export_command as export_cli
    from resnest_serving.client import bench_cli, predict_cli
    from resnest_serving.demo import cli as demo_cli
    from resnest_serving.serving import serve_cli, tune

    parser = argparse.ArgumentParser(prog="resnest", description="Export, serve and load-test ResNeSt classifiers "
                                     "(wire-compatible with Paddle Serving 0.9).")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export_cli.add_parser(sub)
    predict_cli.add_parser(sub, in_process=classify_in_process)
    serve_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    tune.add_parser(sub)
    demo_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from resnest_serving.serving.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from resnest_serving.pipeline.engines.base import EngineError

    log = logging.getLogger("resnest")
    extras = COMMAND_EXTRAS.get(args.command, ())
    try:
        require_extras(args.command, extras)
        return int(args.func(args) or 0)
    except MissingExtra as exc:
        log.error("%s", exc)
        return 2
    except ModuleNotFoundError as exc:  # an optional module imported late (its message may name the extra)
        if (exc.name or "resnest_serving").partition(".")[0] == "resnest_serving":
            raise  # one of our own modules: a bug, not a missing extra
        log.error("%s", MissingExtra(args.command, extras, exc.name) if extras else exc)
        return 2
    except (ValueError, FileNotFoundError, EngineError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
