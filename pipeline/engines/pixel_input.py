"""The pixel input added to a loaded model, in memory (the exported files are not changed, so every bundle,
old or new, gets it): a second graph input `PIXELS` (uint8 [N, H, W, 3], RGB) whose rows are converted
inside the graph (cast to float, /255, mean/std, HWC → CHW) and concatenated in front of the model's own
float input. A batch feeds one of the two inputs and leaves the other with zero rows, so one loaded model
serves both forms (`pipeline.pixels`) with no second copy of its weights.

ONNX Runtime: nodes built with `onnx.helper` (Transpose, Cast, Mul, Sub, Concat); OpenVINO: a Concat in front
of the model's parameter and OpenVINO's pre-processing API (PrePostProcessor) on the new input.
"""

from __future__ import annotations

import numpy as np

from resnest_serving.pipeline.pixels import Normalizer

PIXELS = "resnest_pixels"  # the added input's name; the model's own input keeps its name


def empty_inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Zero-row pixel and tensor batches: what the unused input of a batch is fed."""
    return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 3, size, size), np.float32)


def onnx_with_pixels(model, normalize: Normalizer):
    """`model` (an onnx.ModelProto, changed in place and returned) with the PIXELS input in front of its
    first input."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    feed = graph.input[0]
    joined = f"{feed.name}__with_pixels"
    for node in graph.node:
        node.input[:] = [joined if name == feed.name else name for name in node.input]
    dims = [d.dim_value or None for d in feed.type.tensor_type.shape.dim]
    height, width = dims[2], dims[3]
    pixels = helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["pixel_batch", height, width, 3])
    graph.initializer.extend([numpy_helper.from_array(normalize.scale.reshape(1, 3, 1, 1), f"{PIXELS}_scale"),
                              numpy_helper.from_array(normalize.shift.reshape(1, 3, 1, 1), f"{PIXELS}_shift")])
    front = [helper.make_node("Transpose", [PIXELS], [f"{PIXELS}_chw"], perm=[0, 3, 1, 2]),
             helper.make_node("Cast", [f"{PIXELS}_chw"], [f"{PIXELS}_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{PIXELS}_float", f"{PIXELS}_scale"], [f"{PIXELS}_scaled"]),
             helper.make_node("Sub", [f"{PIXELS}_scaled", f"{PIXELS}_shift"], [f"{PIXELS}_normalized"]),
             helper.make_node("Concat", [f"{PIXELS}_normalized", feed.name], [joined], axis=0)]
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(pixels)
    return model


def openvino_with_pixels(model, normalize: Normalizer):
    """`model` (an openvino.Model) rebuilt with the PIXELS input in front of its first parameter."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.preprocess import PrePostProcessor

    feed = model.get_parameters()[0]
    shape = feed.get_partial_shape()
    pixels = ops.parameter(shape, ov.Type.f32, name=PIXELS)
    pixels.output(0).set_names({PIXELS})
    tensor = ops.parameter(shape, ov.Type.f32, name=feed.get_friendly_name())
    tensor.output(0).set_names(feed.output(0).get_names())
    joined = ops.concat([pixels, tensor], 0)
    for target in list(feed.output(0).get_target_inputs()):
        target.replace_source_output(joined.output(0))
    model = ov.Model(model.get_results(), [tensor, pixels], model.get_friendly_name())
    ppp = PrePostProcessor(model)
    step = ppp.input(PIXELS)
    step.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    step.model().set_layout(ov.Layout("NCHW"))
    # x * scale - shift, as pipeline.pixels does: PrePostProcessor's (x - mean) / scale with mean = shift/scale
    step.preprocess().convert_element_type(ov.Type.f32).scale([float(1 / s) for s in normalize.scale]) \
        .mean([float(v) for v in normalize.shift])
    return ppp.build()
