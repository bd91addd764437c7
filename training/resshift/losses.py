"""Training losses (spec section 8), per sample: each returns a (B,) tensor, the mean over C, H, W.

ResShift teacher: x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps with t uniform in [0, T-1];
loss = MSE(denoiser(x_t / sqrt(1 + kappa^2 eta_t), t, lq), x0).

SinSR distillation (student initialised from the teacher), with x_T = y + kappa sqrt(eta_T) eps,
s_T = sqrt(1 + kappa^2 eta_T) and T' = T - 1:
- L_distill = MSE(student(x_T / s_T, T', lq), teacher's deterministic T-step output from x_T);
- L_inverse = MSE(student(that output / s_T, 0, lq), x_T): at t = 0 the student maps a clean
  latent back to its x_T;
- L_gt = MSE(student(sg[student(x0 / s_T, 0, lq)] / s_T, T', lq), x0): the x_T the student
  assigns to the ground truth must map back onto it.
Total = L_distill + L_inverse + L_gt (equal weights, as released).

YONOS scale distillation (Noroozi et al. 2024, see ../shared/specs/yonos.md): a frozen teacher at
scale s/2 gives the target, its single-call x0 prediction, for the student at scale s.
- Paper: the same noisy state z_t, the same t, the teacher sees the easier LR; L2 to the
  teacher's x0 prediction replaces the GT target.
- Our adaptation to residual shifting (the state depends on the LR, so "the same z_t" cannot
  hold): the same HR crop x0, the same eps and t, each model on its own state
  x_t^S = x0 + eta_t (y_s - x0) + kappa sqrt(eta_t) eps and x_t^T likewise with y_{s/2};
  L_scale = MSE(student(x_t^S, t, c_s), sg teacher(x_t^T, t, c_{s/2})), plus an optional
  lambda_gt MSE(student(...), x0) (0 by default).

Progressive distillation (Salimans & Ho 2022; Meng et al. 2023 stage 2), adapted to residual
shifting (../shared/specs/guided_progressive.md 6.2): a student on every other level of its
teacher's grid learns, at its level t with successor s, the x0 that makes ONE generalised step
t -> s land where TWO teacher steps (t -> t_m -> s) land:
x0~ = (x_s^teacher - m(t,s) x_t - j(t,s) y) / k(t,s), x_t from the forward marginal of a real pair;
for s = -1 (clean) x0~ = x_s^teacher. Unweighted per-sample x0 MSE (ResShift's own weight).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from onestep_sr.samplers import prior_sample, sample_deterministic, x0_predictor
from onestep_sr.schedule import ResShiftSchedule

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)


Mse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: pooling factors and weights of the multiscale loss: w_f grows with f (coarse scales weigh more,
#: as simple diffusion's 1/s on resolution s), with the full-resolution term kept at 0.4
#: (simple_diffusion.md 2.4, our adaptation: x0 targets, factors instead of absolute sizes)
MULTISCALE_FACTORS = (1, 2, 4, 8)
MULTISCALE_WEIGHTS = (0.4, 0.6 * 2 / 14, 0.6 * 4 / 14, 0.6 * 8 / 14)


def multiscale_mse(space_to_depth: int = 1) -> Mse:
    """Per-sample sum over f in MULTISCALE_FACTORS of w_f MSE(avgpool_f(a), avgpool_f(b)), each a
    per-element mean. ``space_to_depth`` r > 1: the tensors are images space-to-depth by r (the
    pixel-space latent), pooled as images (pixel-shuffled first). A factor the size does not
    allow (fewer than f rows or columns) is skipped and the weights renormalised."""
    def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if space_to_depth > 1:
            a, b = F.pixel_shuffle(a.float(), space_to_depth), F.pixel_shuffle(b.float(), space_to_depth)
        total, weights = 0.0, 0.0
        for factor, weight in zip(MULTISCALE_FACTORS, MULTISCALE_WEIGHTS):
            if min(a.shape[-2:]) < factor:
                continue
            pa = F.avg_pool2d(a.float(), factor) if factor > 1 else a
            pb = F.avg_pool2d(b.float(), factor) if factor > 1 else b
            total = total + weight * per_sample_mse(pa, pb)
            weights += weight
        return total / weights
    return mse


def _column(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, 1) in ``like``'s dtype and device."""
    return values.to(like.device)[t].to(like.dtype).view(-1, 1, 1, 1)


def _steps(t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(device=device, dtype=torch.long)
    return torch.full((batch,), t, dtype=torch.long, device=device)


def q_sample(schedule: ResShiftSchedule, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x0, y): x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps, t per sample."""
    eta = _column(schedule.etas, t, x0)
    return x0 + eta * (y - x0) + schedule.kappa * eta.sqrt() * noise


def call(denoiser: Denoiser, schedule: ResShiftSchedule, x: torch.Tensor, t: int | torch.Tensor,
         lq: torch.Tensor, divisor_step: int | torch.Tensor | None = None) -> torch.Tensor:
    """denoiser(x / sqrt(1 + kappa^2 eta), t, lq); eta at ``divisor_step`` (default: t)."""
    steps = _steps(t, x.shape[0], x.device)
    scale_at = steps if divisor_step is None else _steps(divisor_step, x.shape[0], x.device)
    return denoiser(x / _column(schedule.input_divisor, scale_at, x), steps, lq)


def resshift_loss(denoiser: Denoiser, schedule: ResShiftSchedule, x0: torch.Tensor, y: torch.Tensor,
                  lq: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, mse: Mse = per_sample_mse) -> torch.Tensor:
    """Teacher training: MSE of the x0 prediction at a random step ``t`` (per sample)."""
    return mse(call(denoiser, schedule, q_sample(schedule, x0, y, t, noise), t, lq), x0)


@torch.no_grad()
def teacher_target(teacher: Denoiser, schedule: ResShiftSchedule, y: torch.Tensor, lq: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """The teacher's deterministic T-step sample from x_T = y + kappa sqrt(eta_T) ``noise``."""
    return sample_deterministic(x0_predictor(teacher, schedule, lq), y, schedule, noise)


def restore_loss(student: Denoiser, schedule: ResShiftSchedule, x0: torch.Tensor, y: torch.Tensor,
                 lq: torch.Tensor, noise: torch.Tensor, mse: Mse = per_sample_mse) -> torch.Tensor:
    """Supervised fine-tune of a one-step model (our proposal, for the real-world end of the
    default model's strength knob): its one-step output from x_T = y + kappa sqrt(eta_T) ``noise``
    against the ground truth, per sample. No teacher: the LR here is degraded, and a teacher
    trained on clean LR has no good answer for it."""
    return mse(call(student, schedule, prior_sample(y, schedule, noise), schedule.steps - 1, lq), x0)


def sinsr_losses(student: Denoiser, teacher: Denoiser, schedule: ResShiftSchedule, x0: torch.Tensor,
                 y: torch.Tensor, lq: torch.Tensor, noise: torch.Tensor,
                 weights: tuple[float, float, float] = (1.0, 1.0, 1.0), mse: Mse = per_sample_mse) -> dict[str, torch.Tensor]:
    """SinSR's three terms and their weighted sum (``weights`` of distill, inverse, gt; equal as
    released), each per sample. A zero weight skips its term's computation. ``mse`` measures the
    x0 terms (distill, gt); L_inverse compares noisy states and stays a plain MSE."""
    last = schedule.steps - 1
    x_T = prior_sample(y, schedule, noise)
    target = teacher_target(teacher, schedule, y, lq, noise)
    w_distill, w_inverse, w_gt = weights
    zero = torch.zeros(x0.shape[0], device=x0.device)
    distill = mse(call(student, schedule, x_T, last, lq), target)
    inverse = per_sample_mse(call(student, schedule, target, 0, lq, divisor_step=last), x_T) if w_inverse else zero
    gt = zero
    if w_gt:
        with torch.no_grad():
            x_T_of_gt = call(student, schedule, x0, 0, lq, divisor_step=last)
        gt = mse(call(student, schedule, x_T_of_gt, last, lq), x0)
    return {"distill": distill, "inverse": inverse, "gt": gt,
            "total": w_distill * distill + w_inverse * inverse + w_gt * gt}


def yonos_losses(student: Denoiser, teacher: Denoiser, schedule: ResShiftSchedule, x0: torch.Tensor,
                 student_inputs: tuple[torch.Tensor, torch.Tensor], teacher_inputs: tuple[torch.Tensor, torch.Tensor],
                 t: torch.Tensor, noise: torch.Tensor, lambda_gt: float = 0.0,
                 mse: Mse = per_sample_mse) -> dict[str, torch.Tensor]:
    """L_scale (+ lambda_gt L_gt) per sample. ``*_inputs`` = (y, lq condition) of each model's
    scale; both states share ``x0``, ``t`` and ``noise``."""
    y_s, c_s = student_inputs
    y_t, c_t = teacher_inputs
    with torch.no_grad():
        target = call(teacher, schedule, q_sample(schedule, x0, y_t, t, noise), t, c_t)
    prediction = call(student, schedule, q_sample(schedule, x0, y_s, t, noise), t, c_s)
    scale = mse(prediction, target)
    gt = mse(prediction, x0) if lambda_gt else torch.zeros_like(scale)
    return {"scale": scale, "gt": gt, "total": scale + lambda_gt * gt}


def successors(levels: list[int]) -> dict[int, int]:
    """Each level of a descending grid -> the next one (-1 after the last)."""
    return {t: (levels[i + 1] if i + 1 < len(levels) else -1) for i, t in enumerate(levels)}


def _coefficients(schedule: ResShiftSchedule, t: torch.Tensor, s: torch.Tensor, like: torch.Tensor):
    """(k, m, j) of the moves t -> s per sample, shaped (B, 1, 1, 1)."""
    rows = [schedule.step_coefficients(int(a), int(b)) for a, b in zip(t.tolist(), s.tolist())]
    k, m, j = (torch.tensor(col, dtype=like.dtype, device=like.device).view(-1, 1, 1, 1) for col in zip(*rows))
    return k, m, j


def progressive_target(teacher: Denoiser, schedule: ResShiftSchedule, teacher_levels: list[int], x_t: torch.Tensor,
                       y: torch.Tensor, lq: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0~ of the student's move t -> s (per sample) from the teacher's own steps on
    ``teacher_levels`` from t until s (two steps, or one where its grid reaches s at once)."""
    after = successors(teacher_levels)
    with torch.no_grad():
        x, current = x_t, t.clone()
        for _ in range(2):
            active = current != s
            if not bool(active.any()):
                break
            level = torch.where(active, current, t)  # finished samples: any valid level, result unused
            x0 = call(teacher, schedule, x, level, lq)
            nxt = torch.tensor([after[int(v)] for v in level.tolist()], device=t.device)
            k, m, j = _coefficients(schedule, level, nxt, x)
            moved = k * x0 + m * x + j * y
            x = torch.where(active.view(-1, 1, 1, 1), moved, x)
            current = torch.where(active, nxt, current)
        if not bool((current == s).all()):
            raise ValueError("the student's levels are not every other level of the teacher's grid")
        k, m, j = _coefficients(schedule, t, s, x)
        return (x - m * x_t - j * y) / k


def progressive_loss(student: Denoiser, teacher: Denoiser, schedule: ResShiftSchedule, teacher_levels: list[int],
                     student_levels: list[int], x0: torch.Tensor, y: torch.Tensor, lq: torch.Tensor,
                     index: torch.Tensor, noise: torch.Tensor, mse: Mse = per_sample_mse) -> torch.Tensor:
    """Per-sample MSE of the student's x0 at its level ``student_levels[index]`` against x0~."""
    after = successors(student_levels)
    t = torch.tensor([student_levels[int(i)] for i in index.tolist()], device=x0.device)
    s = torch.tensor([after[int(v)] for v in t.tolist()], device=x0.device)
    x_t = q_sample(schedule, x0, y, t, noise)
    target = progressive_target(teacher, schedule, teacher_levels, x_t, y, lq, t, s)
    return mse(call(student, schedule, x_t, t, lq), target)
