"""``upscale(noise="tileable")``: a prior-noise field that depends only on the position in the image
(a 32 x 32 latent block from the seed, repeated), so a crop cut at a multiple of 32 LR pixels gets the
noise the whole image has there. What an outer tiler that cuts at such offsets needs: ComfyUI's
"Upscale Image (using Model)" (tiled_scale, 512/256/128 tiles, overlap 32: strides 480/224/96)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onestep_sr import OptionError, load_model
from onestep_sr.pipeline import super_resolve
from onestep_sr.samplers import TILE_ALIGN, TileableNoise, draw_noise, prior_noise

FAKE = Path(__file__).resolve().parent / "comfy_fake"


def field(seed: int, shape: tuple[int, ...], period: int = TILE_ALIGN) -> torch.Tensor:
    return TileableNoise(torch.Generator().manual_seed(seed), period).field(shape)


def test_the_field_is_a_function_of_the_position_in_the_image():
    whole = field(7, (1, 3, 100, 70))
    for y, x in [(0, 0), (32, 0), (64, 32), (96, 64)]:  # crops cut at multiples of 32, any size
        crop = field(7, (1, 3, 100 - y, 70 - x))
        assert torch.equal(crop, whole[..., y:, x:])
    # i.i.d. N(0, 1) inside a period (not a constant or a smooth pattern)
    block = whole[..., :32, :32]
    assert abs(float(block.mean())) < 0.1 and abs(float(block.std()) - 1) < 0.1
    assert len(torch.unique(block)) == block.numel()
    # the official draw has no such property (its values depend on the image's width)
    official = torch.randn((1, 3, 100, 70), generator=torch.Generator().manual_seed(7))
    narrower = torch.randn((1, 3, 100, 38), generator=torch.Generator().manual_seed(7))
    assert not torch.equal(narrower, official[..., 32:])


def test_period_follows_the_native_scale_and_the_sampler_draws_it():
    generator = torch.Generator().manual_seed(3)
    assert prior_noise("official", generator) is generator
    for scale, period in [(2, 16), (4, 32), (8, 64)]:  # latent = LR x scale / 4
        assert prior_noise("tileable", generator, scale).period == period
    like = torch.zeros(1, 3, 40, 40, dtype=torch.float64)
    drawn = draw_noise(TileableNoise(torch.Generator().manual_seed(3)), like)
    assert drawn.dtype == torch.float64 and torch.equal(drawn.float(), field(3, (1, 3, 40, 40)))


@pytest.fixture(scope="module")
def bundled():
    return load_model(device="cpu", strength=0)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    from PIL import Image

    rgb = np.array(Image.open(Path(__file__).resolve().parents[1] / "examples" / "chelsea_lr.png").convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def test_tileable_upscale_is_the_pipeline_with_the_tileable_field(bundled, image):
    out = bundled.upscale(image, noise="tileable", strength=0)
    with torch.no_grad():
        expected = super_resolve(image * 2 - 1, bundled.denoiser, bundled.autoencoder, bundled.schedule,
                                 TileableNoise(torch.Generator().manual_seed(12345)))
    assert torch.allclose(out, ((expected.clamp(-1, 1) + 1) / 2).clamp(0, 1), atol=1e-6)
    assert not torch.allclose(out, bundled.upscale(image, strength=0), atol=1e-3)  # the default is official
    with pytest.raises(OptionError, match="noise"):
        bundled.upscale(image, noise="random")


def test_comfyuis_outer_tiling_blends_tiles_made_from_the_same_noise(bundled, image):
    """ComfyUI's tiled_scale (the fake copies its tile positions and feathering) at its smallest tile
    (128, overlap 32) against one untiled call: with the tileable field only the network's own context
    differs between a tile and the whole image; with the official draw every tile has other noise."""
    sys.path.insert(0, str(FAKE))
    try:
        from comfy.utils import tiled_scale
    finally:
        sys.path.remove(str(FAKE))
    big = torch.nn.functional.interpolate(image, size=(150, 200), mode="bicubic", align_corners=False).clamp(0, 1)
    changed = {}
    for noise in ("tileable", "official"):
        def run(tile: torch.Tensor) -> torch.Tensor:
            return bundled.upscale(tile, noise=noise, strength=0, color_fix="wavelet")

        whole, tiled = run(big), tiled_scale(big, run, 128, 128, 32, 4)
        assert tiled.shape == whole.shape == (1, 3, 600, 800)
        changed[noise] = float(((tiled - whole).abs().amax(1) > 1 / 255).float().mean())
    assert changed["tileable"] < 0.6 * changed["official"], changed
