"""Samplers as pure functions: oracle properties that hold for any T, noise handling, callbacks."""
from __future__ import annotations

import pytest
import torch

from onestep_sr.samplers import prior_sample, sample_deterministic, sample_one_step, sample_stochastic
from onestep_sr.schedule import ResShiftSchedule

SHAPE = (2, 3, 8, 8)


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 15])
def test_deterministic_with_oracle_follows_the_forward_marginals(steps):
    """With x0_hat = x0, the k/m/j update maps x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps + d
    to the same expression at t-1 with the same eps and d scaled by m_t. The prior y + kappa
    sqrt(eta_T) eps starts off the marginal by d = (1 - eta_T)(y - x0); the output is exactly x0."""
    x0, y, eps = data()
    s = ResShiftSchedule(steps=steps)
    states = {}

    def oracle(x_t, t):
        states[t] = x_t
        return x0

    out = sample_deterministic(oracle, y, s, eps)
    offset = (1 - float(s.etas[-1])) * (y - x0)
    for t in reversed(range(steps)):
        expected = x0 + float(s.etas[t]) * (y - x0) + s.kappa * float(s.sqrt_etas[t]) * eps + offset
        assert torch.allclose(states[t], expected, atol=1e-5), t
        offset = offset * float(s.m[t])
    assert torch.allclose(out, x0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 4, 15])
def test_stochastic_with_oracle_ends_at_x0_and_uses_every_noise(steps):
    x0, y, eps = data()
    s = ResShiftSchedule(steps=steps)
    noises = [torch.randn(SHAPE) for _ in range(steps)]
    out = sample_stochastic(lambda x, t: x0, y, s, eps, noises)
    assert torch.allclose(out, x0, atol=1e-6)
    if steps > 1:  # changing a middle noise changes the path, the last noise is masked
        seen = []
        sample_stochastic(lambda x, t: (seen.append(x), x0)[1], y, s, eps, noises)
        noises2 = list(noises)
        noises2[0] = noises[0] + 1
        seen2 = []
        sample_stochastic(lambda x, t: (seen2.append(x), x0)[1], y, s, eps, noises2)
        assert not torch.allclose(seen[1], seen2[1])
        noises2 = list(noises)
        noises2[-1] = noises[-1] + 1
        assert torch.equal(sample_stochastic(lambda x, t: x * 0.5, y, s, eps, noises2),
                           sample_stochastic(lambda x, t: x * 0.5, y, s, eps, noises))


def test_one_step_calls_the_student_once_at_T_minus_1_on_the_prior():
    x0, y, eps = data()
    s = ResShiftSchedule(steps=15)
    calls = []
    out = sample_one_step(lambda x, t: (calls.append((x, t)), x * 2)[1], y, s, eps)
    assert len(calls) == 1 and calls[0][1] == 14
    assert torch.allclose(calls[0][0], y + 1.98 * eps, atol=1e-6)
    assert torch.allclose(out, 2 * calls[0][0])


def test_generator_noise_is_reproducible_and_equals_drawn_tensor():
    _, y, _ = data()
    s = ResShiftSchedule(steps=4)
    a = sample_deterministic(lambda x, t: 0.3 * x, y, s, torch.Generator().manual_seed(5))
    b = sample_deterministic(lambda x, t: 0.3 * x, y, s, torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(a, b)
    c = sample_stochastic(lambda x, t: 0.3 * x, y, s, torch.Generator().manual_seed(5))
    d = sample_stochastic(lambda x, t: 0.3 * x, y, s, torch.Generator().manual_seed(5))
    assert torch.equal(c, d)


def test_noise_errors_are_explicit():
    _, y, _ = data()
    s = ResShiftSchedule(steps=4)
    with pytest.raises(ValueError, match="noise has shape"):
        prior_sample(y, s, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="needs step_noise"):
        sample_stochastic(lambda x, t: x, y, s, torch.zeros(SHAPE))
    with pytest.raises(ValueError, match="step_noise has 2 tensors"):
        sample_stochastic(lambda x, t: x, y, s, torch.zeros(SHAPE), [torch.zeros(SHAPE)] * 2)


def test_callback_can_cancel():
    _, y, eps = data()

    class Cancelled(Exception):
        pass

    def cancel(i, t, x0):
        if i == 1:
            raise Cancelled

    calls = []
    with pytest.raises(Cancelled):
        sample_deterministic(lambda x, t: (calls.append(t), x)[1], y, ResShiftSchedule(steps=15), eps, cancel)
    assert calls == [14, 13]
