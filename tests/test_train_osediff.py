"""training/osediff*: OSEDiff-style one-step LoRA distillation from an SD checkpoint.

Losses against hand computations on fixed tensors, the sign of the VSD gradient, the frozen real
score, a short real run on a tiny SD 1.x checkpoint (the data loss falls, checkpoints, an exact
resume, the kohya export with its header), the export merged into fresh base models against the
peft generator and through the one-step engine, and the CLI's errors."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.sd import osediff_losses as L
from training.common.perceptual import build_perceptual, feature_distance

pytest.importorskip("peft")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from helpers import wave_images  # noqa: E402
from sd_tiny import make_tiny_sd  # noqa: E402



def _ac() -> torch.Tensor:
    from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod

    return scaled_linear_alphas_cumprod().float()


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------
# losses on fixed tensors


def test_data_loss_is_the_per_sample_pixel_mse():
    x_hat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    assert L.data_loss(x_hat, torch.zeros_like(x_hat)).tolist() == pytest.approx([7.5, 0.25])


def test_vsd_loss_value_and_gradient_equal_a_hand_computation():
    z = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 0.0]]]], requires_grad=True)
    real = torch.tensor([[[[0.0, 1.0]]], [[[1.0, -1.0]]]])
    fake = torch.tensor([[[[2.0, 2.0]]], [[[1.0, 1.0]]]])
    # sample 0: mean|z - real| = 1.5, grad = (2, 1) / 1.5; sample 1: mean = 1, grad = (0, 2)
    grad = torch.tensor([[[[4 / 3, 2 / 3]]], [[[0.0, 2.0]]]])
    assert torch.allclose(L.vsd_gradient(z, real, fake), grad)
    loss = L.vsd_loss(z, real, fake)
    assert loss.item() == pytest.approx((16 / 9 + 4 / 9 + 0 + 4) / 4)   # = mean(grad^2) = 14/9
    loss.backward()
    assert torch.allclose(z.grad, 2 / 4 * grad)                        # d/dz MSE(z, sg(z - g)) = 2/N g


def test_a_vsd_descent_step_moves_z_toward_the_real_x0():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    real = torch.randn(2, 4, 8, 8, generator=g)
    z_param = z.clone().requires_grad_(True)
    # the fake score knows the generator's samples: x0_fake = z; the step must go toward x0_real
    L.vsd_loss(z_param, real, z.clone()).backward()
    stepped = z - 0.1 * z_param.grad
    assert (stepped - real).norm() < (z - real).norm() - 1e-3
    # per sample exactly along (x0_real - z) (each sample has its own normalisation)
    direction = torch.nn.functional.cosine_similarity((stepped - z).flatten(1), (real - z).flatten(1), dim=1)
    assert direction.min() > 0.9999
    assert torch.equal(L.vsd_loss(z_param, real, real), torch.tensor(0.0))   # real == fake: no pull


def test_noising_targets_and_regulariser_loss_invert_through_the_inference_formulas():
    from onestep_sr.sd.formulas import x0_from_eps, x0_from_v

    ac = _ac()
    g = torch.Generator().manual_seed(1)
    z, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t = torch.tensor([20, 700])
    z_t = L.add_noise(z, noise, t, ac)
    for i, step in enumerate(t.tolist()):
        a = float(ac[step])
        assert torch.allclose(z_t[i], math.sqrt(a) * z[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)
        v = L.diffusion_target(z, noise, t, ac, "v_prediction")[i]
        assert torch.allclose(x0_from_v(z_t[i], v, a), z[i], atol=1e-5)
        eps = L.diffusion_target(z, noise, t, ac, "epsilon")[i]
        assert torch.allclose(x0_from_eps(z_t[i], eps, a), z[i], atol=1e-4)
    assert torch.allclose(L.x0_at(z_t, noise, t, ac, "epsilon"), z, atol=1e-4)
    pred = noise + 0.5
    assert L.regulariser_loss(pred, noise).item() == pytest.approx(0.25)


def test_real_score_uses_cfg_between_negative_and_prompt():
    ac = _ac()

    def unet(z, t, ctx):   # outputs the context's first value everywhere
        return ctx[:, :1, :1].reshape(-1, 1, 1, 1).expand_as(z).clone()

    z_t, t = torch.ones(1, 4, 2, 2), torch.tensor([500])
    x0 = L.score_x0(unet, z_t, t, torch.ones(1, 3, 2), ac, "epsilon", negative=torch.zeros(1, 3, 2), guidance=7.5)
    a = float(ac[500])
    assert torch.allclose(x0, (z_t - math.sqrt(1 - a) * 7.5) / math.sqrt(a), atol=1e-5)   # eps = 0 + 7.5 (1 - 0)


def test_perceptual_distance_equals_a_hand_computation():
    x = torch.tensor([[[[3.0, 0.0]], [[4.0, 2.0]]]])    # pixels (3, 4) and (0, 2)
    y = torch.tensor([[[[1.0, 0.0]], [[0.0, -1.0]]]])   # pixels (1, 0) and (0, -1)

    def features(v):
        return [v, 2 * v[..., :1]]

    # unit vectors: (.6,.8) vs (1,0): 0.8; (0,1) vs (0,-1): 4 -> 2.4; second map pixel 0 only: 0.8
    assert feature_distance(features, x, y).tolist() == pytest.approx([3.2], rel=1e-6)


def test_lpips_without_weights_and_unknown_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--perceptual vae"):
        build_perceptual("lpips", None)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        build_perceptual("lpips", None, str(tmp_path / "missing.pth"))
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="incomplete"):
        build_perceptual("lpips", None, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="unknown perceptual"):
        build_perceptual("vgg", None)
    assert build_perceptual("none", None) is None


def test_lpips_vgg_from_torchvision_and_lpips_layouts_equals_a_hand_computation(tmp_path):
    """Random weights in the two files' layouts (torchvision ``features.N``, LPIPS ``linK.model.1``,
    read as .pth with weights_only); the distance is checked against the formula written out."""
    from training.common.lpips_vgg import CONVS, POOLS, SCALE, SHIFT, TAPS, TAP_CHANNELS

    g = torch.Generator().manual_seed(0)
    vgg = {}
    for i, (cin, cout) in CONVS.items():
        vgg[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin ** 0.5)
        vgg[f"features.{i}.bias"] = 0.01 * torch.randn(cout, generator=g)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(TAP_CHANNELS)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "vgg.pth")
    distance = build_perceptual("lpips", None, f"{tmp_path / 'vgg16.pth'},{tmp_path / 'vgg.pth'}")
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1

    def taps(v):
        h = (v - torch.tensor(SHIFT).view(1, 3, 1, 1)) / torch.tensor(SCALE).view(1, 3, 1, 1)
        out = []
        for i in range(TAPS[-1] + 1):
            if i in CONVS:
                h = torch.nn.functional.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
            elif i in POOLS:
                h = torch.nn.functional.max_pool2d(h, 2)
            else:
                h = h.clamp_min(0)
            if i in TAPS:
                out.append(h)
        return out

    expected = torch.zeros(2)
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y))):
        nx, ny = fx / (fx.norm(dim=1, keepdim=True) + 1e-10), fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        w = lins[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        expected += ((nx - ny) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    assert torch.allclose(distance(x, y), expected, rtol=1e-4)
    assert torch.allclose(distance(x, x), torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# a real run on a tiny SD 1.x checkpoint


def _images(folder: Path) -> Path:
    wave_images(folder)
    (folder / "im1.txt").write_text("a photo of waves\n")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("osediff")
    config_dir, ckpt, _ = make_tiny_sd(root / "sd", "sd1", seed=0)
    return {"root": root, "config_dir": str(config_dir), "ckpt": str(ckpt), "data": str(_images(root / "hr"))}


def _config(tiny, out: str, steps: int, **kw):
    from training.sd.osediff import OSEDiffConfig

    options = dict(checkpoint=tiny["ckpt"], data=tiny["data"], out=str(tiny["root"] / out), steps=steps, gt_size=64,
                   batch_size=2, config_dir=tiny["config_dir"], warmup=0, lr=3e-3, lr_regulariser=1e-3,
                   degradation="bicubic", log_every=1, save_every=5, seed=0)
    return OSEDiffConfig(**{**options, **kw})


@pytest.fixture(scope="module")
def trained(tiny):
    from training.sd.osediff import OSEDiffRun

    run = OSEDiffRun(_config(tiny, "run", 10))
    data = run.loader.dataset.dataset
    batch = [data[i] for i in range(1000, 1004)]       # pairs the run never sees
    lq, gt = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])

    def data_loss():
        with torch.no_grad():
            _, x_hat = run.generator(lq, run.embeddings([""] * 4))
        return float(L.data_loss(x_hat, gt * 2 - 1).mean())

    before = data_loss()
    path = run.train(progress=False)
    return {"run": run, "path": path, "before": before, "after": data_loss(), "lq": lq}


def test_ten_steps_lower_the_data_loss_and_log_every_loss(trained):
    assert trained["after"] < 0.95 * trained["before"], (trained["before"], trained["after"])
    rows = list(csv.DictReader(open(trained["run"].out / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    for key in ("loss_mse", "loss_perceptual", "loss_vsd", "loss_regulariser", "loss_total"):
        assert all(math.isfinite(float(r[key])) for r in rows), key
    r = rows[0]
    assert float(r["loss_total"]) == pytest.approx(float(r["loss_mse"]) + 2 * float(r["loss_perceptual"])
                                                   + float(r["loss_vsd"]), rel=1e-5)
    saved = sorted(p.name for p in (trained["run"].out / "checkpoints").iterdir())
    assert saved == ["step-10", "step-5"]


def test_the_real_score_is_the_plain_base_unet_and_the_fake_score_is_not(trained, tiny):
    from onestep_sr.sd.checkpoint import load_sd_model

    base = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).unet
    score = trained["run"].accelerator.unwrap_model(trained["run"].score)
    g = torch.Generator().manual_seed(3)
    z, ctx, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g), torch.tensor([30, 900])
    with torch.no_grad():
        expected = base(z, t, encoder_hidden_states=ctx).sample
        assert torch.allclose(score.real(z, t, ctx), expected, atol=1e-6)
        fake = score(z, t, ctx)
        assert max_rel(fake, expected) > 1e-3          # the regulariser's LoRA has learnt something
        assert torch.allclose(score.real(z, t, ctx), expected, atol=1e-6)   # and is re-enabled after


def test_resume_continues_exactly(trained, tiny):
    """A copy of the run stopped at step 5 (its step-10 checkpoint removed) resumes there and
    reaches the very weights, EMA and log values of the uninterrupted run at step 10."""
    from training.sd.osediff import OSEDiffRun

    run = trained["run"]
    copy_out = tiny["root"] / "resumed"
    shutil.copytree(run.out, copy_out)
    shutil.rmtree(copy_out / "checkpoints" / "step-10")
    resumed = OSEDiffRun(_config(tiny, "resumed", 10))
    assert resumed.step == 5
    saved = load_file(copy_out / "checkpoints" / "step-5" / "trainable.safetensors")
    assert all(torch.equal(p.detach(), saved[k]) for k, p in {**resumed.gen_params, **resumed.reg_params}.items())
    resumed.train(progress=False)
    final = load_file(run.out / "checkpoints" / "step-10" / "trainable.safetensors")
    for k, p in {**resumed.gen_params, **resumed.reg_params}.items():
        assert torch.allclose(p.detach(), final[k], atol=1e-6), k
    assert all(torch.allclose(resumed.ema[k], v, atol=1e-6) for k, v in run.ema.items())
    rows = list(csv.DictReader(open(copy_out / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 11))  # the redone steps 6-10 are logged once
    straight = list(csv.DictReader(open(run.out / "log.csv")))
    for first, again in zip(straight[5:10], rows[5:10]):
        assert float(again["loss_total"]) == pytest.approx(float(first["loss_total"]), rel=1e-4)


def test_export_is_the_ema_in_kohya_format_with_the_metadata(trained, tiny):
    from onestep_sr.sd.lora import kohya_unet_name, vae_sibling_path

    path, run = trained["path"], trained["run"]
    assert path.name == "osediff_lora.safetensors" and vae_sibling_path(path).is_file()
    meta = header(path)
    assert meta["base_model_sha256"] == hashlib.sha256(Path(tiny["ckpt"]).read_bytes()).hexdigest()
    assert meta["rank_unet"] == "4" and meta["steps"] == "10" and meta["weights"] == "ema"
    assert json.loads(meta["loss_weights"]) == {"mse": 1.0, "perceptual": 2.0, "vsd": 1.0}
    last = list(csv.DictReader(open(run.out / "log.csv")))[9]
    assert json.loads(meta["losses_last_logged"])["mse"] == pytest.approx(float(last["loss_mse"]), abs=1e-6)
    assert meta["format"] == "kohya-lora" and meta["base_model_family"] == "sd1" and meta["ss_v2"] == "False"
    assert header(vae_sibling_path(path))["onestep_sr_part"] == "vae"
    unet_sd = load_file(path)
    name = run.groups["others"][0]
    ema_a = run.ema[f"unet.{name}.lora_A.default_others.weight"]
    assert torch.equal(unet_sd[f"{kohya_unet_name(name)}.lora_down.weight"], ema_a)
    assert not torch.equal(ema_a, run.gen_params[f"unet.{name}.lora_A.default_others.weight"].detach())


def test_the_exported_lora_merged_into_fresh_models_equals_the_peft_generator(trained, tiny):
    from onestep_sr.sd import SDOneStepSR
    from onestep_sr.sd.checkpoint import load_sd_model
    from onestep_sr.sd.lora import merge_kohya_lora, vae_sibling_path

    run = trained["run"]
    path = run.export(use_ema=False, path=tiny["root"] / "current" / "lora.safetensors")
    sd = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"])
    base_unet = copy.deepcopy(sd.unet)
    counts = merge_kohya_lora(sd.unet, sd.vae, {**load_file(path), **load_file(vae_sibling_path(path))})
    # conv_in as its difference to the base (.diff / .diff_b: applied by A1111 too), no set_weight
    assert counts["diff"] == 2 and counts["set"] == 0
    assert counts["lora"] == len(sum(run.groups.values(), [])) - 1 + len(run.vae_names)
    gen = run.accelerator.unwrap_model(run.generator)
    g = torch.Generator().manual_seed(4)
    z, ctx, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.tensor([999])
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        peft_out = gen.unet(z, t, encoder_hidden_states=ctx).sample
        assert max_rel(base_unet(z, t, encoder_hidden_states=ctx).sample, peft_out) > 1e-3   # LoRA matters
        assert max_rel(sd.unet(z, t, encoder_hidden_states=ctx).sample, peft_out) < 1e-5
        assert max_rel(sd.vae.encode(image).latent_dist.mean, gen.vae.encode(image).latent_dist.mean) < 1e-5
        # the one-step engine with the merged LoRA reproduces the trainer's generator forward
        _, x_hat = gen(trained["lq"], run.embeddings([""] * 4))
    engine = SDOneStepSR(sd)
    sr = engine.upscale_tensor(trained["lq"], scale=4, color_fix="none")
    assert torch.allclose(sr, (x_hat.clamp(-1, 1) + 1) / 2, atol=1e-4)
    # and from the file, as the node / CLI load it (the _vae sibling is found by name)
    loaded = SDOneStepSR.from_checkpoint(tiny["ckpt"], config_dir=tiny["config_dir"], lora=str(path))
    assert torch.allclose(loaded.upscale_tensor(trained["lq"], color_fix="none"), sr, atol=1e-5)


def test_the_perceptual_network_is_a_frozen_copy_without_lora(trained, tiny):
    from onestep_sr.sd.checkpoint import load_sd_model

    net = trained["run"].perceptual.net
    base = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).vae.encoder
    assert not any("lora" in k for k in net.state_dict())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in net.state_dict().items())
    assert len(net(torch.zeros(1, 3, 64, 64))) == len(base.down_blocks) + 1


def test_the_generator_forward_is_the_engine_path_for_a_v_prediction_sd2(tiny):
    """Before training (LoRA B = 0) the generator is the base model: its forward must be the
    one-step engine's, here on SD 2.x with v-prediction."""
    from onestep_sr.sd import SDOneStepSR
    from training.sd.osediff import OSEDiffRun

    config_dir, ckpt, _ = make_tiny_sd(tiny["root"] / "sd2", "sd2", seed=3)
    run = OSEDiffRun(_config(tiny, "sd2", 1, checkpoint=str(ckpt), config_dir=str(config_dir),
                             prediction_type="v_prediction"))
    assert run.prediction_type == "v_prediction" and run.sd.family == "sd2"
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, x_hat = run.generator(lq, run.embeddings([""]))
    engine = SDOneStepSR.from_checkpoint(ckpt, config_dir=config_dir, prediction_type="v_prediction")
    assert torch.allclose(engine.upscale_tensor(lq, color_fix="none"), (x_hat.clamp(-1, 1) + 1) / 2, atol=1e-5)


def test_captions_beside_images_are_the_prompts(tiny):
    from training.common.data import CaptionedPairDataset

    data = CaptionedPairDataset(tiny["data"], 64, 4, "bicubic", seed=0, prompt="default")
    assert data.prompts == ["default", "a photo of waves", "default"]
    seen = {data[i][2] for i in range(20)}
    assert seen == {"default", "a photo of waves"}


# ---------------------------------------------------------------------------------------------
# command line


def test_cli_trains_without_vae_lora_and_perceptual(tiny, capsys):
    from onestep_sr.sd.checkpoint import load_sd_model
    from onestep_sr.sd.lora import merge_kohya_lora, vae_sibling_path
    from training.cli import main

    out = tiny["root"] / "cli"
    assert main(["osediff", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", str(out),
                 "--config-dir", tiny["config_dir"], "--steps", "2", "--gt-size", "64", "--warmup", "0",
                 "--degradation", "bicubic", "--no-vae-lora", "--perceptual", "none", "--gradient-checkpointing",
                 "--no-progress"]) == 0
    path = out / "osediff_lora.safetensors"
    assert path.is_file() and not vae_sibling_path(path).exists()
    assert header(path)["perceptual"] == "none"
    assert "loss_perceptual" not in open(out / "log.csv").readline()
    sd = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"])
    merge_kohya_lora(sd.unet, None, load_file(path))   # every key applies


def test_bad_inputs_give_clear_errors(tiny, tmp_path, capsys):
    from onestep_sr.cli import main as onestep_main
    from training.cli import main

    common = ["--data", tiny["data"], "--out", str(tmp_path / "out"), "--config-dir", tiny["config_dir"]]
    assert onestep_main(["train", "osediff", "--checkpoint", str(tmp_path / "missing.safetensors"), *common]) == 2
    assert "SD checkpoint not found" in capsys.readouterr().err
    assert main(["osediff", "--checkpoint", tiny["ckpt"], "--perceptual", "lpips", *common]) == 2
    err = capsys.readouterr().err
    assert "--lpips-weights" in err and "--perceptual vae" in err and "none" in err
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(2),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sdxl))
    assert main(["osediff", "--checkpoint", str(sdxl), *common, "--gt-size", "64"]) == 2  # images of 96: a 64 crop
    assert "SDXL" in capsys.readouterr().err
    assert main(["osediff", "--checkpoint", tiny["ckpt"], "--gt-size", "72", *common]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# fp16 loss scaling (accelerate's GradScaler path), on a CPU


def _scaled_accelerator(init_scale: float):
    """accelerate's fp16 loss-scaling path (GradScaler: scaled backward, unscale before clipping,
    scaler.step / update, skipped steps on inf) on a CPU, where accelerate has no scaler. Autocast
    is switched off (AutocastKwargs), so compute stays fp32, scaling by powers of two is exact and
    the weights must equal an unscaled run's. The scale grows after every good step
    (growth_interval=1), as it does now and then in real fp16 runs."""
    import accelerate
    from accelerate.utils import AutocastKwargs

    class ScaledAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "mixed_precision": "fp16",
                                       "kwargs_handlers": [AutocastKwargs(enabled=False)]})
            self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
            self.native_amp = True

    return ScaledAccelerator


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose precision cannot change: reset it around."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield
    reset()


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_fp16_loss_scaling_gives_the_unscaled_weights(tiny, monkeypatch, grad_accum, fresh_accelerate_state):
    import accelerate

    from training.sd.osediff import OSEDiffRun

    common = dict(grad_accum=grad_accum, batch_size=1, save_every=100, grad_clip=0.05)   # clipping active
    plain = OSEDiffRun(_config(tiny, f"fp32_{grad_accum}", 3, **common))
    plain.train(progress=False)
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    monkeypatch.setattr(accelerate, "Accelerator", _scaled_accelerator(2.0 ** 10))
    scaled = OSEDiffRun(_config(tiny, f"fp16_{grad_accum}", 3, **common))
    scaled.train(progress=False)
    assert scaled.accelerator.scaler.get_scale() == 2.0 ** 13       # one scaler update per optimiser step
    for name, p in {**plain.gen_params, **plain.reg_params}.items():
        other = {**scaled.gen_params, **scaled.reg_params}[name]
        assert torch.allclose(p.detach(), other.detach(), atol=1e-6, rtol=1e-5), name


def test_fp16_overflow_skips_the_step_and_halves_the_scale(tiny, monkeypatch, fresh_accelerate_state):
    import accelerate

    from training.sd.osediff import OSEDiffRun

    monkeypatch.setattr(accelerate, "Accelerator", _scaled_accelerator(2.0 ** 10))
    run = OSEDiffRun(_config(tiny, "fp16_overflow", 2, batch_size=1, save_every=100))
    start = {k: p.detach().clone() for k, p in {**run.gen_params, **run.reg_params}.items()}
    original, calls, seen = run.generator_losses, [0], {}

    def overflowing(*args, **kwargs):
        parts, z = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:                                   # the first step's generator gradients overflow
            z.register_hook(lambda g: g * float("inf"))
        return parts, z

    def after_first_step(*args):
        if not seen:
            seen.update({k: p.detach().clone() for k, p in {**run.gen_params, **run.reg_params}.items()})
            seen["scale"] = run.accelerator.scaler.get_scale()
        return ema_original(*args)

    import training.sd.run_base as run_base  # the training loop's module

    ema_original = run_base.ema_update
    monkeypatch.setattr(run, "generator_losses", overflowing)
    monkeypatch.setattr(run_base, "ema_update", after_first_step)
    run.train(progress=False)
    assert seen["scale"] == 2.0 ** 9
    assert all(torch.equal(seen[k], v) for k, v in start.items())        # nothing moved on the skipped step
    moved = [k for k, p in {**run.gen_params, **run.reg_params}.items() if not torch.equal(p.detach(), start[k])]
    assert len(moved) == len(start)                                      # the next step trains everything
    assert all(torch.isfinite(p).all() for p in run.gen_params.values())
    assert all(torch.isfinite(v).all() for v in run.ema.values())


def test_scale_curriculum_starts_from_the_x2_run_and_targets_its_latent_on_the_coupled_lr(trained, tiny):
    """--scale 4 --init X2 --scale-teacher X2 (yonos.md 3.2 (ii-b)): the x4 run starts from the x2
    run's exported (EMA) generator, each step adds lambda_scale MSE(z(LR4), sg z_x2(LR2)) on the same
    crop, the teacher latent is the x2 generator's, and the student's weights are put back after it."""
    from training.sd.osediff import OSEDiffRun, run_weights

    x2 = OSEDiffRun(_config(tiny, "x2", 2, scale=2))
    x2.train(progress=False)
    x2_weights = run_weights(str(x2.out))
    run = OSEDiffRun(_config(tiny, "x4_curriculum", 2, scale=4, init=str(x2.out), scale_teacher=str(x2.out),
                             lambda_scale=0.5))
    for name, p in run.gen_params.items():
        assert torch.equal(p.detach(), x2_weights[name].to(p.dtype)), name   # starts as the x2 generator
    lq, lq_teacher, gt, prompt = run.loader.dataset.dataset[0]
    assert lq.shape == (3, 16, 16) and lq_teacher.shape == (3, 32, 32) and gt.shape == (3, 64, 64)
    with torch.no_grad():
        for p in run.gen_params.values():   # make the student differ from its teacher
            p.add_(0.01)
    own = {k: p.detach().clone() for k, p in run.gen_params.items()}
    context = run.embeddings([prompt])
    target = run.teacher_latent(lq_teacher[None], context, (64, 64))
    assert all(torch.equal(p.detach(), own[k]) for k, p in run.gen_params.items())  # weights put back
    # the target is what the x2 run's generator gives for the x2 LR
    reference = OSEDiffRun(_config(tiny, "x2_reference", 1, scale=2, init=str(x2.out)))
    with torch.no_grad():
        expected = reference.generator.latent(lq_teacher[None], reference.embeddings([prompt]), (64, 64))
    assert torch.allclose(target, expected, atol=1e-5)
    parts, z = run.generator_losses(lq[None], gt[None], [prompt], 0, lq_teacher[None])
    assert float(parts["scale"].detach()) == pytest.approx(float((z.detach() - target).pow(2).mean()), rel=1e-4)
    base = parts["total"] - 0.5 * parts["scale"]
    plain, _ = run.generator_losses(lq[None], gt[None], [prompt], 0)
    assert "scale" not in plain and float(plain["total"]) == pytest.approx(float(base), rel=1e-5)
    run.train(progress=False)
    rows = list(csv.DictReader(open(run.out / "log.csv")))
    assert all(math.isfinite(float(r["loss_scale"])) for r in rows)
    with pytest.raises(ValueError, match="needs --scale 4 or 8"):
        _config(tiny, "bad", 1, scale=2, scale_teacher=str(x2.out))


def test_schedule_shift_auto_from_the_crop_and_native_size_maps_the_training_timesteps(trained, tiny):
    """The tiny checkpoint's native size is 8 latents x 8 = 64 px: 64-px crops are unshifted (and
    say so in the export), 128-px crops shift by 2 (log-SNR - 2 log 2)."""
    from safetensors import safe_open

    from training.sd.osediff import OSEDiffRun
    from training.sd.schedule_shift import shift_table

    assert trained["run"].schedule_shift == 1.0
    with safe_open(str(trained["path"]), framework="pt") as f:
        assert f.metadata()["schedule_shift"] == "1"
    run = OSEDiffRun(_config(tiny, "shifted", 1, gt_size=128))
    assert run.schedule_shift == 2.0 and torch.equal(run.t_map, shift_table(run.alphas_cumprod, 2.0))
    z = torch.zeros(64, 4, 2, 2)
    t, _ = run._t_and_noise(z, 20, 980, torch.Generator().manual_seed(0))
    plain = torch.randint(20, 980, (64,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, run.t_map[plain]) and bool((t >= plain).all()) and bool((t > plain).any())
    with pytest.raises(ValueError, match="auto, none or a factor"):
        _config(tiny, "bad_shift", 1, schedule_shift="0.5")
