"""Fully convolutional networks: FCN-32s/16s/8s on VGG-16 (Long et al., 2015) and FCN-ResNet.

FCN-VGG turns VGG's classifier into convolutions (fc6: 7x7 conv, fc7: 1x1 conv, both with
dropout), scores classes with a 1x1 conv at stride 32 and upsamples with a transposed conv
initialised to bilinear. FCN-16s/8s add 1x1 score layers on pool4/pool3, initialised to zero so
the net starts as its coarser parent, and fuse them after a 2x upsampling. As in the released
Caffe models, every upsampling is fixed bilinear by default (``fixed_upsampling``).

Alignment, a choice: the Caffe model pads conv1_1 by 100 pixels so that the 7x7 *valid* fc6
has a big enough pool5 map, then crops each upsampled map at hand-computed offsets. Here fc6
gets padding 3 instead ("same", identical weights) and the input is zero-padded at the
bottom/right to a multiple of 32. Every map then sits on an exact stride-``s`` grid of the
input, the transposed convs (kernel 2s, stride s, padding s/2) put their output on the same
pixel centres as bilinear ``align_corners=False``, and the logits are cropped back to H x W.
This needs no offsets, works for any input size and spends far less compute on padding.

Pretrained: ``pretrained`` is a torchvision ``vgg16`` state_dict file. Its ``features.*`` load
into the backbone; when fc6/fc7 have the classifier's shapes (``fc_channels=4096``) its
``classifier.0``/``classifier.3`` weights are reshaped into them ("convolutionalisation").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.aux import AuxHead, aux_output, check_aux_weight
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import Bilinear, TransposedConv, pad_to_multiple

VGG_BACKBONES = ("vgg16", "vgg16_bn")


def _score(in_channels: int, num_classes: int) -> nn.Conv2d:
    # Long et al.: score layers start at zero, so a new skip adds nothing until it learns.
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCNVGG(nn.Module):
    """FCN-32s (``skips=0``), FCN-16s (1: pool4) or FCN-8s (2: pool4 and pool3) on VGG."""

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        skips: int,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        fixed_upsampling: bool = True,
    ):
        super().__init__()
        if backbone.output_stride != 32:
            raise ValueError("FCN-VGG needs the backbone at output stride 32")
        self.backbone = backbone
        self.skips = skips
        ch = backbone.channels
        self.fc6 = nn.Conv2d(ch["s32"], fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop = nn.Dropout(dropout)
        self.score_fr = _score(fc_channels, num_classes)
        if skips >= 1:
            self.score_pool4 = _score(ch["s16"], num_classes)
            self.upscore2 = TransposedConv(num_classes, scale=2, fixed=fixed_upsampling)
        if skips >= 2:
            self.score_pool3 = _score(ch["s8"], num_classes)
            self.upscore_pool4 = TransposedConv(num_classes, scale=2, fixed=fixed_upsampling)
        final_scale = 32 // 2**skips
        self.upscore = TransposedConv(num_classes, scale=final_scale, fixed=fixed_upsampling)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        feats = self.backbone(pad_to_multiple(x, 32))
        y = self.drop(F.relu(self.fc6(feats["s32"])))
        y = self.drop(F.relu(self.fc7(y)))
        y = self.score_fr(y)
        if self.skips >= 1:
            y = self.upscore2(y) + self.score_pool4(feats["s16"])
        if self.skips >= 2:
            y = self.upscore_pool4(y) + self.score_pool3(feats["s8"])
        return self.upscore(y)[..., :h, :w]


def load_fc_from_classifier(model: FCNVGG, path: str | Path) -> bool:
    """Copy a torchvision VGG classifier's fc6/fc7 into the conv fc6/fc7 when shapes allow.

    Returns whether it did; a file without matching classifier weights leaves fc6/fc7 as
    initialised (the backbone load has already checked that the file is a VGG state_dict).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    pairs = (("classifier.0", model.fc6), ("classifier.3", model.fc7))
    for key, conv in pairs:
        weight, bias = state.get(f"{key}.weight"), state.get(f"{key}.bias")
        linear_shape = (conv.out_channels, conv.weight[0].numel())
        if weight is None or bias is None or tuple(weight.shape) != linear_shape:
            return False
        if bias.shape != conv.bias.shape:
            return False
    with torch.no_grad():
        for key, conv in pairs:
            # Linear on the flattened (C, 7, 7) pool5 == conv with the weight viewed as a kernel.
            conv.weight.copy_(state[f"{key}.weight"].view_as(conv.weight))
            conv.bias.copy_(state[f"{key}.bias"])
    return True


def _fcn_vgg_constructor(name: str, skips: int, doc: str):
    """The registered constructor of one FCN-VGG variant (they differ only in ``skips``)."""

    def build(
        num_classes: int,
        backbone: str | None = None,
        output_stride: int | None = None,
        pretrained: str | Path | None = None,
        *,
        width: int = 64,
        fc_channels: int = 4096,
        dropout: float = 0.5,
        fixed_upsampling: bool = True,
        **unknown,
    ) -> FCNVGG:
        check_options(name, build, unknown)
        backbone = backbone or "vgg16"
        if backbone not in VGG_BACKBONES:
            raise SegflowError(
                f"model {name!r} needs backbone vgg16 or vgg16_bn (got {backbone!r}); "
                "use fcn_resnet for other backbones"
            )
        if output_stride not in (None, 32):
            raise SegflowError(f"model {name!r} runs at output_stride 32 (got {output_stride})")
        trunk = build_backbone(backbone, 32, pretrained, width=width)
        model = FCNVGG(num_classes, trunk, skips, fc_channels, dropout, fixed_upsampling)
        if pretrained is not None:
            load_fc_from_classifier(model, pretrained)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        doc + "\n\n``width``: VGG's first-block channels (64); ``fc_channels``: fc6/fc7."
    )
    return register_model(name)(build)


fcn32s = _fcn_vgg_constructor(
    "fcn32s", 0, "FCN-32s: VGG-16 + conv fc6/fc7, scores at stride 32 upsampled 32x."
)
fcn16s = _fcn_vgg_constructor(
    "fcn16s", 1, "FCN-16s: FCN-32s scores upsampled 2x, fused with pool4 scores, then 16x."
)
fcn8s = _fcn_vgg_constructor(
    "fcn8s", 2, "FCN-8s: FCN-16s fused once more with pool3 scores, then upsampled 8x."
)


class FCNResNet(nn.Module):
    """torchvision-style FCN: a dilated backbone, a 3x3 conv head, bilinear upsampling."""

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        head_channels: int,
        dropout: float,
        aux_weight: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        # torchvision's fcn_resnet aux_classifier: a head on layer3 (s16), loss weight 0.5.
        self.aux_weight = aux_weight
        self.aux_head = AuxHead(backbone.channels["s16"], num_classes) if aux_weight > 0 else None
        self.head = nn.Sequential(
            nn.Conv2d(backbone.channels["s32"], head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.upsample = Bilinear()

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        size = tuple(x.shape[-2:])
        out = self.upsample(self.head(feats["s32"]), output_size=size)
        return aux_output(self, out, feats["s16"], size)


@register_model("fcn_resnet")
def fcn_resnet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    head_channels: int = 512,
    dropout: float = 0.1,
    aux_weight: float = 0.0,
    backbone_options: dict | None = None,
    **unknown,
) -> FCNResNet:
    """FCN head on a dilated backbone (default resnet50 at output stride 8), any backbone.

    ``aux_weight`` > 0 adds torchvision's auxiliary head on layer3 with that loss weight (0.5
    in torchvision's reference), trained only; 0 (default) builds none.

    ``backbone_options`` go to the backbone constructor (e.g. ``{"width": 16}`` for VGG).
    """
    check_options("fcn_resnet", fcn_resnet, unknown)
    check_aux_weight("fcn_resnet", aux_weight)
    trunk = build_backbone(
        backbone or "resnet50", output_stride or 8, pretrained, **(backbone_options or {})
    )
    return FCNResNet(num_classes, trunk, head_channels, dropout, aux_weight)
