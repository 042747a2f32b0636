"""The engine contract: what the batcher drives (`Engine`), what runs a model inside one process
(`Runtime`), and the start-up check every runtime passes before a port opens (`Runtime.warm_up`).

A batch comes in one of two forms (`pipeline.pixels`): uint8 pixels [N, H, W, 3] (what the server's front
door hands local engines) or the model's float32 tensor [N, 3, H, W]. Every runtime takes both; a batch is
one form or the other, never a mix."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from resnest_serving.pipeline.engines.cpu import precision_unsupported
from resnest_serving.pipeline.pixels import Normalizer, is_pixels
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

log = logging.getLogger(__name__)

WARM_UP_SEED = 20261201
# Same image, different batch size: answers may differ by float rounding only (kernels change with the
# batch), or by what the reduced precision itself costs.
CONSISTENCY_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 2e-2, "int8": 2e-2}


class EngineError(RuntimeError):
    """An engine cannot load, failed its start-up check, or failed on a batch; the text says what to change."""


class EngineUnavailable(EngineError):
    """This engine cannot run this model here at all (not installed, no model file, CPU lacks instructions)."""


@dataclass
class StartReport:
    """What an engine instance turned out to be, and its warm-up timings (ms per batch size)."""

    kind: str
    precision: str
    detail: str
    warm_up_ms: dict[int, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # engines `auto` tried or ruled out first, with why

    @property
    def summary(self) -> str:
        times = ", ".join(f"bs{bs} {ms:.1f} ms" for bs, ms in self.warm_up_ms.items())
        return f"{self.kind} {self.precision} ({self.detail}){'; warm-up ' + times if times else ''}"


class Engine(Protocol):
    """A model instance the batcher feeds one batch at a time: a local runtime in its own worker process
    (`pipeline.engines.worker.ProcessEngine`) or a remote model server (`serving.split.remote_engine`)."""

    async def start(self) -> StartReport:
        """Load the model and run the start-up check; raises EngineError with what to change."""
        ...

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] for a batch of any N >= 1: float32 tensors [N, 3, H, W], or uint8
        pixels [N, H, W, 3] where the engine `takes_pixels` (see `takes_pixels`)."""
        ...

    async def close(self) -> None:
        """Release the model (idempotent)."""
        ...


async def infer_batch(engine: Engine, parts: Sequence[np.ndarray]) -> np.ndarray:
    """The engine's answers for the requests' arrays `parts` (one form) taken as one batch, in order. An engine
    with `infer_parts` (the local engines) copies each request straight into its shared-memory rows; any other
    gets them as one array. Concatenating first and copying again cost ~2x the single copy (4 one-image
    requests: ~49 vs ~22 µs, `bench.handoff --parts`)."""
    if len(parts) > 1 and hasattr(engine, "infer_parts"):
        return await engine.infer_parts(parts)
    return await engine.infer(parts[0] if len(parts) == 1 else np.concatenate(parts))


def takes_pixels(engine: object) -> bool:
    """Whether `engine` takes uint8 pixel batches (`takes_pixels = True`: the local engines, which convert
    them in their graph) or float32 tensors only (the remote engine: its wire carries FP32)."""
    return bool(getattr(engine, "takes_pixels", False))


class Runtime:
    """One model instance in this process: construct (load), `warm_up`, `infer`, `close`. Used by one
    thread at a time. Subclasses: Paddle Inference, ONNX Runtime, OpenVINO."""

    kind = ""
    label = ""  # the engine's name in messages
    package = ""  # the Python package it needs
    cpu_precisions: tuple[str, ...] = ("fp32",)
    on_onednn = True  # runs on oneDNN, so ONEDNN_MAX_CPU_ISA applies
    advice = ""  # what to try when this engine fails its start-up check

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        self.bundle = bundle
        self.options = options
        self.precision = options.precision.lower()
        self.normalize = Normalizer(bundle.meta.mean, bundle.meta.std)  # numpy pixels → tensor, this bundle's mean/std

    @classmethod
    def unavailable(cls, bundle: ModelBundle, options: EngineOptions) -> str | None:
        """Why this engine cannot run `bundle` with `options` here, or None; cheap (nothing is loaded).
        The default is for CPU-only engines reading a model file (`model_path`)."""
        precision = options.precision.lower()
        if options.on_gpu:
            return f"this server runs {cls.label} on CPU only; use engine: paddle for GPU"
        if importlib.util.find_spec(cls.package) is None:
            return f"the {cls.package} package is not installed (pip install {cls.package})"
        if precision not in cls.cpu_precisions:
            others = [k for k in ("openvino", "paddle", "onnxruntime") if k != cls.kind]
            return (f"{cls.label} runs {' or '.join(cls.cpu_precisions)} on CPU, not {precision}; for {precision} "
                    f"use engine {' or '.join(others)}")
        return cls.model_path(bundle, precision)[1] or precision_unsupported(precision, cls.on_onednn)

    @classmethod
    def model_path(cls, bundle: ModelBundle, precision: str) -> tuple[Path | None, str | None]:
        """(the model file for `precision`, None) or (None, why there is none)."""
        raise NotImplementedError

    @property
    def detail(self) -> str:
        """Settings worth a log line, e.g. '2 threads, oneDNN'."""
        return f"{self.options.thread_num} thread(s)"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] for uint8 pixels [N, H, W, 3] or float32 tensors [N, 3, H, W]."""
        return self.infer_pixels(batch) if is_pixels(batch) else self.infer_tensor(batch)

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The default converts in numpy; engines with the conversion in their graph override it."""
        return self.infer_tensor(self.normalize(pixels))

    def infer_tensor(self, tensor: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Drop the model; the default lets garbage collection do it."""

    def warm_up(self, max_batch: int) -> dict[int, float]:
        """Run every batch size 1..max_batch once in each input form: kernels for each shape are built now
        rather than on a client's request, and a shape this engine cannot run fails start-up instead of
        requests. The same seeded image leads each batch, so a batch size that changes the answer is caught
        too, and each pixel batch must get the answers of its numpy-converted tensor batch (the graph's own
        conversion is checked). Timings are the pixel form's."""
        size = self.bundle.meta.crop_size
        pixels = np.random.default_rng(WARM_UP_SEED).integers(0, 256, (max_batch, size, size, 3), np.uint8)
        tensors = self.normalize(pixels)
        tolerance = CONSISTENCY_TOLERANCE.get(self.precision, 2e-2)
        timings: dict[int, float] = {}
        first: np.ndarray | None = None
        for bs in range(1, max_batch + 1):
            started = time.perf_counter()
            out = self._checked(bs, pixels[:bs])
            timings[bs] = (time.perf_counter() - started) * 1000
            if first is None:
                first = out[0]
            elif (delta := float(np.abs(out[0] - first).max())) > tolerance:
                raise self.failure(bs, f"the same image gets a different answer than at batch size 1 "
                                       f"(max |Δprob| {delta:.2g} > {tolerance:g})")
            from_tensors = self._checked(bs, tensors[:bs])
            if (delta := float(np.abs(out - from_tensors).max())) > tolerance:
                self._check_conversion(bs, delta, tolerance, tensors[:bs], from_tensors)
        return timings

    def _check_conversion(self, bs: int, delta: float, tolerance: float, tensors: np.ndarray,
                          from_tensors: np.ndarray) -> None:
        """Pixels and float input differ by more than `tolerance`: a conversion bug, or a model that amplifies
        float rounding (random-init deep variants: a 1e-6 relative change of the input moves their
        probabilities by 1e-4..1; the graph's conversion rounds differently from numpy's). The model's own
        response to a 1e-6 relative nudge of the float input decides: a conversion within 10x of it is
        rounding; a wrong mean, scale, layout or channel order changes the input by orders more."""
        nudge = np.random.default_rng(WARM_UP_SEED).standard_normal(tensors.shape).astype(np.float32)
        nudged = self._checked(bs, tensors * (1 + 1e-6 * nudge))
        sensitivity = float(np.abs(nudged - from_tensors).max())
        if delta > 10 * sensitivity:
            raise self.failure(bs, f"uint8 pixels get a different answer than the same images as float input "
                                   f"(max |Δprob| {delta:.2g} > {tolerance:g}, and > 10x the {sensitivity:.2g} a "
                                   "1e-6 relative nudge of the float input causes)")
        (log.debug if getattr(self, "_rounding_told", False) else log.info)(
            "engine %s: uint8 pixels and float input differ by up to %.2g at batch size %d, within 10x of this "
            "model's response to a 1e-6 relative input nudge (%.2g): float rounding, not the conversion",
            self.kind, delta, bs, sensitivity)
        self._rounding_told = True

    def _checked(self, bs: int, batch: np.ndarray) -> np.ndarray:
        try:
            out = self.infer(batch)
        except Exception as exc:
            raise self.failure(bs, f"{type(exc).__name__}: {exc}") from exc
        if out.ndim != 2 or out.shape[0] != bs or not np.isfinite(out).all():
            raise self.failure(bs, f"bad output: shape {list(out.shape)}, finite {bool(np.isfinite(out).all())}")
        return out

    def failure(self, batch_size: int, what: str) -> EngineError:
        advice = f" What to change: {self.advice}" if self.advice else ""
        return EngineError(f"engine {self.kind} ({self.precision}, {self.detail}) failed its start-up check at "
                           f"batch size {batch_size}: {what}.{advice}")


def describe_failure(kind: str, precision: str, exc: BaseException) -> str:
    """A load failure as one line naming the engine."""
    return f"engine {kind} ({precision}) failed to load: {type(exc).__name__}: {exc}"
