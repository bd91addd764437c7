"""The identity autoencoder of pixel-space models.

A pixel-space x4 model needs no learnt autoencoder: space-to-depth by 4 (pixel unshuffle) turns
the bicubic-upsampled image (B, 3, 4h, 4w) into a "latent" (B, 48, h, w) at the LR image's size,
exactly and invertibly, so the latent-space pipeline (tiles, samplers, the denoiser conditioned on
the LR image at the latent's size) runs unchanged. Quantisation is the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_AUTOENCODER = "pixel"  # the autoencoder name a checkpoint's model info uses for this one


@dataclass(frozen=True)
class PixelSpaceConfig:
    scale: int = 4
    channels: int = 3

    @property
    def embed_dim(self) -> int:
        return self.channels * self.scale * self.scale

    @property
    def downscale(self) -> int:
        return self.scale


class PixelSpaceAutoencoder(nn.Module):
    """(B, C, H, W) in [-1, 1] <-> (B, C * scale^2, H / scale, W / scale); no parameters."""

    def __init__(self, config: PixelSpaceConfig = PixelSpaceConfig()):
        super().__init__()
        self.config = config

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        s = self.config.scale
        if image.shape[-2] % s or image.shape[-1] % s:
            raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of {s}")
        return F.pixel_unshuffle(image, s)

    def decode(self, latent: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        return F.pixel_shuffle(latent, self.config.scale)

    def quantize(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))
