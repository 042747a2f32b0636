"""OpenVINO on CPU: reads the bundle's ONNX model (or a legacy `.pdmodel` directly; it cannot read Paddle 3's
PIR `.json`), runs fp32, bf16 (`INFERENCE_PRECISION_HINT`, on CPUs with avx512_bf16 or AMX) and the int8
model of `resnest export --int8`, with the pixel input added in memory (`pixel_input`: PrePostProcessor).
OpenVINO releases the GIL while it runs.

With `batch_streams` > 1 (off by default), the model is compiled twice: once for latency (one stream on every
thread: a lone image) and once with that many streams of fewer threads, over which a batch of two or more
images is split and run in parallel. Alone, int8 spends ~30 % less CPU per image that way on 2 cores (threads
of one stream wait for each other at every layer; separate streams do not); served on 2 cores it measured no
faster, hence off by default."""

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
        self.streams = split_streams(options)
        self.split_requests = []
        if self.streams > 1:  # the same model again, as `streams` streams of thread_num / streams threads
            split = core.compile_model(model, "CPU", {**config, "NUM_STREAMS": self.streams,
                                                      "PERFORMANCE_HINT": "THROUGHPUT"})
            self.split_requests = [split.create_infer_request() for _ in range(self.streams)]
        self._no_pixels, self._no_tensor = empty_inputs(bundle.meta.crop_size)

    @property
    def detail(self) -> str:
        split = f", batches of 2+ split over {self.streams} streams" if self.streams > 1 else ""
        return f"{self.options.thread_num} thread(s){split}, {self.path.name}"

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(pixels, self._no_tensor)

    def infer_tensor(self, tensor: np.ndarray) -> np.ndarray:
        return self._run(self._no_pixels, tensor)

    def _run(self, pixels: np.ndarray, tensor: np.ndarray) -> np.ndarray:
        rows = max(len(pixels), len(tensor))  # one of the two inputs is the zero-row placeholder
        if rows < 2 or not self.split_requests:
            self.request.infer({0: tensor, PIXELS: pixels})
            return self.request.get_output_tensor(0).data.copy()
        parts = np.array_split(np.arange(rows), min(rows, len(self.split_requests)))
        used = self.split_requests[:len(parts)]
        started = []
        try:
            for request, part in zip(used, parts, strict=True):
                start, stop = int(part[0]), int(part[-1]) + 1
                request.start_async({0: tensor[start:stop], PIXELS: pixels[start:stop]})
                started.append(request)
        finally:  # a part that failed to start leaves none of the others running into the next batch
            for request in started:
                request.wait()
        return np.concatenate([request.get_output_tensor(0).data for request in used])

    def close(self) -> None:
        self.request = self.compiled = None
        self.split_requests = []


def split_streams(options: EngineOptions) -> int:
    """How many streams a batch of two or more images is split over: `batch_streams`, never more than the
    threads (1: no split)."""
    return max(1, min(options.batch_streams, options.thread_num))
