"""MobileNetV2 trunk with torchvision's parameter names (``features.N...``) and optional dilation.

``features`` is laid out index for index as torchvision's ``mobilenet_v2`` (0: stem conv, 1-17:
inverted residual blocks, 18: the 1x1 conv to 1280 channels), so its ImageNet ``state_dict``
loads once ``classifier.*`` is dropped. The contract levels are the last block at each stride:

======  =====  ========  ======================
level   index  channels  stride at OS 32
======  =====  ========  ======================
s2      1      16        2
s4      3      24        4
s8      6      32        8
s16     13     96        16
s32     18     1280      32
======  =====  ========  ======================

Output stride 16/8 turns the stride-2 depthwise convs beyond that stride into stride 1 and
dilates every later depthwise conv (the converted block keeps the previous dilation, as in
torchvision's ResNet and the DeepLab MobileNet), so receptive fields stay what they were.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones.weights import load_torchvision_weights

# (expand ratio t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LEVEL_INDEX = {"s2": 1, "s4": 3, "s8": 6, "s16": 13, "s32": 18}


def conv_bn_relu6(
    inp: int, out: int, kernel: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's Conv2dNormActivation(ReLU6): children 0 (conv), 1 (bn), 2 (relu6)."""
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(inp, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, dilation, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 ``features`` (width 1.0) returning ``s2``/``s4``/``s8``/``s16``/``s32``."""

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32 (got {output_stride})")
        self.output_stride = output_stride
        layers: list[nn.Module] = [conv_bn_relu6(3, 32, stride=2)]
        current_stride, dilation, inp = 2, 1, 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation
                if stride > 1 and current_stride >= output_stride:
                    # Already at the target stride: dilate instead; this block keeps the old
                    # dilation, the blocks after it use the new one.
                    dilation *= stride
                    stride = 1
                current_stride *= stride
                layers.append(InvertedResidual(inp, c, stride, t, block_dilation))
                inp = c
        layers.append(conv_bn_relu6(inp, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.channels = {k: _out_channels(self.features[i]) for k, i in LEVEL_INDEX.items()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        wanted = {i: k for k, i in LEVEL_INDEX.items()}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def _out_channels(module: nn.Module) -> int:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def mobilenet_v2(
    output_stride: int = 32, pretrained: str | Path | None = None, **options
) -> MobileNetV2:
    if options:  # e.g. backbone_options meant for another family (ResNet's and VGG's "width")
        raise SegflowError(
            f"backbone 'mobilenet_v2' takes no options (got {', '.join(sorted(options))})"
        )
    model = MobileNetV2(output_stride)
    if pretrained is not None:
        load_torchvision_weights(model, pretrained)
    return model
