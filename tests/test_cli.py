"""The minimal ``onestep-sr upscale`` command: output equals the engine's, errors are one clear
line with exit code 2, and nothing partial is left behind."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import main
from onestep_sr.pipeline import model_to_uint8, super_resolve, uint8_to_model
from onestep_sr.schedule import SCHEDULE_T15


@pytest.fixture()
def weights(goldens):
    return ["--denoiser", str(goldens / "unet.safetensors"), "--autoencoder", str(goldens / "vq.safetensors")]


def test_upscale_writes_the_engine_output(tmp_path, goldens, weights, golden_denoiser, golden_autoencoder):
    out = tmp_path / "sub" / "sr.png"
    assert main(["upscale", str(goldens / "pipeline_lr.png"), "-o", str(out), "--seed", "3", *weights]) == 0
    lr = np.asarray(Image.open(goldens / "pipeline_lr.png").convert("RGB"))
    with torch.no_grad():
        sr = super_resolve(uint8_to_model(lr), golden_denoiser, golden_autoencoder, SCHEDULE_T15,
                           torch.Generator().manual_seed(3))
    written = np.asarray(Image.open(out))
    assert written.shape == (160, 224, 3)
    assert np.array_equal(written, model_to_uint8(sr))
    assert [p.name for p in out.parent.iterdir()] == ["sr.png"]


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope.png", "input not found"),
    (lambda d: (d / "text.png").write_text("hello") and d / "text.png", "not a readable image"),
])
def test_bad_inputs(tmp_path, capsys, weights, make, message):
    src = make(tmp_path)
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), *weights]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_too_large_image_is_refused_before_any_work(tmp_path, capsys, weights):
    src = tmp_path / "big.png"
    Image.new("RGB", (1024, 513)).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), *weights]) == 2
    assert "1024x513 is too large" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_bad_checkpoint_and_no_partial_file(tmp_path, capsys, goldens):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    out = tmp_path / "out.png"
    code = main(["upscale", str(goldens / "pipeline_lr.png"), "-o", str(out),
                 "--denoiser", str(bad), "--autoencoder", str(goldens / "vq.safetensors")])
    assert code == 2 and "bad.safetensors" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [bad]


def test_never_overwrites_the_input(tmp_path, capsys, goldens, weights):
    src = tmp_path / "in.png"
    src.write_bytes((goldens / "pipeline_lr.png").read_bytes())
    assert main(["upscale", str(src), "-o", str(src), *weights]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == (goldens / "pipeline_lr.png").read_bytes()
