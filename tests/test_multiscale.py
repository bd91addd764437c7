"""simple diffusion's multiscale loss for our x0 students (training/resshift/losses.py) against a
hand computation with numpy block means, and its switch in the trainer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.resshift.losses import MULTISCALE_FACTORS, MULTISCALE_WEIGHTS, multiscale_mse, per_sample_mse


def _block_mean(image: np.ndarray, f: int) -> np.ndarray:
    c, h, w = image.shape
    return image.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def _by_hand(a: np.ndarray, b: np.ndarray, factors, weights) -> float:
    terms = [w * np.mean((_block_mean(a, f) - _block_mean(b, f)) ** 2) for f, w in zip(factors, weights)]
    return sum(terms) / sum(weights)


def test_weights_sum_to_one_grow_with_the_factor_and_keep_0_4_at_full_resolution():
    assert sum(MULTISCALE_WEIGHTS) == pytest.approx(1.0) and MULTISCALE_WEIGHTS[0] == 0.4
    assert list(MULTISCALE_WEIGHTS[1:]) == sorted(MULTISCALE_WEIGHTS[1:])


def test_pixel_latents_are_pooled_as_images_and_match_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 48, 8, 8, generator=g), torch.randn(2, 48, 8, 8, generator=g)
    got = multiscale_mse(4)(a, b)
    images_a = torch.nn.functional.pixel_shuffle(a, 4).numpy()
    images_b = torch.nn.functional.pixel_shuffle(b, 4).numpy()
    for i in range(2):
        expected = _by_hand(images_a[i], images_b[i], MULTISCALE_FACTORS, MULTISCALE_WEIGHTS)
        assert float(got[i]) == pytest.approx(expected, rel=1e-5)
    # a uniform colour shift costs its full square at every scale, detail noise mostly at full resolution
    shift = multiscale_mse(4)(a + 0.5, a)
    assert torch.allclose(shift, torch.full((2,), 0.25), rtol=1e-5)
    detail = torch.randn(2, 48, 8, 8, generator=g) * 0.5
    assert bool((multiscale_mse(4)(a + detail, a) < per_sample_mse(a + detail, a)).all())


def test_factors_the_size_cannot_hold_are_skipped_and_the_rest_renormalised():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    expected = _by_hand(a[0].numpy(), b[0].numpy(), MULTISCALE_FACTORS[:3], MULTISCALE_WEIGHTS[:3])
    assert float(multiscale_mse(1)(a, b)[0]) == pytest.approx(expected, rel=1e-5)


def test_the_trainer_switch(tmp_path):
    from PIL import Image

    from training.cli import main as train_main
    from training.resshift.trainer import Run, TrainConfig

    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    options = dict(mode="resshift", data=str(folder), gt_size=32, batch_size=2, arch="compact", degradation="bicubic")
    plain = Run(TrainConfig(out=str(tmp_path / "plain"), **options))
    multi = Run(TrainConfig(out=str(tmp_path / "multi"), multiscale_loss=True, **options))
    assert plain.mse is per_sample_mse and multi.mse is not per_sample_mse
    batch = next(iter(multi.loader))
    assert not torch.allclose(plain.losses(batch, 0)["total"], multi.losses(batch, 0)["total"])
    assert train_main(["resshift", "--data", str(folder), "--out", str(tmp_path / "cli"), "--gt-size", "32",
                       "--batch-size", "2", "--steps", "1", "--arch", "compact", "--degradation", "bicubic",
                       "--multiscale-loss", "--no-progress"]) == 0
    assert '"multiscale_loss": true' in (tmp_path / "cli" / "config.json").read_text()
