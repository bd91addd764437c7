"""The ResShift "exponential" eta schedule and every coefficient derived from it.

Residual shifting: q(x_t | x0, y) = N(x0 + eta_t (y - x0), kappa^2 eta_t I), t = 0..T-1 (code
index), prior x_T = y + kappa sqrt(eta_{T-1}) eps. All arrays are float64 tensors of length T;
``eta_{-1}`` is taken as 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

SQRT_0P001 = math.sqrt(0.001)


def resshift_etas(steps: int, kappa: float = 2.0, power: float = 0.3, min_noise_level: float = 0.04,
                  etas_end: float = 0.99, clamp_start: bool = True) -> torch.Tensor:
    """eta_t (not sqrt(eta_t)), float64, for t = 0..steps-1.

    sqrt(eta_i) = start * b0 ** ((i / (T-1)) ** power * (T-1)) with b0 = (etas_end / start) ** (1 / (T-1))
    and start = min(min_noise_level / kappa, min_noise_level), clamped to sqrt(0.001) when
    ``clamp_start`` (ResShift ``master`` and SinSR code; the ResShift ``journal`` code used for v3
    has no clamp). For ``steps == 1`` the single level is the prior's ``etas_end`` (a one-step model
    starts from the prior).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return torch.tensor([etas_end ** 2], dtype=torch.float64)
    start = min(min_noise_level / kappa, min_noise_level)
    if clamp_start:
        start = min(start, SQRT_0P001)
    i = torch.arange(steps, dtype=torch.float64)
    exponent = (i / (steps - 1)) ** power * (steps - 1)
    log_b0 = math.log(etas_end / start) / (steps - 1)
    sqrt_etas = start * torch.exp(exponent * log_b0)
    return sqrt_etas ** 2


@dataclass(frozen=True)
class ResShiftSchedule:
    """Schedule parameters (official YAML names) and the sampler coefficients they imply."""

    steps: int = 15
    kappa: float = 2.0
    power: float = 0.3
    min_noise_level: float = 0.04
    etas_end: float = 0.99
    clamp_start: bool = True

    @cached_property
    def etas(self) -> torch.Tensor:
        return resshift_etas(self.steps, self.kappa, self.power, self.min_noise_level,
                             self.etas_end, self.clamp_start)

    @cached_property
    def etas_prev(self) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.float64), self.etas[:-1]])

    @property
    def sqrt_etas(self) -> torch.Tensor:
        return self.etas.sqrt()

    @property
    def prior_std(self) -> float:
        """kappa * sqrt(eta_{T-1}): std of x_T around y."""
        return self.kappa * math.sqrt(float(self.etas[-1]))

    @property
    def input_divisor(self) -> torch.Tensor:
        """sqrt(1 + kappa^2 eta_t): the network sees x_t divided by this."""
        return (1 + self.kappa ** 2 * self.etas).sqrt()

    # -- SinSR deterministic update: x_{t-1} = k_t x0_hat + m_t x_t + j_t y ------------------
    @property
    def m(self) -> torch.Tensor:
        return (self.etas_prev / self.etas).sqrt()

    @property
    def j(self) -> torch.Tensor:
        return self.etas_prev - (self.etas_prev * self.etas).sqrt()

    @property
    def k(self) -> torch.Tensor:
        return 1 - self.etas_prev + (self.etas_prev * self.etas).sqrt() - self.m

    def step_coefficients(self, t: int, s: int) -> tuple[float, float, float]:
        """(k, m, j) of the deterministic move x_s = k x0_hat + m x_t + j y from level t to an
        earlier level s (s = -1: the clean end, eta = 0). The same algebra as k/m/j above with
        eta_s in place of eta_{t-1}: m = sqrt(eta_s/eta_t), j = eta_s - sqrt(eta_s eta_t),
        k = 1 - eta_s - m + sqrt(eta_s eta_t) = (1 - m)(1 + m eta_t); equals them for s = t - 1."""
        if not (0 <= t < self.steps and -1 <= s < t):
            raise ValueError(f"a deterministic move needs 0 <= t < {self.steps} and -1 <= s < t, got t={t}, s={s}")
        eta_t = float(self.etas[t])
        eta_s = 0.0 if s < 0 else float(self.etas[s])
        m = math.sqrt(eta_s / eta_t)
        root = math.sqrt(eta_s * eta_t)
        return 1 - eta_s + root - m, m, eta_s - root

    # -- original ResShift posterior q(x_{t-1} | x_t, x0) -------------------------------------
    @property
    def posterior_mean_coef_x_t(self) -> torch.Tensor:
        return self.etas_prev / self.etas

    @property
    def posterior_mean_coef_x0(self) -> torch.Tensor:
        return (self.etas - self.etas_prev) / self.etas

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.kappa ** 2 * self.etas_prev / self.etas * (self.etas - self.etas_prev)


#: SinSR teacher/student and ResShift v1/v2 (15 steps).
SCHEDULE_T15 = ResShiftSchedule(steps=15, min_noise_level=0.04, clamp_start=True)
#: ResShift v3 and the journal bicubic model (4 steps, no sqrt(0.001) clamp).
SCHEDULE_T4 = ResShiftSchedule(steps=4, min_noise_level=0.2, clamp_start=False)
