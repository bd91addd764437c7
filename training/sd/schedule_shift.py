"""simple diffusion's resolution shift of the training timesteps for the SD-space trainers
(simple_diffusion.md 1.2 and 2.3): crops larger than the checkpoint's native size see less
effective noise at each t, so each sampled t is mapped to the t' whose log-SNR is
lambda(t) - 2 log(d_train / d_native) (the paper's 2 log(64/d) with the native size as reference;
SD3's resolution shift is the same rule). The map is a search on the 1000-entry table (t' <= 999),
so the shifted distribution is renormalised by construction. Inference is untouched: the one-step
student runs at t = 999 from the LR latent, as trained."""
from __future__ import annotations

import math

import torch


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(abar_t / (1 - abar_t)) per timestep (float64)."""
    abar = alphas_cumprod.double()
    return torch.log(abar / (1 - abar))


def shift_table(alphas_cumprod: torch.Tensor, factor: float) -> torch.Tensor:
    """t -> t' (long, one per timestep) with lambda(t') nearest to lambda(t) - 2 log(factor);
    the identity for factor 1. lambda decreases with t, so the table is non-decreasing."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"the schedule shift factor must be a positive number, got {factor}")
    lam = log_snr(alphas_cumprod)
    if factor == 1:
        return torch.arange(len(lam))
    wanted = lam - 2 * math.log(factor)
    return (lam[None, :] - wanted[:, None]).abs().argmin(dim=1)


def resolve_shift(spec: str, crop: int, native: int) -> float:
    """The factor d_train / d_native of ``--schedule-shift``: "none" -> 1, "auto" -> crop / native
    when the crop exceeds the native size (else 1), or a number >= 1 given by the user."""
    if spec == "none":
        return 1.0
    if spec == "auto":
        return max(1.0, crop / native)
    try:
        factor = float(spec)
    except ValueError:
        raise ValueError(f"--schedule-shift takes auto, none or a factor >= 1, got {spec!r}") from None
    if not (factor >= 1 and math.isfinite(factor)):
        raise ValueError(f"--schedule-shift takes auto, none or a factor >= 1, got {spec!r}")
    return factor


def native_size(unet) -> int:
    """The checkpoint's native image size: its UNet's ``sample_size`` latents x 8 (512 for SD 1.x
    and SD 2 base, 768 for SD 2-v)."""
    return int(unet.config.sample_size) * 8
