"""Samplers: small pure functions over an x0-predictor callable.

``predict_x0(x_t, t) -> x0_hat`` is the denoiser with its conditioning bound (see
:func:`x0_predictor`); ``y`` is the latent of the upsampled LR image (z_y). Noise is passed
explicitly, as a tensor or as a ``torch.Generator`` to draw it from, so that every run is
reproducible. ``callback(i, t, x0_hat)`` is called after each network call (progress bars,
cancellation: raise from it to stop).

:class:`TileableNoise` is what ``OneStepSR.upscale(noise="tileable")`` uses: a field that is a function
of the position in the image (a block of ``period`` x ``period`` latent pixels drawn from the seed,
repeated), so a tile cut at a multiple of the period gets exactly the noise the whole image has
there. An outer tiler that cuts the image at such offsets (ComfyUI's "Upscale Image (using Model)":
strides 480, 224, 96, all multiples of 32) then blends tiles made from the same noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from .schedule import ResShiftSchedule

X0Predictor = Callable[[torch.Tensor, int], torch.Tensor]
TILE_ALIGN = 32  # LR pixels: every tile stride of ComfyUI's model upscaler (512/256/128 tiles, overlap 32)


@dataclass(frozen=True)
class TileableNoise:
    """N(0, I) noise whose value at (c, y, x) depends only on (c, y mod period, x mod period): one
    block of ``period`` x ``period`` drawn from ``generator`` (on its device, so a seed gives the
    same noise everywhere), repeated over the latent. Inside any period x period window it is
    i.i.d. like the official noise; the stochastic sampler's later steps draw from ``generator``."""

    generator: torch.Generator
    period: int = TILE_ALIGN

    def field(self, shape: Sequence[int]) -> torch.Tensor:
        *lead, h, w = shape
        p = self.period
        block = torch.randn((*lead, p, p), generator=self.generator, device=self.generator.device,
                            dtype=torch.float32)
        return block.repeat(*([1] * len(lead)), -(-h // p), -(-w // p))[..., :h, :w]


Noise = Union[torch.Tensor, torch.Generator, TileableNoise]
NOISES = ("official", "tileable")  # OneStepSR.upscale(noise=...)


def prior_noise(kind: str, generator: torch.Generator, scale: int = 4) -> Union[torch.Generator, TileableNoise]:
    """The prior noise of an upscale by a model of native ``scale`` (its latent grid is the LR grid
    x scale / 4): ``official``, the whole padded latent drawn from ``generator`` as the official
    scripts draw it (the same image as their inference for the same seed); ``tileable``, a
    :class:`TileableNoise` aligned to TILE_ALIGN LR pixels."""
    return TileableNoise(generator, TILE_ALIGN * scale // 4) if kind == "tileable" else generator
Callback = Optional[Callable[[int, int, torch.Tensor], None]]


def x0_predictor(denoiser: Callable[..., torch.Tensor], schedule: ResShiftSchedule,
                 lq: torch.Tensor) -> X0Predictor:
    """Binds the LR conditioning and the input scaling: x0_hat = denoiser(x_t / sqrt(1+k^2 eta_t), t, lq)."""
    divisor = schedule.input_divisor

    def predict(x_t: torch.Tensor, t: int) -> torch.Tensor:
        steps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        return denoiser(x_t / float(divisor[t]), steps, lq)

    return predict


def draw_noise(noise: Noise, like: torch.Tensor) -> torch.Tensor:
    """``noise`` itself (checked against ``like``) or a fresh N(0, I) tensor from a generator."""
    if isinstance(noise, TileableNoise):
        return noise.field(like.shape).to(like.device, like.dtype)
    if isinstance(noise, torch.Generator):
        return torch.randn(like.shape, generator=noise, device=noise.device,
                           dtype=torch.float32).to(like.device, like.dtype)
    if noise.shape != like.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(like.shape)}")
    return noise.to(like.device, like.dtype)


def prior_sample(y: torch.Tensor, schedule: ResShiftSchedule, noise: Noise) -> torch.Tensor:
    """x_T = y + kappa sqrt(eta_{T-1}) eps."""
    return y + schedule.prior_std * draw_noise(noise, y)


def sample_one_step(predict_x0: X0Predictor, y: torch.Tensor, schedule: ResShiftSchedule,
                    noise: Noise, callback: Callback = None) -> torch.Tensor:
    """SinSR one-step student: x0_hat = student(x_T, T-1)."""
    t = schedule.steps - 1
    x0 = predict_x0(prior_sample(y, schedule, noise), t)
    if callback:
        callback(0, t, x0)
    return x0


def sample_deterministic(predict_x0: X0Predictor, y: torch.Tensor, schedule: ResShiftSchedule,
                         noise: Noise, callback: Callback = None) -> torch.Tensor:
    """SinSR deterministic ResShift sampler: x_{t-1} = k_t x0_hat + m_t x_t + j_t y, t = T-1..0.

    Given x_T it is deterministic; at t = 0 the output is the last x0 prediction."""
    x = prior_sample(y, schedule, noise)
    k, m, j = schedule.k.tolist(), schedule.m.tolist(), schedule.j.tolist()
    for i, t in enumerate(reversed(range(schedule.steps))):
        x0 = predict_x0(x, t)
        if callback:
            callback(i, t, x0)
        x = (k[t] * x0 + m[t] * x) + j[t] * y
    return x


def sample_stochastic(predict_x0: X0Predictor, y: torch.Tensor, schedule: ResShiftSchedule,
                      noise: Noise, step_noise: Union[Sequence[torch.Tensor], torch.Generator, None] = None,
                      callback: Callback = None) -> torch.Tensor:
    """Original ResShift ancestral sampler (T network calls).

    x_{t-1} = (eta_{t-1}/eta_t) x_t + (alpha_t/eta_t) x0_hat + sqrt(kappa^2 eta_{t-1} alpha_t / eta_t) eps_t.
    ``step_noise``: one tensor per step (T of them; the last is unused, as in the reference, which
    draws it and masks it) or a generator; ``None`` draws from ``noise`` when it is a generator.
    """
    if step_noise is None:
        if not isinstance(noise, (torch.Generator, TileableNoise)):
            raise ValueError("sample_stochastic needs step_noise when noise is a tensor")
        step_noise = noise.generator if isinstance(noise, TileableNoise) else noise
    if not isinstance(step_noise, torch.Generator) and len(step_noise) < schedule.steps:
        raise ValueError(f"step_noise has {len(step_noise)} tensors, the schedule has {schedule.steps} steps")
    x = prior_sample(y, schedule, noise)
    c_x = schedule.posterior_mean_coef_x_t.tolist()
    c_0 = schedule.posterior_mean_coef_x0.tolist()
    std = schedule.posterior_variance.sqrt().tolist()
    for i, t in enumerate(reversed(range(schedule.steps))):
        x0 = predict_x0(x, t)
        if callback:
            callback(i, t, x0)
        eps = draw_noise(step_noise if isinstance(step_noise, torch.Generator) else step_noise[i], x)
        x = c_x[t] * x + c_0[t] * x0
        if t > 0:
            x = x + std[t] * eps
    return x


def level_grid(schedule_steps: int, calls: int) -> list[int]:
    """The levels an N-call sampler visits on a T-level schedule: T-1, then every ``stride``-th
    level below it with stride (T + 1) // N (T15: 8 calls 14, 12, .., 0; 4 calls 14, 10, 6, 2;
    2 calls 14, 6; 1 call 14; the grids of progressive distillation). ``calls`` = T gives every level."""
    if not 1 <= calls <= schedule_steps:
        raise ValueError(f"a {schedule_steps}-step schedule runs 1 to {schedule_steps} network calls, got {calls}")
    stride = (schedule_steps + 1) // calls
    return [schedule_steps - 1 - i * stride for i in range(calls)]


def sample_levels(predict_x0: X0Predictor, y: torch.Tensor, schedule: ResShiftSchedule, noise: Noise,
                  levels: Sequence[int], callback: Callback = None) -> torch.Tensor:
    """Deterministic ResShift sampling on a subset of levels (descending, starting at T-1): at
    each level one x0 prediction, then the generalised move to the next level (the last moves to
    the clean end, so the output is the last prediction). With every level it is
    :func:`sample_deterministic`; with the single level T-1 it is :func:`sample_one_step`."""
    levels = [int(t) for t in levels]
    if not levels or levels[0] != schedule.steps - 1 or any(a <= b for a, b in zip(levels, levels[1:])) or levels[-1] < 0:
        raise ValueError(f"levels must descend from {schedule.steps - 1} to >= 0, got {levels}")
    x = prior_sample(y, schedule, noise)
    for i, t in enumerate(levels):
        x0 = predict_x0(x, t)
        if callback:
            callback(i, t, x0)
        s = levels[i + 1] if i + 1 < len(levels) else -1
        k, m, j = schedule.step_coefficients(t, s)
        x = (k * x0 + m * x) + j * y
    return x
