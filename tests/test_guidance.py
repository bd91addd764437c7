"""Guidance distillation (issue 21): the w features against a hand computation, the zero-initialised
student equals the unguided UNet, the CFG target in the model's own parameterisation (eps and v),
a short `train guided` run (it learns, resumes exactly, exports the w-conditioned file), the file
applied by hooks / baked into a kohya LoRA equals the trained student, the OSEDiff real score in
one call, the OSEDiff generator with a guidance input and its two exports, the CLI."""
from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from onestep_sr.sd import guidance as G  # noqa: E402
from helpers import wave_images  # noqa: E402
from sd_tiny import make_tiny_sd  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def header(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# --- the w features -------------------------------------------------------------------------------


def test_guidance_features_equal_a_hand_computation_and_vanish_at_zero():
    # dim 4: two frequencies, 1 and exp(-ln(10000) / 1) = 1e-4; angles = 1000 w f
    w = 0.5
    expected = torch.tensor([[np.sin(500.0), np.sin(0.05), np.cos(500.0) - 1, np.cos(0.05) - 1]], dtype=torch.float32)
    assert torch.allclose(G.guidance_features(w, 4), expected, atol=1e-6)
    assert torch.equal(G.guidance_features(torch.tensor([0.0, 0.0]), 256), torch.zeros(2, 256))
    assert G.guidance_features(torch.tensor([1.0, 2.0, 3.0])).shape == (3, G.EMBED_DIM)
    for bad in (float("nan"), float("inf"), 1000.0, True, "3"):
        with pytest.raises(ValueError, match="guidance"):
            G.check_guidance(bad)
    with pytest.raises(ValueError, match="even"):
        G.guidance_features(1.0, 5)


def test_baking_adds_exactly_w_times_the_projection_to_the_time_bias():
    g = torch.Generator().manual_seed(0)
    proj, weight = torch.randn(6, 8, generator=g), torch.randn(10, 6, generator=g)
    guided = G.GuidedLora({"lora_unet_conv_in.diff_b": torch.zeros(3)}, proj)
    baked = G.bake(guided, weight, 2.5)
    expected = weight @ (proj @ G.guidance_features(2.5, 8)[0])
    assert torch.allclose(baked[G.TIME_EMBED_KEY + ".diff_b"], expected, atol=1e-5)
    assert torch.equal(G.bake(guided, weight, 0.0)[G.TIME_EMBED_KEY + ".diff_b"], torch.zeros(10))
    assert torch.equal(baked[G.TIME_EMBED_KEY + ".diff"], torch.zeros(10, 6))  # A1111 builds the module from it
    with pytest.raises(G.LoraFormatError, match="another model family"):
        G.bake(guided, torch.randn(10, 7), 1.0)
    with pytest.raises(G.LoraFormatError, match="not a w-conditioned"):
        G.parse_guided({"lora_unet_conv_in.diff": torch.zeros(1)}, source="x.safetensors")


# --- a tiny SD and short runs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("guidance")
    config_dir, ckpt, _ = make_tiny_sd(root / "sd", "sd1", seed=0)
    return {"root": root, "config_dir": str(config_dir), "ckpt": str(ckpt), "data": str(wave_images(root / "hr"))}


def _guided_config(tiny, out, steps, **kw):
    from training.sd.guided import GuidedConfig

    options = dict(checkpoint=tiny["ckpt"], data=tiny["data"], out=str(tiny["root"] / out), steps=steps, gt_size=64,
                   batch_size=2, config_dir=tiny["config_dir"], warmup=0, lr=3e-4, log_every=1, save_every=12,
                   w_range="0,6", prompt="a photo", seed=0)
    return GuidedConfig(**{**options, **kw})


def _held_out(run, count=4):
    data = run.loader.dataset.dataset
    gt = torch.stack([data[1000 + i][1] for i in range(count)])
    z_t, t, _ = run.draw(run.latents(gt), 10_000)
    context = run.embeddings(["a photo"] * count)
    negative = run.embeddings([run.config.negative_prompt] * count)
    return z_t, t, context, negative


@pytest.fixture(scope="module")
def guided(tiny):
    from training.sd.guided import GuidedRun

    run = GuidedRun(_guided_config(tiny, "guided", 24))
    z_t, t, context, negative = _held_out(run)
    w = torch.tensor([1.0, 3.0, 4.5, 6.0])

    def error():
        with torch.no_grad():
            return rel(run.student(z_t, t, context, w), run.teacher(z_t, t, context, negative, w))

    before = error()
    path = run.train(progress=False)
    return {"run": run, "path": path, "before": before, "after": error(), "held_out": (z_t, t, context, negative)}


def test_the_zero_initialised_student_is_the_unguided_unet_at_every_w(tiny):
    from onestep_sr.sd.checkpoint import load_sd_model
    from training.sd.guided import GuidedRun

    run = GuidedRun(_guided_config(tiny, "fresh", 1))
    base = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).unet
    g = torch.Generator().manual_seed(1)
    z, ctx, t = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 32, generator=g), torch.tensor([30, 500, 970])
    with torch.no_grad():
        expected = base(z, t, encoder_hidden_states=ctx).sample
        for w in (0.0, 3.0, torch.tensor([0.0, 6.0, 8.0])):
            assert torch.allclose(run.student(z, t, ctx, w), expected, atol=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_the_cfg_target_is_computed_in_the_models_own_parameterisation(tiny, tmp_path, family):
    """eps (SD 1.x) and v (SD 2-v): the target is (1 + w) out_c - w out_u of the base UNet, and the
    x0 it implies is the same combination of the two x0s (the CFG map is the same in every
    parameterisation, so the student learns guided x0 whatever it predicts).

    The exact check calls the base UNet the way the teacher does: uncond and cond in ONE batch of
    2B. Two separate calls of B are the same maths but not the same float32 rounding: CPU GEMM
    kernels block by batch size, so with MKL / oneDNN / ATen on their AVX2 paths (a CPU without
    AVX-512) out_c and out_u move by ~2e-6, which the CFG gain (1 + w and w, 1 + 2w = 11 here) turns
    into 1.4e-5 - 2.4e-5 in the target (measured), over an atol of 1e-5 on every run. The two-call
    form is still checked, at a relative tolerance above that rounding (measured <= 7e-6)."""
    from onestep_sr.sd.checkpoint import load_sd_model
    from training.sd import osediff_losses as L
    from training.sd.guided import GuidedRun

    if family == "sd2":
        config_dir, ckpt, _ = make_tiny_sd(tmp_path / "sd2", "sd2", seed=1)
        options = dict(checkpoint=str(ckpt), config_dir=str(config_dir), prediction_type="v_prediction")
    else:
        options = {}
    run = GuidedRun(_guided_config(tiny, f"param_{family}", 1, **options))
    assert run.prediction_type == ("v_prediction" if family == "sd2" else "epsilon")
    base = load_sd_model(options.get("checkpoint", tiny["ckpt"]), config_dir=options.get("config_dir", tiny["config_dir"]),
                         prediction_type=options.get("prediction_type")).unet
    g = torch.Generator().manual_seed(2)
    width = base.config.cross_attention_dim
    z, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([100, 800])
    ctx, neg = torch.randn(2, 77, width, generator=g), torch.randn(2, 77, width, generator=g)
    w = torch.tensor([2.0, 5.0])
    with torch.no_grad():
        gp = torch.Generator().manual_seed(3)  # as after training: the teacher must still be the base UNet
        for p in run.params.values():
            p.add_(0.05 * torch.randn(p.shape, generator=gp))
        target = run.teacher(z, t, ctx, neg, w)
        both = base(torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=torch.cat([neg, ctx])).sample
        uncond, cond = both.chunk(2)
        cond_1, uncond_1 = (base(z, t, encoder_hidden_states=c).sample for c in (ctx, neg))
    wv = w.view(-1, 1, 1, 1)
    assert torch.allclose(target, (1 + wv) * cond - wv * uncond, atol=1e-5)
    assert rel(target, (1 + wv) * cond_1 - wv * uncond_1) < 1e-4   # two calls of B
    x0 = lambda out: L.x0_at(z, out, t, run.alphas_cumprod, run.prediction_type)  # noqa: E731
    assert torch.allclose(x0(target), (1 + wv) * x0(cond) - wv * x0(uncond), atol=1e-4)


def test_a_short_run_learns_the_guided_output_and_exports_the_w_conditioned_file(guided, tiny):
    # held-out relative error to two-call CFG at w in [1, 6]: 0.707 at the start (the zero-initialised
    # student is the unguided UNet), 0.665 after 24 steps on this random tiny UNet (measured once)
    assert guided["after"] < 0.96 * guided["before"], (guided["before"], guided["after"])
    path = guided["path"]
    assert path.name == "guided_lora.safetensors"
    state, meta = load_file(path), header(path)
    assert state[G.COND_PROJ_KEY].shape == (32, G.EMBED_DIM)        # tiny UNet: 32 time features
    assert state[G.COND_PROJ_KEY].abs().max() > 0                    # learnt from zero
    assert meta["guidance_w_min"] == "0" and meta["guidance_w_max"] == "6"
    assert meta["guidance_convention"] == G.CONVENTION and meta["trained_with"] == "onestep-sr train guided"
    assert meta["prediction_type"] == "epsilon" and meta["base_model_family"] == "sd1"
    assert not any(".lora_A." in k or ".lora_B." in k for k in state)  # kohya names only


def test_resume_continues_exactly(guided, tiny):
    from training.sd.guided import GuidedRun

    src = guided["run"].out
    copy_dir = tiny["root"] / "guided_resume"
    shutil.copytree(src, copy_dir)
    shutil.rmtree(copy_dir / "checkpoints" / "step-24")
    resumed = GuidedRun(_guided_config(tiny, "guided_resume", 24))
    assert resumed.step == 12
    resumed.train(progress=False)
    for name, p in guided["run"].params.items():
        assert torch.allclose(resumed.params[name], p, atol=1e-6), name


def test_the_file_by_hooks_and_baked_into_a_kohya_lora_equals_the_trained_student(guided, tiny):
    from onestep_sr.sd.checkpoint import load_sd_model
    from onestep_sr.sd.lora import merge_kohya_lora
    from training.sd.guidance_model import HookedLora

    run = guided["run"]
    path = run.export(use_ema=False, path=tiny["root"] / "current" / "guided.safetensors")
    file = G.parse_guided(load_file(path), header(path))
    assert file.w_range == (0.0, 6.0)
    z_t, t, context, _ = guided["held_out"]
    base = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).unet
    hooks = HookedLora(copy.deepcopy(base), file)
    for w in (0.0, 2.0, 6.0):
        with torch.no_grad():
            student = run.student(z_t, t, context, w)
            with hooks.active(w) as unet:
                hooked = unet(z_t, t, encoder_hidden_states=context).sample
            baked = copy.deepcopy(base)
            counts = merge_kohya_lora(baked, None, G.bake(file, base.time_embedding.linear_1.weight, w))
            merged = baked(z_t, t, encoder_hidden_states=context).sample
        assert counts["diff"] == 4                      # conv_in .diff / .diff_b, time_embed.0 zero .diff / .diff_b
        assert (student - hooked).abs().max() < 1e-5, w
        assert (student - merged).abs().max() < 1e-5, w
    with torch.no_grad():  # the hooks are gone outside the context
        assert torch.equal(hooks.unet(z_t, t, encoder_hidden_states=context).sample,
                           base(z_t, t, encoder_hidden_states=context).sample)


# --- OSEDiff: the one-call real score and a generator with a guidance input -------------------------------


def _osediff_config(tiny, out, steps, **kw):
    from training.sd.osediff import OSEDiffConfig

    options = dict(checkpoint=tiny["ckpt"], data=tiny["data"], out=str(tiny["root"] / out), steps=steps, gt_size=64,
                   batch_size=2, config_dir=tiny["config_dir"], warmup=0, lr=3e-3, lr_regulariser=1e-3,
                   degradation="bicubic", log_every=1, save_every=steps, seed=0, prompt="a photo")
    return OSEDiffConfig(**{**options, **kw})


def test_the_real_score_from_the_guided_file_is_one_call_at_w_cfg_minus_one(guided, tiny):
    from onestep_sr.sd.checkpoint import load_sd_model
    from training.sd import osediff_losses as L
    from training.sd.guidance_model import HookedLora
    from training.sd.osediff import OSEDiffRun

    run = OSEDiffRun(_osediff_config(tiny, "ose_real", 1, real_score=str(guided["path"]), cfg=4.0))
    score = run.accelerator.unwrap_model(run.score)
    samples = []
    score.unet.register_forward_pre_hook(lambda m, args, kwargs: samples.append(args[0].shape[0]), with_kwargs=True)
    z_t, t, context, _ = guided["held_out"]
    w = run.guidance_weights(4, 0)
    assert torch.equal(w, torch.full((4,), 3.0))
    one, two = run.real_x0(z_t, t, context, w), run.real_x0(z_t, t, context, w, one_call=False)
    assert samples == [4, 8]                            # one UNet pass over the batch instead of a doubled one
    file = G.parse_guided(load_file(guided["path"]))
    base = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).unet
    with torch.no_grad(), HookedLora(base, file).active(3.0) as unet:
        expected = L.x0_at(z_t, unet(z_t, t, encoder_hidden_states=context).sample, t, run.alphas_cumprod, "epsilon")
    assert torch.allclose(one, expected, atol=1e-5)
    assert rel(one, two) < rel(L.x0_at(z_t, base(z_t, t, encoder_hidden_states=context).sample, t,
                                      run.alphas_cumprod, "epsilon"), two)  # closer to CFG than the unguided UNet
    assert torch.allclose(score.real(z_t, t, context), base(z_t, t, encoder_hidden_states=context).sample, atol=1e-6)


@pytest.fixture(scope="module")
def guided_student(tiny, guided):
    from training.sd.osediff import OSEDiffRun

    run = OSEDiffRun(_osediff_config(tiny, "ose_guided", 4, guidance_range="0,6", export_guidance=4.0,
                                     real_score=str(guided["path"])))
    return {"run": run, "path": run.train(progress=False)}


def test_a_generator_with_a_guidance_input_exports_a_baked_lora_and_the_guided_file(guided_student, tiny):
    from onestep_sr.sd import SDOneStepSR

    run, path = guided_student["run"], guided_student["path"]
    guided_path = path.with_name("osediff_lora_guided.safetensors")
    assert sorted(p.name for p in path.parent.glob("*.safetensors")) == [
        "osediff_lora.safetensors", "osediff_lora_guided.safetensors", "osediff_lora_vae.safetensors"]
    assert header(path)["guidance_w"] == "4" and header(path)["guidance_cfg_scale"] == "5"
    assert G.TIME_EMBED_KEY + ".diff_b" in load_file(path) and G.COND_PROJ_KEY not in load_file(path)
    assert header(guided_path)["vae_file"] == "osediff_lora_vae.safetensors"
    assert header(guided_path)["guidance_w_max"] == "6"
    gen = run.accelerator.unwrap_model(run.generator)
    ema = {k: v for k, v in run.ema.items()}
    with torch.no_grad():  # the exports are of the EMA weights: put them in to compare
        for k, p in run.gen_params.items():
            p.copy_(ema[k])
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    context = run.embeddings(["a photo"])
    load = lambda lora, w=None: SDOneStepSR.from_checkpoint(tiny["ckpt"], config_dir=tiny["config_dir"],  # noqa: E731
                                                            lora=lora, guidance=w)
    outs = {}
    for w in (0.0, 4.0, 6.0):
        with torch.no_grad():
            _, x_hat = gen(lq, context, None, torch.tensor([w]))
        outs[w] = load(str(guided_path), w).upscale_tensor(lq, prompt="a photo", color_fix="none")
        assert (outs[w] - (x_hat.clamp(-1, 1) + 1) / 2).abs().max() < 1e-4, w   # the file = the trainer's student
    assert (outs[4.0] - outs[0.0]).abs().max() > 1e-4 and (outs[6.0] - outs[4.0]).abs().max() > 1e-4
    # the baked kohya LoRA (+ its _vae sibling) is the conditioned student at its w
    assert (load(str(path)).upscale_tensor(lq, prompt="a photo", color_fix="none") - outs[4.0]).abs().max() < 1e-5
    # w = 0 is the plain student: the LoRA alone, nothing added to the time embedding
    plain = {k: v for k, v in load_file(guided_path).items() if k != G.COND_PROJ_KEY}
    alone = load([plain, str(path.with_name("osediff_lora_vae.safetensors"))])
    assert torch.equal(alone.upscale_tensor(lq, prompt="a photo", color_fix="none"), outs[0.0])


def test_engine_and_trainer_errors(tiny, guided):
    from training.sd.osediff import OSEDiffConfig

    with pytest.raises(ValueError, match="w-conditioned student: give the guidance"):
        from onestep_sr.sd import SDOneStepSR
        SDOneStepSR.from_checkpoint(tiny["ckpt"], config_dir=tiny["config_dir"], lora=str(guided["path"]))
    with pytest.raises(ValueError, match="guidance needs a w-conditioned student"):
        SDOneStepSR.from_checkpoint(tiny["ckpt"], config_dir=tiny["config_dir"], guidance=2.0)
    base = dict(checkpoint=tiny["ckpt"], data=tiny["data"], out=str(tiny["root"] / "bad"))
    with pytest.raises(ValueError, match="--guidance-range must be two numbers"):
        OSEDiffConfig(**base, guidance_range="3")
    with pytest.raises(ValueError, match="0 <= W_MIN <= W_MAX"):
        OSEDiffConfig(**base, guidance_range="5,1")
    with pytest.raises(ValueError, match="outside --guidance-range"):
        OSEDiffConfig(**base, guidance_range="0,6", export_guidance=7.0)
    with pytest.raises(ValueError, match="needs --guidance-range"):
        OSEDiffConfig(**base, export_guidance=2.0)
    with pytest.raises(FileNotFoundError, match="--real-score .*no such file"):
        OSEDiffConfig(**base, real_score=str(tiny["root"] / "missing.safetensors"))
    from safetensors.torch import save_file

    from training.sd.osediff import OSEDiffRun
    plain = tiny["root"] / "plain_lora.safetensors"
    save_file({"lora_unet_conv_in.diff": torch.zeros(3)}, str(plain))

    def no_model(self):
        raise AssertionError("the SD model was loaded before the --real-score file was checked")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OSEDiffRun, "load_base", no_model)
        with pytest.raises(ValueError, match="plain_lora.safetensors.*not a w-conditioned"):
            OSEDiffRun(OSEDiffConfig(**base, real_score=str(plain)))


def test_cli_guided_and_bake_guidance(tiny, guided, capsys):
    from training.cli import main

    out = tiny["root"] / "cli_guided"
    code = main(["guided", "--checkpoint", tiny["ckpt"], "--config-dir", tiny["config_dir"], "--data", tiny["data"],
                 "--out", str(out), "--steps", "2", "--gt-size", "64", "--w-range", "1,3", "--no-progress"])
    assert code == 0 and (out / "guided_lora.safetensors").is_file()
    assert header(out / "guided_lora.safetensors")["guidance_w_max"] == "3"
    baked = tiny["root"] / "baked.safetensors"
    code = main(["bake-guidance", "--checkpoint", tiny["ckpt"], "--config-dir", tiny["config_dir"],
                 "--guided", str(guided["path"]), "--w", "2.5", "--out", str(baked)])
    assert code == 0 and "w = 2.5 (CFG scale 3.5)" in capsys.readouterr().out
    from onestep_sr.sd.checkpoint import load_sd_model
    weight = load_sd_model(tiny["ckpt"], config_dir=tiny["config_dir"]).unet.time_embedding.linear_1.weight
    expected = G.bake(G.parse_guided(load_file(guided["path"])), weight, 2.5)
    written = load_file(baked)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    assert header(baked)["guidance_w"] == "2.5"
    assert main(["bake-guidance", "--checkpoint", tiny["ckpt"], "--config-dir", tiny["config_dir"],
                 "--guided", str(baked), "--w", "1", "--out", str(tiny["root"] / "x.safetensors")]) == 2
    assert "not a w-conditioned" in capsys.readouterr().err
    assert not (tiny["root"] / "x.safetensors").exists()
    assert main(["guided", "--checkpoint", tiny["ckpt"], "--data", tiny["data"], "--out", str(out),
                 "--w-range", "a,b"]) == 2
    assert "--w-range must be two numbers" in capsys.readouterr().err


def test_the_guided_trainer_shifts_its_timesteps_above_the_native_size(tiny, guided):
    """The tiny UNet's native size is 64 px (sample_size 8): 128-px crops shift t by the log-SNR rule
    (factor 2, lambda - 2 log 2), recorded in the file's header; 64-px crops do not."""
    from training.sd.guided import GuidedRun
    from training.sd.schedule_shift import log_snr

    run = GuidedRun(_guided_config(tiny, "shifted", 1, gt_size=128))
    assert run.schedule_shift == 2.0
    lam = log_snr(run.alphas_cumprod)
    for t in (100, 500, 900):
        target = lam[t] - 2 * np.log(2.0)
        best = int((lam - target).abs().argmin())
        assert int(run.t_map[t]) == best
    assert guided["run"].schedule_shift == 1.0 and header(guided["path"])["schedule_shift"] == "1"
