"""``onestep-sr upscale``: x4 super-resolution of images."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..checkpoint import load_autoencoder, load_denoiser
from ..pipeline import model_to_uint8, super_resolve, uint8_to_model
from ..schedule import SCHEDULE_T4, SCHEDULE_T15
from .common import UsageError

SCHEDULES = {"T15": SCHEDULE_T15, "T4": SCHEDULE_T4}
DEFAULT_SEED = 12345
#: Without tiling (not implemented yet) the VQ and the denoiser run on the whole image at once;
#: beyond this many LR pixels that needs tens of GB, so it is refused up front instead of crashing.
MAX_UNTILED_LR_PIXELS = 512 * 512



def read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"input not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{path}: not a readable image ({exc})") from exc


def write_png_atomic(array: np.ndarray, path: Path) -> None:
    """Write to a temporary file in the target folder, then rename: no partial file on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def upscale(args: argparse.Namespace) -> None:
    src, dst = Path(args.input), Path(args.output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise UsageError(f"refusing to overwrite the input {src}")
    image = read_rgb(src)
    height, width = image.shape[:2]
    if height * width > MAX_UNTILED_LR_PIXELS:
        raise UsageError(
            f"{src}: {width}x{height} is too large to upscale in one piece (limit "
            f"{MAX_UNTILED_LR_PIXELS} pixels until tiling is available); crop or downscale it first"
        )
    denoiser = load_denoiser(args.denoiser)
    autoencoder = load_autoencoder(args.autoencoder)
    schedule = SCHEDULES[args.schedule]
    sampler = "one_step" if args.steps == 1 else ("stochastic" if args.stochastic else "deterministic")
    if args.steps not in (1, schedule.steps):
        raise UsageError(f"--steps must be 1 or {schedule.steps} for schedule {args.schedule}")
    generator = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        sr = super_resolve(uint8_to_model(image), denoiser, autoencoder, schedule, generator, sampler)
    write_png_atomic(model_to_uint8(sr), dst)
    print(f"{src} -> {dst} ({sr.shape[-1]}x{sr.shape[-2]})")


def register(sub) -> None:
    up = sub.add_parser("upscale", help="x4 super-resolution of one image")
    up.add_argument("input")
    up.add_argument("-o", "--output", required=True)
    up.add_argument("--denoiser", required=True, help="denoiser weights (.safetensors/.pth)")
    up.add_argument("--autoencoder", required=True, help="VQ-f4 weights (.safetensors/.pth)")
    up.add_argument("--schedule", choices=sorted(SCHEDULES), default="T15")
    up.add_argument("--steps", type=int, default=1, help="1 = one-step student, else the schedule's T")
    up.add_argument("--stochastic", action="store_true", help="original ResShift sampler")
    up.add_argument("--seed", type=int, default=DEFAULT_SEED)
    up.set_defaults(run=upscale)
