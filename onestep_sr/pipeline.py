"""LR image -> SR image, exactly as the official inference does it, tiled for large images.

pad bottom/right to a multiple of 64 (reflect) -> z_y = encode(bicubic x4) -> sample in latent
space conditioned on the padded LR -> decode (quantised) -> crop -> clamp.

Large images are tiled in LATENT space (the latent of this x4 / f4 pair has the LR image's size):
- the denoiser runs on latent tiles (multiples of 64) whose x0 predictions are blended with
  feathered weights at every sampler step, so the samplers themselves run on the whole latent
  with ONE noise field shared by all tiles;
- the VQ encoder and decoder run on their own (smaller) tiles with a halo of context that is
  cropped away, then feathered; the codebook quantisation is done once on the whole latent;
- decoded rows go to ``emit`` as soon as they are final, in pieces of EMIT_ROWS rows, so no
  full-size float image exists.
With tiles at least as large as the padded image every stage is one call: the result equals the
untiled official pipeline (the end-to-end golden).

Models of another native scale s (x2, x8: ``lq_mode`` "unshuffle48", YONOS ladder) keep the f4
latent grid (HR / 4, so LR x s/4): their condition is the LR bicubic x s, space-to-depth by 4, at
the latent grid (``models.lq_condition``), and the encoder's input tile is that condition
pixel-shuffled back; everything else is the same.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import from_unit_float, to_unit_float
from .models import SwinUNetDenoiser, VQAutoencoder, lq_condition
from .samplers import (Noise, sample_deterministic, sample_levels, sample_one_step, sample_stochastic,
                       x0_predictor)
from .schedule import ResShiftSchedule
from .tiling import TileGrid, bicubic_crop, blend_tiles, blend_to_tensor
from .errors import public_error

SCALE = 4
Sampler = Literal["one_step", "deterministic", "stochastic"]
SAMPLERS = ("one_step", "deterministic", "stochastic")
StepCallback = Callable[[int, int, torch.Tensor], None]
TileCallback = Callable[[str], None]  # called after each network call on a tile: "encode"/"denoise"/"decode"
EmitRows = Callable[[int, torch.Tensor], None]
EMIT_ROWS = 64  # decoded rows handed on at a time


@public_error
class NonFiniteError(FloatingPointError):
    """The sampled latent or the decoded image has NaN/Inf values (typically fp16 overflow)."""


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"the {what} has NaN/Inf values (dtype of the weights too narrow?)")


@dataclass(frozen=True)
class Tiling:
    """Tile sizes in latent pixels (= LR pixels for x4 with the f4 autoencoder).

    ``tile``/``overlap``: denoiser tiles (``tile`` a multiple of the denoiser's 64). ``vq_tile``/
    ``vq_overlap``: VQ encoder/decoder tiles, each run with ``vq_halo`` extra latent pixels of
    context on every side that are cropped away (the VQ mid attention is quadratic in its tile)."""

    tile: int = 256
    overlap: int = 32
    vq_tile: int = 128
    vq_overlap: int = 16
    vq_halo: int = 8

    def __post_init__(self) -> None:
        if self.tile < 1 or self.vq_tile < 1:
            raise ValueError(f"tile sizes must be positive, got tile={self.tile}, vq_tile={self.vq_tile}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile), got overlap={self.overlap}, tile={self.tile}")
        if not 0 <= self.vq_overlap < self.vq_tile:
            raise ValueError(f"vq_overlap must be in [0, vq_tile), got {self.vq_overlap}, {self.vq_tile}")

    def halved(self, tile_floor: int, vq_floor: int) -> "Tiling | None":
        """Half-size tiles (not below the floors), or None when already at the floors."""
        tile = max(tile_floor, self.tile // 2 // tile_floor * tile_floor)
        vq = max(vq_floor, self.vq_tile // 2)
        if tile == self.tile and vq == self.vq_tile:
            return None
        return replace(self, tile=tile, overlap=min(self.overlap, tile // 4),
                       vq_tile=vq, vq_overlap=min(self.vq_overlap, vq // 4))


def pad_bottom_right(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad H and W at the bottom/right up to a multiple (mirror without repeating the edge).

    Images smaller than the padding are mirrored repeatedly; a 1-pixel side is replicated."""
    for dim in (-2, -1):
        need = -x.shape[dim] % multiple
        while need:
            size = x.shape[dim]
            step = min(need, size - 1) if size > 1 else need
            pad = [0, step, 0, 0] if dim == -1 else [0, 0, 0, step]
            x = F.pad(x, pad, mode="reflect" if size > 1 else "replicate")
            need -= step
    return x


def bicubic_upscale(x: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """PyTorch bicubic (A = -0.75, align_corners False, no antialias), unclamped."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def unit_to_model(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] as the official code does it: (x - 0.5) / 0.5."""
    return (x - 0.5) / 0.5


def model_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (unclamped) -> [0, 1]: clamp, x * 0.5 + 0.5, clamp (float32)."""
    return (x.float().clamp(-1, 1) * 0.5 + 0.5).clamp(0, 1)


def uint8_to_model(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32 in [-1, 1] (u8/255, then (x-0.5)/0.5)."""
    return unit_to_model(to_unit_float(torch.from_numpy(np.array(image, dtype=np.uint8))).permute(2, 0, 1)[None])


def model_to_uint8(image: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W in [-1, 1] (unclamped) -> H x W x 3 uint8 with round-half-to-even."""
    return from_unit_float(model_to_unit(image)[0].permute(1, 2, 0), np.uint8)


def _region(start: int, size: int, halo: int, length: int) -> tuple[int, int]:
    return max(0, start - halo), min(length, start + size + halo)


def encode_tiled(autoencoder: VQAutoencoder, lq_padded: torch.Tensor, tiling: Tiling,
                 on_tile: TileCallback | None = None, upsampled: bool = False) -> torch.Tensor:
    """z_y = encode(bicubic x4 of ``lq_padded``), computed tile by tile (latent = LR size).
    ``upsampled``: ``lq_padded`` already is the upsampled image space-to-depth by 4 at the latent
    grid (a "unshuffle48" condition); its tiles are pixel-shuffled back instead."""
    h, w = lq_padded.shape[-2:]
    halo = tiling.vq_halo

    def run(y: int, x: int, th: int, tw: int) -> torch.Tensor:
        y0, y1 = _region(y, th, halo, h)
        x0, x1 = _region(x, tw, halo, w)
        if upsampled:
            image = F.pixel_shuffle(lq_padded[..., y0:y1, x0:x1], SCALE)
        else:
            image = bicubic_crop(lq_padded, SCALE, SCALE * y0, SCALE * y1, SCALE * x0, SCALE * x1)
        z = autoencoder.encode(image)[..., y - y0:y - y0 + th, x - x0:x - x0 + tw]
        if on_tile:
            on_tile("encode")
        return z

    grid = TileGrid(h, w, tiling.vq_tile, tiling.vq_overlap)
    return blend_to_tensor(run, grid, autoencoder.config.embed_dim, like=lq_padded)


def tiled_x0_predictor(denoiser: SwinUNetDenoiser, schedule: ResShiftSchedule, lq_padded: torch.Tensor,
                       tiling: Tiling, on_tile: TileCallback | None = None):
    """x0-predictor over the whole latent that runs the denoiser on feathered tiles."""
    h, w = lq_padded.shape[-2:]
    multiple = denoiser.config.latent_multiple
    if min(tiling.tile, h) % multiple or min(tiling.tile, w) % multiple:
        raise ValueError(f"denoiser tile {tiling.tile} must be a multiple of {multiple}")
    grid = TileGrid(h, w, tiling.tile, tiling.overlap, multiple=multiple)  # fitted: no work wasted on overlap

    def predict(x_t: torch.Tensor, t: int) -> torch.Tensor:
        def run(y: int, x: int, th: int, tw: int) -> torch.Tensor:
            crop = (..., slice(y, y + th), slice(x, x + tw))
            x0 = x0_predictor(denoiser, schedule, lq_padded[crop])(x_t[crop], t)
            if on_tile:
                on_tile("denoise")
            return x0

        return blend_to_tensor(run, grid, x_t.shape[1], like=x_t)

    return predict


def decode_tiled(autoencoder: VQAutoencoder, zq: torch.Tensor, tiling: Tiling, emit: EmitRows,
                 on_tile: TileCallback | None = None) -> None:
    """Decode the already quantised latent ``zq`` tile by tile; finished image rows (in the
    model's [-1, 1] domain, unclamped) go to ``emit(row0, rows C x n x W*4)``."""
    h, w = zq.shape[-2:]
    halo = tiling.vq_halo

    def run(y: int, x: int, th: int, tw: int) -> torch.Tensor:
        y0, y1 = _region(y, th, halo, h)
        x0, x1 = _region(x, tw, halo, w)
        image = autoencoder.decode(zq[..., y0:y1, x0:x1], quantize=False)
        top, left = SCALE * (y - y0), SCALE * (x - x0)
        if on_tile:
            on_tile("decode")
        return image[..., top:top + SCALE * th, left:left + SCALE * tw]

    blend_tiles(run, TileGrid(h, w, tiling.vq_tile, tiling.vq_overlap), SCALE, emit)


def run_sampler(sampler: Sampler, predict, z_y: torch.Tensor, schedule: ResShiftSchedule, noise: Noise,
                step_noise: Sequence[torch.Tensor] | torch.Generator | None = None,
                callback: StepCallback | None = None, levels: Sequence[int] | None = None) -> torch.Tensor:
    """``levels``: a progressively distilled model's own grid (deterministic moves between them)."""
    if levels is not None and sampler != "stochastic":
        return sample_levels(predict, z_y, schedule, noise, levels, callback)
    if sampler == "one_step":
        return sample_one_step(predict, z_y, schedule, noise, callback)
    if sampler == "deterministic":
        return sample_deterministic(predict, z_y, schedule, noise, callback)
    if sampler == "stochastic":
        return sample_stochastic(predict, z_y, schedule, noise, step_noise, callback)
    raise ValueError(f"unknown sampler {sampler!r} ({', '.join(SAMPLERS)})")


def network_calls(sampler: Sampler, schedule: ResShiftSchedule, levels: Sequence[int] | None = None) -> int:
    if levels is not None and sampler != "stochastic":
        return len(levels)
    return 1 if sampler == "one_step" else schedule.steps


def lr_multiple(latent_multiple: int, scale: int = SCALE) -> int:
    """The LR padding multiple that makes the latent (LR x scale / 4) a multiple of ``latent_multiple``."""
    return max(1, latent_multiple * SCALE // scale)


def latent_size(h: int, w: int, scale: int = SCALE) -> tuple[int, int]:
    return h * scale // SCALE, w * scale // SCALE


def tile_counts(lq_shape: Sequence[int], tiling: Tiling, multiple: int, scale: int = SCALE) -> tuple[int, int]:
    """(VQ tiles, denoiser tiles) per pass for an LR image of ``lq_shape`` (..., h, w) and a
    model of native ``scale`` (tiles live on the latent grid)."""
    m = lr_multiple(multiple, scale)
    h, w = latent_size(*(-(-s // m) * m for s in lq_shape[-2:]), scale)
    return len(TileGrid(h, w, tiling.vq_tile, tiling.vq_overlap)), len(TileGrid(h, w, tiling.tile, tiling.overlap))


def super_resolve_rows(lq: torch.Tensor, denoiser: SwinUNetDenoiser, autoencoder: VQAutoencoder,
                       schedule: ResShiftSchedule, noise: Noise, emit: EmitRows,
                       sampler: Sampler = "one_step", tiling: Tiling | None = None,
                       step_noise: Sequence[torch.Tensor] | torch.Generator | None = None,
                       callback: StepCallback | None = None, on_tile: TileCallback | None = None,
                       scale: int = SCALE, levels: Sequence[int] | None = None) -> None:
    """x``scale`` SR of ``lq`` (1 x 3 x h x w in [-1, 1]) by a model of that native scale; the
    scale h x scale w result (unclamped, [-1, 1] domain) goes to ``emit(row0, rows)`` band by
    band, cropped to the unpadded size. ``levels``: the sampler's levels (progressive models).

    ``noise``: the prior noise at the padded latent size, or a generator to draw it from (on the
    generator's device, then moved: a seed gives the same noise on every device)."""
    if lq.shape[0] != 1:
        raise ValueError(f"super_resolve_rows takes one image, got a batch of {lq.shape[0]}")
    tiling = tiling or Tiling()
    h, w = lq.shape[-2:]
    lq_padded = pad_bottom_right(lq, lr_multiple(denoiser.config.latent_multiple, scale))
    lq_mode = getattr(denoiser.config, "lq_mode", "lq3")
    upsampled = lq_mode == "unshuffle48"
    cond = lq_condition(lq_padded, lq_mode, scale)
    z_y = encode_tiled(autoencoder, cond, tiling, on_tile, upsampled=upsampled)
    predict = tiled_x0_predictor(denoiser, schedule, cond, tiling, on_tile)
    z = run_sampler(sampler, predict, z_y, schedule, noise, step_noise, callback, levels)
    del z_y, predict, lq_padded, cond  # latent-size tensors: free them before decoding
    decode_rows(z, autoencoder, (h, w), tiling, emit, on_tile, scale)


def decode_rows(z: torch.Tensor, autoencoder: VQAutoencoder, size: tuple[int, int], tiling: Tiling,
                emit: EmitRows, on_tile: TileCallback | None = None, scale: int = SCALE) -> None:
    """Quantise the sampled latent ``z`` (1 x C x H x W, padded) and decode it tile by tile; the
    image cropped to the unpadded LR ``size`` x ``scale`` goes to ``emit`` in pieces of EMIT_ROWS rows."""
    check_finite(z, "sampled latent")
    zq = autoencoder.quantize(z)  # pointwise: once on the whole latent, never per tile
    h, w = size

    def crop(row0: int, rows: torch.Tensor) -> None:
        rows = rows[:, : max(0, scale * h - row0), : scale * w]
        for r in range(0, rows.shape[1], EMIT_ROWS):  # small pieces: small conversion temporaries
            part = rows[:, r:r + EMIT_ROWS]
            check_finite(part, "decoded image")
            emit(row0 + r, part)

    decode_tiled(autoencoder, zq, tiling, crop, on_tile)


def super_resolve(lq: torch.Tensor, denoiser: SwinUNetDenoiser, autoencoder: VQAutoencoder,
                  schedule: ResShiftSchedule, noise: Noise, sampler: Sampler = "one_step",
                  step_noise: Sequence[torch.Tensor] | torch.Generator | None = None,
                  callback: StepCallback | None = None, tiling: Tiling | None = None, scale: int = SCALE,
                  levels: Sequence[int] | None = None) -> torch.Tensor:
    """x``scale`` SR of ``lq`` (1 x 3 x h x w in [-1, 1]) as one tensor, unclamped.

    Untiled by default (every stage in one call, as the official code); pass ``tiling`` to tile."""
    if tiling is None:
        multiple = denoiser.config.latent_multiple
        m = lr_multiple(multiple, scale)
        big = max(latent_size(*(-(-n // m) * m for n in lq.shape[-2:]), scale))
        tiling = Tiling(tile=big, overlap=0, vq_tile=big, vq_overlap=0)
    out = torch.empty((1, 3, scale * lq.shape[-2], scale * lq.shape[-1]), dtype=torch.float32, device=lq.device)

    def emit(row0: int, rows: torch.Tensor) -> None:
        out[0, :, row0:row0 + rows.shape[1]] = rows

    super_resolve_rows(lq, denoiser, autoencoder, schedule, noise, emit, sampler, tiling,
                       step_noise, callback, scale=scale, levels=levels)
    return out.to(lq.dtype)
