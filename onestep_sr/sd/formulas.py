"""Pure-torch formulas of the one-step SD path (no diffusers): schedule, x0 prediction, latent tiles.

Schedule
--------
Stable Diffusion 1.x/2.x train with the DDPM "scaled_linear" schedule: ``beta_i`` runs linearly in
``sqrt(beta)`` from ``sqrt(0.00085)`` to ``sqrt(0.012)`` over 1000 steps, and
``abar_t = prod_{i <= t} (1 - beta_i)``. At ``t = 999``: ``abar = 0.004660`` (``sqrt(abar) =
0.068265``).

One step
--------
The student feeds the LR latent ``z`` as if it were ``x_t`` at ``t = 999`` and turns the network's
output into the clean latent in closed form (no scheduler object, so no scheduler-version quirks):

* epsilon models: ``x0 = (z - sqrt(1 - abar) * eps) / sqrt(abar)``
* v models:       ``x0 = sqrt(abar) * z - sqrt(1 - abar) * v``

Latent tiles
------------
Large latents are cut into overlapping tiles (default 96 latent px with 32 px overlap, the OSEDiff
defaults); each tile's network output is weighted by a separable Gaussian bump (variance 0.01 of
the squared tile size, centred on the tile) and the weighted sum is divided by the summed weights.
A latent that fits in one tile is one call, so the result is then exactly the untiled one.
Out of memory halves the tile (and the overlap with it) down to ``LATENT_TILE_FLOOR`` and starts
the blend again (``run_tiled_halving``).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..model import OutOfMemoryError, is_out_of_memory
from ..tiling import tile_starts

log = logging.getLogger(__name__)

TRAIN_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
ONE_STEP_T = 999
LATENT_TILE = 96
LATENT_OVERLAP = 32
GAUSSIAN_VAR = 0.01
PIXEL_MULTIPLE = 8
MIN_PIXELS = 64          # 8 latent pixels
LATENT_TILE_FLOOR = 16   # smallest tile out-of-memory halving goes to (128 image pixels)
PREDICTION_TYPES = ("epsilon", "v_prediction")


def scaled_linear_alphas_cumprod(beta_start: float = BETA_START, beta_end: float = BETA_END,
                                 steps: int = TRAIN_STEPS) -> torch.Tensor:
    """``abar_t`` for t = 0..steps-1 (float64) of the scaled_linear DDPM schedule."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def abar_at(t: int = ONE_STEP_T, alphas_cumprod: torch.Tensor | None = None) -> float:
    """``abar_t`` as a Python float (the scaled_linear schedule unless another is given)."""
    table = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    if not 0 <= t < len(table):
        raise ValueError(f"timestep {t} is outside the schedule's 0..{len(table) - 1}")
    return float(table[t])


def x0_from_eps(z: torch.Tensor, eps: torch.Tensor, abar: float) -> torch.Tensor:
    """Clean latent from an epsilon prediction: ``(z - sqrt(1 - abar) eps) / sqrt(abar)``."""
    return (z - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)


def x0_from_v(z: torch.Tensor, v: torch.Tensor, abar: float) -> torch.Tensor:
    """Clean latent from a v prediction: ``sqrt(abar) z - sqrt(1 - abar) v``."""
    return math.sqrt(abar) * z - math.sqrt(1.0 - abar) * v


def x0_from_prediction(z: torch.Tensor, out: torch.Tensor, abar: float, prediction_type: str) -> torch.Tensor:
    """Dispatch on ``prediction_type`` ("epsilon" or "v_prediction")."""
    if prediction_type == "epsilon":
        return x0_from_eps(z, out, abar)
    if prediction_type == "v_prediction":
        return x0_from_v(z, out, abar)
    raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


# ----------------------------------------------------------------------------- latent tiles


def gaussian_weights_1d(length: int, var: float = GAUSSIAN_VAR) -> torch.Tensor:
    """``exp(-(x - mid)^2 / length^2 / (2 var)) / sqrt(2 pi var)`` for x = 0..length-1 (float64)."""
    x = torch.arange(length, dtype=torch.float64)
    mid = (length - 1) / 2
    return torch.exp(-((x - mid) ** 2) / (length ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def gaussian_tile_weights(height: int, width: int, var: float = GAUSSIAN_VAR) -> torch.Tensor:
    """Separable Gaussian weights of one ``height x width`` tile (float64, strictly positive)."""
    return gaussian_weights_1d(height, var)[:, None] * gaussian_weights_1d(width, var)[None, :]


def latent_tile_boxes(height: int, width: int, tile: int = LATENT_TILE,
                      overlap: int = LATENT_OVERLAP) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` boxes of tiles of ``min(tile, size)`` covering the latent with at least
    ``overlap`` shared pixels (the last tile of a row/column ends at the border)."""
    if tile < 1 or overlap < 0:
        raise ValueError(f"latent tile {tile} must be >= 1 and overlap {overlap} >= 0")
    th, tw = min(tile, height), min(tile, width)
    return [(y, y + th, x, x + tw)
            for y in tile_starts(height, th, overlap if th < height else 0)
            for x in tile_starts(width, tw, overlap if tw < width else 0)]


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, tile: int = LATENT_TILE,
              overlap: int = LATENT_OVERLAP, var: float = GAUSSIAN_VAR,
              on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``fn`` (B x C x h x w -> B x C' x h x w) over overlapping tiles of ``latent``, Gaussian-blended.

    One call on the whole latent when it fits in one tile (then equal to ``fn(latent)``).
    ``on_tile(done, total)`` is called after each tile (progress / cancel point).
    """
    height, width = latent.shape[-2:]
    boxes = latent_tile_boxes(height, width, tile, overlap)
    if len(boxes) == 1:
        out = fn(latent)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    total = None
    weight_sum = torch.zeros(height, width, dtype=torch.float64, device=latent.device)
    for index, (y0, y1, x0, x1) in enumerate(boxes):
        piece = fn(latent[..., y0:y1, x0:x1])
        if piece.shape[-2:] != (y1 - y0, x1 - x0):
            raise ValueError(f"tile function returned size {tuple(piece.shape[-2:])} for a "
                             f"{(y1 - y0, x1 - x0)} tile")
        w = gaussian_tile_weights(y1 - y0, x1 - x0, var).to(latent.device)
        if total is None:
            total = torch.zeros(*piece.shape[:-2], height, width, dtype=torch.float64, device=latent.device)
        total[..., y0:y1, x0:x1] += piece.to(torch.float64) * w
        weight_sum[y0:y1, x0:x1] += w
        if on_tile is not None:
            on_tile(index + 1, len(boxes))
    return (total / weight_sum).to(piece.dtype)


def halved_tile(tile: int, overlap: int, floor: int = LATENT_TILE_FLOOR) -> tuple[int, int] | None:
    """The next smaller ``(tile, overlap)`` after running out of memory (overlap keeps its share of
    the tile), or None when ``tile`` is already at ``floor``."""
    if tile <= floor:
        return None
    smaller = max(floor, tile // 2)
    return smaller, overlap * smaller // tile


def run_tiled_halving(fn: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, tile: int = LATENT_TILE,
                      overlap: int = LATENT_OVERLAP, on_tile: Callable[[int, int], None] | None = None,
                      floor: int = LATENT_TILE_FLOOR, what: str = "the latent") -> torch.Tensor:
    """``run_tiled``; out of memory (CUDA, MPS or CPU allocation failures) halves the tile and
    starts again (``on_tile`` then counts the new tiles from 1); below ``floor`` it raises
    ``OutOfMemoryError`` naming the sizes tried. Other errors pass through unchanged."""
    if tile > max(latent.shape[-2:]):   # halving starts from what actually ran, same overlap share
        tile, overlap = max(latent.shape[-2:]), overlap * max(latent.shape[-2:]) // tile
    while True:
        failure = None
        try:
            return run_tiled(fn, latent, tile=tile, overlap=overlap, on_tile=on_tile)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not is_out_of_memory(exc):
                raise
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # outside the except block, so the failed attempt's tensors are freed before retrying
        if latent.is_cuda:
            torch.cuda.empty_cache()
        smaller = halved_tile(tile, overlap, floor)
        if smaller is None:
            raise OutOfMemoryError(
                f"out of memory in the UNet on {what} ({latent.shape[-2]}x{latent.shape[-1]} latent) on "
                f"{latent.device} even with {tile}-pixel latent tiles: {failure}. Free memory (close other "
                f"programs/models) or use a smaller image or scale.")
        log.warning("out of memory with %d-pixel latent tiles; retrying with %d (overlap %d)",
                    tile, smaller[0], smaller[1])
        tile, overlap = smaller


# ----------------------------------------------------------------------------- padding


def pad_to_multiple(image: torch.Tensor, multiple: int = PIXEL_MULTIPLE,
                    min_size: int = MIN_PIXELS) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad B x C x H x W on the bottom/right to multiples of ``multiple`` and at least ``min_size``
    (reflect; replicate where the image is too small to reflect). Returns the padded image and the
    original ``(H, W)``. The minimum keeps the UNet's deepest feature maps larger than 1 x 1."""
    height, width = image.shape[-2:]
    pad_h = max(height + -height % multiple, min_size) - height
    pad_w = max(width + -width % multiple, min_size) - width
    if pad_h == 0 and pad_w == 0:
        return image, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Top-left ``size = (H, W)`` crop: undoes :func:`pad_to_multiple`."""
    return image[..., : size[0], : size[1]]
