"""U-Net (Ronneberger et al., 2015), with "same" padding, and U-Net on a backbone encoder.

Plain U-Net: a double 3x3 conv at ``width`` channels, then four stages that downsample and
double the channels, then four stages that upsample, halve the channels, concatenate the
encoder map of the same resolution (the skip) and double-conv. Unlike the paper's valid convs
(572 -> 388 with crop-and-copy), convs are padded so the skips align without cropping and the
logits are the input size; BN after each conv (``batch_norm``) makes it train from scratch
reliably. ``upsample``: "transposed" (the paper's 2x2 up-conv), "bilinear", "nearest" or
"bed_of_nails" (followed by a 1x1 conv that halves the channels); ``downsample``: "max_pool"
(the paper) or "strided_conv".

With ``backbone="resnet34"`` (any backbone of ``build_backbone``) the encoder is the backbone's
features ``s32`` .. ``s4`` plus its stride-2 map ``s2`` when it has one (ResNet's stem, VGG's
pool1), and five decoder stages climb back to full resolution, as segmentation_models_pytorch
does; decoder widths are ``4w, 2w, w, w/2, w/4`` (256 .. 16 at the default ``width=64``).

Any input size: the input is zero-padded at the bottom/right to a multiple of the total
stride (16, or 32 with a backbone) and the logits are cropped back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import make_downsample, make_upsample, pad_to_multiple

UNET_UPSAMPLE = ("transposed", "bilinear", "nearest", "bed_of_nails")
UNET_DOWNSAMPLE = ("max_pool", "strided_conv")


def double_conv(in_ch: int, out_ch: int, batch_norm: bool = True) -> nn.Sequential:
    """Two 3x3 "same" convs, each followed by (BN and) ReLU: one U-Net stage."""
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        layers.append(nn.Conv2d(c_in, out_ch, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UpStage(nn.Module):
    """2x upsample to ``in_ch // 2`` channels, concatenate the skip (if any), double conv."""

    def __init__(
        self, in_ch: int, skip_ch: int, out_ch: int, upsample: str, batch_norm: bool = True
    ):
        super().__init__()
        half = max(in_ch // 2, 1)
        if upsample == "transposed":
            # The paper's "2x2 up-convolution that halves the number of feature channels".
            self.up = make_upsample(
                "transposed", in_ch, half, kernel_size=2, bilinear_init=False, bias=True
            )
        else:
            self.up = nn.Sequential(make_upsample(upsample), nn.Conv2d(in_ch, half, 1))
        self.conv = double_conv(half + skip_ch, out_ch, batch_norm)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """The classic U-Net: ``depth`` downsamplings from ``width`` channels (64 -> 1024)."""

    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        depth: int = 4,
        upsample: str = "transposed",
        downsample: str = "max_pool",
        batch_norm: bool = True,
    ):
        super().__init__()
        self.stride = 2**depth
        chs = [width * 2**i for i in range(depth + 1)]
        self.inc = double_conv(3, chs[0], batch_norm)
        # strided_conv is conv + BN + ReLU; max_pool takes no such option.
        down_opts = {"batch_norm": batch_norm} if downsample == "strided_conv" else {}
        self.downs = nn.ModuleList(
            nn.Sequential(
                make_downsample(downsample, chs[i], **down_opts),
                double_conv(chs[i], chs[i + 1], batch_norm),
            )
            for i in range(depth)
        )
        self.ups = nn.ModuleList(
            UpStage(chs[i + 1], chs[i], chs[i], upsample, batch_norm)
            for i in reversed(range(depth))
        )
        self.classifier = nn.Conv2d(chs[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = self.inc(pad_to_multiple(x, self.stride))
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up in self.ups:
            x = up(x, skips.pop())
        return self.classifier(x)[..., :h, :w]


class BackboneUNet(nn.Module):
    """U-Net decoder on a backbone's ``s32`` .. ``s4`` (+ ``s2``) features, up to stride 1."""

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module,
        width: int = 64,
        upsample: str = "transposed",
        batch_norm: bool = True,
    ):
        super().__init__()
        if backbone.output_stride != 32:
            raise ValueError("a U-Net encoder must run at output stride 32")
        self.backbone = backbone
        ch = backbone.channels
        # The skip keys from deep to shallow; full resolution (stride 1) has no skip.
        self.skip_keys: list[str | None] = ["s16", "s8", "s4", "s2" if "s2" in ch else None, None]
        dec = [max(width * 4 // 2**i, 1) for i in range(5)]
        ins = [ch["s32"], *dec[:-1]]
        self.ups = nn.ModuleList(
            UpStage(c_in, ch[k] if k else 0, c_out, upsample, batch_norm)
            for c_in, k, c_out in zip(ins, self.skip_keys, dec, strict=True)
        )
        self.classifier = nn.Conv2d(dec[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        feats = self.backbone(pad_to_multiple(x, 32))
        y = feats["s32"]
        for up, key in zip(self.ups, self.skip_keys, strict=True):
            y = up(y, feats[key] if key else None)
        return self.classifier(y)[..., :h, :w]


@register_model("unet")
def unet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    width: int = 64,
    upsample: str = "transposed",
    downsample: str = "max_pool",
    batch_norm: bool = True,
    backbone_options: dict | None = None,
    **unknown,
) -> nn.Module:
    """U-Net; with ``backbone`` (e.g. "resnet34") a U-Net decoder on that encoder.

    ``width``: base channels (plain) or decoder scale (backbone); ``pretrained``: the backbone's
    torchvision weights file (backbone only); ``downsample`` applies to the plain U-Net only;
    ``backbone_options`` go to the backbone constructor (e.g. ``{"width": 16}`` for VGG).
    """
    check_options("unet", unet, unknown)
    if upsample not in UNET_UPSAMPLE:
        raise SegflowError(
            f"model 'unet': upsample {upsample!r} is unknown; known: {', '.join(UNET_UPSAMPLE)}"
        )
    if downsample not in UNET_DOWNSAMPLE:
        raise SegflowError(
            f"model 'unet': downsample {downsample!r} is unknown; "
            f"known: {', '.join(UNET_DOWNSAMPLE)}"
        )
    if backbone is None:
        if pretrained is not None or backbone_options:
            raise SegflowError(
                "model 'unet' without a backbone takes no pretrained or backbone_options"
            )
        if output_stride not in (None, 16):
            raise SegflowError(f"model 'unet' runs at output_stride 16 (got {output_stride})")
        return UNet(num_classes, width, 4, upsample, downsample, batch_norm)
    if downsample != "max_pool":
        raise SegflowError("model 'unet': downsample applies only without a backbone")
    if output_stride not in (None, 32):
        raise SegflowError(
            f"model 'unet' with a backbone runs at output_stride 32 (got {output_stride})"
        )
    encoder = build_backbone(backbone, 32, pretrained, **(backbone_options or {}))
    return BackboneUNet(num_classes, encoder, width, upsample, batch_norm)
