"""CRF as RNN: the dense CRF's mean-field iterations as layers, trained with the network.

Zheng et al. (ICCV 2015, "Conditional Random Fields as Recurrent Neural Networks") unroll the
mean-field inference of the fully connected CRF (Krahenbuhl & Koltun 2011) into a fixed number
of differentiable iterations, learn the kernel weights and the label compatibility with the
network, and so turn the post-hoc CRF (segflow's pydensecrf step, tuned on val and applied on
the CPU after the network) into a head that runs on the network's device.

One iteration, on unaries ``U`` (the network's logits) and the marginals ``Q = softmax(U)``:

1. **Message passing** with two Gaussian kernels over pixel pairs ``p != q``: the appearance
   (bilateral) kernel ``exp(-|p-q|^2 / 2 theta_alpha^2 - |I_p-I_q|^2 / 2 theta_beta^2)`` and
   the smoothness (spatial) kernel ``exp(-|p-q|^2 / 2 theta_gamma^2)``:
   ``m_k(p, l) = sum_q k(p, q) Q(q, l)``.
2. **Weighting**: ``w_bilateral m_b + w_spatial m_s`` (learned, one weight per kernel and class
   as in the paper's per-class filter weights).
3. **Compatibility transform**: ``C(p, l) = sum_l' mu(l, l') M(p, l')`` (a learned 1x1
   convolution, initialised to the Potts model ``mu = 1 - I``).
4. **Update**: ``Q = softmax(U - C)``. The head returns the last ``U - C`` as logits.

**Which filtering.** The paper computes the messages with the permutohedral lattice (an
approximation of the dense sum, O(N) with a CPU-bound hashing step and no PyTorch kernel). This
module uses ConvCRF's truncation instead (Teichmann & Cipolla, 2018): pairs farther apart than
``window // 2`` cells in x or y are dropped, and within the window the sum is *exact* (a test
checks it against the dense sum, tests/models/test_crf_rnn.py). As in ConvCRF, the messages can
be computed on a grid ``downsample`` times coarser (marginals and image average-pooled, messages
upsampled bilinearly): a window of 11 at downsample 4 reaches 20 input pixels each way for the
cost of 120 neighbours. It is plain tensor arithmetic (shifted copies, multiplies and adds), so
it runs, trains and exports (ONNX, TorchScript) wherever the network does, at
``O(window^2 x C x H x W / downsample^2)`` per iteration, with the kernels
(``window^2 x H x W / downsample^2`` floats) computed once per forward.

**Units.** The image is the network's *input*, already normalised by the dataset's mean and
std, so ``theta_beta`` is in units of that input: 1 is about one standard deviation of the
dataset's intensities (pydensecrf's ``sigma_beta`` 13 of 255 is ~0.2 for a std of ~65).
``theta_alpha``/``theta_gamma`` are in pixels of the input (the training scale), whatever the
``downsample``.
No normalisation of the kernels (the paper's and pydensecrf's ``NO_NORMALIZATION``): the learned
weights absorb the scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MeanFieldCRF(nn.Module):
    """The dense CRF's mean-field inference, truncated to a ``window`` (odd) in pixels."""

    def __init__(
        self,
        num_classes: int,
        *,
        iterations: int = 5,
        window: int = 11,
        downsample: int = 1,
        theta_alpha: float = 5.0,
        theta_beta: float = 0.2,
        theta_gamma: float = 3.0,
        w_bilateral: float = 1.0,
        w_spatial: float = 1.0,
    ) -> None:
        super().__init__()
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window must be odd and >= 3 (got {window})")
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1 (got {downsample})")
        self.iterations = iterations
        self.window = window
        self.downsample = downsample
        self.theta_alpha, self.theta_beta, self.theta_gamma = theta_alpha, theta_beta, theta_gamma
        # One weight per class and kernel (the paper's per-class filter weights), and the label
        # compatibility, Potts at the start: a label pays for each similar neighbour with
        # another label, never for one with its own.
        self.w_bilateral = nn.Parameter(torch.full((num_classes,), float(w_bilateral)))
        self.w_spatial = nn.Parameter(torch.full((num_classes,), float(w_spatial)))
        potts = torch.ones(num_classes, num_classes) - torch.eye(num_classes)
        self.compatibility = nn.Parameter(potts)

    def offsets(self) -> list[tuple[int, int]]:
        """The (dy, dx) of every neighbour in the window, (0, 0) excluded (no self-message)."""
        r = self.window // 2
        return [
            (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)
        ]

    def kernels(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(bilateral, spatial) weights of each offset: ``(N, K, H, W)`` and ``(K,)``, zero
        where the neighbour falls outside the image."""
        r = self.window // 2
        n, _, h, w = image.shape
        padded = F.pad(image, (r, r, r, r))
        inside = F.pad(image.new_ones(1, 1, h, w), (r, r, r, r))
        bilateral, spatial = [], []
        for dy, dx in self.offsets():
            near = padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            mask = inside[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            distance = float(dy * dy + dx * dx) * self.downsample**2  # in input pixels
            colour = (image - near).pow(2).sum(1, keepdim=True)
            alpha = distance / (2 * self.theta_alpha**2)
            bilateral.append(torch.exp(-alpha - colour / (2 * self.theta_beta**2)) * mask)
            spatial.append(math.exp(-distance / (2 * self.theta_gamma**2)))
        return torch.cat(bilateral, 1), image.new_tensor(spatial)

    def messages(self, q: Tensor, bilateral: Tensor, spatial: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1: the sums of each kernel over the window, per class: two ``(N, C, H, W)``."""
        r = self.window // 2
        h, w = q.shape[-2:]
        padded = F.pad(q, (r, r, r, r))  # zeros outside: the spatial kernel needs no mask
        m_b, m_s = torch.zeros_like(q), torch.zeros_like(q)
        for k, (dy, dx) in enumerate(self.offsets()):
            near = padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            m_b = m_b + bilateral[:, k : k + 1] * near
            m_s = m_s + spatial[k] * near
        return m_b, m_s

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        """Refined logits of ``logits`` (N, C, H, W) given the network's input ``image``
        (N, 3, H, W); computed in float32 whatever the autocast (exp of distances)."""
        with torch.autocast(logits.device.type, enabled=False):
            unary = logits.float()
            image = image.float()
            if image.shape[-2:] != unary.shape[-2:]:
                image = F.interpolate(image, unary.shape[-2:], mode="bilinear", align_corners=False)
            s = self.downsample
            coarse = F.avg_pool2d(image, s, ceil_mode=True) if s > 1 else image
            bilateral, spatial = self.kernels(coarse)
            out = unary
            for _ in range(self.iterations):
                q = torch.softmax(out, 1)
                if s > 1:
                    q = F.avg_pool2d(q, s, ceil_mode=True)
                m_b, m_s = self.messages(q, bilateral, spatial)
                weighted = self.w_bilateral.view(1, -1, 1, 1) * m_b + (
                    self.w_spatial.view(1, -1, 1, 1) * m_s
                )
                if s > 1:
                    weighted = F.interpolate(
                        weighted, unary.shape[-2:], mode="bilinear", align_corners=False
                    )
                penalty = torch.einsum("kl,nlhw->nkhw", self.compatibility, weighted)
                out = unary - penalty
        return out


class CRFasRNN(nn.Module):
    """A segmentation network with a :class:`MeanFieldCRF` on its logits.

    The state dict holds ``net.*`` (the network, as it would be without the CRF) and ``crf.*``.
    An auxiliary output (PSPNet-style deep supervision, training only) passes through unrefined.
    ``freeze_net`` keeps the network's weights fixed (the paper's second stage trains the CRF on
    a trained FCN); its BatchNorm statistics stay fixed too.
    """

    def __init__(self, net: nn.Module, crf: MeanFieldCRF, freeze_net: bool = False) -> None:
        super().__init__()
        self.net = net
        self.crf = crf
        self.freeze_net = freeze_net
        # the loss weights the network's auxiliary output by its weight (segflow.train.loop)
        self.aux_weight = float(getattr(net, "aux_weight", 0.0))
        if freeze_net:
            for p in self.net.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> CRFasRNN:
        super().train(mode)
        if self.freeze_net:
            self.net.eval()
        return self

    def forward(self, x: Tensor):
        out = self.net(x)
        if isinstance(out, tuple):
            return (self.crf(out[0], x), *out[1:])
        return self.crf(out, x)
