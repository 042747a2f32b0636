"""ONNX Runtime on CPU over the bundle's `inference.onnx` (fp32) or `inference.int8.onnx` (int8, written by
`resnest export --int8`), with the pixel input added in memory (`pixel_input`). ONNX Runtime releases the GIL
while it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnest_serving.pipeline.engines.base import Runtime
from resnest_serving.pipeline.engines.pixel_input import PIXELS, empty_inputs, onnx_with_pixels
from resnest_serving.protocol.bundle import ModelBundle
from resnest_serving.protocol.engine_options import EngineOptions


def onnx_model(bundle: ModelBundle, precision: str) -> tuple[Path | None, str | None]:
    """(the ONNX file for `precision`, None) or (None, why there is none)."""
    if precision == "int8":
        path, how = bundle.int8_onnx_file, "re-export with `resnest export --int8 --calib-images DIR`"
    else:
        path, how = bundle.onnx_file, "re-export without --no-onnx"
    if path is None or not path.is_file():
        return None, f"{bundle.directory} has no {'int8 ' if precision == 'int8' else ''}ONNX model; {how}"
    return path, None


class OnnxRuntime(Runtime):
    kind = "onnxruntime"
    label = "ONNX Runtime"
    package = "onnxruntime"
    cpu_precisions = ("fp32", "int8")
    on_onednn = False  # its own kernels (MLAS)
    advice = "use engine: openvino or paddle (or auto)"

    @classmethod
    def model_path(cls, bundle: ModelBundle, precision: str) -> tuple[Path | None, str | None]:
        return onnx_model(bundle, precision)

    def __init__(self, bundle: ModelBundle, options: EngineOptions):
        super().__init__(bundle, options)
        import onnx
        import onnxruntime as ort

        self.path, _ = onnx_model(bundle, self.precision)
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.thread_num  # explicit: the default takes every core
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: the cores are shared with the front doors (see worker.py)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        model = onnx_with_pixels(onnx.load(str(self.path)), self.normalize)
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self._input_name = self.session.get_inputs()[0].name
        self._no_pixels, self._no_tensor = empty_inputs(bundle.meta.crop_size)

    @property
    def detail(self) -> str:
        return f"{self.options.thread_num} thread(s), {self.path.name}"

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {PIXELS: pixels, self._input_name: self._no_tensor})[0]

    def infer_tensor(self, tensor: np.ndarray) -> np.ndarray:
        return self.session.run(None, {PIXELS: self._no_pixels, self._input_name: tensor})[0]

    def close(self) -> None:
        self.session = None
