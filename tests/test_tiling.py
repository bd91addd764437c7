"""Tiling: grids, the feathered partition of unity, band emission, exact bicubic crops, and the
seam test (a smooth image tiled finely shows no step at tile borders)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onestep_sr.pipeline import Tiling, super_resolve_rows, unit_to_model
from onestep_sr.schedule import SCHEDULE_T15
from onestep_sr.tiling import TileGrid, bicubic_crop, blend_tiles, blend_to_tensor, fitted_tile, tile_starts


@pytest.mark.parametrize("length, tile, overlap", [(64, 64, 16), (200, 64, 16), (130, 64, 0), (37, 16, 5),
                                                   (5, 16, 4), (1000, 256, 32)])
def test_tile_starts_cover_with_overlap_and_end_at_the_border(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:]):
        assert b - a <= size - overlap  # neighbours share at least `overlap` pixels


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 16, 16)


@pytest.mark.parametrize("length, tile, overlap, multiple, fitted", [
    (1024, 256, 32, 4, 232),  # 5 tiles either way: (1024 + 4 * 32) / 5 = 230.4 -> 232
    (768, 256, 32, 4, 216),   # 4 tiles: (768 + 3 * 32) / 4 = 216
    (512, 256, 32, 64, 192),  # an official model (multiple 64): 3 tiles of 192 instead of 3 of 256
    (1024, 256, 32, 64, 256),  # already tight at a multiple of 64
    (200, 256, 32, 4, 200),   # one tile: the plane itself
])
def test_fitted_tiles_keep_the_count_and_shrink_to_a_multiple(length, tile, overlap, multiple, fitted):
    assert fitted_tile(length, tile, overlap, multiple) == fitted
    grid = TileGrid(length, length, tile, overlap, multiple=multiple)
    assert grid.tile_h == grid.tile_w == fitted and fitted % multiple == 0 or fitted == length
    assert len(grid.ys) == len(tile_starts(length, tile, overlap))  # as many calls as fixed tiles
    for a, b in zip(grid.ys, grid.ys[1:]):
        assert b - a <= fitted - overlap  # still at least `overlap` shared
    assert grid.ys[-1] + fitted == length


@pytest.mark.parametrize("scale", [1, 4])
@pytest.mark.parametrize("multiple", [0, 4])
def test_weights_are_a_positive_partition_of_unity(scale, multiple):
    grid = TileGrid(150, 97, 48, 12, multiple=multiple)
    wys, wxs = grid.weights(scale)
    total = torch.zeros(grid.height * scale, grid.width * scale, dtype=torch.float64)
    for y, wy in zip(grid.ys, wys):
        for x, wx in zip(grid.xs, wxs):
            assert (wy > 0).all() and (wx > 0).all()
            total[y * scale:(y + grid.tile_h) * scale, x * scale:(x + grid.tile_w) * scale] += \
                wy.double()[:, None] * wx.double()[None, :]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


def test_one_tile_is_exactly_the_untiled_result():
    x = torch.randn(1, 3, 40, 56)
    out = blend_to_tensor(lambda y, x0, h, w: x[..., y:y + h, x0:x0 + w] * 3, TileGrid(40, 56, 64, 16), 3)
    assert torch.equal(out, x * 3)


def test_blending_a_translation_equivariant_map_reproduces_it():
    x = torch.randn(1, 2, 70, 90, dtype=torch.float64).float()
    out = blend_to_tensor(lambda y, x0, h, w: x[..., y:y + h, x0:x0 + w].repeat_interleave(3, -1)
                          .repeat_interleave(3, -2), TileGrid(70, 90, 24, 6), 2, scale=3)
    assert (out - x.repeat_interleave(3, -1).repeat_interleave(3, -2)).abs().max() < 1e-6


def test_rows_are_emitted_once_in_order_and_the_band_stays_small():
    grid = TileGrid(100, 60, 32, 8)
    spans, bands = [], []

    def run(y, x, h, w):
        return torch.ones(1, 1, h * 2, w * 2)

    def emit(row0, rows):
        spans.append((row0, row0 + rows.shape[1]))
        bands.append(rows.shape[1])
        assert torch.allclose(rows, torch.ones_like(rows))

    blend_tiles(run, grid, 2, emit)
    assert spans[0][0] == 0 and spans[-1][1] == 200
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(bands) <= grid.tile_h * 2  # never more than one row of tiles held as floats


@pytest.mark.parametrize("region", [(0, 148, 0, 212), (5, 77, 3, 100), (100, 148, 150, 212), (1, 2, 1, 2),
                                    (61, 63, 0, 212)])
def test_bicubic_crop_equals_cropping_the_full_upsample(region):
    image = torch.randn(1, 3, 37, 53)
    full = F.interpolate(image, scale_factor=4, mode="bicubic", align_corners=False)
    y0, y1, x0, x1 = region
    assert torch.equal(bicubic_crop(image, 4, y0, y1, x0, x1), full[..., y0:y1, x0:x1])


# --------------------------------------------------------------------------------------------
# Seam test. The released networks are too big for CI and the reduced golden ones are random
# (their output is texture-like noise that hides any seam), so the real tiled pipeline runs here
# with small *smooth* networks: stacks of zero-padded blur convolutions. A tile seen alone is
# darkened at its edges by the zero padding, exactly the artefact that makes seams when tiles are
# simply abutted; the halo and the feathered blend must remove it.


class _Blur(nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (k[:, None] * k[None, :]) / 256.0
        self.register_buffer("kernel", k.expand(3, 1, 5, 5).clone())
        self.depth = depth

    def forward(self, x):
        for _ in range(self.depth):
            x = F.conv2d(x, self.kernel, padding=2, groups=3)  # zero padding: dark tile edges
        return x


class _SmoothAutoencoder(nn.Module):
    config = types.SimpleNamespace(embed_dim=3, downscale=4)

    def __init__(self):
        super().__init__()
        self.blur = _Blur(3)

    def encode(self, image):
        return F.avg_pool2d(self.blur(image), 4)

    def quantize(self, z):
        return z

    def decode(self, z, quantize=True):
        return self.blur(F.interpolate(z, scale_factor=4, mode="bilinear", align_corners=False))


class _SmoothDenoiser(nn.Module):
    config = types.SimpleNamespace(latent_multiple=64)

    def __init__(self):
        super().__init__()
        self.blur = _Blur(4)

    def forward(self, x, t, lq):
        return self.blur(lq) + 0.05 * self.blur(x)  # x0 from the LR image, with a little noise


def _gradient_lr(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    return unit_to_model(torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * xx * yy])[None])


def _upscale(lq: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    out = torch.zeros(3, 4 * lq.shape[-2], 4 * lq.shape[-1])

    def emit(row0, rows):
        out[:, row0:row0 + rows.shape[1]] = rows

    super_resolve_rows(lq, _SmoothDenoiser(), _SmoothAutoencoder(), SCHEDULE_T15, torch.Generator().manual_seed(0),
                       emit, tiling=tiling)
    return out


def _border_lines(length: int, tiling: Tiling) -> list[int]:
    """Output positions of every tile edge of the denoiser and VQ grids along one axis."""
    lines = set()
    for tile, overlap in ((tiling.tile, tiling.overlap), (tiling.vq_tile, tiling.vq_overlap)):
        for s in tile_starts(length, tile, overlap):
            lines.update(4 * e for e in (s, s + tile) if 0 < e < length)
    return sorted(lines)


MARGIN = 48  # output pixels next to the image border, darkened by the networks' own padding
NEAR = 6  # a seam is a step or a thin line: look this many pixels either side of a border


def _seam_ratio(image: torch.Tensor, tiling: Tiling) -> float:
    """Largest step across a tile border line / the largest step elsewhere, along both axes,
    away from the image border."""
    ratios = []
    for axis in (1, 2):
        crop = image.narrow(3 - axis, MARGIN, image.shape[3 - axis] - 2 * MARGIN)
        steps = crop.narrow(axis, 1, crop.shape[axis] - 1) - crop.narrow(axis, 0, crop.shape[axis] - 1)
        profile = steps.abs().mean(dim=(0, 3 - axis)).numpy()  # mean step between line i and i + 1
        near = np.zeros(profile.shape, dtype=bool)
        for line in _border_lines(image.shape[axis] // 4, tiling):
            near[max(0, line - 1 - NEAR):line + NEAR] = True
        inside = np.zeros(profile.shape, dtype=bool)
        inside[MARGIN:-MARGIN] = True
        ratios.append(float(profile[near & inside].max()) / float(profile[~near & inside].max()))
    return max(ratios)


def test_smooth_image_tiled_finely_has_no_seams():
    lq = _gradient_lr(128, 192)  # denoiser: 3 x 4 tiles; VQ: 5 x 7 tiles
    feathered = Tiling(tile=64, overlap=16, vq_tile=32, vq_overlap=8, vq_halo=8)
    abutted = Tiling(tile=64, overlap=0, vq_tile=32, vq_overlap=0, vq_halo=0)
    with torch.no_grad():
        reference = _upscale(lq, Tiling(tile=256, overlap=0, vq_tile=256, vq_overlap=0))
        smooth, hard = _upscale(lq, feathered), _upscale(lq, abutted)
    # the metric sees seams: abutted tiles show steps many times larger than anything inside
    assert _seam_ratio(hard, abutted) > 5
    assert _seam_ratio(reference, feathered) < 1.5
    # feathered tiles: no step at any border larger than the image's own largest step
    assert _seam_ratio(smooth, feathered) < 1.5
    # and the tiled image stays close to the untiled one away from the image border
    inner = (slice(None), slice(64, -64), slice(64, -64))
    assert (smooth - reference)[inner].abs().max() < 0.02 < (hard - reference)[inner].abs().max()


def test_tiles_share_one_noise_field():
    """With a denoiser that returns its (scaled) noisy input, one-step x0 is the prior sample
    itself: tiled and untiled must agree everywhere, which they only do with one noise field."""
    from onestep_sr.pipeline import tiled_x0_predictor
    from onestep_sr.samplers import sample_one_step

    class Identity(nn.Module):
        config = types.SimpleNamespace(latent_multiple=64)

        def forward(self, x, t, lq):
            return x

    lq, y = torch.zeros(1, 3, 128, 192), torch.randn(1, 3, 128, 192)
    results = []
    for tiling in (Tiling(tile=256, overlap=0), Tiling(tile=64, overlap=16)):
        predict = tiled_x0_predictor(Identity(), SCHEDULE_T15, lq, tiling)
        results.append(sample_one_step(predict, y, SCHEDULE_T15, torch.Generator().manual_seed(9)))
    assert (results[0] - results[1]).abs().max() < 1e-5
    assert results[0].std() > 0.5  # the noise is really there
