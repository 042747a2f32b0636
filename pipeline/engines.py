"""Inference engines: a batch of preprocessed images in, class probabilities out.

Each engine object is one model instance used by one thread at a time; the pipeline keeps
`concurrency` of them. `run` blocks (Paddle Inference and ONNX Runtime release the GIL), so the pipeline
calls it from worker threads. A remote engine (model server over bRPC) instead offers `run_async`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from export.model_files import EngineOptions, paddle_config
from pipeline.bundle import ModelBundle

log = logging.getLogger(__name__)


class PaddleEngine:
    """One Paddle Inference predictor."""

    kind = "paddle"

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        from paddle import inference

        self.options = options
        self.config = paddle_config(bundle.model_file, bundle.params_file, options)
        self.predictor = inference.create_predictor(self.config)
        names = self.predictor.get_input_names()
        self._input = self.predictor.get_input_handle(names[0])
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self.predictor.run()
        return self._output.copy_to_cpu()


class OnnxEngine:
    """One ONNX Runtime session over the bundle's inference.onnx (CPU)."""

    kind = "onnxruntime"

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ValueError("engine onnxruntime needs the optional extra: "
                             "pip install 'resnest-serving[onnx]'") from exc
        path: Path | None = bundle.onnx_file
        if path is None or not path.is_file():
            raise ValueError(f"engine onnxruntime: {bundle.directory} has no ONNX model; "
                             "re-export with `resnest export --onnx`")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.thread_num  # set explicitly: defaults do not fit shared cores
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._input_name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: batch})[0]


ENGINES = {"paddle": PaddleEngine, "onnxruntime": OnnxEngine}


def create_engines(bundle: ModelBundle, kind: str, options: EngineOptions, concurrency: int,
                   devices: list[int] | None = None) -> list:
    """`concurrency` engine instances; on GPU instance i uses devices[i % len(devices)] (Paddle Serving's rule)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
    engines = []
    for i in range(concurrency):
        opts = replace(options, gpu_id=devices[i % len(devices)]) if devices else options
        engines.append(ENGINES[kind](bundle, opts))
    log.info("created %d %s engine instance(s), %d math thread(s) each", concurrency, kind, options.thread_num)
    return engines
