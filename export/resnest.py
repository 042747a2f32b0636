"""ResNeSt in Paddle, with PaddleClas's module tree so that `state_dict()` keys and shapes match
PaddleClas checkpoints exactly (develop layout; the release/2.5 layout lacks `conv2.conv3.bias`).

Beyond PaddleClas's constructor this class takes four options:
- `base_planes`: width of layer1 (64 in every published variant); smaller values give the tiny test/demo nets.
- `attention_bias`: whether split-attention `conv3` has a bias (develop: yes; release/2.5: no).
- `avg_pool_exclusive`: Paddle's AvgPool2D excludes padding from the average, PyTorch's AvgPool2d counts it.
  Models converted from PyTorch set this to False so that they reproduce their source's numerics.
- `shortcut_ceil_mode`: PyTorch ResNeSt's shortcut AvgPool2d rounds up (ceil_mode), PaddleClas's rounds down.
  The two differ only on odd feature maps, which input sizes divisible by 32 never produce; ceil mode
  costs ~25 % of ResNeSt50's CPU time under oneDNN, so PyTorch sources turn it on and the exporter turns
  it off again where the input size makes it a no-op.
"""

from __future__ import annotations

from dataclasses import replace

import paddle
import paddle.nn.functional as F
from paddle import nn

from resnest_serving.export.specs import ARCHS, ArchSpec, arch_spec  # noqa: F401  (re-exported)


class ConvBNLayer(nn.Layer):
    """Conv2D without bias followed by BatchNorm with an optional activation (PaddleClas naming)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None):
        super().__init__()
        self._conv = nn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2,
                               groups=groups, bias_attr=False)
        self._batch_norm = nn.BatchNorm(out_ch, act=act)

    def forward(self, x):
        return self._batch_norm(self._conv(x))


class RSoftmax(nn.Layer):
    """Softmax across the radix splits of each cardinal group (sigmoid when radix is 1)."""

    def __init__(self, radix: int, cardinality: int, channels: int):
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality
        self.channels = channels  # static, so exported graphs (and ONNX) keep a known channel dim

    def forward(self, x):
        if self.radix == 1:
            return F.sigmoid(x)
        x = paddle.reshape(x, [0, self.cardinality, self.radix, -1])
        x = F.softmax(paddle.transpose(x, [0, 2, 1, 3]), axis=1)
        return paddle.reshape(x, [0, self.channels, 1, 1])


class SplatConv(nn.Layer):
    """Split-attention convolution: radix feature-map splits weighted by a learned softmax attention."""

    def __init__(self, in_ch: int, channels: int, radix: int, groups: int, attention_bias: bool):
        super().__init__()
        self.radix = radix
        inter = max(in_ch * radix // 4, 32)
        self.conv1 = ConvBNLayer(in_ch, channels * radix, 3, groups=groups * radix, act="relu")
        self.avg_pool2d = nn.AdaptiveAvgPool2D(1)
        self.conv2 = ConvBNLayer(channels, inter, 1, groups=groups, act="relu")
        self.conv3 = nn.Conv2D(inter, channels * radix, 1, groups=groups,
                               bias_attr=None if attention_bias else False)
        self.rsoftmax = RSoftmax(radix, groups, channels * radix)

    def forward(self, x):
        x = self.conv1(x)
        if self.radix == 1:
            return x * self.rsoftmax(self.conv3(self.conv2(self.avg_pool2d(x))))
        splits = self._radix_slices(x)
        atten = self.rsoftmax(self.conv3(self.conv2(self.avg_pool2d(paddle.add_n(splits)))))
        attens = self._radix_slices(atten)
        return paddle.add_n([attens[i] * splits[i] for i in range(self.radix)])  # no zip(): dy2static

    def _radix_slices(self, x):
        """The radix parts of the channel axis, cut with `slice` rather than `split`: Paddle 3.3's oneDNN
        `split` fails at batch >= 2 after a grouped conv with fewer than 64 channels per group on AVX-512
        and SSE4.1 CPUs ("unsupported memory stride"); `slice` is as fast and works on every ISA."""
        width = x.shape[1] // self.radix
        return [paddle.slice(x, [1], [i * width], [(i + 1) * width]) for i in range(self.radix)]


class BottleneckBlock(nn.Layer):
    def __init__(self, inplanes: int, planes: int, stride: int, spec: ArchSpec):
        super().__init__()
        group_width = int(planes * spec.bottleneck_width / 64) * spec.groups
        avd = stride > 1  # ResNeSt's is_first, which would also enable it, is False for every block
        pool = dict(kernel_size=3, stride=stride, padding=1, exclusive=spec.avg_pool_exclusive)
        self.conv1 = ConvBNLayer(inplanes, group_width, 1, act="relu")
        self.avg_pool2d_1 = nn.AvgPool2D(**pool) if avd and spec.avd_first else None
        self.conv2 = SplatConv(group_width, group_width, spec.radix, spec.groups, spec.attention_bias)
        self.avg_pool2d_2 = nn.AvgPool2D(**pool) if avd and not spec.avd_first else None
        self.conv3 = ConvBNLayer(group_width, planes * 4, 1)
        self.has_shortcut = stride != 1 or inplanes != planes * 4
        if self.has_shortcut:
            self.avg_pool2d_3 = nn.AvgPool2D(stride, stride, 0, ceil_mode=spec.shortcut_ceil_mode,
                                             exclusive=spec.avg_pool_exclusive)
            self.conv4 = nn.Conv2D(inplanes, planes * 4, 1, bias_attr=False)
            self._batch_norm = nn.BatchNorm(planes * 4)

    def forward(self, x):
        y = self.conv1(x)
        if self.avg_pool2d_1 is not None:
            y = self.avg_pool2d_1(y)
        y = self.conv2(y)
        if self.avg_pool2d_2 is not None:
            y = self.avg_pool2d_2(y)
        y = self.conv3(y)
        short = self._batch_norm(self.conv4(self.avg_pool2d_3(x))) if self.has_shortcut else x
        return F.relu(y + short)


class ResNeStLayer(nn.Layer):
    def __init__(self, name: str, inplanes: int, planes: int, blocks: int, stride: int, spec: ArchSpec):
        super().__init__()
        self.blocks = []
        for i in range(blocks):
            block = BottleneckBlock(inplanes if i == 0 else planes * 4, planes, stride if i == 0 else 1,
                                    spec)
            self.blocks.append(self.add_sublayer(f"{name}_bottleneck_{i}", block))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ResNeSt(nn.Layer):
    """ResNeSt classifier returning logits of shape [N, class_num]."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        sw = spec.stem_width
        self.stem = nn.Sequential(
            ("conv1", ConvBNLayer(3, sw, 3, stride=2, act="relu")),
            ("conv2", ConvBNLayer(sw, sw, 3, act="relu")),
            ("conv3", ConvBNLayer(sw, sw * 2, 3, act="relu")),
        )
        self.max_pool2d = nn.MaxPool2D(3, 2, 1)
        base = spec.base_planes
        inplanes = sw * 2
        for i, (blocks, mult, stride) in enumerate(zip(spec.layers, (1, 2, 4, 8), (1, 2, 2, 2), strict=True)):
            name = f"layer{i + 1}"
            setattr(self, name, ResNeStLayer(name, inplanes, base * mult, blocks, stride, spec))
            inplanes = base * mult * 4
        self.features = inplanes
        self.pool2d_avg = nn.AdaptiveAvgPool2D(1)
        self.out = nn.Linear(inplanes, spec.class_num)

    def forward(self, x):
        x = self.max_pool2d(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = paddle.reshape(self.pool2d_avg(x), [-1, self.features])
        return self.out(x)


def build_model(arch: str | ArchSpec, **overrides) -> ResNeSt:
    """Build a variant by name (or from a spec) in eval mode, with random weights."""
    spec = arch if isinstance(arch, ArchSpec) else arch_spec(arch)
    if overrides:
        spec = replace(spec, **overrides)
    model = ResNeSt(spec)
    model.eval()
    return model
