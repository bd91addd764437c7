"""Run a ResShift-space model we trained on one whole LR image with N network calls (untiled),
for the training benchmarks: any native scale and LR condition (``lq_mode``), any number of
deterministic calls on the level grid of ``onestep_sr.samplers.level_grid``. Hosts use the
engine's tiled pipeline; this is the same arithmetic on one tile."""
from __future__ import annotations

import torch

from onestep_sr.models import lq_condition
from onestep_sr.pipeline import bicubic_upscale, model_to_unit, pad_bottom_right, unit_to_model
from onestep_sr.samplers import level_grid, sample_levels, x0_predictor
from onestep_sr.schedule import ResShiftSchedule

LATENT_FACTOR = 4  # pixel space and VQ-f4: the latent grid is the HR image / 4


@torch.no_grad()
def upscale_calls(denoiser: torch.nn.Module, autoencoder: torch.nn.Module, schedule: ResShiftSchedule,
                  scale: int, lr: torch.Tensor, calls: int, seed: int) -> torch.Tensor:
    """SR of ``lr`` (3 x h x w in [0, 1]) -> (3 x scale h x scale w) in [0, 1], from the prior
    noise of ``seed`` with ``calls`` deterministic steps (1: the one-step sampler at T-1)."""
    h, w = lr.shape[-2:]
    multiple = denoiser.config.latent_multiple * LATENT_FACTOR
    lr_multiple = max(1, multiple // scale) if multiple % scale == 0 else multiple
    lq = pad_bottom_right(unit_to_model(lr[None].float()), lr_multiple)
    y = autoencoder.encode(bicubic_upscale(lq, scale))
    cond = lq_condition(lq, denoiser.config.lq_mode, scale)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    predict = x0_predictor(denoiser, schedule, cond)
    x0 = sample_levels(predict, y, schedule, noise, level_grid(schedule.steps, calls))
    image = autoencoder.decode(x0)
    return model_to_unit(image)[0, :, :scale * h, :scale * w]


def crop_to_multiple(hr: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = hr.shape[-2:]
    return hr[..., : h - h % multiple, : w - w % multiple]


