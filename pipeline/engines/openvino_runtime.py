"""OpenVINO on CPU: reads the bundle's ONNX model (or a legacy `.pdmodel` directly; it cannot read Paddle 3's
PIR `.json`), runs fp32, bf16 (`INFERENCE_PRECISION_HINT`, on CPUs with avx512_bf16 or AMX) and the int8
model of `resnest export --int8`, with the pixel input added in memory (`pixel_input`: PrePostProcessor).
OpenVINO releases the GIL while it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnest_serving.pipeline.engines.base import EngineError, Runtime
from resnest_serving.pipeline.engines.onnx_runtime import onnx_model
from resnest_serving.pipeline.engines.pixel_input import PIXELS, empty_inputs, openvino_with_pixels
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions


class OpenVinoRuntime(Runtime):
    kind = "openvino"
    label = "OpenVINO"
    package = "openvino"
    cpu_precisions = ("fp32", "bf16", "int8")
    advice = "use engine: onnxruntime or paddle (or auto)"

    @classmethod
    def model_path(cls, bundle: ModelBundle, precision: str) -> tuple[Path | None, str | None]:
        path, why = onnx_model(bundle, precision)
        if path is None and precision != "int8" and bundle.model_file.suffix == ".pdmodel":
            return bundle.model_file, None  # OpenVINO reads legacy Paddle models (not Paddle 3's PIR .json)
        return path, why

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        super().__init__(bundle, options)
        import openvino as ov

        self.path, _ = self.model_path(bundle, self.precision)
        core = ov.Core()
        model = openvino_with_pixels(core.read_model(str(self.path)), self.normalize)
        hint = "bf16" if self.precision == "bf16" else "f32"  # f32 must be asked for: AMX CPUs default to bf16
        config = {"INFERENCE_NUM_THREADS": options.thread_num, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "ENABLE_CPU_PINNING": False,
                  "INFERENCE_PRECISION_HINT": hint}
        self.compiled = core.compile_model(model, "CPU", config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != getattr(ov.Type, hint):
            raise EngineError(f"OpenVINO compiled the model for {got.get_type_name()} where {hint} was asked for")
        self.request = self.compiled.create_infer_request()
        self._no_pixels, self._no_tensor = empty_inputs(bundle.meta.crop_size)

    @property
    def detail(self) -> str:
        return f"{self.options.thread_num} thread(s), {self.path.name}"

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels, self._no_tensor)

    def infer_tensor(self, tensor: np.ndarray) -> np.ndarray:
        return self._run(self._no_pixels, tensor)

    def _run(self, pixels: np.ndarray, tensor: np.ndarray) -> np.ndarray:
        self.request.infer({0: tensor, PIXELS: pixels})
        return self.request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        self.request = self.compiled = None
