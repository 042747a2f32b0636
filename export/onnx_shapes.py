"""Constant reshape targets in an exported ONNX model.

PaddleClas's legacy inference models (`*_infer.tar`, exported by Paddle 2.x) compute the target of every
split-attention reshape from the tensor's runtime shape (Shape → Slice → Mul/Div → Cast → Concat → Reshape).
Paddle2ONNX keeps that arithmetic, and the ONNX it writes carries wrong intermediate shapes: ONNX Runtime
warns about them on every run, and its quantizer's symbolic shape inference gives up ("Incomplete symbolic
shape inference"), so `--int8` failed on such models. Our own exports write constant targets. Folding
the computed ones into constants (-1 for the batch) gives the legacy graph the same form: the same answers,
a third fewer nodes, and quantization that works.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def fold_reshape_targets(model, height: int, width: int) -> int:
    """Replace each Reshape target computed at run time by a constant, in place; returns how many.

    The model runs at batch sizes 1 and 2 with every computed target as an extra output: a target that is
    the same at both becomes that constant, one that differs only in its first element, which equals the
    batch size, becomes [-1, rest...]. Anything else is left as it is. Nodes left without a consumer go."""
    import onnx
    import onnxruntime as ort

    graph = model.graph
    fixed = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    computed = sorted({n.input[1] for n in graph.node if n.op_type == "Reshape" and n.input[1] not in fixed})
    if not computed:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in computed)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the unfolded graph's wrong shapes make ONNX Runtime warn on every run
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    first, second = (session.run(computed, {feed: np.zeros((bs, 3, height, width), np.float32)}) for bs in (1, 2))
    constants = {}
    for name, a, b in zip(computed, first, second, strict=True):
        if a.shape != b.shape or a.ndim != 1:
            continue
        if np.array_equal(a, b):
            constants[name] = a
        elif a[0] == 1 and b[0] == 2 and np.array_equal(a[1:], b[1:]) and (a[1:] > 0).all():
            constants[name] = np.concatenate([[-1], a[1:]]).astype(a.dtype)
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in constants:
            name = node.input[1]
            node.input[1] = f"{name}.folded"
            if not any(i.name == node.input[1] for i in graph.initializer):
                graph.initializer.append(onnx.numpy_helper.from_array(constants[name].astype(np.int64), node.input[1]))
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):  # ONNX nodes are in topological order
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]  # Paddle2ONNX's were wrong; ONNX Runtime (and the quantizer) infer them again
    return len(constants)


def fold_file(path: Path, height: int, width: int) -> int:
    """`fold_reshape_targets` on an ONNX file, rewritten in place when anything was folded."""
    import onnx

    model = onnx.load(str(path))
    folded = fold_reshape_targets(model, height, width)
    if folded:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        log.info("%s: %d reshape target(s) computed from the runtime shape made constant", path.name, folded)
    return folded
