"""FLOPs of a model as PaddleClas's table counts them: multiply-accumulates of Conv2D and Linear layers
for one image at the model's input size, measured with forward hooks on a real forward pass.

(`paddle.flops` would be the obvious tool, but it crashes under numpy 2 in Paddle 3.3.1. Counting only
conv + linear MACs gives 4.329 / 5.371 G for ResNeSt50_fast_1s1x64d / ResNeSt50 against the published
4.36 / 5.40 G: the remainder is BN, activations, pooling and split-attention arithmetic.)
"""

from __future__ import annotations

import paddle
from paddle import nn


def count_macs(model: nn.Layer, input_size: int) -> int:
    """Conv2D + Linear multiply-accumulates for one [1, 3, input_size, input_size] image."""
    total = 0

    def conv_hook(layer, inputs, output):
        nonlocal total
        kh, kw = layer._kernel_size
        total += int(output.numel()) * (layer._in_channels // layer._groups) * kh * kw

    def linear_hook(layer, inputs, output):
        nonlocal total
        total += int(output.numel()) * layer.weight.shape[0]

    hooks = []
    for layer in model.sublayers():
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(linear_hook))
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, 3, input_size, input_size]))
    finally:
        for hook in hooks:
            hook.remove()
    return total
