"""VGG-16 trunks (with and without batch norm) with torchvision's parameter names.

``features`` is one ``nn.Sequential`` laid out exactly as torchvision's ``make_layers(cfg["D"])``
(conv, [bn,] relu ... "M"), so ``features.N.weight`` keys of a torchvision state_dict load one
for one once ``classifier.*`` is dropped. Output stride 16 or 8 follows DeepLab-LargeFOV: the
stride of pool5 (and pool4 at 8) is dropped by turning it into a 3x3/1 pool with padding 1, and
the convolutions after a dropped stride are dilated (conv5 at rate 2 when pool4 keeps its
resolution). A head that follows ``s32`` should dilate by :attr:`VGG.dilation` (1, 2 or 4).

SegNet needs to run the conv blocks itself with ``MaxPool2d(return_indices=True)``;
:attr:`VGG.stages` gives the five conv blocks (sharing modules with ``features``) for that.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segflow.models.backbones.weights import load_torchvision_weights

# torchvision's cfg "D": channel counts of the 13 convs, "M" = 2x2 max pool.
CFG_D: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
CFG_D += [512, 512, 512, "M", 512, 512, 512, "M"]
# The feature key each pool output answers to (pool1 at stride 2 is an extra U-Net skip).
POOL_KEYS = ("s2", "s4", "s8", "s16", "s32")


class VGG(nn.Module):
    """VGG-16 feature trunk returning pool outputs ``s2`` .. ``s32`` (see the module docstring).

    ``width`` is the channel count of the first block (64 in VGG-16); later blocks have 2x, 4x,
    8x and 8x it. Anything but 64 cannot load ImageNet weights and exists for small test models.
    """

    def __init__(self, batch_norm: bool = False, output_stride: int = 32, width: int = 64):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32 (got {output_stride})")
        self.output_stride = output_stride
        # Pools whose stride is dropped: pool5 at OS 16, pool4 and pool5 at OS 8.
        keep_stride = {1: True, 2: True, 3: True, 4: output_stride != 8, 5: output_stride == 32}
        layers: list[nn.Module] = []
        # Index ranges in ``features`` of each conv block and of the pool that ends it.
        self._blocks: list[tuple[int, int]] = []
        in_ch, dilation, block, start = 3, 1, 1, 0
        for v in CFG_D:
            if v == "M":
                self._blocks.append((start, len(layers)))
                if keep_stride[block]:
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    # 3x3/1 pooling keeps the resolution; later convs see a 2x sparser grid.
                    layers.append(nn.MaxPool2d(3, 1, padding=1))
                    dilation *= 2
                block += 1
                start = len(layers)
                continue
            out_ch = int(v) * width // 64
            layers.append(nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        # The dilation a layer after s32 needs to keep the receptive field of the strided net.
        self.dilation = dilation
        c = width
        self.channels = {"s2": c, "s4": 2 * c, "s8": 4 * c, "s16": 8 * c, "s32": 8 * c}
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG init: He-normal (fan_out) convs, zero biases, unit BN.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The five conv blocks without their pools (views sharing ``features``' modules)."""
        return [self.features[a:b] for a, b in self._blocks]

    @property
    def pools(self) -> list[nn.Module]:
        """The five pools that end the conv blocks (3x3/1 where the stride was dropped)."""
        return [self.features[b] for _, b in self._blocks]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, (a, b) in zip(POOL_KEYS, self._blocks, strict=True):
            for i in range(a, b + 1):
                x = self.features[i](x)
            out[key] = x
        return out


def _vgg(batch_norm: bool, output_stride: int, pretrained: str | Path | None, width: int) -> VGG:
    model = VGG(batch_norm=batch_norm, output_stride=output_stride, width=width)
    if pretrained is not None:
        load_torchvision_weights(model, pretrained)
    return model


def vgg16(output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64) -> VGG:
    """VGG-16 (cfg "D") trunk; ``pretrained`` is a torchvision ``vgg16`` state_dict file."""
    return _vgg(False, output_stride, pretrained, width)


def vgg16_bn(output_stride: int = 32, pretrained: str | Path | None = None, width: int = 64) -> VGG:
    """VGG-16 with batch norm; ``pretrained`` is a torchvision ``vgg16_bn`` state_dict file."""
    return _vgg(True, output_stride, pretrained, width)
