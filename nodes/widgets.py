"""Inputs shared by several nodes (one definition each, so their ranges never drift apart)."""
from __future__ import annotations

from ..onestep_sr.model import DEFAULT_SEED
from ..onestep_sr.options import SEED_MAX, TILE_FLOOR
from ..onestep_sr.pipeline import Tiling
from .api import ONESTEP_SR_MODEL, io

MAX_SEED = SEED_MAX  # 2**64 - 1, as ComfyUI's KSampler


def model_input() -> io.Input:
    return ONESTEP_SR_MODEL.Input("model", tooltip="From Load OneStep SR Model.")


def seed_input() -> io.Input:
    return io.Int.Input("seed", default=DEFAULT_SEED, min=0, max=MAX_SEED, control_after_generate=True,
                        tooltip="The noise the sampler starts from (and the stochastic sampler's). "
                                "12345 is the official scripts' seed.")


def tile_inputs() -> list[io.Input]:
    return [
        io.Int.Input("tile", default=Tiling.tile, min=TILE_FLOOR, max=4096, step=64,
                     tooltip="Denoiser tile in input pixels: at least 64, a multiple of 64 for the official "
                             "models (another value is refused, never rounded). Out of memory halves it "
                             "automatically."),
        io.Int.Input("overlap", default=Tiling.overlap, min=0, max=1024, step=8,
                     tooltip="Overlap of neighbouring tiles in input pixels (smaller than the tile), blended "
                             "with a raised cosine; one noise field covers all tiles, so there are no seams."),
    ]
