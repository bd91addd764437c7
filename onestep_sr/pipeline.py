"""LR image -> SR image, exactly as the official inference does it (untiled).

pad bottom/right to a multiple of 64 (reflect) -> z_y = encode(bicubic x4) -> sample in latent
space conditioned on the padded LR -> decode (quantised) -> crop -> clamp.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models import SwinUNetDenoiser, VQAutoencoder
from .samplers import (Noise, sample_deterministic, sample_one_step, sample_stochastic,
                       x0_predictor)
from .schedule import ResShiftSchedule

SCALE = 4
Sampler = Literal["one_step", "deterministic", "stochastic"]


def pad_bottom_right(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad H and W at the bottom/right up to a multiple (mirror without repeating the edge).

    Images smaller than the padding are mirrored repeatedly; a 1-pixel side is replicated."""
    for dim in (-2, -1):
        need = -x.shape[dim] % multiple
        while need:
            size = x.shape[dim]
            step = min(need, size - 1) if size > 1 else need
            pad = [0, step, 0, 0] if dim == -1 else [0, 0, 0, step]
            x = F.pad(x, pad, mode="reflect" if size > 1 else "replicate")
            need -= step
    return x


def bicubic_upscale(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """PyTorch bicubic (A = -0.75, align_corners False, no antialias), unclamped."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def uint8_to_model(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32 in [-1, 1] (u8/255, then (x-0.5)/0.5)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).float().div(255.0)
    return ((x - 0.5) / 0.5).permute(2, 0, 1)[None]


def model_to_uint8(image: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W in [-1, 1] (unclamped) -> H x W x 3 uint8 with round-half-to-even."""
    y = (image.float().clamp(-1, 1) * 0.5 + 0.5).clamp(0, 1)
    return torch.round(y * 255.0).to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


def super_resolve(lq: torch.Tensor, denoiser: SwinUNetDenoiser, autoencoder: VQAutoencoder,
                  schedule: ResShiftSchedule, noise: Noise, sampler: Sampler = "one_step",
                  step_noise: Sequence[torch.Tensor] | torch.Generator | None = None,
                  callback: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """x4 SR of ``lq`` (B x 3 x h x w in [-1, 1]); returns B x 3 x 4h x 4w, unclamped.

    ``noise`` is the prior noise at the padded latent size, or a generator to draw it from."""
    h, w = lq.shape[-2:]
    lq_padded = pad_bottom_right(lq, denoiser.config.latent_multiple)
    z_y = autoencoder.encode(bicubic_upscale(lq_padded))
    predict = x0_predictor(denoiser, schedule, lq_padded)
    if sampler == "one_step":
        z = sample_one_step(predict, z_y, schedule, noise, callback)
    elif sampler == "deterministic":
        z = sample_deterministic(predict, z_y, schedule, noise, callback)
    elif sampler == "stochastic":
        z = sample_stochastic(predict, z_y, schedule, noise, step_noise, callback)
    else:
        raise ValueError(f"unknown sampler {sampler!r} (one_step, deterministic, stochastic)")
    return autoencoder.decode(z)[..., : SCALE * h, : SCALE * w]
