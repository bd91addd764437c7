"""The denoiser family's additions for CPU-sized students (issue 17): the official zero
initialisation when training from scratch, a configuration without attention, and x0 predicted as a
correction of the bicubic upsampled LR image ("lq_bicubic"). Official layouts are untouched."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from onestep_sr import load_model
from onestep_sr.model_info import ModelInfo, read_model_info, save_model
from onestep_sr.models import (OFFICIAL_DENOISER, DenoiserConfig, SwinUNetDenoiser, build_denoiser,
                               zero_init_outputs_)
from onestep_sr.models.layers import TimestepResBlock
from onestep_sr.models.swin import SwinLayer
from training.cli import main as train_main
from training.resshift.trainer import ARCHS, Run, TrainConfig

from .test_training import _image_folder

COMPACT = DenoiserConfig(**{**ARCHS["compact"], "in_channels": 51, "out_channels": 48})


def _zeroed_convs(model: SwinUNetDenoiser) -> list[torch.nn.Conv2d]:
    blocks = [m.out_layers[-1] for m in model.modules() if isinstance(m, TimestepResBlock)]
    return blocks + [model.out[-1]]


def test_training_from_scratch_zero_initialises_block_outputs_and_the_output_conv(tmp_path):
    data = _image_folder(tmp_path / "hr", count=1)
    run = Run(TrainConfig(mode="resshift", data=str(data), out=str(tmp_path / "run"), steps=1, batch_size=1,
                          gt_size=64, degradation="bicubic", arch="tiny"))
    model = run.accelerator.unwrap_model(run.model)
    convs = _zeroed_convs(model)
    assert len(convs) == 1 + sum(isinstance(m, TimestepResBlock) for m in model.modules())
    assert all(c.weight.abs().sum() == 0 and c.bias.abs().sum() == 0 for c in convs)
    # everything else keeps PyTorch's random initialisation
    assert model.input_blocks[0][0].weight.abs().sum() > 0
    # so the untrained official-style network predicts x0 = 0 for any input
    x, lq = torch.randn(2, 48, 32, 32), torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x, torch.tensor([0, 14]), lq), torch.zeros_like(x))


def test_building_a_denoiser_keeps_random_outputs_and_the_official_layout():
    """build_denoiser() itself is unchanged (random test models must not output zeros), and the
    official configuration has its Swin middle block and no residual."""
    model = build_denoiser(DenoiserConfig(**{**ARCHS["tiny"], "in_channels": 51, "out_channels": 48}))
    assert model.out[-1].weight.abs().sum() > 0
    assert OFFICIAL_DENOISER.mid_attention and OFFICIAL_DENOISER.residual == "none"
    official = build_denoiser(OFFICIAL_DENOISER, "meta")
    assert isinstance(official.middle_block[1], SwinLayer) and OFFICIAL_DENOISER.latent_multiple == 64


def test_compact_configuration_has_no_attention_and_accepts_any_latent_size():
    model = build_denoiser(COMPACT)
    assert not any(isinstance(m, SwinLayer) for m in model.modules())
    assert COMPACT.latent_multiple == 1 and not COMPACT.has_attention
    assert not any("attn" in k or "relative_position" in k for k in model.state_dict())
    out = model(torch.randn(1, 48, 13, 7), torch.tensor([3]), torch.randn(1, 3, 13, 7))
    assert out.shape == (1, 48, 13, 7)
    assert DenoiserConfig.from_dict(json.loads(json.dumps(COMPACT.to_dict()))) == COMPACT


def test_residual_model_predicts_a_correction_of_the_bicubic_upsampled_lr():
    """x0 = pixel_unshuffle(bicubic x4 (lq)) + network output: with the output conv zeroed the
    prediction is exactly the bicubic upsampling, whatever x_t and t."""
    model = zero_init_outputs_(build_denoiser(COMPACT))
    lq = torch.rand(1, 3, 10, 12) * 2 - 1
    x0 = model(torch.randn(1, 48, 10, 12), torch.tensor([2]), lq)
    bicubic = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(F.pixel_shuffle(x0, 4), bicubic, atol=1e-6)
    with torch.no_grad():  # a non-zero output is added to that base
        model.out[-1].bias.fill_(0.25)
    assert torch.allclose(model(torch.randn(1, 48, 10, 12), torch.tensor([2]), lq), x0 + 0.25, atol=1e-6)


def test_untrained_residual_model_upscales_like_bicubic_through_the_pipeline(tmp_path):
    """Saved with its model info and loaded as every host loads it, the zero-initialised residual
    model's one-step output is the bicubic x4 of the input (the pipeline pads, tiles and crops)."""
    path, _ = save_model(tmp_path / "compact.safetensors", zero_init_outputs_(build_denoiser(COMPACT)),
                         ModelInfo(autoencoder="pixel", sampler="one_step"))
    assert json.loads(path.with_suffix(".json").read_text())["denoiser"]["residual"] == "lq_bicubic"
    model = load_model(path, device="cpu")
    lr = torch.rand(1, 3, 81, 134)
    expected = F.interpolate(lr * 2 - 1, scale_factor=4, mode="bicubic", align_corners=False)
    expected = (expected.clamp(-1, 1) * 0.5 + 0.5)
    for tile in (256, 64):  # one tile, then 64-pixel tiles (the smallest allowed) blended with feathering
        out = model.upscale(lr, steps=1, tile=tile, overlap=8)
        assert out.shape == (1, 3, 324, 536)
        # borders of small tiles see replicate padding in their own bicubic: within a few levels
        assert (out - expected).abs().max() < (1e-5 if tile == 256 else 0.05)


def test_residual_needs_a_pixel_space_latent():
    with pytest.raises(ValueError, match="pixel-space model"):
        DenoiserConfig(**{**ARCHS["compact"], "in_channels": 6, "out_channels": 3})
    with pytest.raises(ValueError, match="unknown residual"):
        DenoiserConfig(residual="yes")


def test_compact_teacher_trains_and_its_export_records_the_architecture(tmp_path):
    data = _image_folder(tmp_path / "hr", count=2)
    path = Run(TrainConfig(mode="resshift", data=str(data), out=str(tmp_path / "t"), steps=3, batch_size=2,
                           gt_size=64, degradation="bicubic", arch="compact", schedule="T4", kappa=32.0,
                           min_noise_level=0.5, log_every=1)).train(progress=False)
    info = read_model_info(path)
    assert info.schedule["steps"] == 4 and info.schedule["kappa"] == 32.0 and info.schedule["min_noise_level"] == 0.5
    model = load_model(path, device="cpu")
    assert model.denoiser.config == COMPACT
    # the noise std at the first step is min_noise_level: sqrt(eta_0) = 0.5 / 32 (under the sqrt(0.001) clamp)
    assert 32.0 * model.schedule.etas[0].sqrt().item() == pytest.approx(0.5)
    assert model.schedule.prior_std == pytest.approx(32.0 * 0.99)
    assert model.upscale(torch.rand(1, 3, 9, 11), steps=4, stochastic=False).shape == (1, 3, 36, 44)


def test_eval_reports_the_chosen_sampler(tmp_path, capsys):
    data = _image_folder(tmp_path / "hr", count=2)
    teacher = Run(TrainConfig(mode="resshift", data=str(data), out=str(tmp_path / "t"), steps=2, batch_size=1,
                              gt_size=64, degradation="bicubic", arch="compact", schedule="T4")).train(progress=False)
    val = _image_folder(tmp_path / "val", count=1)
    results = {}
    for sampler in ("one_step", "deterministic", "stochastic"):
        report = tmp_path / f"{sampler}.json"
        assert train_main(["eval", "--model", str(teacher), "--data", str(val), "--sampler", sampler,
                           "--json", str(report)]) == 0
        results[sampler] = json.loads(report.read_text())
        assert f"sampler {sampler}" in capsys.readouterr().out
    assert [results[s]["steps"] for s in ("one_step", "deterministic", "stochastic")] == [1, 4, 4]
    # the figures are those of the model run with that sampler
    from training.common.evaluate import evaluate_folder
    model = load_model(teacher, device="cpu")
    rows = evaluate_folder(lambda lr: model.upscale(lr, steps=4, stochastic=False, seed=12345).clamp(0, 1), val)
    assert results["deterministic"]["rows"][0]["psnr_y"] == pytest.approx(rows[0]["psnr_y"], abs=1e-9)
    assert results["stochastic"]["rows"][0]["psnr_y"] != pytest.approx(rows[0]["psnr_y"], abs=1e-6)
    assert train_main(["eval", "--model", str(teacher), "--data", str(val), "--sampler", "one_step",
                       "--steps", "4"]) == 2
    assert "runs 1 step" in capsys.readouterr().err
