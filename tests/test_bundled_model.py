"""The committed default model (weights/onestep_default_x4.safetensors): small, offline, the default
of the engine and the CLI, better than bicubic on a real photo, recorded.

The hosts' own defaults are tested beside their fakes (test_nodes, test_a1111, test_app)."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO, SHARED
from onestep_sr import DEFAULT_MODEL, load_model
from onestep_sr.cli import main as cli_main
from onestep_sr.model import BUNDLED_MODELS
from onestep_sr.model_info import read_model_info
from training.common.degradations import bicubic_degrade
from training.common.evaluate import bicubic_upsample, load_rgb
from training.common.metrics import psnr_y

BUNDLED = BUNDLED_MODELS["onestep_default"]
EXAMPLE = REPO / "examples" / "chelsea_lr.png"
EXAMPLE_HR = SHARED / "images" / "val" / "chelsea.png"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and an empty models folder: the bundled model needs neither."""
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(tmp_path / "empty_models"))


def test_the_bundled_file_is_small_and_describes_itself():
    assert BUNDLED.is_file() and BUNDLED.stat().st_size <= 20 * 2**20
    info = read_model_info(BUNDLED)
    assert info.autoencoder == "pixel" and info.sampler == "one_step" and info.scale == 4
    record = json.loads(BUNDLED.with_name("onestep_default_x4.training.json").read_text())
    assert {"command", "data", "teacher", "student", "wall_seconds", "results"} <= set(record)
    assert record["command"].startswith("OMP_WAIT_POLICY=PASSIVE python benchmarks/train_default_model.py")
    # the recorded figures meet the goals they were trained for
    student = record["results"]["summaries"]["student, 1 step"]
    assert student["psnr_gain"] >= 1.0 and min(record["results"]["agreement_psnr_y"]) >= 35
    # the restoration end (issue 28): its run and its measurement on the four val LR kinds
    restoration = record["restoration"]
    assert restoration["command"].startswith("OMP_WAIT_POLICY=PASSIVE python benchmarks/train_default_model.py")
    assert set(restoration["results"]["kinds"]) == {"clean", "jpeg75", "noise8_jpeg90", "realesrgan"}
    assert len(restoration["data"]["files"]) >= len(restoration["data"]["photos"]) and restoration["steps"] > 0
    clean_auto = restoration["results"]["kinds"]["clean"]["rows"]["auto"]
    assert sum(r["psnr_y"] - r["bicubic_psnr_y"] for r in clean_auto) / len(clean_auto) >= 1.0


def test_load_model_defaults_to_the_bundled_model_offline():
    assert DEFAULT_MODEL == "onestep_default"
    model = load_model(device="cpu")
    assert model.name == "onestep_default" and model.sampler == "one_step"
    assert type(model.autoencoder).__name__ == "PixelSpaceAutoencoder"
    out = model.upscale(np.zeros((7, 5, 3), dtype=np.uint8))
    assert out.shape == (28, 20, 3) and out.dtype == np.uint8


def test_a_1x1_image_works_and_other_sizes_are_unchanged(monkeypatch):
    """The README promises 1x1: its 1x1 latent puts one value in each GroupNorm group, which
    F.group_norm refuses; GroupNorm's own definition (0, then the affine) is used there. Every other
    size gives exactly what F.group_norm gave before."""
    import torch.nn.functional as F

    from onestep_sr.models import layers

    model = load_model(device="cpu")
    for colour in [(100, 150, 200), (10, 10, 10), (250, 240, 5)]:
        out = model.upscale(np.array(colour, dtype=np.uint8).reshape(1, 1, 3))
        assert out.shape == (4, 4, 3) and np.abs(out.astype(int) - colour).max() <= 6  # the same flat colour
    images = [np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
              for seed, (h, w) in enumerate([(1, 2), (2, 1), (2, 2), (8, 8)])]
    now = [model.upscale(image, seed=3) for image in images]

    def before(self, x):
        weight, bias = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)

    monkeypatch.setattr(layers.GroupNorm32, "forward", before)
    for image, out in zip(images, now):
        assert np.array_equal(model.upscale(image, seed=3), out)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what 1x1 did before
        model.upscale(np.zeros((1, 1, 3), dtype=np.uint8))


def test_the_readme_main_job_upscales_the_example_photo_better_than_bicubic(tmp_path, capsys):
    """`onestep-sr upscale examples/chelsea_lr.png -o chelsea_x4.png`, no model named, offline: the
    result is 4x the photo and closer to the original photo than bicubic (PSNR on Y)."""
    out = tmp_path / "chelsea_x4.png"
    assert cli_main(["upscale", str(EXAMPLE), "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (448, 300)
        sr = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).float() / 255
    if not EXAMPLE_HR.is_file():
        pytest.skip("../shared/images is not beside this checkout")
    hr = load_rgb(EXAMPLE_HR, 4)
    lr = bicubic_degrade(hr, 4)
    with Image.open(EXAMPLE) as im:  # the example is that LR, saved as 8-bit
        assert torch.equal((lr * 255).round().to(torch.uint8), torch.from_numpy(np.asarray(im)).permute(2, 0, 1))
    bicubic = (bicubic_upsample(lr, hr.shape[-2:]) * 255).round() / 255
    assert psnr_y(sr, hr) > psnr_y(bicubic, hr) + 0.2


def test_a_missing_bundled_file_is_a_clear_error(monkeypatch, tmp_path):
    from onestep_sr import ModelNotFoundError

    monkeypatch.setitem(BUNDLED_MODELS, "onestep_default", tmp_path / "gone.safetensors")
    with pytest.raises(ModelNotFoundError, match="bundled model 'onestep_default' is missing"):  # a FileNotFoundError
        load_model(device="cpu")


def test_registry_models_stay_one_choice_away_with_their_licence(tmp_path, capsys):
    """Naming an official model offline says where to get it (nothing is downloaded)."""
    code = cli_main(["upscale", str(EXAMPLE), "-o", str(tmp_path / "x.png"), "--model", "sinsr_v1"])
    err = capsys.readouterr().err
    assert code == 2 and "SinSR_v1.pth" in err and not (tmp_path / "x.png").exists()
    from onestep_sr.registry import get_entry
    assert "non-commercial" in get_entry("sinsr_v1").licence


def test_the_record_lists_the_training_images_only():
    record = json.loads(BUNDLED.with_name("onestep_default_x4.training.json").read_text())
    assert set(record["data"]["train"]).isdisjoint(record["data"]["val"])
    train = SHARED / "images" / "train"
    if train.is_dir():  # exactly the openly licensed training images, none of val
        assert record["data"]["train"] == sorted(p.name for p in train.iterdir())
