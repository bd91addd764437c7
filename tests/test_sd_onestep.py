"""One-step SD super-resolution (OSEDiff path): formulas, offline loading, the engine.

Everything runs on tiny seeded SD 1.x / 2.x models written by ``sd_tiny`` in the LDM single-file
layout, so the real loader (family detection, diffusers' LDM -> diffusers conversion, strict key
checks) is exercised; nothing is downloaded.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from onestep_sr.checkpoint import CheckpointError  # noqa: E402
from onestep_sr import OutOfMemoryError  # noqa: E402
from onestep_sr.sd import formulas  # noqa: E402
from onestep_sr.sd.checkpoint import detect_prediction_type, load_sd_model  # noqa: E402
from onestep_sr.sd.onestep import SDOneStepSR  # noqa: E402
from onestep_sr.sd.prompt import token_ids  # noqa: E402
from sd_tiny import make_tiny_sd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENGINE_ATOL = 1e-5      # engine vs the hand-written computation (same modules, same order of ops)
TILED_MEAN_TOL = 0.2    # tiled vs untiled, mean |diff| in [0, 1] units (tiny random UNet, 8-px tiles)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return {fam: make_tiny_sd(root / fam, fam, seed=3 if fam == "sd2" else 0) for fam in ("sd1", "sd2")}


@pytest.fixture(scope="module")
def engines(tiny):
    cache = {}

    def get(family, prediction="epsilon"):
        key = (family, prediction)
        if key not in cache:
            config_dir, path, _ = tiny[family]
            cache[key] = SDOneStepSR.from_checkpoint(path, config_dir=config_dir, prediction_type=prediction)
        return cache[key]
    return get


def _lr(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g)


# ----------------------------------------------------------------------------- formulas


def test_schedule_matches_diffusers_ddpm():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000)
    ours = formulas.scaled_linear_alphas_cumprod()
    assert torch.allclose(ours.float(), sched.alphas_cumprod, rtol=1e-6, atol=1e-9)
    assert formulas.abar_at(999) == pytest.approx(0.004660, abs=1e-6)
    with pytest.raises(ValueError, match="timestep 1000"):
        formulas.abar_at(1000)


def test_x0_formulas_invert_the_forward_process():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    a = formulas.abar_at(999)
    z = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    assert torch.allclose(formulas.x0_from_eps(z, eps, a), x0, atol=1e-9)
    assert torch.allclose(formulas.x0_from_v(z, v, a), x0, atol=1e-12)
    assert torch.equal(formulas.x0_from_prediction(z, v, a, "v_prediction"), formulas.x0_from_v(z, v, a))
    with pytest.raises(ValueError, match="sample"):
        formulas.x0_from_prediction(z, v, a, "sample")


def test_gaussian_tiles_blend_a_pointwise_function_exactly():
    latent = torch.randn(1, 4, 20, 30, generator=torch.Generator().manual_seed(1))
    calls = []

    def fn(x):
        calls.append(tuple(x.shape[-2:]))
        return 2 * x + 1

    out = formulas.run_tiled(fn, latent, tile=8, overlap=4)
    assert len(calls) > 1 and all(c == (8, 8) for c in calls)
    assert torch.allclose(out, 2 * latent + 1, atol=1e-6)
    calls.clear()
    assert torch.equal(formulas.run_tiled(fn, latent, tile=32, overlap=8), 2 * latent + 1)
    assert calls == [(20, 30)]                         # one tile covers it: one call
    boxes = formulas.latent_tile_boxes(20, 30, 8, 4)
    covered = torch.zeros(20, 30)
    for y0, y1, x0, x1 in boxes:
        covered[y0:y1, x0:x1] = 1
    assert covered.all()
    w = formulas.gaussian_tile_weights(8, 6)
    assert (w > 0).all() and torch.equal(w, w.flip(0)) and torch.equal(w, w.flip(1))
    with pytest.raises(ValueError, match="overlap"):
        formulas.run_tiled(fn, latent, tile=8, overlap=8)


def test_out_of_memory_halves_the_tile_and_starts_the_blend_again(caplog):
    """A tile function that runs out of memory above 10 x 10: the tiles go 32 (the whole 20 x 30
    latent: 30) -> 15 -> 8, the result is run_tiled at 8 with the overlap keeping its third of the tile, the
    progress restarts with the new tile count, and each retry is logged."""
    latent = torch.randn(1, 4, 20, 30, generator=torch.Generator().manual_seed(5))
    tried, ticks = [], []

    def fn(x):
        tried.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > 10:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.sin(x) + x.mean(dim=(-2, -1), keepdim=True)  # depends on the tile: blending shows

    with caplog.at_level("WARNING"):
        out = formulas.run_tiled_halving(fn, latent, tile=96, overlap=32, floor=8, on_tile=lambda d, n: ticks.append((d, n)))
    assert tried[0] == (20, 30) and tried[1] == (15, 15) and set(tried[2:]) == {(8, 8)}
    assert torch.equal(out, formulas.run_tiled(fn, latent, tile=8, overlap=2))  # 32/96 of 30 = 10 -> 5 -> 2
    n = len(formulas.latent_tile_boxes(20, 30, 8, 2))
    assert ticks == [(i, n) for i in range(1, n + 1)]
    assert "retrying with 15" in caplog.text and "retrying with 8" in caplog.text


def test_out_of_memory_at_the_floor_and_other_errors():
    latent = torch.zeros(1, 4, 12, 12)

    def never_fits(x):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")

    with pytest.raises(OutOfMemoryError, match=r"12x12 latent.*even with 8-pixel latent tiles.*can't allocate"):
        formulas.run_tiled_halving(never_fits, latent, tile=12, overlap=4, floor=8)
    calls = []

    def broken(x):
        calls.append(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        formulas.run_tiled_halving(broken, latent, tile=12, overlap=4, floor=8)
    assert calls == [1]                                # not retried
    assert formulas.halved_tile(96, 32) == (48, 16) and formulas.halved_tile(16, 8) is None


def test_pad_to_multiple_and_crop():
    x = torch.rand(1, 3, 13, 6)
    padded, size = formulas.pad_to_multiple(x, min_size=0)
    assert padded.shape[-2:] == (16, 8) and size == (13, 6)
    assert torch.equal(formulas.crop_to(padded, size), x)
    assert torch.equal(padded[..., 13, :6], x[..., 11, :])          # reflect
    tiny, size = formulas.pad_to_multiple(torch.rand(1, 3, 1, 2), min_size=0)  # too small to reflect
    assert tiny.shape[-2:] == (8, 8) and size == (1, 2)
    small, size = formulas.pad_to_multiple(torch.rand(1, 3, 20, 70))  # default minimum 64
    assert small.shape[-2:] == (64, 72) and size == (20, 70)


# ----------------------------------------------------------------------------- prompt


def test_prompt_token_ids():
    sd1 = {"max_length": 77, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    sd2 = dict(sd1, pad_token_id=0)
    assert token_ids("", sd1).tolist() == [[49406] + [49407] * 76]
    assert token_ids("", sd2).tolist() == [[49406, 49407] + [0] * 75]
    ids = token_ids("a photo of a cat", sd2)[0].tolist()
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[7:] == [0] * 70
    long = token_ids("cat " * 200, sd1)[0].tolist()
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407 and long[1:76] == [2368] * 75


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_single_file_loads_the_exact_weights(tiny, family):
    config_dir, path, modules = tiny[family]
    model = load_sd_model(path, config_dir=config_dir)
    assert model.family == family and model.prediction_type == "epsilon"
    for original, loaded in zip(modules, (model.unet, model.vae, model.text_encoder)):
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def _engine_by_hand(modules, lr, scale, prediction, pad_id, vae_sample_seed=None):
    """encode -> UNet(t=999) -> x0 -> decode -> crop -> AdaIN, with the diffusers modules directly."""
    unet, vae, text = modules
    h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
    ref = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    x = F.pad(ref, (0, -w % 8, 0, -h % 8), mode="reflect") * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * 0.18215
        ids = torch.tensor([[49406, 49407] + [pad_id] * 75])
        ctx = text(ids)[0]
        out = unet(z, 999, encoder_hidden_states=ctx).sample
        a = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)[999].item()
        x0 = (z - (1 - a) ** 0.5 * out) / a ** 0.5 if prediction == "epsilon" else a ** 0.5 * z - (1 - a) ** 0.5 * out
        img = ((vae.decode(x0 / 0.18215).sample.clamp(-1, 1) + 1) / 2)[..., :h, :w]
    mu_s, mu_r = img.mean((-2, -1), keepdim=True), ref.mean((-2, -1), keepdim=True)
    sd_s = (img.var((-2, -1), keepdim=True) + 1e-5).sqrt()
    sd_r = (ref.var((-2, -1), keepdim=True) + 1e-5).sqrt()
    return ((img - mu_s) / sd_s * sd_r + mu_r).clamp(0, 1)


@pytest.mark.parametrize("family,prediction", [("sd1", "epsilon"), ("sd2", "v_prediction"), ("sd2", "epsilon")])
def test_engine_equals_hand_written_one_step(tiny, engines, family, prediction):
    engine = engines(family, prediction)
    lr = _lr(17, 19)                                   # 68 x 76 output: padded to 72 x 80
    expected = _engine_by_hand(tiny[family][2], lr, 4, prediction, engine.model.prompt["pad_token_id"])
    out = engine.upscale_tensor(lr, scale=4)
    assert out.shape == (1, 3, 68, 76)
    assert torch.allclose(out, expected, atol=ENGINE_ATOL), (out - expected).abs().max()


def test_eps_and_v_give_different_results(engines):
    lr = _lr(8, 8)
    assert not torch.allclose(engines("sd2", "epsilon").upscale_tensor(lr, color_fix="none"),
                              engines("sd2", "v_prediction").upscale_tensor(lr, color_fix="none"))


def test_tiling(engines):
    engine = engines("sd1")
    lr = _lr(24, 20, seed=2)                           # 96 x 80 output, latent 12 x 10
    whole = engine.upscale_tensor(lr, tile=96)
    assert torch.equal(engine.upscale_tensor(lr, tile=12, overlap=4), whole)   # one tile covers it
    progress = []
    tiled = engine.upscale_tensor(lr, tile=8, overlap=4, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.isfinite(tiled).all() and tiled.shape == whole.shape
    # The tiny random UNet (attention over each 8 x 8 tile) is far from local, so tiled and untiled
    # differ clearly here (measured mean 0.14); only a loose bound is meaningful for it.
    assert (tiled - whole).abs().mean() < TILED_MEAN_TOL


def test_tiled_prediction_is_the_gaussian_blend_of_tile_predictions(engines):
    engine = engines("sd1")
    latent = engine.encode(formulas.pad_to_multiple(_lr(96, 80, seed=4))[0])      # 12 x 10
    ctx = engine.text_embedding("")
    boxes = [(0, 8, 0, 8), (0, 8, 2, 10), (4, 12, 0, 8), (4, 12, 2, 10)]
    acc, wsum = torch.zeros_like(latent, dtype=torch.float64), torch.zeros(12, 10, dtype=torch.float64)
    for y0, y1, x0, x1 in boxes:
        g = torch.exp(-((torch.arange(8.0, dtype=torch.float64) - 3.5) ** 2) / 64 / 0.02)
        w = g[:, None] * g[None, :]
        with torch.no_grad():
            eps = engine.model.unet(latent[..., y0:y1, x0:x1], 999, encoder_hidden_states=ctx).sample
        acc[..., y0:y1, x0:x1] += eps * w
        wsum[y0:y1, x0:x1] += w
    a = formulas.abar_at(999)
    expected = (latent - (1 - a) ** 0.5 * (acc / wsum).float()) / a ** 0.5
    got = engine.predict_x0(latent, tile=8, overlap=4)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale,size", [(2, (14, 10)), (4, (28, 20)), (1.5, (10, 8)), (3, (21, 15))])
def test_output_size_any_scale_and_odd_input(engines, scale, size):
    out = engines("sd1").upscale_tensor(_lr(7, 5), scale=scale)
    assert tuple(out.shape[-2:]) == size and out.min() >= 0 and out.max() <= 1


def test_image_kinds_round_trip(engines):
    engine = engines("sd1")
    rgba = Image.fromarray((np.random.default_rng(0).random((9, 7, 4)) * 255).astype(np.uint8), "RGBA")
    out = engine.upscale(rgba, scale=2)
    assert isinstance(out, Image.Image) and out.mode == "RGBA" and out.size == (14, 18)
    grey = engine.upscale(np.full((6, 5), 0.5, np.float32), scale=2)
    assert grey.shape == (12, 10) and grey.dtype == np.float32
    batch = engine.upscale(torch.rand(2, 3, 6, 6), scale=2, color_fix="wavelet")
    assert batch.shape == (2, 3, 12, 12)


def test_prompt_and_vae_sample_change_the_output(engines):
    engine, lr = engines("sd1"), _lr(8, 8)
    base = engine.upscale_tensor(lr, color_fix="none")
    assert not torch.equal(engine.upscale_tensor(lr, prompt="a photo of a cat", color_fix="none"), base)
    s1 = engine.upscale_tensor(lr, vae_sample=True, seed=5, color_fix="none")
    assert torch.equal(s1, engine.upscale_tensor(lr, vae_sample=True, seed=5, color_fix="none"))
    assert not torch.equal(s1, base)
    assert not torch.equal(s1, engine.upscale_tensor(lr, vae_sample=True, seed=6, color_fix="none"))
    with pytest.raises(ValueError, match="colour fix"):
        engine.upscale_tensor(lr, color_fix="histogram")
    with pytest.raises(ValueError, match="scale"):
        engine.upscale_tensor(lr, scale=0)
    # the option rules of onestep_sr.options (issue 18 items 4 and 10): a sentence, never torch's overflow
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 18446744073709551615"):
        engine.upscale_tensor(lr, vae_sample=True, seed=2**64)
    with pytest.raises(ValueError, match="tile must be a whole number of latent pixels, at least 8, got 4"):
        engine.upscale_tensor(lr, tile=4, overlap=0)
    with pytest.raises(ValueError, match=r"scale must be a number in \(0, 64\].*got True"):
        engine.upscale_tensor(lr, scale=True)


def test_diffusers_folder_loads(tiny, engines, tmp_path):
    import json

    unet, vae, text = tiny["sd2"][2]
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.save_pretrained(tmp_path / name)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    engine = SDOneStepSR.from_checkpoint(tmp_path)
    assert engine.model.family == "sd2" and engine.prediction_type == "v_prediction"
    lr = _lr(8, 8)
    assert torch.allclose(engine.upscale_tensor(lr), engines("sd2", "v_prediction").upscale_tensor(lr), atol=1e-6)


def test_kohya_lora_is_merged(tiny, tmp_path):
    config_dir, path, (unet, vae, _) = tiny["sd1"]
    g = torch.Generator().manual_seed(9)
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    down, up = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)
    save_file({f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up,
               f"{prefix}.alpha": torch.tensor(4.0)}, str(tmp_path / "style.safetensors"))
    vae_down, vae_up = torch.randn(1, 8, 1, 1, generator=g), torch.randn(8, 1, 1, 1, generator=g)
    save_file({"quant_conv.lora_down.weight": vae_down, "quant_conv.lora_up.weight": vae_up},
              str(tmp_path / "style_vae.safetensors"))
    engine = SDOneStepSR.from_checkpoint(path, config_dir=config_dir, lora=tmp_path / "style.safetensors",
                                         lora_strength=0.5)
    merged = engine.model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    original = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert torch.allclose(merged, original + 0.5 * 4.0 / 2 * up @ down, atol=1e-6)
    expected_vae = vae.quant_conv.weight + 0.5 * (vae_up.flatten(1) @ vae_down.flatten(1))[..., None, None]
    assert torch.allclose(engine.model.vae.quant_conv.weight, expected_vae, atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_prediction_type_detection(tiny):
    state = load_file(str(tiny["sd1"][1]))
    assert detect_prediction_type(state, {}, "sd1") == "epsilon"
    assert detect_prediction_type({**state, "v_pred": torch.zeros(())}, {}, "sd1") == "v_prediction"
    assert detect_prediction_type(state, {"modelspec.prediction_type": "v"}, "sd2") == "v_prediction"
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    spread = torch.linspace(-1, 1, 64)
    assert detect_prediction_type({key: spread}, {}, "sd2") == "v_prediction"
    assert detect_prediction_type({key: spread * 0.01}, {}, "sd2") == "epsilon"


def test_bad_files_give_clear_errors(tiny, tmp_path):
    config_dir, path, _ = tiny["sd1"]
    state = load_file(str(path))

    def write(name, tensors):
        save_file(tensors, str(tmp_path / name))
        return tmp_path / name

    with pytest.raises(CheckpointError, match="model.diffusion_model"):
        load_sd_model(write("other.safetensors", {"weight": torch.zeros(2)}), config_dir=config_dir)
    with pytest.raises(CheckpointError, match="SDXL"):
        load_sd_model(write("xl.safetensors", {**state, "conditioner.embedders.0.x": torch.zeros(1)}))
    missing_key = "model.diffusion_model.out.2.bias"
    with pytest.raises(CheckpointError, match="missing key.*conv_out.bias"):
        load_sd_model(write("cut.safetensors", {k: v for k, v in state.items() if k != missing_key}),
                      config_dir=config_dir)
    with pytest.raises(CheckpointError, match="SD 2.x text encoder|text encoder"):
        load_sd_model(path, family="sd2", config_dir=config_dir)            # wrong family
    with pytest.raises(CheckpointError, match="wrong size|wrong family"):
        load_sd_model(path, family="sd1", config_dir=tiny["sd2"][0])        # wrong config
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
        load_sd_model(tmp_path / "broken.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_sd_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="no unet/config.json"):
        load_sd_model(tmp_path)
    with pytest.raises(ValueError, match="family"):
        load_sd_model(path, family="sd3")
    with pytest.raises(CheckpointError, match="config file not found"):
        load_sd_model(path, config_dir=tmp_path / "nowhere")


def test_ckpt_pickle_loads_with_weights_only(tiny, tmp_path):
    config_dir, path, modules = tiny["sd1"]
    torch.save({"state_dict": load_file(str(path))}, tmp_path / "model.ckpt")
    model = load_sd_model(tmp_path / "model.ckpt", config_dir=config_dir)
    assert torch.equal(model.unet.conv_in.weight, modules[0].conv_in.weight)


def test_import_does_not_pull_diffusers():
    code = ("import sys, onestep_sr, onestep_sr.sd, onestep_sr.sd.formulas, onestep_sr.sd.onestep; "
            "bad = [m for m in ('diffusers', 'transformers', 'peft', 'torchvision') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
