"""``load_model`` / ``OneStepSR.upscale``: weights resolution, every image kind, options, and the
fallbacks (out of memory -> smaller tiles; NaN in fp16 -> fp32)."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from onestep_sr import OneStepSR, OutOfMemoryError, SRLatent, load_model, options
from onestep_sr.colorfix import color_fix
from onestep_sr.download import WeightsUnavailableError
from onestep_sr.imageio import resize_array
from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser
from onestep_sr.pipeline import model_to_uint8, super_resolve, tile_counts, uint8_to_model
from onestep_sr.registry import UnknownModelError
from onestep_sr.schedule import SCHEDULE_T4


@pytest.fixture(scope="module")
def model(goldens):
    return load_model((goldens / "unet.safetensors", goldens / "vq.safetensors"), device="cpu")


@pytest.fixture(scope="module")
def lr_image(goldens):
    return Image.open(goldens / "pipeline_lr.png").convert("RGB")  # 56 x 40


def _small(seed: int, h: int = 24, w: int = 20, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


# --- loading -----------------------------------------------------------------------------------


def test_pair_dict_and_registry_names_load_the_same_model(tmp_path, goldens, model):
    models = tmp_path / "models"
    models.mkdir()
    torch.save(load_file(str(goldens / "unet.safetensors")), models / "SinSR_v1.pth")
    torch.save(load_file(str(goldens / "vq.safetensors")), models / "autoencoder_vq_f4.pth")
    by_name = load_model("sinsr_v1", device="cpu", models_dir=models, offline=True)
    by_dict = load_model({"denoiser": goldens / "unet.safetensors", "autoencoder": "vq_f4"}, device="cpu",
                         models_dir=models, offline=True)
    assert by_name.name == "sinsr_v1" and by_name.sampler == "one_step" and by_name.schedule.steps == 15
    for loaded in (by_name, by_dict):
        for a, b in zip(loaded.denoiser.state_dict().values(), model.denoiser.state_dict().values()):
            assert torch.equal(a, b)
        assert torch.equal(loaded.autoencoder.quantize.embedding.weight, model.autoencoder.quantize.embedding.weight)


def test_a_multi_step_registry_model_brings_its_schedule_and_sampler(tmp_path, goldens):
    torch.save(load_file(str(goldens / "unet.safetensors")), tmp_path / "resshift_realsrx4_s4_v3.pth")
    torch.save(load_file(str(goldens / "vq.safetensors")), tmp_path / "autoencoder_vq_f4.pth")
    v3 = load_model("resshift_v3", device="cpu", models_dir=tmp_path, offline=True)
    assert v3.schedule == SCHEDULE_T4 and not v3.schedule.clamp_start  # journal code: no sqrt(0.001) clamp
    assert v3.plan().sampler == "stochastic" and v3.plan(steps=1).sampler == "one_step"
    calls = []
    v3.upscale(_small(18, 8, 8), progress=lambda done, total: calls.append(total))
    assert calls[-1] == 2 + 4  # VQ encode + decode, and the 4 steps of the original sampler


def test_loading_errors_are_clear(tmp_path, goldens):
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*sinsr_v1"):
        load_model("nope", device="cpu")
    with pytest.raises(WeightsUnavailableError, match=r"download https://github.com/wyf0912/SinSR/.*SinSR_v1.pth"):
        load_model("sinsr_v1", device="cpu", models_dir=tmp_path, offline=True)
    with pytest.raises(ValueError, match="vq_f4 is an autoencoder, not a denoiser"):
        load_model("vq_f4", device="cpu", models_dir=tmp_path, offline=True)
    with pytest.raises(ValueError, match="unknown schedule"):
        load_model((goldens / "unet.safetensors", goldens / "vq.safetensors"), schedule="T7")


def test_a_model_spec_of_the_wrong_type_is_an_option_error_naming_the_argument():
    import onestep_sr

    for spec, option in [(123, "name_or_paths"), (None, "name_or_paths"), (("onestep_default", 4.5), "autoencoder"),
                         ({"denoiser": b"x.pth"}, "name_or_paths")]:
        with pytest.raises(onestep_sr.OptionError, match=rf"^{option} must be a model name or a checkpoint path") as err:
            load_model(spec, device="cpu", offline=True)
        assert err.value.option == option


def test_offline_an_official_model_names_every_missing_file_and_the_folder_to_create(tmp_path, goldens):
    folder = tmp_path / "models"
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("sinsr_v1", device="cpu", models_dir=folder, offline=True)
    message = str(err.value)
    for file, url in [("SinSR_v1.pth", "https://github.com/wyf0912/SinSR/releases/download/v1.0/SinSR_v1.pth"),
                      ("autoencoder_vq_f4.pth",
                       "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/autoencoder_vq_f4.pth")]:
        assert f"download {url} and save it as {folder / file}" in message
    assert f"The folder {folder} does not exist yet: create it first" in message and not folder.exists()
    folder.mkdir()
    torch.save(load_file(str(goldens / "unet.safetensors")), folder / "SinSR_v1.pth")
    with pytest.raises(WeightsUnavailableError) as err:  # only what is still missing, and whose it is
        load_model("sinsr_v1", device="cpu", models_dir=folder, offline=True)
    assert "sinsr_v1 also needs its autoencoder vq_f4: vq_f4 (autoencoder_vq_f4.pth) is not in" in str(err.value)
    assert "SinSR_v1.pth and save" not in str(err.value) and "create it" not in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="SinSR_v1.pth and save"):  # a local autoencoder: one file
        load_model(("sinsr_v1", goldens / "vq.safetensors"), device="cpu", models_dir=tmp_path / "x", offline=True)


# --- results -----------------------------------------------------------------------------------


def test_upscale_equals_the_official_pipeline_for_every_kind(model, lr_image):
    lr = np.array(lr_image)
    with torch.no_grad():
        expected = model_to_uint8(super_resolve(uint8_to_model(lr), model.denoiser, model.autoencoder,
                                                model.schedule, torch.Generator().manual_seed(5)))
    out_pil = model.upscale(lr_image, seed=5)
    assert isinstance(out_pil, Image.Image) and out_pil.mode == "RGB" and out_pil.size == (224, 160)
    assert np.array_equal(np.asarray(out_pil), expected)
    out_np = model.upscale(lr, seed=5)
    assert out_np.dtype == np.uint8 and np.array_equal(out_np, expected)
    tensor = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
    out_t = model.upscale(tensor, seed=5)
    assert out_t.shape == (3, 160, 224) and out_t.dtype == torch.float32
    assert (out_t * 255 - torch.from_numpy(expected).permute(2, 0, 1)).abs().max() <= 0.5 + 1e-3


def test_same_seed_same_result_other_seed_other_result(model):
    image = _small(0)
    a, b, c = (model.upscale(image, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (3, 70)])
def test_tiny_and_thin_images(model, size):
    h, w = size
    out = model.upscale(_small(3, h, w))
    assert out.shape == (4 * h, 4 * w, 3)


def test_alpha_is_upscaled_separately_and_reattached(model):
    rgba = _small(4, channels=4)
    out = model.upscale(Image.fromarray(rgba, "RGBA"), seed=7)
    assert out.mode == "RGBA" and out.size == (80, 96)
    rgb_only = model.upscale(Image.fromarray(rgba[..., :3], "RGB"), seed=7)
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(rgb_only))
    alpha = torch.from_numpy(rgba[..., 3]).float().div(255)[None, None]
    up = torch.nn.functional.interpolate(alpha, scale_factor=4, mode="bicubic").clamp(0, 1)
    expected = torch.round(up * 255)[0, 0].to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(out)[..., 3], expected)


@pytest.mark.parametrize("scale, size", [(2, (40, 48)), (3, (60, 72)), (2.5, (50, 60)), (6, (120, 144))])
def test_other_scales_resize_the_x4_result_with_lanczos(model, scale, size):
    image = _small(5)
    out = model.upscale(image, scale=scale, seed=1)
    assert out.shape == (size[1], size[0], 3)
    assert np.array_equal(out, resize_array(model.upscale(image, seed=1), size))


@pytest.mark.parametrize("mode", ["adain", "wavelet"])
def test_color_fix_pulls_colours_towards_the_input(model, mode):
    image = _small(6, 32, 32)
    raw = model.upscale(image, seed=1)
    fixed = model.upscale(image, seed=1, color_fix=mode)
    ref = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                                          scale_factor=4, mode="bicubic").clamp(0, 1)
    expected = color_fix(torch.from_numpy(raw).permute(2, 0, 1)[None].float() / 255, ref, mode)
    expected = torch.round(expected * 255)[0].permute(1, 2, 0).numpy()
    assert np.abs(fixed.astype(int) - expected.astype(int)).max() <= 1
    ref_mean = ref[0].mean(dim=(1, 2)).numpy() * 255
    assert np.abs(fixed.mean(axis=(0, 1)) - ref_mean).sum() < np.abs(raw.mean(axis=(0, 1)) - ref_mean).sum()


def test_tiled_result_differs_but_stays_complete(model):
    image = _small(8, 60, 100)
    untiled = model.upscale(image, tile=128, vq_tile=128)
    tiled = model.upscale(image, tile=64, overlap=16, vq_tile=48)
    assert tiled.shape == untiled.shape == (240, 400, 3)
    assert not np.array_equal(tiled, untiled)  # tiling really happened (random nets: no quality claim)


def test_batched_tensor_equals_images_one_by_one(model):
    batch = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    out = model.upscale(batch, seed=4)
    assert out.shape == (2, 3, 64, 96)
    for i in range(2):
        assert torch.equal(out[i], model.upscale(batch[i], seed=4))


def test_multi_step_samplers_and_step_checks(goldens):
    m = load_model((goldens / "unet.safetensors", goldens / "vq.safetensors"), device="cpu", schedule=SCHEDULE_T4)
    image = _small(9, 16, 16)
    one, det, sto = m.upscale(image, steps=1), m.upscale(image, steps=4), m.upscale(image, steps=4, stochastic=True)
    assert not np.array_equal(one, det) and not np.array_equal(det, sto)
    with pytest.raises(ValueError, match="steps must be 1 .* or 4"):
        m.upscale(image, steps=3)
    with pytest.raises(ValueError, match="needs steps=4"):
        m.upscale(image, stochastic=True)
    with pytest.raises(ValueError, match="color_fix must be one of none, adain, wavelet, got 'sepia'"):
        m.upscale(image, color_fix="sepia")
    with pytest.raises(ValueError, match="tile must be .* at least 64 .*got 32"):
        m.upscale(image, tile=32)


# --- option rules (issue 18 items 4 and 10): refused with a sentence, never rounded -------------


@pytest.mark.parametrize("option, message", [
    (dict(seed=2**64), r"seed must be a whole number from 0 to 18446744073709551615 \(2\*\*64 - 1\), "
                       r"got 18446744073709551616"),   # was torch's "Overflow when unpacking long long"
    (dict(seed=-1), "seed must be a whole number from 0 to .*got -1"),
    (dict(seed="text"), "seed must be a whole number .*got 'text'"),   # was a raw torch error
    (dict(scale=True), r"scale must be a number in \(0, 64\].*got True"),  # bool is an int in Python
    (dict(tile=256.0), "tile must be a whole number .*got 256.0"),
    (dict(tile=100), "tile must be .* a multiple of 64 for this model, got 100; use 64 or 128"),  # was rounded to 64
    (dict(overlap=64, tile=64), r"overlap must be .* \(smaller than the tile 64\), got 64"),
    (dict(vq_tile=1), "vq_tile must be a whole number of input pixels, at least 16, got 1"),  # ran for minutes
    (dict(steps=True), "steps must be a whole number.*got True"),
    (dict(stochastic="yes"), "stochastic must be True, False or None"),
    (dict(dtype="fp8"), "dtype must be one of fp32, fp16, bf16"),
])
def test_option_rules_refuse_before_any_compute(model, option, message):
    calls = []
    with pytest.raises(options.OptionError, match=message):
        model.upscale(_small(1, 3, 5), progress=lambda done, total: calls.append(done), **option)
    assert calls == []
    with pytest.raises(options.OptionError, match=message):   # hosts ask first, with the same words
        model.check_options(**option)


def test_option_values_are_used_as_given():
    bundled = load_model(device="cpu")              # no windowed attention: any tile of at least 64
    job = bundled.plan(tile=100, overlap=7, vq_tile=16, seed=2**64 - 1, scale=2)
    assert (job.tiling.tile, job.tiling.overlap, job.tiling.vq_tile, job.seed, job.scale) == (100, 7, 16, 2**64 - 1, 2.0)
    assert bundled.upscale(_small(3, 5, 3), seed=2**64 - 1, vq_tile=16, tile=100, scale=2).shape == (10, 6, 3)


def test_fp16_on_a_cpu_warns_that_it_is_slow(caplog):
    model = load_model(device="cpu", dtype="fp16")
    with caplog.at_level(logging.WARNING, logger="onestep_sr"):
        model.upscale(_small(4, 3, 5))
        model.upscale(_small(4, 3, 5))
    warned = [r.getMessage() for r in caplog.records if "slower than fp32" in r.getMessage()]
    assert warned == [f"OneStep SR: {options.slow_precision(torch.float16, 'cpu')}"]   # once per model
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onestep_sr"):
        load_model(device="cpu").upscale(_small(4, 3, 5))
    assert not [r for r in caplog.records if "slower" in r.getMessage()]


def test_progress_counts_every_network_call_and_can_cancel(model):
    image = _small(10, 40, 70)
    seen = []
    model.upscale(image, tile=64, overlap=16, vq_tile=48, progress=lambda done, total: seen.append((done, total)))
    vq, den = tile_counts((40, 70), model.plan(tile=64, overlap=16, vq_tile=48).tiling, 64)
    assert vq > 1 and den > 1  # really tiled
    ticks = [s for prev, s in zip([(0, 0)] + seen, seen) if s[0] != prev[0]]  # repeats: cancel points in a call
    assert ticks == [(i, 2 * vq + den) for i in range(1, 2 * vq + den + 1)]

    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    with pytest.raises(Stop):
        model.upscale(image, progress=cancel)
    assert model.upscale(_small(0), seed=1).shape == (96, 80, 3)  # still usable


# --- fallbacks ---------------------------------------------------------------------------------


class _OomAbove:
    """Wraps a denoiser: raises out-of-memory for latent tiles larger than ``limit``."""

    def __init__(self, denoiser, limit, error):
        self.inner, self.limit, self.error, self.sizes = denoiser, limit, error, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, lq):
        self.sizes.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise self.error
        return self.inner(x, t, lq)


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")])
def test_out_of_memory_halves_the_tiles_and_retries(model, caplog, error):
    image = _small(11, 30, 100)
    expected = model.upscale(image, tile=64, vq_tile=64, seed=2)
    flaky = OneStepSR(_OomAbove(model.denoiser, 64, error), model.autoencoder, model.schedule)
    with caplog.at_level(logging.WARNING, logger="onestep_sr"):
        out = flaky.upscale(image, tile=128, vq_tile=128, seed=2)
    assert "retrying with 64 / 64" in caplog.text
    assert flaky.denoiser.sizes == [(64, 128)] + [(64, 64)] * 3 and np.array_equal(out, expected)


class _OomAlways:
    """An autoencoder that runs out of memory on every encode."""

    def __init__(self, autoencoder):
        self.inner, self.calls = autoencoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, image):
        self.calls += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")


def test_out_of_memory_at_the_smallest_tiles_is_a_clear_error(model):
    always = OneStepSR(model.denoiser, _OomAlways(model.autoencoder), model.schedule)
    with pytest.raises(OutOfMemoryError, match=r"out of memory upscaling a 70x30 image on cpu even with the "
                                               r"smallest tiles \(tile 64, VQ tile 16\).*Tried to allocate 9 GiB"):
        always.upscale(_small(12, 30, 70), tile=128, vq_tile=32)
    assert always.autoencoder.calls == 2  # 128 / 32, then 64 / 16: the floors


@pytest.fixture(scope="module")
def tiny(model):
    """A real but tiny denoiser (one level, latent multiple 8) with a small VQ: fp16 convolutions
    are ~100x slower than fp32 on this CPU, so fp16 tests use these on 8x8 images."""
    torch.manual_seed(0)
    config = DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=(1,),
                            attention_resolutions=(), swin_embed_dim=32, num_head_channels=16)
    autoencoder = build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64))
    return OneStepSR(build_denoiser(config).eval(), autoencoder.eval(), model.schedule)


def test_fp16_overflow_is_recomputed_in_fp32(tiny, caplog):
    model = tiny
    den16 = copy.deepcopy(model.denoiser).half()  # the VQ stays fp32
    with torch.no_grad():  # outputs around 65000 +- a few thousand: inf in fp16 (max 65504), fine in fp32
        den16.out[2].weight.mul_(3000.0)
        den16.out[2].bias.fill_(65000.0)
    overflowing = OneStepSR(den16, model.autoencoder, model.schedule)
    image = _small(13, 8, 8)
    fp32_reference = OneStepSR(copy.deepcopy(den16).float(), model.autoencoder, model.schedule)
    with caplog.at_level(logging.WARNING, logger="onestep_sr"):
        out = overflowing.upscale(image, seed=3)
    assert "NaN/Inf" in caplog.text and "recomputing in fp32" in caplog.text
    assert np.array_equal(out, fp32_reference.upscale(image, seed=3))
    # each network is back in its own dtype afterwards
    assert overflowing.dtype == torch.float16 and model.autoencoder.dtype == torch.float32


def test_per_call_dtype_leaves_the_stored_weights_untouched(tiny):
    model = tiny
    before = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    out = model.upscale(_small(14, 8, 8), dtype="fp16")
    assert out.shape == (32, 32, 3)
    assert not np.array_equal(out, model.upscale(_small(14, 8, 8)))  # really computed in fp16
    assert model.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.denoiser.state_dict().items())


@pytest.mark.parametrize("make, mode, dtype", [
    (lambda a: Image.fromarray((a[..., 0].astype(np.uint16) * 257)), "I;16", np.uint16),
    (lambda a: Image.fromarray(a).convert("P"), "RGB", np.uint8),
    (lambda a: Image.fromarray(a).convert("CMYK"), "RGB", np.uint8),
    (lambda a: Image.fromarray(a).convert("LA"), "LA", np.uint8),
])
def test_upscale_keeps_16_bit_and_handles_palette_cmyk_and_grey_alpha(model, make, mode, dtype):
    out = model.upscale(make(_small(15, 12, 10)))
    assert out.mode == mode and out.size == (40, 48)
    assert np.asarray(out).dtype == dtype
    if dtype == np.uint16:
        assert len(np.unique(np.asarray(out) % 257)) > 1  # real 16-bit values, not 8-bit ones scaled up


def test_random_seed_leaves_the_global_rng_alone(model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = model.upscale(_small(16, 8, 8), seed=None), model.upscale(_small(16, 8, 8), seed=None)
    assert torch.equal(torch.rand(3), expected)  # the host's RNG stream is untouched
    assert not np.array_equal(a, b)  # and each call drew its own noise


def test_to_moves_and_casts_both_networks(tiny):
    moved = copy.deepcopy(tiny).to("cpu", "fp16")
    assert moved.dtype == torch.float16 and moved.autoencoder.dtype == torch.float16
    assert moved.to(dtype=torch.float32).upscale(_small(17, 8, 8)).shape == (32, 32, 3)
    assert moved.device == torch.device("cpu") and tiny.dtype == torch.float32


@pytest.mark.parametrize("sampler, batch, width", [("one_step", 2, 66), ("stochastic", 1, 36)])
def test_encode_sample_decode_equals_upscale(model, sampler, batch, width):
    """The three stages a host exposes (LATENT in/out) compose to exactly upscale, tiles included."""
    steps, stochastic = (1, None) if sampler == "one_step" else (model.schedule.steps, True)
    images = np.stack([_small(3 + i, 70, width) for i in range(batch)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # channels-last strides, as from a host
    tiles = dict(tile=64, overlap=16)
    latent = model.encode(batch, vq_tile=32)
    channels = model.autoencoder.config.embed_dim
    padded = (len(batch), 128, 128 if width > 64 else 64)
    assert latent.samples.shape == (padded[0], channels, *padded[1:]) and latent.lq.shape == (padded[0], 3, *padded[1:])
    assert latent.size == (70, width)
    sampled = model.sample(latent, steps=steps, stochastic=stochastic, seed=7, **tiles)
    staged = model.decode(sampled, vq_tile=32)
    direct = model.upscale(batch, steps=steps, stochastic=stochastic, seed=7, vq_tile=32, **tiles)
    assert staged.shape == direct.shape == (len(batch), 3, 280, 4 * width)
    assert torch.equal(staged, direct)


def test_sample_refuses_a_latent_of_another_model(model):
    latent = model.encode(torch.rand(1, 3, 16, 16))
    channels = model.autoencoder.config.embed_dim
    sd_like = SRLatent(torch.zeros(1, channels + 1, 64, 64), latent.lq, latent.size)
    with pytest.raises(ValueError, match=rf"needs B x {channels} x H x W .*Stable Diffusion"):
        model.sample(sd_like)
    with pytest.raises(ValueError, match="does not match its LR image"):
        model.decode(SRLatent(latent.samples[..., :32], latent.lq, latent.size))


def test_a_local_denoiser_without_its_autoencoder_says_which_file_it_needs_and_where(tmp_path, goldens):
    """Offline, a checkpoint file whose VQ-f4 autoencoder is missing: the error names the model, the
    autoencoder file, its URL and the folder to save it in."""
    from onestep_sr.registry import get_entry
    models = tmp_path / "models"
    models.mkdir()
    denoiser = models / "my_sinsr.safetensors"
    denoiser.write_bytes((goldens / "unet.safetensors").read_bytes())
    with pytest.raises(WeightsUnavailableError) as err:
        load_model(denoiser, device="cpu", models_dir=models, offline=True)
    vq = get_entry("vq_f4")
    message = str(err.value)
    assert message.startswith("my_sinsr.safetensors also needs its autoencoder vq_f4")
    assert vq.url in message and str(models / vq.file) in message
