"""RefineNet (Lin, Milan, Shen and Reid, CVPR 2017): multi-path refinement on a ResNet.

A ResNet's four stages give features at strides 4, 8, 16 and 32. RefineNet refines them
coarse to fine in a cascade of four *RefineNet blocks*, one per stage, so the decoder sees every
resolution the encoder had (rather than one dilated map, as DeepLab does). Each block (Fig. 3 of
the paper) has

* **adaptive convolution**: a 3x3 conv to the path's width, then two *residual conv units*
  (RCU: ReLU, 3x3 conv, ReLU, 3x3 conv, plus the input; no batch norm, the units fine-tune
  the pretrained features);
* **multi-resolution fusion**: the path's map and the coarser block's output, each through a 3x3
  conv to the same width, the coarser one upsampled (bilinearly) to the finer size, summed;
* **chained residual pooling** (CRP): a chain of 5x5/1 max pools each followed by a 3x3 conv,
  every link's output added to the running sum, so each position pools context from
  increasingly large windows and the block learns how much of each to add;
* **output convolutions**: residual conv units before the next block.

Widths and unit counts follow the released RefineNet-101 (the authors' group's PyTorch port,
DrSleep/refinenet-pytorch, of the Caffe/MatConvNet model): the stride-32 path at 512 channels,
the others at 256; two RCUs in each adaptive part, three in each output part, four links in each
CRP (``crp_stages``); dropout 0.5 on the stride-16 and -32 features and before the classifier
(``dropout``); a 3x3 conv classifies at stride 4 and the logits are upsampled bilinearly.
Published size: RefineNet-101 has **118 M parameters** (Nekrasov, Shen and Reid, "Light-Weight
RefineNet", BMVC 2018, Table 1, counting the released model; the CVPR paper gives no count).
Built here with 21 classes: 118.0 M (42.5 M ResNet-101 trunk, 75.5 M refinement path).

``backbone`` is any ResNet of segflow's zoo (resnet101 by default, the paper's; resnet50 and
resnet18/34 for smaller models), always at output stride 32: RefineNet exists to avoid dilation.
``features`` is the width of the finer paths (256; the stride-32 path has twice that), so small
test models shrink it. Sizes need no padding: every fusion resizes the coarser map to the finer
one, so odd inputs work.

Training: the refinement path has no batch norm (each RCU and pooling link adds into a running
sum), so it wants a smaller learning rate than BN heads: benchmarks/zoo_camvid.py trains it from
scratch with SGD at 0.01 where the BN networks get 0.05 (a from-scratch CamVid attempt at 0.05
diverged in its first epoch). The paper fine-tunes an ImageNet-pretrained ResNet instead.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Backbone feature keys from coarse to fine: the order the cascade refines them in.
LEVELS = ("s32", "s16", "s8", "s4")


def conv3x3(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """ReLU, 3x3 conv, ReLU, 3x3 conv, + input (Fig. 3b); the first conv has a bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ChainedResidualPooling(nn.Module):
    """``stages`` links of 5x5/1 max pool + 3x3 conv; every link's output joins the sum (3d)."""

    def __init__(self, channels: int, stages: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, 1, padding=2)
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(stages))

    def forward(self, x: Tensor) -> Tensor:
        link = x
        for conv in self.convs:
            link = conv(self.pool(link))
            x = x + link
        return x


class RefineBlock(nn.Module):
    """One RefineNet block: adapt one backbone map, fuse the coarser block's output, pool, refine.

    ``fuse`` (False only for the coarsest block, which has nothing coarser) adds the fusion
    conv on this path; ``out_channels`` (None for the finest block) adds the 3x3 conv that
    hands the result to the next, finer block at that block's width.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        fuse: bool,
        out_channels: int | None,
        crp_stages: int,
    ) -> None:
        super().__init__()
        self.reduce = conv3x3(in_channels, channels)
        self.adapt = nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
        self.fuse = conv3x3(channels, channels) if fuse else None
        self.crp = ChainedResidualPooling(channels, crp_stages)
        self.out_units = nn.Sequential(*(ResidualConvUnit(channels) for _ in range(3)))
        self.out_conv = conv3x3(channels, out_channels) if out_channels else None

    def forward(self, x: Tensor, coarser: Tensor | None = None) -> Tensor:
        x = self.adapt(self.reduce(x))
        if self.fuse is not None and coarser is not None:
            up = F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse(x) + up
        x = self.out_units(self.crp(F.relu(x)))
        return self.out_conv(x) if self.out_conv is not None else x


class RefineNet(nn.Module):
    """4-cascaded RefineNet on a ResNet's ``s32`` .. ``s4`` features; logits at the input size."""

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        features: int = 256,
        crp_stages: int = 4,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if backbone.output_stride != 32:
            raise ValueError("RefineNet needs the backbone at output stride 32")
        self.backbone = backbone
        widths = [2 * features, features, features, features]  # s32 path is twice as wide
        self.blocks = nn.ModuleList(
            RefineBlock(
                backbone.channels[key],
                widths[i],
                fuse=i > 0,
                out_channels=features if i < len(LEVELS) - 1 else None,
                crp_stages=crp_stages,
            )
            for i, key in enumerate(LEVELS)
        )
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(features, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        y = None
        for key, block in zip(LEVELS, self.blocks, strict=True):
            f = self.drop(feats[key]) if key in ("s32", "s16") else feats[key]
            y = block(f, y)
        scores = self.classifier(self.drop(y))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("refinenet")
def refinenet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    features: int = 256,
    crp_stages: int = 4,
    dropout: float = 0.5,
    backbone_options: dict | None = None,
    **unknown,
) -> RefineNet:
    """RefineNet; defaults: ResNet-101 (the paper's RefineNet-101), 256/512-channel paths.

    ``pretrained``: the backbone's torchvision weights file; ``backbone_options`` go to the
    backbone (e.g. ``{"width": 16}``).
    """
    check_options("refinenet", refinenet, unknown)
    backbone = backbone or "resnet101"
    if backbone not in RESNETS:
        raise SegflowError(
            f"model 'refinenet' needs a ResNet backbone ({', '.join(RESNETS)}); got {backbone!r}"
        )
    if output_stride not in (None, 32):
        raise SegflowError(f"model 'refinenet' runs at output_stride 32 (got {output_stride})")
    if features < 1:
        raise SegflowError(f"model 'refinenet': option features must be >= 1 (got {features})")
    if crp_stages < 1:
        raise SegflowError(f"model 'refinenet': option crp_stages must be >= 1 (got {crp_stages})")
    if not 0 <= dropout < 1:
        raise SegflowError(f"model 'refinenet': option dropout must be in [0, 1) (got {dropout})")
    trunk = build_backbone(backbone, 32, pretrained, **(backbone_options or {}))
    return RefineNet(num_classes, trunk, features, crp_stages, dropout)
