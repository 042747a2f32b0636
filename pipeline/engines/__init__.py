"""Engines: Paddle Inference, ONNX Runtime and OpenVINO behind one contract (`base.Engine`), each instance
in its own worker process (`worker.ProcessEngine`), chosen and checked at start-up (`choose`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from resnest_serving.pipeline.engines.base import Engine, EngineError, EngineUnavailable, Runtime, StartReport
from resnest_serving.pipeline.engines.choose import (
    AUTO_ORDER,
    ENGINE_CHOICES,
    RUNTIMES,
    candidates,
    open_runtime,
)
from resnest_serving.pipeline.engines.cpu import describe as describe_cpu
from resnest_serving.pipeline.engines.worker import ProcessEngine
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions

__all__ = ["AUTO_ORDER", "ENGINE_CHOICES", "RUNTIMES", "Engine", "EngineError", "EngineUnavailable",
           "ProcessEngine", "Runtime", "StartReport", "candidates", "open_runtime", "start_engines"]

log = logging.getLogger(__name__)


async def start_engines(bundle: ModelBundle, kind: str, options: EngineOptions, concurrency: int, max_batch: int,
                        devices: list[int] | None = None) -> list[ProcessEngine]:
    """`concurrency` started and warmed-up engine instances, each in its own worker process. The first
    instance settles `auto`; the others start together with the engine it chose. On GPU, instance i uses
    devices[i % len(devices)] (Paddle Serving's rule). Raises EngineError before any port opens."""
    def instance(i: int, kinds: tuple[str, ...]) -> ProcessEngine:
        opts = replace(options, gpu_id=devices[i % len(devices)]) if devices else options
        return ProcessEngine(bundle, kinds, opts, max_batch, name=f"engine-{i}")

    log.info("starting %d engine instance(s), engine %s, precision %s, on %s", concurrency, kind,
             options.precision, f"GPU {devices}" if options.on_gpu else describe_cpu())
    engines = [instance(0, candidates(kind))]
    try:
        first = await engines[0].start()
        engines += [instance(i, (first.kind,)) for i in range(1, concurrency)]
        await asyncio.gather(*(engine.start() for engine in engines[1:]))
    except BaseException:
        await asyncio.gather(*(engine.close() for engine in engines), return_exceptions=True)
        raise
    why = (f"auto: the first of {' > '.join(AUTO_ORDER)} that runs here" if kind == "auto" else "as configured")
    if first.skipped:
        why += " (passed over: " + "; ".join(first.skipped) + ")"
    log.info("engine %s %s chosen, %s", first.kind, first.precision, why)
    return engines
