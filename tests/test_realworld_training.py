"""The restoration end's recipe (issue 28): dead-leaves data (power-law radii, covered canvas,
reproducible, resumable files), the realworld degradation mixture and the fixed val LR kinds,
and `train restore` (a one-step model fine-tuned on its one-step output against the ground truth)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, image_folder
from onestep_sr.model_info import read_model_info
from training.common import dead_leaves as DL
from training.common.degradations import bicubic_degrade, jpeg
from training.common.realworld import LR_KINDS, MIXTURES, degrade_realworld, lr_maker

BUNDLED = REPO / "weights" / "onestep_default_x4.safetensors"


def test_power_law_radii_follow_r_to_the_minus_three():
    a, b = 2.0, 50.0
    radii = DL.power_law_radii(np.random.default_rng(0), 200_000, a, b)
    assert radii.min() >= a and radii.max() <= b
    # CDF F(r) = (a^-2 - r^-2) / (a^-2 - b^-2): the median and the 90th percentile by hand
    for q in (0.5, 0.9):
        expected = (a ** -2 - q * (a ** -2 - b ** -2)) ** -0.5
        assert np.quantile(radii, q) == pytest.approx(expected, rel=0.01)


def test_dead_leaves_are_covered_reproducible_and_coloured_from_the_palette(tmp_path):
    palette = np.array([[200, 30, 30], [20, 180, 40], [10, 10, 220]], dtype=np.uint8)
    one = DL.dead_leaves(np.random.default_rng([0, 3]), 64, palette, texture_prob=0.0)
    assert one.shape == (64, 64, 3) and one.dtype == np.uint8
    assert np.array_equal(one, DL.dead_leaves(np.random.default_rng([0, 3]), 64, palette, texture_prob=0.0))
    # flat disks: away from edges every pixel is one of the palette's colours (none left black)
    exact = (one[:, :, None, :] == palette[None, None]).all(-1).any(-1)
    assert exact.mean() > 0.5 and not (one.sum(-1) == 0).any()
    paths = DL.write_dead_leaves(tmp_path / "dl", 3, 32, palette, seed=1)
    stamp = paths[0].stat().st_mtime_ns
    again = DL.write_dead_leaves(tmp_path / "dl", 4, 32, palette, seed=1)  # resumes: keeps the first three
    assert again[:3] == paths and paths[0].stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [f"dead_leaves_000{i}.png" for i in range(4)]


@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_the_realworld_mixtures_are_reproducible_and_include_the_clean_downscale(mixture):
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 64, 64, generator=g)
    outs = [degrade_realworld(hr, 4, np.random.default_rng(i), mixture=mixture) for i in range(40)]
    assert all(o.shape == (3, 16, 16) and 0 <= o.min() and o.max() <= 1 for o in outs)
    assert torch.equal(outs[5], degrade_realworld(hr, 4, np.random.default_rng(5), mixture=mixture))
    clean = bicubic_degrade(hr, 4)
    n_clean = sum(torch.equal(o, clean) for o in outs)
    expected = 40 * MIXTURES[mixture][0]  # 15 % (realworld) or 25 % (realworld_photo) of the draws
    assert expected / 3 <= n_clean <= expected * 2.5


def test_the_photo_mixture_never_draws_the_full_pipeline(monkeypatch):
    from training.common import realworld

    def full(*args, **kwargs):
        raise AssertionError("the full Real-ESRGAN pipeline was drawn")

    monkeypatch.setattr(realworld, "degrade", lambda hr, scale, rng, config: (
        full() if config is not realworld.MILD else bicubic_degrade(hr, scale)))
    hr = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    for i in range(200):
        realworld.degrade_realworld(hr, 4, np.random.default_rng(i), mixture="realworld_photo")
    with pytest.raises(AssertionError, match="full"):  # while realworld does draw it
        for i in range(200):
            realworld.degrade_realworld(hr, 4, np.random.default_rng(i), mixture="realworld")


def test_the_photo_mixture_draws_no_blur_at_all(monkeypatch):
    """``photo`` (the bundled restoration end's): clean or noisy JPEG LR only, never the Real-ESRGAN
    pipeline (mild or full), so no draw is blurred; and some draws are noisy JPEGs."""
    from training.common import realworld

    def pipeline(*args, **kwargs):
        raise AssertionError("the Real-ESRGAN pipeline was drawn")

    monkeypatch.setattr(realworld, "degrade", pipeline)
    hr = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    clean = bicubic_degrade(hr, 4)
    outs = [realworld.degrade_realworld(hr, 4, np.random.default_rng(i), mixture="photo") for i in range(200)]
    degraded = [o for o in outs if not torch.equal(o, clean)]
    assert 100 <= len(degraded) <= 190  # 75 % expected
    assert all(torch.equal(o, realworld.quantise(o)) for o in degraded)  # JPEG-decoded 8-bit images
    with pytest.raises(AssertionError, match="pipeline"):  # while realworld_photo draws the mild pipeline
        for i in range(200):
            realworld.degrade_realworld(hr, 4, np.random.default_rng(i), mixture="realworld_photo")


def test_the_val_kinds_are_what_they_say():
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, 4, 3, generator=g)
    hr = torch.nn.functional.interpolate(coarse, size=(64, 48), mode="bilinear", align_corners=False)[0]  # smooth
    clean = bicubic_degrade(hr, 4)
    assert torch.equal(lr_maker("clean")(hr, 4), clean)
    assert torch.equal(lr_maker("jpeg75")(hr, 4), jpeg(clean, 75))
    noisy_a, noisy_b = lr_maker("noise8_jpeg90", 7)(hr, 4), lr_maker("noise8_jpeg90", 7)(hr, 4)
    assert torch.equal(noisy_a, noisy_b)  # fixed by (seed, kind, index)
    residual = (noisy_a - clean) * 255
    assert 5 < float(residual.std()) < 10  # sigma 8, a little smoothed by JPEG q90
    assert set(LR_KINDS) == {"clean", "jpeg75", "noise8_jpeg90", "realesrgan"}
    with pytest.raises(ValueError, match="unknown LR kind"):
        lr_maker("blurry")


def test_restore_fine_tunes_a_one_step_model_and_keeps_its_schedule(tmp_path):
    from training.cli import main

    data = image_folder(tmp_path / "data", size=(64, 64))
    out = tmp_path / "restore"
    assert main(["restore", "--init", str(BUNDLED), "--data", str(data), "--out", str(out), "--steps", "4",
                 "--batch-size", "2", "--gt-size", "32", "--autoencoder", "pixel", "--degradation", "realworld",
                 "--log-every", "2", "--save-every", "2", "--lr", "1e-3", "--warmup", "0", "--no-progress"]) == 0
    start, end = read_model_info(BUNDLED), read_model_info(out / "model.safetensors")
    assert end.sampler == "one_step" and end.scale == 4 and end.schedule == start.schedule
    before, after = load_file(BUNDLED), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the same network, moved


def test_restore_needs_a_starting_model(tmp_path, capsys):
    from training.cli import main

    data = image_folder(tmp_path / "data", size=(64, 64))
    assert main(["restore", "--data", str(data), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "--init" in capsys.readouterr().err


def test_the_adversarial_restore_trains_a_discriminator_and_resumes_it_exactly(tmp_path):
    """``restore --gan-weight``: the discriminator moves, is saved in every checkpoint, and a run
    resumed from a checkpoint ends with the same weights as one that was never interrupted (which
    fails if the discriminator or its optimiser restarted from scratch)."""
    import shutil

    from training.cli import main
    from training.resshift.adversarial import DISCRIMINATOR, DISCRIMINATOR_OPTIMIZER

    data = image_folder(tmp_path / "data", size=(64, 64))

    def run(out):
        return main(["restore", "--init", str(BUNDLED), "--data", str(data), "--out", str(out), "--steps", "4",
                     "--batch-size", "2", "--gt-size", "32", "--degradation", "realworld", "--gan-weight", "0.1",
                     "--log-every", "1", "--save-every", "2", "--lr", "1e-3", "--no-progress"])

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight) == 0
    step2 = straight / "checkpoints" / "step-2"
    assert (step2 / DISCRIMINATOR).is_file() and (step2 / DISCRIMINATOR_OPTIMIZER).is_file()
    d2, d4 = load_file(step2 / DISCRIMINATOR), load_file(straight / "checkpoints" / "step-4" / DISCRIMINATOR)
    assert any(not torch.equal(d2[k], d4[k]) for k in d2)  # the discriminator is trained
    header = (straight / "log.csv").read_text().splitlines()[0]
    assert "loss_adversarial" in header and "loss_discriminator" in header and "loss_l1" in header
    assert run(resumed) == 0
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    (resumed / "model.safetensors").unlink()
    assert run(resumed) == 0  # continues from step 2
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_gan_weight_is_checked(tmp_path, capsys):
    from training.cli import main

    data = image_folder(tmp_path / "data", size=(64, 64))
    assert main(["restore", "--init", str(BUNDLED), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--gan-weight", "-1", "--no-progress"]) == 2
    assert "--gan-weight" in capsys.readouterr().err


def test_the_adversarial_restore_refuses_several_processes_before_loading_anything(tmp_path, capsys, monkeypatch):
    from training.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["restore", "--init", str(BUNDLED), "--data", str(tmp_path / "no_such_folder"), "--out",
                 str(tmp_path / "r"), "--gan-weight", "0.1", "--no-progress"]) == 2
    assert "one process" in capsys.readouterr().err  # not the missing data folder: checked first
