"""Run a ResShift-space model we trained on one whole LR image with N deterministic network calls
(untiled), for the training benchmarks: the engine's own pipeline (``onestep_sr.pipeline.super_resolve``
with the model's native scale and the levels of ``onestep_sr.samplers.level_grid``), on one tile."""
from __future__ import annotations

import torch

from onestep_sr.pipeline import model_to_unit, super_resolve, unit_to_model
from onestep_sr.samplers import level_grid
from onestep_sr.schedule import ResShiftSchedule


@torch.no_grad()
def upscale_calls(denoiser: torch.nn.Module, autoencoder: torch.nn.Module, schedule: ResShiftSchedule,
                  scale: int, lr: torch.Tensor, calls: int, seed: int) -> torch.Tensor:
    """SR of ``lr`` (3 x h x w in [0, 1]) -> (3 x scale h x scale w) in [0, 1], from the prior
    noise of ``seed`` with ``calls`` deterministic steps (1: the one-step sampler at T-1)."""
    out = super_resolve(unit_to_model(lr[None].float()), denoiser, autoencoder, schedule,
                        torch.Generator().manual_seed(seed), sampler="deterministic", scale=scale,
                        levels=level_grid(schedule.steps, calls))
    return model_to_unit(out)[0]
