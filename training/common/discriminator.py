"""A U-Net discriminator with spectral normalisation, for the adversarial fine-tune of the default
model's far end (issue 28, item 5).

Facts from Real-ESRGAN (Wang et al., ICCVW 2021, section 3.3): the discriminator is a U-Net that
gives one realness logit per pixel (so it judges local texture, not the whole picture), its
convolutions are spectrally normalised for stable training, and it starts from scratch. The exact
layer list here is ours, written for this project at CPU size: three stride-2 4x4 convolutions
down, three bilinear x2 + 3x3 convolutions up with additive skips, two 3x3 convolutions and a
1-channel output, LeakyReLU 0.2 between them. No downloaded weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _sn_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - stride + 1) // 2, bias=False))


class UNetDiscriminator(nn.Module):
    """``forward(image)``: image N x 3 x H x W in [-1, 1] (H, W multiples of 8) -> N x 1 x H x W logits."""

    def __init__(self, features: int = 32):
        super().__init__()
        f = features
        self.stem = nn.Conv2d(3, f, 3, padding=1)
        self.down = nn.ModuleList([_sn_conv(f, 2 * f, 4, 2), _sn_conv(2 * f, 4 * f, 4, 2), _sn_conv(4 * f, 8 * f, 4, 2)])
        self.up = nn.ModuleList([_sn_conv(8 * f, 4 * f, 3), _sn_conv(4 * f, 2 * f, 3), _sn_conv(2 * f, f, 3)])
        self.tail = nn.Sequential(_sn_conv(f, f, 3), nn.LeakyReLU(0.2), _sn_conv(f, f, 3), nn.LeakyReLU(0.2),
                                  nn.Conv2d(f, 1, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"the discriminator needs H and W multiples of 8, got {tuple(image.shape[-2:])}")
        h = F.leaky_relu(self.stem(image), 0.2)
        skips = [h]
        for conv in self.down:
            h = F.leaky_relu(conv(h), 0.2)
            skips.append(h)
        skips.pop()  # the deepest features are h itself
        for conv in self.up:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = F.leaky_relu(conv(h), 0.2) + skips.pop()
        return self.tail(h)


def discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The standard (non-saturating) GAN loss of the discriminator: BCE(real -> 1) + BCE(fake -> 0),
    averaged over pixels."""
    return F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake.detach())).mean()


def generator_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """BCE(fake -> 1) per sample (the generator's adversarial term; the discriminator's own
    parameters get no gradient from it)."""
    for p in discriminator.parameters():
        p.requires_grad_(False)
    try:
        return F.softplus(-discriminator(fake)).flatten(1).mean(1)
    finally:
        for p in discriminator.parameters():
            p.requires_grad_(True)
