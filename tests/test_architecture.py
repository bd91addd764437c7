"""Architecture: official key names, shapes and order; parameter counts; the Swin details."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from helpers import reference_keys
from onestep_sr.models import (OFFICIAL_AUTOENCODER, OFFICIAL_DENOISER, AutoencoderConfig, DenoiserConfig,
                               build_autoencoder, build_denoiser, build_official_autoencoder,
                               build_official_denoiser)
from onestep_sr.models.config_inference import infer_autoencoder_config, infer_denoiser_config
from onestep_sr.models.swin import relative_position_index, shifted_window_mask


def listing(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("build, keys, params", [
    (build_official_denoiser, "sinsr_unet_keys.txt", 118_593_583),
    (build_official_autoencoder, "vqf4_keys.txt", 55_322_782),
])
def test_full_size_matches_official_key_list_on_meta(reference, build, keys, params):
    model = build("meta")
    assert all(p.is_meta for p in model.parameters())
    assert listing(model) == reference_keys(reference / keys)
    assert sum(p.numel() for p in model.parameters()) == params


def test_full_size_buffers_are_the_official_ones():
    state = build_official_denoiser("meta").state_dict()
    index = [k for k in state if k.endswith("relative_position_index")]
    masks = {k: v.shape[0] for k, v in state.items() if k.endswith("attn_mask")}
    assert len(index) == 18 and all(state[k].dtype == torch.int64 for k in index)
    assert masks == {
        "input_blocks.1.1.blocks.1.attn_mask": 64, "input_blocks.4.1.blocks.1.attn_mask": 16,
        "input_blocks.7.1.blocks.1.attn_mask": 4, "output_blocks.3.1.blocks.1.attn_mask": 4,
        "output_blocks.6.1.blocks.1.attn_mask": 16, "output_blocks.9.1.blocks.1.attn_mask": 64,
    }


def test_small_configs_match_the_golden_files(goldens):
    unet = load_file(str(goldens / "unet.safetensors"))
    vq = load_file(str(goldens / "vq.safetensors"))
    ours = build_denoiser(infer_denoiser_config(unet)).state_dict()
    assert {k: list(v.shape) for k, v in ours.items()} == {k: list(v.shape) for k, v in unet.items()}
    assert set(build_autoencoder(infer_autoencoder_config(vq)).state_dict()) == set(vq)


def test_stored_buffers_equal_recomputed_ones(goldens):
    """The reference's non-standard shifted-window mask and the standard relative index."""
    unet = load_file(str(goldens / "unet.safetensors"))
    ours = build_denoiser(infer_denoiser_config(unet)).state_dict()
    for key, value in unet.items():
        if key.endswith(("attn_mask", "relative_position_index")):
            assert torch.equal(ours[key], value), key


def test_shifted_mask_only_masks_last_window_row_by_column_halves():
    mask = shifted_window_mask(16, 24, 8, 4).view(2, 3, 64, 64)
    assert (mask[0] == 0).all()
    cols = torch.arange(64) % 8
    expected = torch.where((cols[:, None] >= 4) != (cols[None, :] >= 4), -100.0, 0.0)
    for w in range(3):
        assert torch.equal(mask[1, w], expected)


def test_relative_position_index_range():
    idx = relative_position_index(8)
    assert idx.shape == (64, 64) and idx.min() == 0 and idx.max() == 224
    assert (idx.diagonal() == 112).all()  # zero offset sits in the middle of the 15x15 table


@pytest.mark.parametrize("config, infer, build", [
    (OFFICIAL_DENOISER, infer_denoiser_config, build_denoiser),
    (OFFICIAL_AUTOENCODER, infer_autoencoder_config, build_autoencoder),
])
def test_config_inferred_from_state_dict(config, infer, build):
    assert infer(build(config, "meta").state_dict()) == config


def test_config_round_trips_through_dict():
    assert DenoiserConfig.from_dict(OFFICIAL_DENOISER.to_dict()) == OFFICIAL_DENOISER
    nested = {"embed_dim": 3, "n_embed": 8192, "ddconfig": {"ch": 128, "ch_mult": [1, 2, 4], "z_channels": 3}}
    assert AutoencoderConfig.from_dict(nested) == OFFICIAL_AUTOENCODER


def test_8x8_level_never_shifts_whatever_the_input_size(golden_denoiser):
    assert golden_denoiser.middle_block[1].blocks[1].shift == 0
    assert golden_denoiser.input_blocks[1][1].blocks[1].shift == 4


def test_bad_latent_sizes_are_rejected_with_the_rule(golden_denoiser):
    with pytest.raises(ValueError, match="multiple of 64"):
        golden_denoiser(torch.zeros(1, 3, 64, 40), torch.tensor([0]), torch.zeros(1, 3, 64, 40))
    with pytest.raises(ValueError, match="lq must be"):
        golden_denoiser(torch.zeros(1, 3, 64, 64), torch.tensor([0]), torch.zeros(1, 3, 32, 32))


def test_runtime_mask_cache_is_not_poisoned_by_meta_builds():
    from onestep_sr.models.swin import _runtime_mask

    _runtime_mask.cache_clear()
    with torch.device("meta"):
        mask = _runtime_mask(24, 16, 8, 4)
    assert mask.device.type == "cpu" and torch.equal(mask, shifted_window_mask(24, 16, 8, 4))
