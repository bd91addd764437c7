"""The restoration-strength knob (issue 28): deep network interpolation between the bundled clean
and restoration weight sets, exact at the ends and linear per tensor; the measures auto reads
against hand computations; auto's choice on a clean and a noisy photo; the option's errors in
the engine and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import SHARED
from onestep_sr import OptionError, load_model
from onestep_sr.cli import main as cli_main
from onestep_sr.model import BUNDLED_MODELS, BUNDLED_RESTORATION
from onestep_sr.onefile import HEADER_KEY
from onestep_sr.strength import (StrengthKnob, auto_strength, blockiness, check_strength, interpolate, measure,
                                 noise_sigma)
from training.common.degradations import add_gaussian_noise, bicubic_degrade, jpeg
from training.common.evaluate import load_rgb

CLEAN, RESTORATION = BUNDLED_MODELS["onestep_default"], BUNDLED_RESTORATION["onestep_default"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(tmp_path / "empty_models"))


@pytest.fixture(scope="module")
def photo_lr() -> torch.Tensor:
    return bicubic_degrade(load_rgb(SHARED / "images" / "val" / "chelsea.png", 4), 4)


def test_interpolation_is_exact_at_the_ends_and_linear_per_tensor():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "i": torch.arange(3)}
    b = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "i": torch.arange(3) + 7}
    assert all(torch.equal(interpolate(a, b, 0.0)[k], a[k]) for k in a)
    assert all(torch.equal(interpolate(a, b, 1.0)[k], b[k]) for k in ("w", "b"))
    mid = interpolate(a, b, 0.3)
    for k in ("w", "b"):
        assert torch.allclose(mid[k], 0.7 * a[k] + 0.3 * b[k], atol=1e-7)
    assert torch.equal(mid["i"], a["i"])  # indices are not interpolated
    with pytest.raises(ValueError, match="w: shape"):
        interpolate(a, {**b, "w": torch.zeros(2, 2)}, 0.5)
    with pytest.raises(ValueError, match="differ in their keys"):
        StrengthKnob(a, {"w": b["w"]})


def test_the_bundled_model_has_both_ends_and_they_are_its_two_files():
    assert RESTORATION.is_file()
    assert CLEAN.stat().st_size + RESTORATION.stat().st_size <= 20 * 2**20
    model = load_model(device="cpu")
    clean, restoration = ({k: v for k, v in load_file(f).items() if k != HEADER_KEY}  # the header copy is no weight
                          for f in (CLEAN, RESTORATION))
    assert model.knob is not None and model.strength == "auto"
    for strength, expected in ((0.0, clean), (1.0, restoration)):
        model.upscale(np.zeros((8, 8, 3), np.uint8), strength=strength)
        state = model.denoiser.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected), strength
    differing = [k for k in clean if clean[k].is_floating_point() and not torch.equal(clean[k], restoration[k])]
    assert len(differing) > len(clean) // 2  # the fine-tune moved most tensors
    model.upscale(np.zeros((8, 8, 3), np.uint8), strength=0.25)
    state = model.denoiser.state_dict()
    for k in differing:
        assert torch.allclose(state[k], 0.75 * clean[k] + 0.25 * restoration[k], atol=1e-6)
    assert model.last_strengths == [0.25]


def test_noise_sigma_follows_donohos_rule_on_pure_noise():
    rng = np.random.default_rng(0)
    flat = np.full((256, 256), 120.0)
    for sigma in (2.0, 8.0, 20.0):
        estimate = noise_sigma(flat + rng.normal(0, sigma, flat.shape))
        assert abs(estimate - sigma) < 0.05 * sigma
    assert noise_sigma(flat) == 0.0


def test_blockiness_is_one_without_blocks_and_large_with_them():
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))
    assert blockiness(ramp) == pytest.approx(1.0)
    blocks = np.kron(np.random.default_rng(1).uniform(0, 255, (8, 8)), np.ones((8, 8))) + ramp * 0.1
    assert blockiness(blocks) > 10


def test_auto_picks_low_for_a_clean_photo_and_high_for_the_same_photo_with_noise(photo_lr):
    noisy = add_gaussian_noise(photo_lr, 8 / 255.0, False, np.random.default_rng(0))
    clean_s, noisy_s = auto_strength(photo_lr), auto_strength(noisy)
    assert clean_s <= 0.25 and noisy_s >= 0.6, (measure(photo_lr), measure(noisy))
    assert auto_strength(jpeg(photo_lr, 40)) > clean_s  # JPEG blocks raise it too
    model = load_model(device="cpu")
    model.upscale(torch.stack([photo_lr, noisy]))  # a batch: one strength per image
    assert model.last_strengths == [clean_s, noisy_s]


def test_strength_option_errors_name_the_option():
    assert check_strength("AUTO") == "auto" and check_strength("0.5") == 0.5 and check_strength(1) == 1.0
    for bad in (1.5, -0.1, "strong", True, None):
        with pytest.raises(OptionError, match="strength"):
            check_strength(bad)
    with pytest.raises(OptionError, match="strength"):
        load_model(device="cpu", strength=2)
    with pytest.raises(OptionError, match="strength"):
        load_model(device="cpu").upscale(np.zeros((4, 4, 3), np.uint8), strength="x")


def test_a_model_with_one_weight_set_accepts_auto_only(tmp_path):
    model = load_model(str(CLEAN.resolve()), device="cpu", restoration=None)
    model.knob = None  # what any other model (one weight set) is
    out = model.upscale(np.zeros((4, 4, 3), np.uint8), strength="auto")
    assert out.shape == (16, 16, 3) and model.last_strengths == [None]
    with pytest.raises(OptionError, match="one weight set"):
        model.upscale(np.zeros((4, 4, 3), np.uint8), strength=0.5)


def test_the_cli_reports_the_strength_and_refuses_a_bad_one(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(np.full((12, 10, 3), 90, np.uint8)).save(src)
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "a.png"), "--strength", "0.5"]) == 0
    assert "strength 0.5" in capsys.readouterr().out
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "b.png")]) == 0
    assert "(auto)" in capsys.readouterr().out
    assert cli_main(["upscale", str(src), "-o", str(tmp_path / "c.png"), "--strength", "2"]) == 2
    err = capsys.readouterr().err
    assert "--strength" in err and "Traceback" not in err and not (tmp_path / "c.png").exists()


def test_the_latent_stages_apply_the_strength_like_upscale(photo_lr):
    """Encode -> sample -> decode (ComfyUI's three-node path) uses the knob as upscale does: the
    same strength (auto measured on the latent's LR image) and so the same image, whatever the
    model ran before."""
    model = load_model(device="cpu")
    noisy = add_gaussian_noise(photo_lr, 8 / 255.0, False, np.random.default_rng(0))[None]
    direct = model.upscale(noisy)
    expected_strengths = model.last_strengths
    model.upscale(noisy, strength=0.0)  # leaves other weights loaded
    staged = model.decode(model.sample(model.encode(noisy)))
    assert model.last_strengths == expected_strengths and expected_strengths[0] > 0
    assert torch.allclose(staged, direct, atol=1e-5)
    model.decode(model.sample(model.encode(noisy), strength=1.0))
    assert model.last_strengths == [1.0]


def test_the_weight_cache_is_bounded_by_count_and_bytes(monkeypatch):
    import onestep_sr.strength as S

    a, b = {"w": torch.zeros(256)}, {"w": torch.ones(256)}  # 1 KiB per set
    knob = StrengthKnob(a, b)
    for i in range(12):
        knob.weights(i / 20)
    assert list(knob.cache) == [i / 20 for i in range(4, 12)]  # the last CACHE_SIZE
    monkeypatch.setattr(S, "CACHE_BYTES", 3 * 1024)
    knob.weights(0.9)
    assert list(knob.cache) == [0.5, 0.55, 0.9] and torch.allclose(knob.weights(0.9)["w"], torch.full((256,), 0.9))
