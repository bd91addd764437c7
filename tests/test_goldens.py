"""Numerical faithfulness: every golden made by the official code, reproduced in fp32 on CPU.
Gates are the ones the goldens' README suggests."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.pipeline import bicubic_upscale, model_to_uint8, pad_bottom_right, super_resolve, uint8_to_model
from onestep_sr.samplers import sample_deterministic, sample_one_step, sample_stochastic, x0_predictor
from onestep_sr.schedule import SCHEDULE_T4, SCHEDULE_T15

SCHEDULES = {"T15": SCHEDULE_T15, "T4": SCHEDULE_T4}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("case", ["s64x64", "s64x128"])
@pytest.mark.parametrize("t", [14, 7, 0])
def test_denoiser_forward(golden_denoiser, cases, case, t):
    c = cases("denoiser_cases")
    with torch.no_grad():
        out = golden_denoiser(c[f"{case}.x_in"], torch.tensor([t]), c[f"{case}.lq"])
    assert max_abs(out, c[f"{case}.t{t}.out"]) < 1e-4


def test_denoiser_batch_with_per_sample_timesteps(golden_denoiser, cases):
    c = cases("denoiser_cases")
    with torch.no_grad():
        out = golden_denoiser(c["batch2.x_in"], c["batch2.t"], c["batch2.lq"])
    assert max_abs(out, c["batch2.out"]) < 1e-4


@pytest.mark.parametrize("case", ["img128x128", "img128x96"])
def test_vq_encode_indices_decode(golden_autoencoder, cases, case):
    c = cases("vq_cases")
    vq = golden_autoencoder
    with torch.no_grad():
        assert max_abs(vq.encode(c[f"{case}.image"]), c[f"{case}.latent"]) < 1e-4
        assert torch.equal(vq.quantize.indices(c[f"{case}.latent"]), c[f"{case}.indices"])
        assert torch.equal(vq.quantize(c[f"{case}.latent"]), c[f"{case}.quantized"])
        assert max_abs(vq.decode(c[f"{case}.latent"]), c[f"{case}.decoded"]) < 1e-4


@pytest.mark.parametrize("name", ["T15", "T4"])
def test_runtime_float32_coefficients(cases, name):
    c = cases("sampler_cases")
    s = SCHEDULES[name]
    assert torch.allclose(c[f"{name}.sqrt_etas"], s.sqrt_etas, rtol=0, atol=1e-12)
    assert torch.allclose(c[f"{name}.etas"], s.etas, rtol=0, atol=1e-12)
    for ours, key in [(s.k, "k_f32"), (s.m, "m_f32"), (s.j, "j_f32"), (s.input_divisor, "input_div_f32")]:
        assert max_abs(ours.float(), c[f"{name}.{key}"]) < 1e-6, key
    assert max_abs(s.posterior_variance.sqrt()[1:].float(), c[f"{name}.step_std_f32"][1:]) < 1e-6


def test_z_y_is_encode_of_bicubic(golden_autoencoder, cases):
    c = cases("sampler_cases")
    with torch.no_grad():
        assert max_abs(golden_autoencoder.encode(bicubic_upscale(c["lq"])), c["z_y"]) < 1e-4


def test_deterministic_15_steps(golden_denoiser, cases):
    c = cases("sampler_cases")
    predict = x0_predictor(golden_denoiser, SCHEDULE_T15, c["lq"])
    seen = {}

    def record(i, t, x0):
        seen.setdefault(t, x0)

    with torch.no_grad():
        final = sample_deterministic(predict, c["z_y"], SCHEDULE_T15, c["noise"], callback=record)
    assert sorted(seen) == list(range(15))
    assert max_abs(seen[14], c["ddim.x0_hat_t14"]) < 1e-4
    assert max_abs(final, c["ddim.final"]) < 1e-3


def test_one_step_equals_first_deterministic_prediction(golden_denoiser, cases):
    c = cases("sampler_cases")
    predict = x0_predictor(golden_denoiser, SCHEDULE_T15, c["lq"])
    with torch.no_grad():
        x0 = sample_one_step(predict, c["z_y"], SCHEDULE_T15, c["noise"])
    assert max_abs(x0, c["onestep.x0"]) < 1e-4
    assert torch.equal(c["onestep.x0"], c["ddim.x0_hat_t14"])


def test_stochastic_4_steps(golden_denoiser, cases):
    c = cases("sampler_cases")
    predict = x0_predictor(golden_denoiser, SCHEDULE_T4, c["lq"])
    x0_hats = []
    with torch.no_grad():
        final = sample_stochastic(predict, c["z_y"], SCHEDULE_T4, c["stoch.noise_prior"],
                                  list(c["stoch.noise_steps"]), callback=lambda i, t, x0: x0_hats.append(x0))
    for i, x0 in enumerate(x0_hats):
        assert max_abs(x0, c["stoch.x0_hats"][i]) < 1e-3
    assert max_abs(final, c["stoch.final"]) < 1e-3


def test_pipeline_end_to_end(golden_denoiser, golden_autoencoder, cases, goldens):
    c = cases("pipeline_case")
    lr = np.asarray(Image.open(goldens / "pipeline_lr.png").convert("RGB"))
    assert np.array_equal(lr, c["lr_u8"].numpy())
    lq = uint8_to_model(lr)
    assert torch.equal(pad_bottom_right(lq, 64), c["lq_padded"])
    with torch.no_grad():
        sr = super_resolve(lq, golden_denoiser, golden_autoencoder, SCHEDULE_T15, c["noise"])
    out = model_to_uint8(sr).astype(np.int16)
    expected = c["sr_u8"].numpy().astype(np.int16)
    assert out.shape == expected.shape == (160, 224, 3)
    diff = np.abs(out - expected)
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 0.001
