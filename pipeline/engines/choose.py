"""Which engine runs the model: the one asked for, or under `engine: auto` the first of `AUTO_ORDER` that can
run this model at this precision here and passes its start-up check.

The order is the engine benchmark's (README "Engines"; `python -m bench.engines`): on the project's
AVX-512 machines OpenVINO was the fastest for ResNeSt50 in fp32 and bf16, ONNX Runtime next, Paddle
Inference + oneDNN last; on the tiny demo net ONNX Runtime and OpenVINO tie and Paddle's per-call overhead
dominates. GPU devices run Paddle Inference only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from resnest_serving.pipeline.engines.base import (
    EngineError,
    EngineUnavailable,
    Runtime,
    StartReport,
    describe_failure,
)
from resnest_serving.pipeline.engines.onnx_runtime import OnnxRuntime
from resnest_serving.pipeline.engines.openvino_runtime import OpenVinoRuntime
from resnest_serving.pipeline.engines.paddle_runtime import PaddleRuntime
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

RUNTIMES: dict[str, type[Runtime]] = {"openvino": OpenVinoRuntime, "onnxruntime": OnnxRuntime,
                                      "paddle": PaddleRuntime}
AUTO_ORDER = ("openvino", "onnxruntime", "paddle")
ENGINE_CHOICES = ("auto", *AUTO_ORDER)


def candidates(kind: str) -> tuple[str, ...]:
    """The engines to try, in order, for an `engine:` setting."""
    if kind == "auto":
        return AUTO_ORDER
    if kind not in RUNTIMES:
        raise EngineError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINE_CHOICES)}")
    return (kind,)


def log_event(event: str, kind: str, why: str) -> None:
    """Default `on_event` of open_runtime: one log line per engine ruled out or failed under auto."""
    if event == "ruled_out":
        log.info("engine auto: %s ruled out: %s", kind, why)
    elif event == "failed":
        log.warning("engine auto: %s failed its start-up check, trying the next engine: %s", kind, why)


def open_runtime(bundle: ModelBundle, kinds: Sequence[str], options: EngineOptions, max_batch: int,
                 on_event: Callable[[str, str, str], None] = log_event) -> tuple[Runtime, StartReport]:
    """Load and warm up the first engine of `kinds` that works; with one kind its failure is raised as is.
    With several (engine: auto) each one ruled out or failed is reported to `on_event(event, kind, why)`
    ("ruled_out" | "failed"; "trying" before each attempt) and the next engine is tried."""
    precision = options.precision.lower()
    skipped: list[str] = []
    for kind in kinds:
        cls = RUNTIMES[kind]
        why = cls.unavailable(bundle, options)
        if why:
            if len(kinds) == 1:
                raise EngineUnavailable(f"engine {kind} cannot run {precision} here: {why}")
            on_event("ruled_out", kind, why)
            skipped.append(f"{kind}: {why}")
            continue
        on_event("trying", kind, "")
        try:
            try:
                runtime = cls(bundle, options)
            except EngineError:
                raise
            except Exception as exc:  # each library has its own exception types
                raise EngineError(describe_failure(kind, precision, exc)) from exc
            timings = runtime.warm_up(max_batch)
        except EngineError as exc:
            if len(kinds) == 1:
                raise
            on_event("failed", kind, str(exc))
            skipped.append(f"{kind}: {exc}")
            continue
        return runtime, StartReport(kind, precision, runtime.detail, timings, skipped)
    raise EngineError(f"no engine can run this model at {precision}: " + "; ".join(skipped))
