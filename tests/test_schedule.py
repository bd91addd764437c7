"""The ResShift eta schedule against the official float64 arrays (schedules.json)."""
from __future__ import annotations

import pytest
import torch

from onestep_sr.schedule import SCHEDULE_T4, SCHEDULE_T15, ResShiftSchedule, resshift_etas

FIELDS = ["etas", "sqrt_etas", "etas_prev", "k", "m", "j", "input_divisor", "posterior_mean_coef_x_t",
          "posterior_mean_coef_x0", "posterior_variance"]


@pytest.mark.parametrize("name, schedule", [("T15", SCHEDULE_T15), ("T4", SCHEDULE_T4)])
def test_schedule_reproduces_official_arrays(schedules_json, name, schedule):
    ref = schedules_json[name]
    p = ref["params"]
    etas = resshift_etas(p["steps"], p["kappa"], p["power"], p["min_noise_level"], p["etas_end"],
                         p["etas_start_clamp_sqrt_0p001"])
    assert etas.dtype == torch.float64
    assert torch.allclose(etas, torch.tensor(ref["etas"], dtype=torch.float64), rtol=0, atol=1e-6)
    for field in FIELDS:
        expected = torch.tensor(ref[field], dtype=torch.float64)
        assert torch.allclose(getattr(schedule, field), expected, rtol=0, atol=1e-6), field
    assert schedule.prior_std == pytest.approx(ref["prior_std"], abs=1e-9)


def test_v3_schedule_has_no_clamp_and_clamped_variant_differs(schedules_json):
    clamped = schedules_json["T4_if_clamped_NOT_USED_BY_V3"]["sqrt_etas"]
    ours = ResShiftSchedule(steps=4, min_noise_level=0.2, clamp_start=True).sqrt_etas
    assert torch.allclose(ours, torch.tensor(clamped, dtype=torch.float64), atol=1e-6)
    assert SCHEDULE_T4.sqrt_etas[0].item() == pytest.approx(0.1)
    assert SCHEDULE_T15.sqrt_etas[0].item() == pytest.approx(0.02)


@pytest.mark.parametrize("steps", range(1, 16))
def test_any_length_is_increasing_and_ends_at_the_prior(steps):
    s = ResShiftSchedule(steps=steps)
    assert len(s.etas) == steps
    assert s.sqrt_etas[-1].item() == pytest.approx(0.99)
    assert (s.etas[1:] > s.etas[:-1]).all()
    assert s.k[0] == 1 and s.m[0] == 0 and s.j[0] == 0


def test_invalid_steps():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        resshift_etas(0)
