"""Run by Paddle Serving's interpreter (Python 3.9, Paddle 2.x), not by ours: writes a ResNeSt variant as a
legacy inference model (`inference.pdmodel` + `inference.pdiparams`, softmax appended as PaddleClas exports),
which Paddle 2.x and Paddle 3 (hence both servers) read; Paddle 2.x cannot read Paddle 3's PIR `.json`.
The architecture is this repository's `export/resnest.py` (plain Paddle code), imported from its folder without
the packages' `__init__` files (they need Python 3.10+). Weights: a PaddleClas `.pdparams` or random (seeded).

    /work/ps39/bin/python bench/paddle_serving/legacy_model.py --arch ResNeSt50 --out DIR [--params F.pdparams]
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("legacy_model")


def import_resnest():
    """`export/resnest.py` as `resnest_serving.export.resnest`, skipping the packages' `__init__` files."""
    for name, folder in (("resnest_serving", "resnest_serving"), ("resnest_serving.export", "export")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(REPO / folder)]
            sys.modules[name] = package
    from resnest_serving.export import resnest

    resnest.zip = zip_strict  # the module calls zip(..., strict=True), which Python 3.9 lacks
    return resnest


def zip_strict(*iterables, strict: bool = False):
    """Python 3.10's zip(strict=...) for Python 3.9: a length mismatch raises when strict."""
    lists = [list(i) for i in iterables]
    if strict and len({len(x) for x in lists}) > 1:
        raise ValueError(f"zip() arguments have different lengths: {[len(x) for x in lists]}")
    return zip(*lists)  # noqa: B905  (Python 3.9: no strict argument)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help="a variant of export/specs.py, e.g. ResNeSt_tiny")
    parser.add_argument("--out", type=Path, required=True, help="folder for inference.pdmodel/.pdiparams")
    parser.add_argument("--params", type=Path, help="PaddleClas-format .pdparams (default: random weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import paddle

    resnest = import_resnest()
    paddle.seed(args.seed)
    net = resnest.build_model(args.arch)
    if args.params is not None:
        missing, unexpected = net.set_state_dict(paddle.load(str(args.params)))
        if missing or unexpected:
            raise SystemExit(f"{args.params} does not fit {args.arch}: {len(missing)} weights missing or of another "
                             f"shape (first: {', '.join(missing[:3])}), {len(unexpected)} left unused "
                             f"(first: {', '.join(unexpected[:3])})")
    model = paddle.nn.Sequential(net, paddle.nn.Softmax(axis=-1))
    model.eval()
    size = net.spec.crop_size
    args.out.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(model, str(args.out / "inference"),
                    input_spec=[paddle.static.InputSpec([None, 3, size, size], "float32", name="x")])
    log.info("%s (%s weights) written to %s with Paddle %s", args.arch,
             args.params or f"random seed {args.seed}", args.out, paddle.__version__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
