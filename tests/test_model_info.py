"""Pixel-space models: the identity autoencoder, and exports that carry their model info so
load_model needs nothing but the file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from onestep_sr import load_model
from onestep_sr.checkpoint import CheckpointError
from onestep_sr.model import autoencoder_for
from onestep_sr.model_info import ModelInfo, read_model_info, save_model
from onestep_sr.models import DenoiserConfig, PixelSpaceAutoencoder, build_denoiser
from onestep_sr.pipeline import SCALE, super_resolve
from onestep_sr.schedule import SCHEDULE_T4


def _pixel_denoiser() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_denoiser(DenoiserConfig(image_size=8, in_channels=51, out_channels=48, model_channels=32,
                                         channel_mult=(1,), num_res_blocks=(1,), attention_resolutions=()))


def test_pixel_autoencoder_is_an_exact_space_to_depth():
    ae = PixelSpaceAutoencoder()
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    latent = ae.encode(image)
    assert latent.shape == (2, 48, 4, 6) and ae.config.embed_dim == 48
    assert torch.equal(latent[0, :16, 1, 2].flatten(), image[0, 0, 4:8, 8:12].flatten())  # one 4x4 block
    assert torch.equal(ae.decode(latent), image) and ae.quantize(latent) is latent
    with pytest.raises(ValueError, match="not a multiple of 4"):
        ae.encode(torch.zeros(1, 3, 10, 8))


def test_export_round_trip_and_load_model_needs_only_the_file(tmp_path):
    net = _pixel_denoiser()
    info = ModelInfo(autoencoder="pixel", schedule={"steps": 4, "kappa": 2.0, "power": 0.3, "min_noise_level": 0.2,
                                                   "etas_end": 0.99, "clamp_start": False}, sampler="stochastic")
    path, sidecar = save_model(tmp_path / "mine.safetensors", net, info)
    assert read_model_info(path) == info and json.loads(sidecar.read_text())["denoiser"]["in_channels"] == 51
    assert autoencoder_for(path) == "pixel"
    model = load_model(path, device="cpu")
    assert model.schedule == SCHEDULE_T4 and model.sampler == "stochastic" and model.name == "mine.safetensors"
    assert isinstance(model.autoencoder, PixelSpaceAutoencoder)
    lq = torch.rand(1, 3, 8, 12)
    expected = super_resolve(lq * 2 - 1, net.eval(), PixelSpaceAutoencoder(), SCHEDULE_T4,
                             torch.Generator().manual_seed(3), sampler="stochastic")
    out = model.upscale(lq, seed=3)
    assert out.shape == (1, 3, 8 * SCALE, 12 * SCALE)
    assert torch.allclose(out, ((expected + 1) / 2).clamp(0, 1), atol=1e-6)


def test_the_json_beside_a_pickle_or_bare_file_names_the_autoencoder(tmp_path):
    net = _pixel_denoiser()
    path, sidecar = save_model(tmp_path / "a.safetensors", net, ModelInfo())
    bare = tmp_path / "b.safetensors"
    save_file(load_file(path), bare)  # weights only, no header info
    assert read_model_info(bare) is None and autoencoder_for(bare) == "vq_f4"
    (tmp_path / "b.json").write_text(sidecar.read_text())
    assert read_model_info(bare) == ModelInfo() and load_model(bare, device="cpu").sampler == "one_step"
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="b.json: invalid OneStep SR model info"):
        read_model_info(bare)
    with pytest.raises(ValueError, match=".safetensors"):
        save_model(tmp_path / "c.pth", net, ModelInfo())
