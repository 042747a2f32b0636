"""What reduced precision costs in answers: each engine that can run bf16 or int8 here classifies the same
images at that precision and at fp32, and we record top-1 agreement and the largest probability change.

`resnest export` runs it (on `--check-images`, and the calibration images) and stores the result in
`resnest_meta.json` under `precision_checks`; the server prints the recorded check for the engine and
precision it serves with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from resnest_serving.pipeline.engines import AUTO_ORDER, RUNTIMES, EngineError, open_runtime
from resnest_serving.pipeline.engines.cpu import describe as describe_cpu
from resnest_serving.pipeline.preprocess import Preprocessor, PreprocessSpec
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

REDUCED_PRECISIONS = ("bf16", "int8")
BATCH = 8


def preprocess_images(bundle: ModelBundle, images: Mapping[str, bytes], pixels: bool = False) -> np.ndarray:
    """Encoded images by name → the model's [N, 3, H, W] float32 input, or with `pixels` the uint8
    [N, H, W, 3] pixels the server hands its engines, exactly as the server preprocesses (a bad image fails
    with its name)."""
    meta = bundle.meta
    pre = Preprocessor(PreprocessSpec(meta.resize_short, meta.crop_size, meta.mean, meta.std))
    prepare = pre.pixels_from_bytes if pixels else pre.from_bytes
    return np.stack([prepare(name, data) for name, data in images.items()])


def _outputs(bundle: ModelBundle, kind: str, options: EngineOptions, sets: Mapping[str, np.ndarray]) -> dict:
    runtime, _ = open_runtime(bundle, (kind,), options, BATCH)
    try:
        return {name: np.concatenate([runtime.infer(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
                for name, x in sets.items()}
    finally:
        runtime.close()


def compare(reference: np.ndarray, reduced: np.ndarray) -> dict:
    """Top-1 agreement and max |Δprob| of two [N, classes] outputs."""
    return {"images": int(len(reference)),
            "top1_agreement": round(float(np.mean(reference.argmax(1) == reduced.argmax(1))), 6),
            "max_abs_dprob": float(f"{float(np.abs(reference - reduced).max()):.3g}")}


def check_precisions(bundle: ModelBundle, image_sets: Mapping[str, Mapping[str, bytes]],
                     precisions: Sequence[str] = REDUCED_PRECISIONS, thread_num: int = 1) -> dict:
    """{precision: {"cpu": ..., "engines": {kind: {set name: comparison} | {"skipped"|"error": why}}}} for every
    engine that could serve `precision`; each engine is compared with itself at fp32, fed the uint8 pixels
    the server feeds it."""
    sets = {name: preprocess_images(bundle, images, pixels=True) for name, images in image_sets.items() if images}
    if not sets:
        raise ValueError("the accuracy check needs at least one image")
    results: dict = {}
    for precision in precisions:
        engines: dict = {}
        for kind in AUTO_ORDER:
            options = EngineOptions(thread_num=thread_num, precision=precision)
            why = RUNTIMES[kind].unavailable(bundle, options)
            if why:
                engines[kind] = {"skipped": why}
                continue
            try:
                fp32 = _outputs(bundle, kind, EngineOptions(thread_num=thread_num), sets)
                reduced = _outputs(bundle, kind, options, sets)
            except EngineError as exc:
                engines[kind] = {"error": str(exc)}
                log.warning("accuracy check %s on %s failed: %s", precision, kind, exc)
                continue
            engines[kind] = {name: compare(fp32[name], reduced[name]) for name in sets}
            log.info("accuracy check: %s", describe_check(precision, kind, engines[kind]))
        results[precision] = {"cpu": describe_cpu(), "engines": engines}
    return results


def describe_check(precision: str, kind: str, check: Mapping) -> str:
    """One line: '<precision> on <engine> vs fp32: <set> N images top-1 agreement x %, max |Δprob| y; ...'."""
    if "skipped" in check or "error" in check:
        return f"{precision} on {kind}: not checked ({check.get('skipped') or check.get('error')})"
    parts = [f"{name} {c['images']} images top-1 agreement {c['top1_agreement']:.2%}, max |Δprob| "
             f"{c['max_abs_dprob']:.2g}" for name, c in check.items()]
    return f"{precision} on {kind} vs fp32: " + "; ".join(parts)


def recorded_check(bundle: ModelBundle, precision: str, kind: str) -> str | None:
    """The check `resnest export` recorded for this precision and engine, as one line, or None."""
    check = bundle.meta.precision_checks.get(precision, {}).get("engines", {}).get(kind)
    if not check or "skipped" in check or "error" in check:
        return None
    return describe_check(precision, kind, check) + f" (recorded at export on {bundle.meta.precision_checks[precision]['cpu']})"
