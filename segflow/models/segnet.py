"""SegNet and SegNet-Basic (Badrinarayanan et al., 2017): decoders that unpool by pool indices.

The encoder max-pools with ``return_indices=True`` and keeps the indices (a few bits per
pixel, not the feature maps U-Net keeps); each decoder stage max-unpools by the indices of its
mirror encoder stage, then densifies the sparse map with convolutions. The ``upsample`` option
swaps max-unpooling for another named unpooling (``"nearest"``, ``"bed_of_nails"``,
``"bilinear"``, ``"transposed"``) to compare them on the same network.

Any input size: the input is zero-padded at the bottom/right to a multiple of the total
stride (32 for SegNet, 16 for SegNet-Basic) and the logits are cropped back, so every pool sees
an even-sized map and every unpool restores it exactly.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import UPSAMPLE_KINDS, make_upsample, pad_to_multiple


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 3, relu: bool = True) -> nn.Sequential:
    # The conv bias is redundant before BN's shift, so it is left out.
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_upsample(model: str, upsample: str) -> None:
    if upsample not in UPSAMPLE_KINDS:
        raise SegflowError(
            f"model {model!r}: upsample {upsample!r} is unknown; known: {', '.join(UPSAMPLE_KINDS)}"
        )


class SegNet(nn.Module):
    """VGG-16 encoder (five conv blocks, pools keep indices) + mirror decoder + class conv.

    Decoder stage i repeats the conv count of encoder stage i; its last conv narrows to the
    channels of stage i-1 and the very last one (Caffe's ``conv1_1_D``) outputs class scores.
    """

    def __init__(self, num_classes: int, encoder: nn.Module, upsample: str = "max_unpool"):
        super().__init__()
        if encoder.output_stride != 32:
            raise ValueError("SegNet needs the encoder at output stride 32")
        self.encoder = encoder
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        stage_channels = [encoder.channels[k] for k in ("s2", "s4", "s8", "s16", "s32")]
        convs_per_stage = [
            sum(isinstance(m, nn.Conv2d) for m in stage.modules()) for stage in encoder.stages
        ]
        self.unpools = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(5)):
            ch = stage_channels[i]
            self.unpools.append(make_upsample(upsample, ch, ch))
            layers = [conv_bn(ch, ch) for _ in range(convs_per_stage[i] - 1)]
            if i > 0:
                layers.append(conv_bn(ch, stage_channels[i - 1]))
            else:
                layers.append(nn.Conv2d(ch, num_classes, 3, padding=1))
            self.decoder.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        pooled = []
        for stage in self.encoder.stages:
            x = stage(x)
            size = tuple(x.shape[-2:])
            x, indices = self.pool(x)
            pooled.append((indices, size))
        for unpool, decode in zip(self.unpools, self.decoder, strict=True):
            indices, size = pooled.pop()
            x = decode(unpool(x, indices, size))
        return x[..., :h, :w]


@register_model("segnet")
def segnet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    width: int = 64,
    upsample: str = "max_unpool",
    **unknown,
) -> SegNet:
    """SegNet on a VGG-16-BN encoder; ``pretrained`` is a torchvision ``vgg16_bn`` file.

    ``width`` is the first block's channels (64 = VGG-16; smaller only for small models).
    """
    check_options("segnet", segnet, unknown)
    _check_upsample("segnet", upsample)
    backbone = backbone or "vgg16_bn"
    if backbone not in ("vgg16_bn", "vgg16"):
        raise SegflowError(f"model 'segnet' needs backbone vgg16_bn or vgg16 (got {backbone!r})")
    if output_stride not in (None, 32):
        raise SegflowError(f"model 'segnet' runs at output_stride 32 (got {output_stride})")
    encoder = build_backbone(backbone, 32, pretrained, width=width)
    return SegNet(num_classes, encoder, upsample)


class SegNetBasic(nn.Module):
    """SegNet-Basic: ``depth`` encoders (7x7 conv + BN + ReLU + pool) and mirror decoders.

    As in the paper the decoder convs have BN but no ReLU, and a 1x1 conv scores the classes.
    (The Caffe model also normalised its input with LRN; segflow normalises in the data loader.)
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        depth: int = 4,
        kernel_size: int = 7,
        upsample: str = "max_unpool",
    ):
        super().__init__()
        self.stride = 2**depth
        self.encoder = nn.ModuleList(
            conv_bn(3 if i == 0 else width, width, kernel_size) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpools = nn.ModuleList(make_upsample(upsample, width, width) for _ in range(depth))
        self.decoder = nn.ModuleList(
            conv_bn(width, width, kernel_size, relu=False) for _ in range(depth)
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.stride)
        pooled = []
        for encode in self.encoder:
            x = encode(x)
            size = tuple(x.shape[-2:])
            x, indices = self.pool(x)
            pooled.append((indices, size))
        for unpool, decode in zip(self.unpools, self.decoder, strict=True):
            indices, size = pooled.pop()
            x = decode(unpool(x, indices, size))
        return self.classifier(x)[..., :h, :w]


@register_model("segnet_basic")
def segnet_basic(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    width: int = 64,
    upsample: str = "max_unpool",
    **unknown,
) -> SegNetBasic:
    """SegNet-Basic (4 + 4 layers of ``width`` 7x7 channels), trained from scratch."""
    check_options("segnet_basic", segnet_basic, unknown)
    _check_upsample("segnet_basic", upsample)
    if backbone is not None or pretrained is not None:
        raise SegflowError("model 'segnet_basic' has its own encoder: no backbone or pretrained")
    if output_stride not in (None, 16):
        raise SegflowError(f"model 'segnet_basic' runs at output_stride 16 (got {output_stride})")
    return SegNetBasic(num_classes, width=width, upsample=upsample)
