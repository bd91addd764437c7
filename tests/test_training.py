"""training/: the losses against hand computations with the spec's numbers, a short real training
run (loss decreases, checkpoint loads, resume continues exactly), distillation, export, CLI."""
from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onestep_sr import load_model
from onestep_sr.model_info import read_model_info
from onestep_sr.schedule import SCHEDULE_T15
from training.cli import main as train_main
from training.common.data import PairDataset
from training.common.degradations import bicubic_degrade
from training.resshift.losses import q_sample, resshift_loss, sinsr_losses
from training.resshift.trainer import Run, TrainConfig
from helpers import image_folder

# spec section 5, T = 15: sqrt(eta_t) and the network input divisors sqrt(1 + kappa^2 eta_t)
SQRT_ETA = [0.02, 0.117165, 0.176305, 0.233629, 0.291574, 0.351009, 0.412356, 0.475858, 0.541672, 0.60991,
            0.680658, 0.753985, 0.829951, 0.908606, 0.99]
DIVISOR = [1.0008, 1.027088, 1.060346, 1.10378, 1.15761, 1.221814, 1.296206, 1.380494, 1.474325, 1.577327,
           1.689136, 1.809413, 1.937853, 2.07419, 2.218197]
K = [1, 0.831244, 0.342368, 0.255472, 0.21227, 0.186656, 0.170305, 0.159632, 0.15282, 0.148845, 0.147091,
     0.147164, 0.148807, 0.151848, 0.156171]
M = [0, 0.170699, 0.664561, 0.754635, 0.801268, 0.830674, 0.851228, 0.866553, 0.878498, 0.888117, 0.896059,
     0.902747, 0.90847, 0.913433, 0.917784]
J = [0, -0.001943, -0.006929, -0.010107, -0.013538, -0.01733, -0.021533, -0.026185, -0.031318, -0.036963,
     -0.04315, -0.049911, -0.057277, -0.06528, -0.073955]
KAPPA = 2.0


class Linear(torch.nn.Module):
    """A stand-in denoiser whose output is easy to compute by hand: a_t * x + b * mean(lq)."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = b

    def forward(self, x, t, lq):
        a_t = self.a * (1 + 0.1 * t.float().view(-1, 1, 1, 1))
        return a_t * x + self.b * lq.mean(dim=1, keepdim=True)


def _batch(seed: int = 0, channels: int = 2, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    x0, y, noise = (torch.randn(3, channels, size, size, generator=g) for _ in range(3))
    lq = torch.randn(3, 3, size, size, generator=g)
    return x0, y, lq, noise


def test_q_sample_and_the_teacher_loss_equal_the_spec_formula():
    x0, y, lq, noise = _batch()
    t = torch.tensor([0, 7, 14])
    net = Linear(0.8, 0.3)
    loss = resshift_loss(net, SCHEDULE_T15, x0, y, lq, t, noise)
    for i, step in enumerate(t.tolist()):
        eta = SQRT_ETA[step] ** 2
        x_t = x0[i] + eta * (y[i] - x0[i]) + KAPPA * SQRT_ETA[step] * noise[i]
        assert torch.allclose(q_sample(SCHEDULE_T15, x0, y, t, noise)[i], x_t, atol=1e-5)
        pred = 0.8 * (1 + 0.1 * step) * x_t / DIVISOR[step] + 0.3 * lq[i].mean(dim=0, keepdim=True)
        assert loss[i].item() == pytest.approx(((pred - x0[i]) ** 2).mean().item(), rel=1e-4)


def test_sinsr_losses_equal_a_hand_computation():
    x0, y, lq, noise = _batch(1)
    student, teacher = Linear(0.7, 0.2), Linear(0.9, -0.1)
    losses = sinsr_losses(student, teacher, SCHEDULE_T15, x0, y, lq, noise)

    def net(model, x, t, divisor_index=None):
        d = DIVISOR[t if divisor_index is None else divisor_index]
        return model.a.item() * (1 + 0.1 * t) * x / d + model.b * lq.mean(dim=1, keepdim=True)

    x_T = y + KAPPA * SQRT_ETA[14] * noise
    x = x_T
    for t in reversed(range(15)):  # the deterministic sampler with the spec's k, m, j
        x = K[t] * net(teacher, x, t) + M[t] * x + J[t] * y
    distill = ((net(student, x_T, 14) - x) ** 2).flatten(1).mean(1)
    inverse = ((net(student, x, 0, 14) - x_T) ** 2).flatten(1).mean(1)
    gt = ((net(student, net(student, x0, 0, 14), 14) - x0) ** 2).flatten(1).mean(1)
    for name, expected in (("distill", distill), ("inverse", inverse), ("gt", gt), ("total", distill + inverse + gt)):
        assert torch.allclose(losses[name], expected, rtol=2e-4, atol=1e-6), name
    losses["total"].mean().backward()  # gradients reach the student only
    assert student.a.grad is not None and teacher.a.grad is None
    weighted = sinsr_losses(student, teacher, SCHEDULE_T15, x0, y, lq, noise, weights=(2.0, 0.0, 0.5))
    assert torch.allclose(weighted["total"], 2 * distill + 0.5 * gt, rtol=2e-4, atol=1e-6)
    assert torch.equal(weighted["inverse"], torch.zeros(3))  # a zero weight skips the term


# --- data ---------------------------------------------------------------------------------------


def _image_folder(folder: Path, count: int = 3) -> Path:
    return image_folder(folder, count)


def test_pairs_are_reproducible_and_shaped(tmp_path):
    data = PairDataset(_image_folder(tmp_path / "hr"), gt_size=32, degradation="bicubic", seed=3)
    lq, gt = data[5]
    assert lq.shape == (3, 8, 8) and gt.shape == (3, 32, 32) and 0 <= lq.min() and gt.max() <= 1
    again = PairDataset(tmp_path / "hr", gt_size=32, degradation="bicubic", seed=3)[5]
    assert torch.equal(again[0], lq) and torch.equal(again[1], gt)
    assert not torch.equal(data[6][1], gt)
    with pytest.raises(ValueError, match="multiple of the scale"):
        PairDataset(tmp_path / "hr", gt_size=30)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images in .*empty"):
        PairDataset(tmp_path / "empty", gt_size=32)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        PairDataset(tmp_path / "missing", gt_size=32)


def test_augment_all_rotates_and_permutes_the_colours_of_the_same_crops(tmp_path):
    """augment="all" draws the crop and flip exactly as "flip" does, then a rotation and an RGB permutation."""
    folder = _image_folder(tmp_path / "hr")
    plain = PairDataset(folder, gt_size=32, degradation="bicubic", seed=2)
    augmented = PairDataset(folder, gt_size=32, degradation="bicubic", seed=2, augment="all")
    seen = set()
    for i in range(12):
        base, (lq, gt) = plain[i][1], augmented[i]
        matches = [(k, perm) for k in range(4) for perm in itertools.permutations(range(3))
                   if torch.equal(torch.rot90(base, k, dims=(1, 2))[list(perm)], gt)]
        assert matches, f"pair {i} is not a rotation + permutation of the plain crop"
        seen.update(matches)
        assert torch.equal(lq, bicubic_degrade(gt, 4))  # the LR is made from the augmented GT
    assert len({k for k, _ in seen}) > 1 and len({p for _, p in seen}) > 1
    with pytest.raises(ValueError, match="unknown augment 'rot'"):
        PairDataset(folder, gt_size=32, augment="rot")


# --- a real (tiny) run ------------------------------------------------------------------------------


def _config(tmp_path: Path, out: str, **overrides) -> TrainConfig:
    options = dict(mode="resshift", data=str(_image_folder(tmp_path / "hr")), out=str(tmp_path / out), steps=20,
                   batch_size=2, gt_size=64, degradation="bicubic", lr=2e-3, log_every=5, save_every=10, seed=1,
                   arch="tiny")
    options.update(overrides)
    return TrainConfig(**options)


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


def test_twenty_steps_decrease_the_loss_and_export_a_loadable_model(tmp_path):
    path = Run(_config(tmp_path, "teacher")).train(progress=False)
    rows = _log(tmp_path / "teacher")
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert float(rows[-1]["loss_total"]) < 0.7 * float(rows[0]["loss_total"])
    info = read_model_info(path)
    assert info.autoencoder == "pixel" and info.sampler == "stochastic" and info.schedule["steps"] == 15
    assert json.loads(path.with_suffix(".json").read_text())["denoiser"]["out_channels"] == 48
    model = load_model(path, device="cpu")
    out = model.upscale(torch.rand(1, 3, 12, 20), steps=1)
    assert out.shape == (1, 3, 48, 80) and torch.isfinite(out).all()


def test_resume_continues_from_the_same_step_exactly(tmp_path):
    straight = Run(_config(tmp_path, "straight"))
    straight.train(progress=False)
    first = Run(_config(tmp_path, "resumed", steps=10))
    first.train(progress=False)
    resumed = Run(_config(tmp_path, "resumed"))  # same folder, more steps: picks up step-10
    assert resumed.step == 10
    resumed.train(progress=False)
    assert [int(r["step"]) for r in _log(tmp_path / "resumed")] == [5, 10, 15, 20]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_ema_is_warmed_up_so_the_export_forgets_the_initial_weights(tmp_path, monkeypatch):
    """decay_n = min(ema, (1 + n) / (10 + n)) at step n: replayed by hand from the weights after every step."""
    run = Run(_config(tmp_path, "teacher", steps=3, ema=0.999))
    initial = {k: v.detach().clone().float() for k, v in run.model.state_dict().items()}
    after_each_step = []
    original = Run._update_ema

    def record(self):
        after_each_step.append({k: v.detach().clone().float() for k, v in self.model.state_dict().items()})
        original(self)

    monkeypatch.setattr(Run, "_update_ema", record)
    exported = load_file(run.train(progress=False))
    assert len(after_each_step) == 3
    key = next(k for k, v in initial.items() if v.is_floating_point() and v.numel() > 100)
    expected = initial[key]
    for n, weights in enumerate(after_each_step, start=1):
        decay = min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * weights[key]
    assert torch.allclose(exported[key], expected, atol=1e-6)  # 1.4 % of the initial weights, not 99.7 %


def test_kappa_is_saved_with_the_teacher_and_the_student_keeps_the_teachers_schedule(tmp_path):
    teacher = Run(_config(tmp_path, "teacher", steps=2, kappa=0.5)).train(progress=False)
    assert read_model_info(teacher).schedule["kappa"] == 0.5
    student = Run(_config(tmp_path, "student", mode="sinsr", teacher=str(teacher), steps=1, batch_size=1))
    assert student.schedule.kappa == 0.5 and student.schedule.prior_std == pytest.approx(0.5 * 0.99)
    assert read_model_info(student.train(progress=False)).schedule["kappa"] == 0.5
    assert load_model(teacher, device="cpu").schedule.kappa == 0.5
    with pytest.raises(ValueError, match="kappa must be a positive number"):
        _config(tmp_path, "x", kappa=-1.0)


def test_distillation_from_a_teacher_through_the_cli(tmp_path, capsys):
    teacher = Run(_config(tmp_path, "teacher", steps=4)).train(progress=False)
    code = train_main(["sinsr", "--teacher", str(teacher), "--data", str(tmp_path / "hr"), "--out",
                       str(tmp_path / "student"), "--steps", "3", "--batch-size", "1", "--gt-size", "64",
                       "--degradation", "bicubic", "--log-every", "1", "--no-progress"])
    assert code == 0 and "exported" in capsys.readouterr().out
    rows = _log(tmp_path / "student")
    assert {"loss_distill", "loss_inverse", "loss_gt", "loss_total"} <= set(rows[0])
    for r in rows:
        parts = float(r["loss_distill"]) + float(r["loss_inverse"]) + float(r["loss_gt"])
        assert math.isclose(parts, float(r["loss_total"]), rel_tol=1e-5)
    student = tmp_path / "student" / "model.safetensors"
    assert read_model_info(student).sampler == "one_step"
    assert load_model(student, device="cpu").upscale(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    with pytest.raises(SystemExit):  # --teacher is required
        train_main(["sinsr", "--data", str(tmp_path / "hr"), "--out", str(tmp_path / "x")])


def test_onestep_sr_train_is_the_training_cli_and_eval_reports_the_gain(tmp_path, capsys):
    from onestep_sr.cli import main as onestep_main
    with pytest.raises(SystemExit) as exit_info:
        onestep_main(["train", "--help"])
    assert exit_info.value.code == 0 and "resshift" in capsys.readouterr().out
    model = Run(_config(tmp_path, "teacher", steps=2)).train(progress=False)
    val = _image_folder(tmp_path / "val", count=2)
    report = tmp_path / "eval.json"
    assert onestep_main(["train", "eval", "--model", str(model), "--data", str(val), "--steps", "1",
                         "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(report.read_text())["summary"]
    assert summary["count"] == 2 and "mean" in printed
    assert summary["psnr_gain"] == pytest.approx(summary["psnr_y"] - summary["bicubic_psnr_y"], abs=1e-9)


def test_latent_space_training_with_a_vq_autoencoder(tmp_path, goldens):
    """--autoencoder names a VQ-f4 checkpoint: the denoiser works on its 3-channel latent (LR size)
    and the export names that autoencoder, so load_model pairs them again."""
    vq = str(goldens / "vq.safetensors")
    path = Run(_config(tmp_path, "latent", steps=2, autoencoder=vq)).train(progress=False)
    assert read_model_info(path).autoencoder == vq
    model = load_model(path, device="cpu")
    assert model.denoiser.config.out_channels == 3 and type(model.autoencoder).__name__ == "VQAutoencoder"
    assert model.upscale(torch.rand(1, 3, 16, 16), steps=1).shape == (1, 3, 64, 64)


def test_cosine_lr_decay_warms_up_then_reaches_zero_at_the_last_step(tmp_path):
    from training.resshift.trainer import lr_factor
    config = _config(tmp_path, "x", steps=100, warmup=10, lr_decay="cosine")
    assert lr_factor(config, 0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert lr_factor(config, 50) == pytest.approx(0.5)
    assert lr_factor(config, 99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    assert lr_factor(_config(tmp_path, "y", steps=100, warmup=10), 60) == 1.0  # "none": constant
    with pytest.raises(ValueError, match="unknown lr_decay"):
        _config(tmp_path, "z", lr_decay="linear")
