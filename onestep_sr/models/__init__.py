"""Networks: the Swin-UNet denoiser, the VQ-f4 autoencoder and the pixel-space (identity) one."""
from __future__ import annotations

import torch

from .autoencoder import VQAutoencoder
from .configs import OFFICIAL_AUTOENCODER, OFFICIAL_DENOISER, AutoencoderConfig, DenoiserConfig
from .denoiser import SwinUNetDenoiser, lq_condition, zero_init_outputs_
from .pixel import PIXEL_AUTOENCODER, PixelSpaceAutoencoder, PixelSpaceConfig


def build_denoiser(config: DenoiserConfig, device: str | torch.device | None = None) -> SwinUNetDenoiser:
    with torch.device(device or "cpu"):
        return SwinUNetDenoiser(config)


def build_autoencoder(config: AutoencoderConfig, device: str | torch.device | None = None) -> VQAutoencoder:
    with torch.device(device or "cpu"):
        return VQAutoencoder(config)


def build_official_denoiser(device: str | torch.device | None = None) -> SwinUNetDenoiser:
    """The released x4 SR denoiser architecture (ResShift v1/v2/v3, SinSR); ``device='meta'`` works."""
    return build_denoiser(OFFICIAL_DENOISER, device)


def build_official_autoencoder(device: str | torch.device | None = None) -> VQAutoencoder:
    """The released VQ-f4 autoencoder architecture; ``device='meta'`` works."""
    return build_autoencoder(OFFICIAL_AUTOENCODER, device)


__all__ = [
    "AutoencoderConfig", "DenoiserConfig", "OFFICIAL_AUTOENCODER", "OFFICIAL_DENOISER", "PIXEL_AUTOENCODER",
    "PixelSpaceAutoencoder", "PixelSpaceConfig", "SwinUNetDenoiser", "lq_condition", "VQAutoencoder", "build_autoencoder", "build_denoiser",
    "build_official_autoencoder", "build_official_denoiser", "zero_init_outputs_",
]
