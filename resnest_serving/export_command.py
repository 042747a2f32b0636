"""`resnest export`: a checkpoint or an inference model dir → Paddle inference model + Serving dirs.

It sits above `export/` and `pipeline/` because it composes them: the exporter writes the bundle, and the
pipeline's preprocessing and engines calibrate int8 and check bf16/int8 against fp32 (`PipelineRunner`).
Both are imported when used, so `resnest --help` stays light.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from resnest_serving.export.specs import ARCHS

if TYPE_CHECKING:
    import numpy as np

    from resnest_serving.export.exporter import ExportOptions, ExportResult

log = logging.getLogger(__name__)


class PipelineRunner:
    """The exporter's `BundleRunner` on the server's own preprocessing and engines (`pipeline.accuracy`)."""

    def preprocess(self, server_dir: Path, images: Mapping[str, bytes]) -> np.ndarray:
        from resnest_serving.pipeline.accuracy import preprocess_images
        from resnest_serving.protocol.bundle import ModelBundle

        return preprocess_images(ModelBundle.load(server_dir), images)

    def check_precisions(self, server_dir: Path, image_sets: Mapping[str, Mapping[str, bytes]],
                         precisions: Sequence[str], thread_num: int) -> dict:
        from resnest_serving.pipeline.accuracy import check_precisions
        from resnest_serving.protocol.bundle import ModelBundle

        return check_precisions(ModelBundle.load(server_dir), image_sets, precisions, thread_num)


def export_model(opts: ExportOptions) -> ExportResult:
    """The whole export `resnest export` runs: the bundle, plus int8 and the precision checks when asked."""
    from resnest_serving.export.exporter import export

    return export(opts, PipelineRunner())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a ResNeSt checkpoint to a Paddle inference model + Paddle Serving dirs",
        description="Write OUT/serving_server (model, params, serving_server_conf.prototxt + .stream, "
                    "resnest_meta.json) and OUT/serving_client, as Paddle Serving's convert does.")
    p.add_argument("--arch", required=True, choices=sorted(ARCHS), metavar="ARCH",
                   help=f"ResNeSt variant: {', '.join(ARCHS)}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path,
                     help="PaddleClas .pdparams, PyTorch .pth/.pt/.safetensors, or an inference model dir "
                          "(.json or legacy .pdmodel + .pdiparams, e.g. PaddleClas's *_infer.tar contents)")
    src.add_argument("--random-init", action="store_true", help="random weights (for shapes and speed only)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--class-num", type=int, help="classes (default: from the checkpoint, else the variant's)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    p.add_argument("--labels", type=Path, help="label file to record in the bundle ('<id> <name>' or one name per line)")
    p.add_argument("--feed-alias", default="x", help="feed alias name (default x)")
    p.add_argument("--fetch-alias", default="prediction", help="fetch alias name (default prediction, as PaddleClas)")
    p.add_argument("--no-softmax", action="store_true", help="do not append softmax (default: appended, as PaddleClas)")
    p.add_argument("--resize-short", type=int, help="override the variant's resize-short size")
    p.add_argument("--crop-size", type=int, help="override the variant's crop (= model input) size")
    p.add_argument("--no-onnx", action="store_true",
                   help="do not write serving_server/inference.onnx (default: written, for ONNX Runtime and OpenVINO)")
    p.add_argument("--int8", action="store_true",
                   help="also write inference.int8.onnx by post-training quantization (needs --calib-images)")
    p.add_argument("--calib-images", type=Path, metavar="DIR",
                   help="images to calibrate --int8 on (a few dozen like the ones you will serve)")
    p.add_argument("--check-images", type=Path, action="append", default=[], metavar="DIR",
                   help="images to check bf16/int8 against fp32 on (repeatable; default: the calibration "
                        "images); top-1 agreement and max |Δprob| go into resnest_meta.json")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--debug", action="store_true",
                   help="on failure, show the traceback (default: one line naming the cause, exit status 2)")
    p.set_defaults(func=run)


def read_images(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (sorted; hidden ones skipped), by name; a file that is not an image fails
    later with its name."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type (unless a ValueError, our "bad input" errors, whose text says it
    all) and the first non-empty line of its text (Paddle's errors go on for pages)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return first if isinstance(exc, ValueError) else f"{type(exc).__name__}: {first or 'no message'}"


def run(args: argparse.Namespace) -> int:
    """Export; any failure is one error line and exit status 2 (the traceback too with --debug)."""
    try:
        return _run(args)
    except Exception as exc:
        if getattr(args, "debug", False):
            log.exception("export failed")
        else:
            log.error("export failed: %s (--debug shows the traceback)", one_line(exc))
        return 2


def _run(args: argparse.Namespace) -> int:
    from resnest_serving.export.exporter import ExportOptions

    result = export_model(ExportOptions(
        arch=args.arch, out=args.out, checkpoint=args.checkpoint, random_init=args.random_init, seed=args.seed,
        class_num=args.class_num, feed_alias=args.feed_alias, fetch_alias=args.fetch_alias,
        softmax=not args.no_softmax, label_file=args.labels, onnx=not args.no_onnx, int8=args.int8,
        calibration_images=read_images(args.calib_images) if args.calib_images else {},
        check_images={folder.name: read_images(folder) for folder in args.check_images},
        force=args.force, resize_short=args.resize_short, crop_size=args.crop_size))
    log.info("serving_server: %s", result.server_dir)
    log.info("serving_client: %s", result.client_dir)
    return 0
