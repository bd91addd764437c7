"""The OSEDiff losses as pure functions over tensors and callables (no models, no peft).

Notation: ``z`` is the generator's clean latent (scaled by the VAE's scaling factor), ``abar`` the
scaled_linear ``alphas_cumprod`` table of SD (``onestep_sr.sd.formulas``).

* :func:`data_loss` -- ``MSE(x_hat, x_hq)`` in pixel space ([-1, 1]), per sample.
* :func:`vsd_loss` -- the DMD-style distribution-matching term (OSEDiff's "VSD" as implemented):
  ``grad = (x0_fake - x0_real) / mean_{C,H,W} |z - x0_real|`` and ``loss = MSE(z, sg(z - grad))``.
  Its value is ``mean(grad^2)`` and its gradient with respect to ``z`` is ``2 / N * grad``
  (``N`` = elements of ``z``): a descent step moves ``z`` away from the fake score's estimate and
  toward the real score's ``x0_real``. ``x0_real`` / ``x0_fake`` must carry no gradient.
* :func:`regulariser_loss` -- the fake-score LoRA's own diffusion loss: MSE between its prediction
  on noised, detached generator latents and the target (eps, or v for v-prediction models).
* :func:`cfg` -- classifier-free guidance ``uncond + scale * (cond - uncond)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from onestep_sr.sd.formulas import x0_from_prediction

VSD_T_RANGE = (20, 980)       # t ~ U[20, 980) for the distribution-matching term
REGULARISER_T_RANGE = (0, 1000)


def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def data_loss(x_hat: torch.Tensor, x_hq: torch.Tensor) -> torch.Tensor:
    """Per-sample pixel MSE."""
    return per_sample_mean((x_hat.float() - x_hq.float()) ** 2)


def _abar(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) noise`` per sample."""
    abar = _abar(alphas_cumprod, t, z)
    return abar.sqrt() * z + (1 - abar).sqrt() * noise


def diffusion_target(z: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """What the UNet predicts: ``noise`` (epsilon) or ``v = sqrt(abar) noise - sqrt(1 - abar) z``."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        abar = _abar(alphas_cumprod, t, z)
        return abar.sqrt() * noise - (1 - abar).sqrt() * z
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def x0_at(z_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
          prediction_type: str) -> torch.Tensor:
    """Per-sample x0 from the UNet output at timesteps ``t`` (the inference formula, sample by sample)."""
    return torch.cat([x0_from_prediction(z_t[i:i + 1], out[i:i + 1], float(alphas_cumprod[int(t[i])]),
                                         prediction_type) for i in range(z_t.shape[0])])


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


def vsd_gradient(z: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x0_fake - x0_real) / mean_{C,H,W} |z - x0_real|`` (no gradient)."""
    z, x0_real, x0_fake = z.detach().float(), x0_real.detach().float(), x0_fake.detach().float()
    weight = (z - x0_real).abs().flatten(1).mean(dim=1).clamp_min(eps).view(-1, *([1] * (z.dim() - 1)))
    return (x0_fake - x0_real) / weight


def vsd_loss(z: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """``MSE(z, sg(z - grad))`` over the batch (a scalar); see the module docstring."""
    target = (z.detach().float() - vsd_gradient(z, x0_real, x0_fake)).detach()
    return F.mse_loss(z.float(), target)


def score_x0(unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], z_t: torch.Tensor,
             t: torch.Tensor, context: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str,
             negative: torch.Tensor | None = None, guidance: float | torch.Tensor = 1.0) -> torch.Tensor:
    """x0 estimate of ``unet(z_t, t, context)``; with ``negative`` (and ``guidance``) the output is
    classifier-free guided: one batched call on ``[negative, context]`` (``guidance``: the CFG scale,
    a number or a per-sample tensor broadcasting over the output)."""
    if negative is None:
        out = unet(z_t, t, context)
    else:
        both = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([negative, context]))
        uncond, cond = both.chunk(2)
        out = cfg(uncond, cond, guidance)
    return x0_at(z_t, out.float(), t, alphas_cumprod, prediction_type)


def regulariser_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fake-score LoRA's diffusion loss: ``MSE(prediction, target)`` (a scalar)."""
    return F.mse_loss(prediction.float(), target.float())
