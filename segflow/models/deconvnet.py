"""DeconvNet (Noh, Hong and Han, ICCV 2015): a learned decoder that mirrors VGG-16 exactly.

FCN upsamples coarse class scores in one or a few bilinear steps; DeconvNet instead mirrors the
whole encoder. The encoder is VGG-16 (13 convs, five 2x2 max pools that keep their argmax
indices) followed by fc6 (a 7x7 conv, 4096 channels) and fc7 (1x1, 4096). The decoder starts
with a 7x7 deconvolution back to 512 channels, then for each encoder stage, deepest first,
*unpools* with that stage's pool indices (each value goes back where its maximum came from) and
densifies the sparse map with as many 3x3 deconvolutions as the stage had convolutions, the
last one narrowing to the next stage's channels. A 1x1 convolution scores the classes. Batch
normalisation follows every convolution and deconvolution, as in the paper (which found it
essential for optimising so deep a network). Layer by layer this is Table 1 of the paper.

Published size: **252 M parameters** (Noh et al. 2015: the network of their Table 1, trained on
PASCAL VOC with 21 classes; the paper gives its size as 252M parameters).
Built here with 21 classes: 251.8 M (fc6 and the 7x7 deconvolution are 103 M each, fc7 17 M,
the two VGG halves 15 M each). SegNet (segflow/models/segnet.py) is the same idea without the
fully connected middle: 29.5 M.

Choices that differ from the Caffe model, none of which changes a parameter count:

* fc6 is padded by 3 ("same") and the 7x7 deconvolution after fc7 likewise, so the middle keeps
  pool5's spatial size. The paper ran 224x224 crops, where pool5 is exactly 7x7 and fc6's valid
  output 1x1; at that size the centre position here computes exactly the paper's fc6. At any
  other size the network stays fully convolutional instead of needing a 224x224 input.
* The input is zero-padded at the bottom/right to a multiple of 32 and the logits cropped back,
  so every pool sees an even-sized map, every unpool restores it, and any H x W works.
* The paper's 3x3 "deconvolutions" are stride-1 transposed convolutions; they are kept as
  ``ConvTranspose2d`` (the same function class as a 3x3 convolution, weights flipped).

``width`` (VGG's first-block channels, 64 published) and ``fc_channels`` (4096) exist for small
models: the paper's 252 M parameters need several GFLOPs per 64x64 crop, so a CPU benchmark
trains a narrower DeconvNet and says so. ``pretrained`` is a torchvision ``vgg16_bn`` file: its
``features.*`` load into the encoder and, when ``fc_channels`` is 4096, its classifier's first
two layers load into fc6/fc7 (as FCN convolutionalises them).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.fcn import load_fc_from_classifier
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import MaxUnpool, pad_to_multiple


def deconv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3) -> nn.Sequential:
    """A stride-1 transposed conv ("deconvolution") + BN + ReLU; same spatial size out."""
    # The bias is redundant before BN's shift.
    return nn.Sequential(
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DeconvNet(nn.Module):
    """VGG-16-BN encoder + fc6/fc7 as convolutions + the mirrored unpool/deconv decoder."""

    def __init__(self, num_classes: int, backbone: nn.Module, fc_channels: int = 4096):
        super().__init__()
        if backbone.output_stride != 32:
            raise ValueError("DeconvNet needs the VGG encoder at output stride 32")
        self.backbone = backbone
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = MaxUnpool(2)
        stage_channels = [backbone.channels[k] for k in ("s2", "s4", "s8", "s16", "s32")]
        convs_per_stage = [
            sum(isinstance(m, nn.Conv2d) for m in stage.modules()) for stage in backbone.stages
        ]
        top = stage_channels[-1]
        # fc6/fc7 keep their bias so a torchvision classifier loads into them as it is.
        self.fc6 = nn.Conv2d(top, fc_channels, 7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.fc_bn = nn.ModuleList([nn.BatchNorm2d(fc_channels), nn.BatchNorm2d(fc_channels)])
        self.deconv_fc6 = deconv_bn_relu(fc_channels, top, 7)
        self.decoder = nn.ModuleList()
        for i in reversed(range(5)):
            ch = stage_channels[i]
            out = [ch] * convs_per_stage[i]
            if i > 0:
                out[-1] = stage_channels[i - 1]  # e.g. deconv4_3: 512 -> 256
            ins = [ch, *out[:-1]]
            self.decoder.append(
                nn.Sequential(*(deconv_bn_relu(a, b) for a, b in zip(ins, out, strict=True)))
            )
        self.classifier = nn.Conv2d(stage_channels[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        pooled = []
        for stage in self.backbone.stages:
            x = stage(x)
            size = tuple(x.shape[-2:])
            x, indices = self.pool(x)
            pooled.append((indices, size))
        x = self.fc_bn[0](self.fc6(x)).relu()
        x = self.fc_bn[1](self.fc7(x)).relu()
        x = self.deconv_fc6(x)
        for decode in self.decoder:
            indices, size = pooled.pop()
            x = decode(self.unpool(x, indices, size))
        return self.classifier(x)[..., :h, :w]


@register_model("deconvnet")
def deconvnet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    width: int = 64,
    fc_channels: int = 4096,
    **unknown,
) -> DeconvNet:
    """DeconvNet on VGG-16-BN (the published setting: ``width`` 64, ``fc_channels`` 4096).

    ``pretrained``: a torchvision ``vgg16_bn`` state_dict file (encoder, and fc6/fc7 from its
    classifier when ``fc_channels`` is 4096).
    """
    check_options("deconvnet", deconvnet, unknown)
    backbone = backbone or "vgg16_bn"
    if backbone != "vgg16_bn":
        raise SegflowError(
            f"model 'deconvnet' needs backbone vgg16_bn (got {backbone!r}): the paper puts "
            "batch norm after every layer of the encoder and decoder"
        )
    if output_stride not in (None, 32):
        raise SegflowError(f"model 'deconvnet' runs at output_stride 32 (got {output_stride})")
    if width < 1 or fc_channels < 1:
        raise SegflowError(
            f"model 'deconvnet': width and fc_channels must be >= 1 (got {width}, {fc_channels})"
        )
    encoder = build_backbone(backbone, 32, pretrained, width=width)
    model = DeconvNet(num_classes, encoder, fc_channels)
    if pretrained is not None:
        load_fc_from_classifier(model, pretrained)
    return model
