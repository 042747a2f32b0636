"""int8 by post-training static quantization of the exported ONNX model (ONNX Runtime's quantizer, after its
recommended pre-processing, which folds batch norms into the convolutions: QDQ format, per-channel int8
weights, uint8 activations, min/max calibration on the caller's images run through the server's own
preprocessing). ONNX Runtime and OpenVINO both run the result.

The pre-processing's symbolic shape inference needs reshape targets it can follow: the exporter makes them
constants first (`export.onnx_shapes`), which is what lets a PaddleClas legacy inference model be
quantized; so does this function, for any other ONNX file it is given."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from resnest_serving.export.onnx_shapes import fold_reshape_targets

log = logging.getLogger(__name__)

INT8_ONNX = "inference.int8.onnx"
CALIBRATION_BATCH = 8


def quantize_int8(onnx_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """Write the int8 twin of `onnx_path` to `out_path`, calibrated on `calibration` ([N, 3, H, W] float32,
    already preprocessed). Needs at least one image; a few dozen that look like the served data are best."""
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ValueError("--int8 needs onnxruntime (and onnx): pip install onnxruntime onnx") from exc
    if calibration.ndim != 4 or not len(calibration):
        raise ValueError("int8 quantization needs calibration images (--calib-images DIR)")
    input_name = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration[i:i + CALIBRATION_BATCH]
                                 for i in range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepared, source = Path(tmp) / "prepared.onnx", onnx_path
        try:
            model = onnx.load(str(onnx_path))
            if folded := fold_reshape_targets(model, *calibration.shape[2:]):
                source = Path(tmp) / "folded.onnx"
                onnx.save(model, str(source))
                log.info("%s: %d reshape target(s) computed at run time made constant for quantization",
                         onnx_path.name, folded)
            quant_pre_process(str(source), str(prepared))
            quantize_static(str(prepared), str(out_path), Batches(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:  # the quantizer raises bare Exceptions
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ValueError(f"int8 quantization of {onnx_path.name} failed ({type(exc).__name__}: {first}); "
                             "export without --int8 and serve fp32 (or bf16)") from exc
    log.info("quantized %s to int8 (%s) on %d calibration images in %.1f s", onnx_path.name, out_path.name,
             len(calibration), time.perf_counter() - started)
