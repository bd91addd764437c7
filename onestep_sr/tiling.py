"""Tiles over an image-shaped grid, feathered blending, and exact crops of a bicubic upsample.

A :class:`TileGrid` covers an H x W plane with equal tiles (the last row/column of tiles is moved
back so that it ends at the border, as the official "chop" does). Each tile's result is weighted
by a separable cosine ramp over the parts it shares with its neighbours, normalised so that the
weights of all tiles sum to exactly 1 at every pixel: no seams, no darkening, and a single tile
reproduces the untiled computation bit for bit.

:func:`blend_tiles` runs a tile function row of tiles by row of tiles and hands finished rows to
``emit`` as soon as no later tile touches them. Its float accumulator therefore spans one row of
tiles, never the whole output, which keeps memory bounded on huge images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import from_unit_float

TileFn = Callable[[int, int, int, int], torch.Tensor]
EmitFn = Callable[[int, torch.Tensor], None]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of size ``min(tile, length)`` covering ``[0, length)`` with at least
    ``overlap`` shared pixels; the last start is ``length - tile``."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    if stride < 1:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def cosine_ramp(length: int, ramp: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D float64 weights: ones, with a raised-cosine rise over the first ``ramp`` samples and
    a fall over the last ``ramp`` (where asked). Strictly positive everywhere."""
    w = torch.ones(length, dtype=torch.float64)
    ramp = min(ramp, length)
    if ramp > 0:
        edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp)
        if rise:
            w[:ramp] *= edge
        if fall:
            w[length - ramp:] *= edge.flip(0)
    return w


def _axis_weights(starts: list[int], tile: int, overlap: int, length: int, scale: int) -> list[torch.Tensor]:
    """Per-tile weights along one axis at ``scale``, normalised to sum to 1 at every position."""
    raw = [cosine_ramp(tile * scale, overlap * scale, rise=s > 0, fall=s + tile < length) for s in starts]
    total = torch.zeros(length * scale, dtype=torch.float64)
    for s, w in zip(starts, raw):
        total[s * scale:(s + tile) * scale] += w
    return [(w / total[s * scale:(s + tile) * scale]).float() for s, w in zip(starts, raw)]


def fitted_tile(length: int, tile: int, overlap: int, multiple: int) -> int:
    """The smallest tile side, a multiple of ``multiple`` and at most ``tile``, that covers
    ``length`` with as many tiles as ``tile`` itself needs. Fixed-size tiles waste work when the
    last one is mostly overlap (1024 = 4 x 256 needs 5 tiles of 256 with a 32 overlap: 1280
    computed; 5 of 232 compute 1160); fitting keeps the count and the memory bound of one tile."""
    if tile >= length:
        return length
    count = len(tile_starts(length, tile, overlap))
    needed = -(-(length + (count - 1) * overlap) // count)
    return min(tile, -(-needed // multiple) * multiple)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` x ``tile`` (clipped to the plane) over ``height`` x ``width``. With
    ``multiple`` > 0 each axis's tiles are shrunk to the :func:`fitted_tile` (a multiple of it)."""

    height: int
    width: int
    tile: int
    overlap: int
    multiple: int = 0

    def __post_init__(self) -> None:
        if self.tile < 1 or self.overlap < 0 or self.multiple < 0:
            raise ValueError(f"tile must be >= 1 and overlap, multiple >= 0, got {self.tile}, {self.overlap}, "
                             f"{self.multiple}")

    def _side(self, length: int) -> int:
        if self.multiple:
            return fitted_tile(length, self.tile, self.overlap, self.multiple)
        return min(self.tile, length)

    @property
    def tile_h(self) -> int:
        return self._side(self.height)

    @property
    def tile_w(self) -> int:
        return self._side(self.width)

    @cached_property
    def ys(self) -> list[int]:
        return tile_starts(self.height, self.tile_h, self.overlap)

    @cached_property
    def xs(self) -> list[int]:
        return tile_starts(self.width, self.tile_w, self.overlap)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def weights(self, scale: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised 1-D weights per tile row and per tile column, at ``scale`` x resolution."""
        return (_axis_weights(self.ys, self.tile_h, self.overlap, self.height, scale),
                _axis_weights(self.xs, self.tile_w, self.overlap, self.width, scale))


def blend_tiles(run_tile: TileFn, grid: TileGrid, scale: int, emit: EmitFn) -> None:
    """Blend ``run_tile(y, x, h, w) -> 1 x C x h*scale x w*scale`` over ``grid``.

    ``emit(row0, rows)`` receives the finished output rows ``[row0, row0 + n)`` as a C x n x
    (width*scale) float32 tensor, top to bottom, each row exactly once; ``rows`` is a view that is
    reused after ``emit`` returns, so copy what you keep. The accumulator is one row of tiles high
    (rows that the next tile row also touches are moved up, not reallocated)."""
    wys, wxs = grid.weights(scale)
    th, tw = grid.tile_h * scale, grid.tile_w * scale
    band: torch.Tensor | None = None  # output rows [y0, y0 + th) of the current tile row
    for r, y in enumerate(grid.ys):
        y0 = y * scale
        for c, x in enumerate(grid.xs):
            out = run_tile(y, x, grid.tile_h, grid.tile_w)
            if band is None:
                band = out.new_zeros((out.shape[1], th, grid.width * scale), dtype=torch.float32)
            weight = wys[r].to(out.device)[:, None] * wxs[c].to(out.device)[None, :]
            band[:, :, x * scale:x * scale + tw] += out[0].float() * weight
        done = grid.ys[r + 1] * scale - y0 if r + 1 < len(grid.ys) else th
        emit(y0, band[:, :done])
        keep = th - done  # rows the next tile row overlaps
        if keep:
            band[:, :keep] = band[:, done:].clone()
        band[:, keep:] = 0


def blend_to_tensor(run_tile: TileFn, grid: TileGrid, channels: int, scale: int = 1,
                    like: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`blend_tiles` into a new 1 x C x H*scale x W*scale tensor (for latent-size planes)."""
    device = like.device if like is not None else None
    out = torch.empty((1, channels, grid.height * scale, grid.width * scale), dtype=torch.float32, device=device)

    def emit(row0: int, rows: torch.Tensor) -> None:
        out[0, :, row0:row0 + rows.shape[1]] = rows

    blend_tiles(run_tile, grid, scale, emit)
    return out if like is None else out.to(like.dtype)


BICUBIC_CONTEXT = 2  # input pixels either side that one bicubic output sample reads


def bicubic_crop(image: torch.Tensor, scale: int, oy0: int, oy1: int, ox0: int, ox1: int) -> torch.Tensor:
    """Rows ``[oy0, oy1)`` and columns ``[ox0, ox1)`` of ``F.interpolate(image, scale_factor=scale,
    mode='bicubic')`` without computing the rest: equal to cropping the full upsample."""
    h, w = image.shape[-2:]
    iy0, ix0 = max(0, oy0 // scale - BICUBIC_CONTEXT), max(0, ox0 // scale - BICUBIC_CONTEXT)
    iy1 = min(h, -(-oy1 // scale) + BICUBIC_CONTEXT)
    ix1 = min(w, -(-ox1 // scale) + BICUBIC_CONTEXT)
    patch = image[..., iy0:iy1, ix0:ix1]
    up = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False)
    # an edge of the crop that is not the image edge must not be clamped: it has real context
    return up[..., oy0 - iy0 * scale:oy1 - iy0 * scale, ox0 - ix0 * scale:ox1 - ix0 * scale]


def upscale_alpha(alpha: torch.Tensor, out_dtype: np.dtype, scale: int, band_rows: int) -> np.ndarray:
    """Alpha (1 x 1 x h x w in [0, 1]) upscaled x``scale`` with bicubic, clamped, band by band."""
    h, w = alpha.shape[-2:]
    out = np.empty((scale * h, scale * w), dtype=out_dtype)
    for r0 in range(0, scale * h, band_rows):
        r1 = min(scale * h, r0 + band_rows)
        rows = bicubic_crop(alpha.float(), scale, r0, r1, 0, scale * w).clamp(0, 1)
        out[r0:r1] = from_unit_float(rows[0, 0], out_dtype)
    return out
