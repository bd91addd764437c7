"""simple diffusion's resolution shift of the SD-space training timesteps (training/sd/schedule_shift.py):
the shifted log-SNR against the closed form, the spec's worked examples, and the OSEDiff switch."""
from __future__ import annotations

import math

import pytest
import torch

from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod
from training.sd.schedule_shift import log_snr, resolve_shift, shift_table

ABAR = scaled_linear_alphas_cumprod()


def test_log_snr_is_the_closed_form_of_sds_schedule():
    lam = log_snr(ABAR)
    for t, expected in ((0, 7.07), (100, 2.13), (250, 0.73), (500, -0.96), (750, -2.82), (900, -4.24), (999, -5.36)):
        assert float(lam[t]) == pytest.approx(expected, abs=0.01)
        assert float(lam[t]) == pytest.approx(math.log(float(ABAR[t]) / (1 - float(ABAR[t]))), abs=1e-9)


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.0])
def test_shifted_log_snr_is_lambda_minus_two_log_factor_to_the_table_resolution(factor):
    lam = log_snr(ABAR)
    table = shift_table(ABAR, factor)
    assert bool((table[1:] >= table[:-1]).all()) and int(table.max()) <= 999
    for t in range(0, 1000, 37):
        wanted = float(lam[t]) - 2 * math.log(factor)
        got = int(table[t])
        if wanted <= float(lam[999]):  # beyond the table: clamped to its end
            assert got == 999
            continue
        spacing = max(abs(float(lam[max(got - 1, 0)] - lam[got])), abs(float(lam[min(got + 1, 999)] - lam[got])))
        assert abs(float(lam[got]) - wanted) <= spacing / 2 + 1e-9


def test_the_specs_worked_examples_and_the_identity_at_native_size():
    at_1024, at_768 = shift_table(ABAR, 2.0), shift_table(ABAR, 1.5)
    assert [int(at_1024[t]) for t in (100, 250, 500, 750, 900)] == [247, 454, 693, 897, 999]
    assert [int(at_768[t]) for t in (100, 250, 500, 750, 900)] == [176, 367, 617, 839, 973]
    assert torch.equal(shift_table(ABAR, 1.0), torch.arange(1000))


def test_resolve_shift():
    assert resolve_shift("auto", 1024, 512) == 2.0 and resolve_shift("auto", 256, 512) == 1.0
    assert resolve_shift("none", 1024, 512) == 1.0 and resolve_shift("1.5", 64, 512) == 1.5
    for bad in ("0.5", "big", "nan"):
        with pytest.raises(ValueError, match="auto, none or a factor >= 1"):
            resolve_shift(bad, 512, 512)
