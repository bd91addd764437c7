"""Benchmark an upscaler on a folder of HR images: PSNR / SSIM on Y against plain bicubic.

For every image: load RGB, crop to a multiple of ``scale`` (top-left corner kept), degrade to
LR, upscale, and measure the result and a plain bicubic upsampling of the same LR against the
HR image with :mod:`training.common.metrics`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import IMAGE_EXTENSIONS, list_images, load_rgb
from .degradations import quantise
from .metrics import psnr_y, ssim_y

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_rgb", "bicubic_upsample", "evaluate_folder",
           "summarise", "format_table"]

DEGRADATIONS = ("bicubic",)

Tensor = torch.Tensor


def bicubic_upsample(lr: Tensor, size: tuple[int, int]) -> Tensor:
    """Plain bicubic upsampling of (3, h, w) to ``size`` (align_corners=False), clamped to [0, 1]."""
    out = F.interpolate(lr[None].float(), size=size, mode="bicubic", align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def evaluate_folder(upscale: Callable[[Tensor], Tensor], folder, scale: int = 4,
                    degrade: str = "bicubic", make_lr: Callable[[Tensor, int], Tensor] | None = None,
                    *, crop_border: int | None = None, quantize: bool = True) -> list[dict]:
    """Measure ``upscale`` on every image in ``folder`` (png/jpg/jpeg/webp/bmp, sorted by name).

    ``upscale`` takes a float (3, h, w) LR tensor in [0, 1] on the CPU and returns (3, H, W) in
    [0, 1] (it may return it on another device; it is moved back). ``make_lr(hr, scale)`` makes the
    LR; by default ``training.common.degradations.bicubic_degrade`` (the ``degrade`` name selects it; only
    "bicubic" exists). ``crop_border`` defaults to ``scale``, the usual SR convention. With
    ``quantize`` (the default) both the result and the bicubic baseline are clamped and rounded to
    1/255 before measuring, as the benchmarks measure saved 8-bit images.

    Returns one dict per image: name, psnr_y, ssim_y, bicubic_psnr_y, bicubic_ssim_y and size
    (H, W) of the cropped HR image. PSNR is ``inf`` where the result equals HR exactly.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if make_lr is None:
        if degrade not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degrade!r}; known: {', '.join(DEGRADATIONS)}")
        from training.common.degradations import bicubic_degrade  # lazy: a sibling module
        make_lr = bicubic_degrade
    border = scale if crop_border is None else crop_border
    paths = list_images(folder)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")

    rows = []
    for path in paths:
        hr = load_rgb(path, scale)
        size = (hr.shape[-2], hr.shape[-1])
        lr = make_lr(hr, scale)
        expected_lr = (3, size[0] // scale, size[1] // scale)
        if tuple(lr.shape) != expected_lr:
            raise ValueError(f"{path.name}: make_lr returned shape {tuple(lr.shape)}, expected {expected_lr}")
        lr = lr.float().clamp(0.0, 1.0)
        with torch.no_grad():
            sr = upscale(lr.clone())
        sr = sr.detach().float().cpu()
        if tuple(sr.shape) != tuple(hr.shape):
            raise ValueError(f"{path.name}: upscale returned shape {tuple(sr.shape)}, "
                             f"expected the HR shape {tuple(hr.shape)}")
        sr = sr.clamp(0.0, 1.0)
        bic = bicubic_upsample(lr, size)
        if quantize:
            sr, bic = quantise(sr), quantise(bic)
        rows.append(dict(
            name=path.name,
            psnr_y=psnr_y(sr, hr, border),
            ssim_y=ssim_y(sr, hr, border),
            bicubic_psnr_y=psnr_y(bic, hr, border),
            bicubic_ssim_y=ssim_y(bic, hr, border),
            size=size,
        ))
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(rows: list[dict]) -> dict:
    """Means over ``rows``: count, psnr_y, ssim_y, bicubic_psnr_y, bicubic_ssim_y, psnr_gain, ssim_gain.

    The gains are the means of the per-image differences (result minus bicubic), which equal the
    differences of the means. With no rows every mean is NaN; an ``inf`` PSNR makes its means inf.
    """
    out: dict = {"count": len(rows)}
    for key in ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"):
        out[key] = _mean([float(r[key]) for r in rows])
    out["psnr_gain"] = _mean([float(r["psnr_y"]) - float(r["bicubic_psnr_y"]) for r in rows])
    out["ssim_gain"] = _mean([float(r["ssim_y"]) - float(r["bicubic_ssim_y"]) for r in rows])
    return out


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_table(rows: list[dict], summary: dict | None = None) -> str:
    """A plain-text table: one line per image and a closing line of means (``summary``)."""
    if summary is None:
        summary = summarise(rows)
    header = ("image", "size", "PSNR-Y", "SSIM-Y", "bic PSNR", "bic SSIM", "dPSNR", "dSSIM")
    lines = []
    for r in rows:
        h, w = r["size"]
        lines.append((str(r["name"]), f"{w}x{h}", _fmt(r["psnr_y"], 2), _fmt(r["ssim_y"], 4),
                      _fmt(r["bicubic_psnr_y"], 2), _fmt(r["bicubic_ssim_y"], 4),
                      _fmt(r["psnr_y"] - r["bicubic_psnr_y"], 2, True),
                      _fmt(r["ssim_y"] - r["bicubic_ssim_y"], 4, True)))
    mean = (f"mean ({summary['count']})", "", _fmt(summary["psnr_y"], 2), _fmt(summary["ssim_y"], 4),
            _fmt(summary["bicubic_psnr_y"], 2), _fmt(summary["bicubic_ssim_y"], 4),
            _fmt(summary["psnr_gain"], 2, True), _fmt(summary["ssim_gain"], 4, True))
    widths = [max(len(row[i]) for row in [header, mean, *lines]) for i in range(len(header))]

    def render(row) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *map(render, lines), rule, render(mean)])
