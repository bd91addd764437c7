"""YONOS scale distillation (training/resshift): coupled LR pairs, identical noise and t for
teacher and student, the loss against a hand computation, the x2 -> x4 -> x8 ladder end to end,
and the level-subset sampler it is evaluated with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onestep_sr.model_info import read_model_info
from onestep_sr.models import PixelSpaceAutoencoder, PixelSpaceConfig, lq_condition
from onestep_sr.samplers import (level_grid, sample_deterministic, sample_levels, sample_one_step,
                                 x0_predictor)
from onestep_sr.schedule import SCHEDULE_T15
from training.cli import main as train_main
from training.common.data import CoupledPairDataset, PairDataset
from training.common.degradations import bicubic_degrade, degrade, degrade_coupled
from training.resshift.losses import q_sample, yonos_losses
from training.resshift.sampling import upscale_calls
from training.resshift.trainer import Run, TrainConfig
from helpers import image_folder


def _image_folder(folder: Path, count: int = 3) -> Path:
    return image_folder(folder, count, size=(72, 80))


# --- coupled degradations -------------------------------------------------------------------------


def test_coupled_degradation_shares_every_draw_and_differs_only_in_the_final_scale():
    hr = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    for seed in range(4):
        four, two = degrade_coupled(hr, (4, 2), np.random.default_rng(seed))
        assert four.shape == (3, 16, 16) and two.shape == (3, 32, 32)
        assert torch.equal(four, degrade(hr, 4, np.random.default_rng(seed)))  # the x4 one is a plain draw
        assert torch.equal(two, degrade(hr, 2, np.random.default_rng(seed)))
        same_a, same_b = degrade_coupled(hr, (2, 2), np.random.default_rng(seed))
        assert torch.equal(same_a, same_b)  # equal scales: equal images, so every random choice is shared
    # independent draws at the same scale differ: the coupling is not a constant degradation
    assert not torch.equal(degrade(hr, 2, np.random.default_rng(0)), degrade(hr, 2, np.random.default_rng(1)))
    rng, reference = np.random.default_rng(7), np.random.default_rng(7)
    degrade_coupled(hr, (4, 2), rng)
    degrade(hr, 4, reference)
    assert rng.random() == reference.random()  # the generator moves on as after one draw


@pytest.mark.parametrize("degradation", ["bicubic", "realesrgan"])
def test_coupled_pairs_cut_one_crop_and_give_the_plain_pairs_lr(tmp_path, degradation):
    folder = _image_folder(tmp_path / "hr")
    coupled = CoupledPairDataset(folder, gt_size=32, scale=4, degradation=degradation, seed=3, teacher_scale=2)
    plain = PairDataset(folder, gt_size=32, scale=4, degradation=degradation, seed=3)
    for i in range(3):
        lq, lq_teacher, gt = coupled[i]
        assert lq.shape == (3, 8, 8) and lq_teacher.shape == (3, 16, 16) and gt.shape == (3, 32, 32)
        assert torch.equal(gt, plain[i][1]) and torch.equal(lq, plain[i][0])
        if degradation == "bicubic":
            assert torch.equal(lq_teacher, bicubic_degrade(gt, 2))


# --- the loss ---------------------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A denoiser that records its inputs and returns a fixed function of them."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))
        self.calls = []

    def forward(self, x, t, lq):
        self.calls.append((x.detach().clone(), t.clone(), lq.detach().clone()))
        return self.weight * x + lq[:, :x.shape[1]]


def _inputs(seed: int, channels: int = 48, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, channels, size, size, generator=g) for _ in range(3))


def test_yonos_loss_equals_a_hand_computation_with_one_noise_and_t_for_both():
    schedule = SCHEDULE_T15
    x0, noise, _ = _inputs(0)
    y_s, c_s, _ = _inputs(1)
    y_t, c_t, _ = _inputs(2)
    t = torch.tensor([14, 3])
    student, teacher = Recorder(0.5), Recorder(0.8)
    parts = yonos_losses(student, teacher, schedule, x0, (y_s, c_s), (y_t, c_t), t, noise, lambda_gt=0.25)
    eta = schedule.etas[t].float().view(-1, 1, 1, 1)
    divisor = schedule.input_divisor[t].float().view(-1, 1, 1, 1)
    x_s = x0 + eta * (y_s - x0) + schedule.kappa * eta.sqrt() * noise
    x_t = x0 + eta * (y_t - x0) + schedule.kappa * eta.sqrt() * noise
    prediction, target = 0.5 * x_s / divisor + c_s, 0.8 * x_t / divisor + c_t
    scale = (prediction - target).pow(2).flatten(1).mean(1)
    gt = (prediction - x0).pow(2).flatten(1).mean(1)
    assert torch.allclose(parts["scale"], scale, atol=1e-5) and torch.allclose(parts["gt"], gt, atol=1e-5)
    assert torch.allclose(parts["total"], scale + 0.25 * gt, atol=1e-5)
    # both got the same t, and states that differ only by eta_t (y_s - y_t): the same eps
    (xs_in, ts, _), (xt_in, tt, _) = student.calls[0], teacher.calls[0]
    assert torch.equal(ts, t) and torch.equal(tt, t)
    assert torch.allclose(xs_in * divisor - xt_in * divisor, eta * (y_s - y_t), atol=1e-5)
    assert parts["total"].requires_grad and teacher.weight.grad is None


def test_yonos_loss_is_zero_when_the_student_is_the_teacher_on_equal_inputs():
    x0, noise, _ = _inputs(3)
    y, c, _ = _inputs(4)
    net = Recorder(0.7)
    parts = yonos_losses(net, net, SCHEDULE_T15, x0, (y, c), (y, c), torch.tensor([0, 9]), noise)
    assert torch.equal(parts["total"], torch.zeros(2)) and torch.equal(parts["gt"], torch.zeros(2))
    assert not torch.equal(q_sample(SCHEDULE_T15, x0, y, torch.tensor([0, 9]), noise), x0)


def test_the_trainer_gives_teacher_and_student_the_same_noise_and_t_and_coupled_lr(tmp_path, monkeypatch):
    data = str(_image_folder(tmp_path / "hr"))
    common = dict(data=data, gt_size=32, batch_size=3, degradation="bicubic", arch="compact", seed=2, log_every=1)
    teacher = Run(TrainConfig(mode="resshift", out=str(tmp_path / "x2"), scale=2, steps=1, **common)).train(progress=False)
    run = Run(TrainConfig(mode="yonos", out=str(tmp_path / "x4"), teacher=str(teacher), steps=1, **common))
    assert run.scale == 4 and run.teacher_scale == 2 and run.lq_mode == "unshuffle48"
    seen = {}

    def spy(name, net):
        def forward(x, t, lq):
            seen[name] = (x, t, lq)
            return net(x, t, lq)
        return forward

    run.teacher, run.model = spy("teacher", run.teacher), spy("student", run.model)
    lq, lq_teacher, gt = next(iter(run.loader))
    run.losses((lq, lq_teacher, gt), micro=0)
    (xs, ts, cs), (xt, tt, ct) = seen["student"], seen["teacher"]
    assert torch.equal(ts, tt)
    up = lambda image, s: F.pixel_unshuffle(F.interpolate(image * 2 - 1, scale_factor=s, mode="bicubic"), 4)
    assert torch.allclose(cs, up(lq, 4), atol=1e-6) and torch.allclose(ct, up(lq_teacher, 2), atol=1e-6)
    # same eps: the two states differ exactly by eta_t (y_4 - y_2), y = the upsampled LR (pixel space)
    schedule = run.schedule
    eta = schedule.etas[ts].float().view(-1, 1, 1, 1)
    divisor = schedule.input_divisor[ts].float().view(-1, 1, 1, 1)
    assert torch.allclose(xs * divisor - xt * divisor, eta * (cs - ct), atol=1e-5)


def test_last_step_weight_puts_that_share_of_samples_at_t_minus_one(tmp_path):
    data = str(_image_folder(tmp_path / "hr"))
    common = dict(data=data, gt_size=32, batch_size=2, degradation="bicubic", arch="compact", seed=0)
    teacher = Run(TrainConfig(mode="resshift", out=str(tmp_path / "x2"), scale=2, steps=1, **common)).train(progress=False)
    run = Run(TrainConfig(mode="yonos", out=str(tmp_path / "x4"), teacher=str(teacher), steps=1,
                          last_step_weight=1.0, **common))
    seen = []
    model = run.model
    run.model = lambda x, t, lq: (seen.append(t.clone()), model(x, t, lq))[1]
    batch = next(iter(run.loader))
    for micro in range(3):
        run.losses(batch, micro)
    assert all(bool((t == 14).all()) for t in seen)


# --- the ladder end to end ------------------------------------------------------------------------


def test_the_x2_x4_x8_ladder_is_one_command_per_rung_and_exports_know_their_scale(tmp_path, capsys):
    data = str(_image_folder(tmp_path / "hr"))
    common = ["--data", data, "--gt-size", "32", "--batch-size", "2", "--steps", "2", "--arch", "compact",
              "--degradation", "bicubic", "--no-progress"]
    assert train_main(["resshift", "--scale", "2", "--out", str(tmp_path / "x2"), *common]) == 0
    assert train_main(["yonos", "--teacher", str(tmp_path / "x2" / "model.safetensors"), "--out", str(tmp_path / "x4"),
                       "--lambda-gt", "0.5", *common]) == 0
    assert train_main(["yonos", "--teacher", str(tmp_path / "x4" / "model.safetensors"), "--out", str(tmp_path / "x8"),
                       *common]) == 0
    autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=4))
    lr = torch.rand(3, 7, 9)
    for rung, scale in (("x2", 2), ("x4", 4), ("x8", 8)):
        path = tmp_path / rung / "model.safetensors"
        info = read_model_info(path)
        assert info.scale == scale
        from onestep_sr.checkpoint import load_denoiser

        net = load_denoiser(path)
        assert net.config.lq_mode == "unshuffle48"
        out = upscale_calls(net, autoencoder, info.resshift_schedule(), scale, lr, 2, seed=0)
        assert out.shape == (3, 7 * scale, 9 * scale)
    # yonos refuses a student scale not above the teacher's, and an lq3 model at another scale
    assert train_main(["yonos", "--teacher", str(tmp_path / "x4" / "model.safetensors"), "--scale", "4",
                       "--out", str(tmp_path / "bad"), *common]) == 2
    assert "above the teacher's x4" in capsys.readouterr().err
    assert train_main(["resshift", "--scale", "2", "--lq-mode", "lq3", "--out", str(tmp_path / "bad2"), *common]) == 2
    assert "x4 only" in capsys.readouterr().err


# --- the level-subset sampler ---------------------------------------------------------------------


def test_level_grids_are_the_progressive_distillation_grids():
    assert level_grid(15, 1) == [14] and level_grid(15, 2) == [14, 6] and level_grid(15, 4) == [14, 10, 6, 2]
    assert level_grid(15, 8) == [14, 12, 10, 8, 6, 4, 2, 0] and level_grid(15, 15) == list(range(14, -1, -1))
    assert level_grid(4, 2) == [3, 1]
    with pytest.raises(ValueError, match="1 to 15"):
        level_grid(15, 16)


def test_generalised_step_matches_the_schedule_and_the_spec_numbers():
    s = SCHEDULE_T15
    for t in range(15):
        k, m, j = s.step_coefficients(t, t - 1)
        assert (k, m, j) == pytest.approx((float(s.k[t]), float(s.m[t]), float(s.j[t])), abs=1e-12)
        for target in range(-1, t):
            k, m, j = s.step_coefficients(t, target)
            assert k == pytest.approx((1 - m) * (1 + m * float(s.etas[t])), abs=1e-12) and k > 0
    assert s.step_coefficients(14, 12) == pytest.approx((0.2945, 0.8383, -0.1328), abs=1e-4)
    assert s.step_coefficients(14, 6) == pytest.approx((0.8217, 0.4165, -0.2382), abs=1e-4)
    assert s.step_coefficients(2, 0)[0] == pytest.approx(0.8897, abs=1e-4)


def test_sample_levels_with_every_level_or_one_equals_the_existing_samplers():
    g = torch.Generator().manual_seed(0)
    y, noise, lq = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))
    predict = x0_predictor(lambda x, t, c: 0.3 * x + 0.1 * c + 0.01 * t.view(-1, 1, 1, 1), SCHEDULE_T15, lq)
    full = sample_levels(predict, y, SCHEDULE_T15, noise, level_grid(15, 15))
    assert torch.allclose(full, sample_deterministic(predict, y, SCHEDULE_T15, noise), atol=1e-6)
    assert torch.equal(sample_levels(predict, y, SCHEDULE_T15, noise, [14]),
                       sample_one_step(predict, y, SCHEDULE_T15, noise))
    with pytest.raises(ValueError, match="descend from 14"):
        sample_levels(predict, y, SCHEDULE_T15, noise, [13, 2])


def test_lq_condition_is_the_upsampled_lr_space_to_depth_and_lq3_is_x4_only():
    lq = torch.rand(1, 3, 6, 8) * 2 - 1
    for scale in (2, 4, 8):
        cond = lq_condition(lq, "unshuffle48", scale)
        assert cond.shape == (1, 48, 6 * scale // 4, 8 * scale // 4)
        up = F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False)
        assert torch.equal(F.pixel_shuffle(cond, 4), up)
    assert torch.equal(lq_condition(lq, "lq3", 4), lq)
    with pytest.raises(ValueError, match="x4 only"):
        lq_condition(lq, "lq3", 2)


def test_the_ladder_in_vq_latent_space_where_the_autoencoder_allows(tmp_path, goldens):
    """With a VQ-f4 autoencoder the x2 teacher and the x4 student share the latent grid (HR / 4):
    y = Enc(bicubic x s of the LR), the condition is the 48-channel upsampled LR; both export and
    run through load_model with exact sizes."""
    from onestep_sr import load_model

    vq = str(goldens / "vq.safetensors")
    data = str(_image_folder(tmp_path / "hr"))
    common = dict(data=data, gt_size=64, batch_size=1, steps=1, degradation="bicubic", arch="tiny", autoencoder=vq)
    teacher = Run(TrainConfig(mode="resshift", out=str(tmp_path / "x2"), scale=2, **common)).train(progress=False)
    student = Run(TrainConfig(mode="yonos", out=str(tmp_path / "x4"), teacher=str(teacher), **common)).train(progress=False)
    for path, scale in ((teacher, 2), (student, 4)):
        model = load_model(path, device="cpu")
        assert model.scale == scale and model.denoiser.config.in_channels == 3 + 48
        assert model.upscale(torch.rand(1, 3, 16, 24), steps=1, scale=scale).shape == (1, 3, 16 * scale, 24 * scale)
