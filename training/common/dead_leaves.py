"""Dead-leaves images: licence-free training data with natural-image statistics.

Opaque disks are stacked front to back until the canvas is covered (Matheron 1968; Lee, Mumford &
Huang 2001), radii drawn from the scale-invariant power law p(r) ~ r^-3 between ``r_min`` and
``r_max``. Restoration networks trained on such images come close to ones trained on photos
(Achddou, Gousseau & Ladjal, SSVM 2021; Baradad et al., NeurIPS 2021): see
``../shared/specs/realworld_default.md``.

Our choices (not the papers'): colours are drawn from the pixels of a palette (the train photos),
so the colour statistics are natural ones; a share of the disks carries a texture (a sinusoidal
grating or smooth multiplicative noise) so the images are not only flat regions and edges; the
image is rendered at twice its size and area-downsampled, which gives anti-aliased edges
(an image with pixel-sharp stair-case edges would teach the network a look no camera makes).
Every image depends only on (seed, index).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

SUPERSAMPLE = 2


def power_law_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float) -> np.ndarray:
    """``count`` radii with density ~ r^-3 on [r_min, r_max] (inverse of the CDF)."""
    u = rng.random(count)
    return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A multiplicative texture (h, w) around 1: a grating or smooth noise, amplitude 0.05-0.35."""
    amplitude = rng.uniform(0.05, 0.35)
    if rng.random() < 0.5:
        period = rng.uniform(3.0, 24.0) * SUPERSAMPLE
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        return 1 + amplitude * np.sin(phase + rng.uniform(0, 2 * np.pi))
    cell = int(rng.integers(2, 9)) * SUPERSAMPLE
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize(((w // cell + 2) * cell, (h // cell + 2) * cell),
                                                       Image.BICUBIC))[:h, :w]
    return 1 + amplitude * np.clip(smooth, -2.5, 2.5) / 2.5


def dead_leaves(rng: np.random.Generator, size: int, palette: np.ndarray, r_min: float = 1.5,
                r_max: float | None = None, texture_prob: float = 0.3, max_disks: int = 20000) -> np.ndarray:
    """One (size, size, 3) uint8 dead-leaves image. ``palette``: (N, 3) uint8 colours to draw from."""
    n = size * SUPERSAMPLE
    r_max = r_max or size / 2
    canvas = np.zeros((n, n, 3), dtype=np.float32)
    covered = np.zeros((n, n), dtype=bool)
    yy, xx = np.mgrid[0:n, 0:n]
    radii = power_law_radii(rng, max_disks, r_min * SUPERSAMPLE, r_max * SUPERSAMPLE)
    for k, r in enumerate(radii):
        cy, cx = rng.uniform(-r, n + r, size=2)
        y0, y1 = max(0, int(cy - r)), min(n, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(n, int(cx + r) + 1)
        colour = palette[int(rng.integers(len(palette)))].astype(np.float32)
        textured = rng.random() < texture_prob
        if y0 >= y1 or x0 >= x1:
            continue
        inside = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        fresh = inside & ~covered[y0:y1, x0:x1]  # front to back: only what no earlier disk hides
        if not fresh.any():
            continue
        patch = np.broadcast_to(colour, (y1 - y0, x1 - x0, 3))
        if textured:
            patch = patch * _texture(rng, y1 - y0, x1 - x0)[..., None]
        canvas[y0:y1, x0:x1][fresh] = patch[fresh]
        covered[y0:y1, x0:x1] |= fresh
        if k % 256 == 0 and covered.all():
            break
    canvas[~covered] = palette[int(rng.integers(len(palette)))]  # the background behind every disk
    image = np.clip(canvas, 0, 255).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


def palette_from_images(paths: list[Path], per_image: int = 4000, seed: int = 0) -> np.ndarray:
    """(N, 3) uint8 colours sampled uniformly from the pixels of ``paths`` (RGB)."""
    rng = np.random.default_rng(seed)
    colours = []
    for path in paths:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB")).reshape(-1, 3)
        colours.append(arr[rng.integers(len(arr), size=per_image)])
    return np.concatenate(colours)


def write_dead_leaves(folder: str | os.PathLike, count: int, size: int, palette: np.ndarray,
                      seed: int = 0) -> list[Path]:
    """``count`` images ``dead_leaves_NNNN.png`` in ``folder`` (existing complete files are kept:
    image i depends only on (seed, i), so an interrupted call resumes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"dead_leaves_{i:04d}.png"
        if not path.is_file():
            image = dead_leaves(np.random.default_rng([seed, i]), size, palette)
            tmp = path.with_name(path.name + ".tmp")  # not an image name: never listed as data
            Image.fromarray(image).save(tmp, format="PNG")
            os.replace(tmp, path)
        paths.append(path)
    return paths
