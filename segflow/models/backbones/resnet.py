"""ResNet-18/34/50/101 trunks with torchvision's parameter names and optional dilation.

The layout follows torchvision's ``resnet.py`` (v1.5: the stride of a Bottleneck sits on its
3x3 conv), so a torchvision ``state_dict`` loads key for key once ``fc.*`` is dropped. Output
stride 16 or 8 replaces the stride of ``layer4`` (and ``layer3`` at 8) with dilation, exactly as
torchvision's ``replace_stride_with_dilation``: the first block of a dilated stage keeps the
previous dilation on its strided conv and the later blocks use the new one. Unlike torchvision,
BasicBlock accepts dilation too, so ResNet-18/34 can serve dilated heads (DeepLab, PSPNet) in
small models; its second 3x3 conv in that first block takes the new dilation, which makes the
dilated net compute exactly the strided net's features on a denser grid (tested).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones.weights import load_torchvision_weights


def conv3x3(inp: int, out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps "same" spatial size for any dilation at stride 1.
    return nn.Conv2d(inp, out, 3, stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        next_dilation: int | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        # conv2 works on conv1's output grid: in the first block of a dilated stage conv1 lost
        # its stride, so conv2 needs the stage's new dilation to see what it saw when strided.
        self.conv2 = conv3x3(planes, planes, 1, next_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        next_dilation: int | None = None,  # unused: only 1x1 convs follow the strided 3x3
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)  # v1.5: stride on the 3x3
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A ResNet trunk (no avgpool/fc) returning features ``s2``, ``s4``, ``s8``, ``s16``, ``s32``.

    ``s2`` is the stem output after conv1/bn1/relu (before the max pool), for U-Net style
    decoders that want a stride-2 skip; the other keys follow the backbone contract.
    """

    def __init__(
        self, block: Block, layers: list[int], output_stride: int = 32, width: int = 64
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32 (got {output_stride})")
        self.output_stride = output_stride
        self.inplanes = width
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        w = width
        self.layer1 = self._make_layer(block, w, layers[0])
        self.layer2 = self._make_layer(block, 2 * w, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * w, layers[2], stride=2, dilate=output_stride == 8)
        self.layer4 = self._make_layer(block, 8 * w, layers[3], stride=2, dilate=output_stride < 32)
        e = block.expansion
        self.channels = {"s2": w, "s4": w * e, "s8": 2 * w * e, "s16": 4 * w * e, "s32": 8 * w * e}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: Block, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [
            block(self.inplanes, planes, stride, downsample, previous_dilation, self.dilation)
        ]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s2 = self.relu(self.bn1(self.conv1(x)))
        s4 = self.layer1(self.maxpool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return {"s2": s2, "s4": s4, "s8": s8, "s16": s16, "s32": s32}


def _resnet(
    name: str,
    block: Block,
    layers: list[int],
    output_stride: int,
    pretrained: str | Path | None,
    width: int,
    unknown: dict,
) -> ResNet:
    if unknown:  # e.g. a typo in backbone_options
        raise SegflowError(
            f"backbone {name!r}: unknown option(s) {', '.join(sorted(unknown))}; known: width"
        )
    if width < 1:
        raise SegflowError(f"backbone {name!r}: width must be >= 1 (got {width})")
    model = ResNet(block, layers, output_stride, width)
    if pretrained is not None:
        load_torchvision_weights(model, pretrained)
    return model


# ``width`` is the stem/layer1 channel count (64 in the published nets; layer2-4 have 2x, 4x,
# 8x it). Only 64 can load ImageNet weights; smaller widths exist for small test models.


def resnet18(
    output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64, **unknown
) -> ResNet:
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], output_stride, pretrained, width, unknown)


def resnet34(
    output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64, **unknown
) -> ResNet:
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], output_stride, pretrained, width, unknown)


def resnet50(
    output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64, **unknown
) -> ResNet:
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], output_stride, pretrained, width, unknown)


def resnet101(
    output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64, **unknown
) -> ResNet:
    return _resnet(
        "resnet101", Bottleneck, [3, 4, 23, 3], output_stride, pretrained, width, unknown
    )
