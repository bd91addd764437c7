"""The rules of the numeric options, stated once: the engine checks every option with these, and
every host (CLI, ComfyUI nodes, A1111/Forge settings, web app) goes through the engine or calls them
itself, so a value is either used exactly as given or refused with a sentence that names the
option, the value and the rule. Nothing is rounded, clamped or reinterpreted silently.

========== =====================================================================================
option     rule
========== =====================================================================================
seed       a whole number from 0 to 2**64 - 1 (None: a random seed; hosts map their "-1 = random")
steps      a whole number: 1 (one step) or the model's schedule length (checked by the model)
scale      a number, more than 0 and at most 64 (output size = round(scale x input size))
tile       denoiser tile, a whole number of LR pixels, at least 64 and a multiple of the model's
           block (64 for the official models with window attention; any for the bundled model)
overlap    a whole number of pixels, 0 or more and smaller than the tile
vq_tile    autoencoder tile, a whole number of LR pixels, at least 16
sd tile    the SD path's UNet tile, a whole number of latent pixels, at least 8 (the UNet's factor)
vae_tile   OneStep SD Upscale's VAE tile, a whole number of pixels, at least 256, a multiple of 8
strength   a finite number
noise      official (the official scripts' draw) or tileable (a 32-px periodic field, see samplers)
========== =====================================================================================

"Whole number" means an integer, not ``True``/``False`` (``bool`` is an ``int`` in Python) and not
a float such as ``256.0``: hosts whose widgets hand over floats or text convert them first with
:func:`whole_from_host`, which refuses ``100.5`` instead of truncating it.
"""
from __future__ import annotations

import logging
import math
import numbers
import weakref
from typing import Any

import torch

from .errors import public_error

log = logging.getLogger("onestep_sr")

SEED_MAX = 2**64 - 1       # torch.Generator.manual_seed's range, and ComfyUI's seed widget's
SCALE_MAX = 64
DEFAULT_SEED = 12345  # the official inference scripts' seed
TILE_FLOOR = 64            # denoiser tiles (LR pixels); also where out-of-memory halving stops
VQ_TILE_FLOOR = 16         # autoencoder tiles (LR pixels); also where out-of-memory halving stops
SD_TILE_FLOOR = 8          # UNet tiles of the SD path (latent pixels): its UNet halves a tile 3 times
VAE_TILE_FLOOR = 256       # the SD path's VAE tile (image pixels)
VAE_FACTOR = 8             # SD VAE: pixels per latent pixel (its tile is divided by it)
SLOW_CPU_DTYPES = (torch.float16, torch.bfloat16)
_warned: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


@public_error
class OptionError(ValueError):
    """An option's value breaks its rule; the message names the option, the value and the rule."""

    def __init__(self, option: str, value: Any, rule: str, hint: str = "", message: str | None = None):
        self.option, self.value, self.rule = option, value, rule
        super().__init__(message or f"{option} must be {rule}, got {_shown(value)}" + (f"; {hint}" if hint else ""))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_whole(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (int, float, numpy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def whole(option: str, value: Any, rule: str, minimum: int | None = None, maximum: int | None = None,
          multiple: int = 1, hint: str = "") -> int:
    """``value`` as an int if it is a whole number in ``[minimum, maximum]`` and a multiple of
    ``multiple``, else :class:`OptionError` with ``rule``."""
    if not is_whole(value):
        raise OptionError(option, value, rule, hint)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) or value % multiple:
        raise OptionError(option, value, rule, hint)
    return value


def whole_from_host(option: str, value: Any) -> int:
    """A host widget's number as an int: ints, integral floats (``256.0``, as sliders and JSON
    give them) and integer text (``"256"``) are accepted; anything else is refused, never
    truncated. Range rules are the engine's (applied afterwards)."""
    if is_whole(value):
        return int(value)
    if is_number(value) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise OptionError(option, value, "a whole number")


def number_from_host(option: str, value: Any) -> float:
    """A host widget's number (int, float or numeric text) as a float; anything else refused."""
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise OptionError(option, value, "a number")


# --- the options ------------------------------------------------------------------------------


def check_seed(value: Any, option: str = "seed", random: int | None = None) -> int | None:
    """None (random) or a whole number from 0 to 2**64 - 1; ``random``: a host's own value for
    "a random seed" (e.g. -1), also returned as None."""
    if value is None or (random is not None and is_whole(value) and value == random):
        return None
    rule = f"a whole number from 0 to {SEED_MAX} (2**64 - 1)"
    return whole(option, value, rule if random is None else f"{random} (a random seed) or {rule}", 0, SEED_MAX)


def check_scale(value: Any, option: str = "scale") -> float:
    """A number in (0, 64]; x4 is the model's own, other scales resize its result."""
    if not is_number(value) or not math.isfinite(value) or not 0 < value <= SCALE_MAX:
        raise OptionError(option, value, f"a number in (0, {SCALE_MAX}] (more than 0, at most {SCALE_MAX})")
    return float(value)


def check_steps(value: Any, option: str = "steps") -> int | None:
    """None (the model's default) or a whole number of at least 1 (the model checks which)."""
    if value is None:
        return None
    return whole(option, value, "a whole number: 1 (one step) or the model's schedule length", 1)


def check_stochastic(value: Any, option: str = "stochastic") -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise OptionError(option, value, "True, False or None (the model's default)")
    return value


def check_noise(value: Any, option: str = "noise") -> str:
    from .samplers import NOISES

    if value not in NOISES:
        raise OptionError(option, value, " or ".join(NOISES))
    return value


def check_tile(value: Any, multiple: int = 1, option: str = "tile") -> int:
    """Denoiser tile: a whole number of LR pixels, at least 64 and a multiple of ``multiple``
    (the denoiser's block: its windowed attention works on blocks of that many latent pixels)."""
    step, floor = max(1, int(multiple)), tile_floor(multiple)
    if step == 1:
        rule = f"a whole number of input pixels, at least {floor}"
    else:
        rule = f"a whole number of input pixels, at least {floor} and a multiple of {step} for this model"
    hint = ""
    if is_whole(value) and value >= floor and value % step:
        below = value // step * step
        hint = f"use {below} or {below + step}" if below >= floor else f"use {below + step}"
    return whole(option, value, rule, floor, multiple=step, hint=hint)


def check_overlap(value: Any, tile_size: int, option: str = "overlap") -> int:
    """Overlap of neighbouring tiles: a whole number of pixels in [0, tile)."""
    return whole(option, value, f"a whole number of pixels from 0 to {tile_size - 1} (smaller than the tile "
                                f"{tile_size})", 0, tile_size - 1)


def check_vq_tile(value: Any, option: str = "vq_tile") -> int:
    """Autoencoder tile: a whole number of LR pixels, at least 16 (smaller tiles only cost time)."""
    return whole(option, value, f"a whole number of input pixels, at least {VQ_TILE_FLOOR}", VQ_TILE_FLOOR)


def check_sd_tile(value: Any, option: str = "tile") -> int:
    """The SD path's UNet tile: a whole number of latent pixels, at least 8 (the SD UNet halves its
    input three times)."""
    return whole(option, value, f"a whole number of latent pixels, at least {SD_TILE_FLOOR}", SD_TILE_FLOOR)


def check_vae_tile(value: Any, option: str = "vae_tile") -> int:
    """The SD path's VAE tile: a whole number of image pixels, at least 256, a multiple of 8 (the
    VAE's factor: the decoder's tile is this divided by 8)."""
    rule = f"a whole number of pixels, at least {VAE_TILE_FLOOR} and a multiple of {VAE_FACTOR}"
    return whole(option, value, rule, VAE_TILE_FLOOR, multiple=VAE_FACTOR)


def check_finite(value: Any, option: str) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise OptionError(option, value, "a finite number")
    return float(value)


def tile_floor(multiple: int) -> int:
    """The smallest denoiser tile for a denoiser block of ``multiple`` (64 rounded up to it)."""
    step = max(1, int(multiple))
    return -(-TILE_FLOOR // step) * step


def check_upscale(*, steps: Any = None, stochastic: Any = None, seed: Any = None, scale: Any = 4.0,
                  tile: Any = None, overlap: Any = None, vq_tile: Any = None, multiple: int = 1,
                  **_ignored: Any) -> dict[str, Any]:
    """The numeric options of ``OneStepSR.upscale`` / ``sample`` / ``encode`` / ``decode`` checked
    (None = the default), as a dict of the checked values. ``multiple``: the denoiser's block; with
    the default 1 only what holds for every model is checked, so a host can call this before any
    model is loaded (the model checks the rest: ``tile``'s multiple, ``steps`` against its
    schedule). Other keys (``color_fix``, ``dtype``, ...) are ignored here."""
    from .pipeline import Tiling

    tile = None if tile is None else check_tile(tile, multiple)
    return dict(steps=check_steps(steps), stochastic=check_stochastic(stochastic), seed=check_seed(seed),
                scale=check_scale(scale), tile=tile,
                overlap=None if overlap is None else check_overlap(overlap, tile or Tiling.tile),
                vq_tile=None if vq_tile is None else check_vq_tile(vq_tile))


def whole_arg(minimum: int, maximum: int | None = None):
    """An argparse ``type`` for a whole-number flag in ``[minimum, maximum]`` (the message says so)."""
    import argparse

    rule = f"a whole number from {minimum} to {maximum}" if maximum is not None else \
        f"a whole number, at least {minimum}"

    def parse(text: str) -> int:
        try:
            return whole("the value", whole_from_host("the value", text), rule, minimum, maximum)
        except OptionError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None

    parse.__name__ = "whole number"
    return parse


# --- precision ----------------------------------------------------------------------------------


def slow_precision(dtype: torch.dtype | None, device: torch.device | str | None) -> str | None:
    """The sentence to show when ``dtype`` on ``device`` is known to be slow (fp16/bf16 on a CPU),
    else None."""
    if dtype not in SLOW_CPU_DTYPES or device is None or torch.device(device).type != "cpu":
        return None
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    return (f"{name} on the CPU is much slower than fp32 (measured 8x to 20x on this project's test machines; "
            f"most CPUs have no fast {name} arithmetic): use fp32 on a CPU unless memory is the problem")


def warn_slow_precision(dtype: torch.dtype | None, device: torch.device | str | None,
                        once_for: Any = None) -> str | None:
    """Log :func:`slow_precision`'s sentence as a warning (every host shows the log) and return it;
    with ``once_for`` (e.g. the model), only the first time for that object, device and dtype."""
    message = slow_precision(dtype, device)
    if message and once_for is not None:
        seen = _warned.setdefault(once_for, set())
        if (str(device), dtype) in seen:
            return message
        seen.add((str(device), dtype))
    if message:
        log.warning("OneStep SR: %s", message)
    return message
