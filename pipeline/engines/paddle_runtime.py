"""Paddle Inference: the exported model as it is, on CPU (oneDNN or native kernels) or GPU/TensorRT.

`predictor.run()` keeps the GIL for the whole run, which is one reason the server runs every local engine
in a worker process. GPU and TensorRT are configured through `paddle_config.config_calls`
(configuration-tested only: no GPU here). Pixel batches are converted in numpy in the worker
(`Runtime.infer_pixels`): the exported program is left as it is.
"""

from __future__ import annotations

import numpy as np

from resnest_serving.pipeline.engines.base import Runtime
from resnest_serving.pipeline.engines.cpu import precision_unsupported
from resnest_serving.pipeline.engines.paddle_config import open_predictor
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import TENSORRT, EngineOptions


class PaddleRuntime(Runtime):
    kind = "paddle"
    label = "Paddle Inference"
    package = "paddle"
    advice = ("use engine: openvino or onnxruntime (or auto), or use_mkldnn: false (several times slower), or "
              "start the server with ONEDNN_MAX_CPU_ISA=AVX2")

    @classmethod
    def unavailable(cls, bundle: ModelBundle, options: EngineOptions) -> str | None:
        precision = options.precision.lower()
        if options.on_gpu:
            return None  # GPU: every precision, checked by paddle_config
        if precision in ("int8", "fp16"):
            return (f"Paddle Inference runs {precision} on CPU only for models quantized with PaddleSlim; use "
                    f"engine openvino or onnxruntime{' with a model exported with --int8' if precision == 'int8' else ''}")
        if precision == "bf16":
            if not options.use_mkldnn:
                return "bf16 on CPU runs through oneDNN only: set use_mkldnn: true"
            return precision_unsupported("bf16")
        return None

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        super().__init__(bundle, options)
        self.predictor = open_predictor(bundle.model_file, bundle.params_file, options)
        self._input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    @property
    def detail(self) -> str:
        o = self.options
        if o.on_gpu:
            return f"GPU {o.gpu_id}{', TensorRT' if o.device_type == TENSORRT else ''}"
        return f"{o.thread_num} thread(s), {'oneDNN' if o.use_mkldnn else 'native kernels'}"

    def infer_tensor(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(list(batch.shape))
        self._input.copy_from_cpu(batch)
        self.predictor.run()
        return self._output.copy_to_cpu()

    def close(self) -> None:
        self.predictor = self._input = self._output = None
