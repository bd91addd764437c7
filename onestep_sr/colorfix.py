"""Colour correction of a super-resolved image towards its (bicubic-upsampled) low-resolution input.

These are the two colour fixes published with StableSR and reused by OSEDiff and others, written
here from their definitions (images are float in [0, 1], every result is clamped to [0, 1]):

* ``adain``: per channel, over all pixels, mean ``mu`` and ``sigma = sqrt(var + 1e-5)`` with the
  unbiased (N - 1) variance; ``out = (sr - mu_sr) / sigma_sr * sigma_ref + mu_ref``.
* ``wavelet``: blur level i (i = 0..4) is a depthwise 3x3 convolution with the kernel
  ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` at dilation ``2**i`` on the image replicate-padded by
  ``2**i`` pixels. ``low`` = the image passed through levels 0..4 in turn, ``high = image - low``;
  ``out = high(sr) + low(ref)``. The total support radius is 1 + 2 + 4 + 8 + 16 = 31 pixels.
* ``none``: ``out = sr``.

``color_fix_buffer`` applies the same fixes in place to a huge H x W x 3 uint8 / uint16 / float32
image in horizontal bands, never holding a float copy of more than one band (plus halo).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import ImageInputError, from_unit_float, to_unit_float
from .options import OptionError

COLOR_FIXES = ("none", "adain", "wavelet")
WAVELET_LEVELS = 5
WAVELET_RADIUS = sum(2 ** i for i in range(WAVELET_LEVELS))  # 31
WAVELET_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
ADAIN_EPS = 1e-5

BUFFER_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def _check_mode(mode: str) -> None:
    if mode not in COLOR_FIXES:
        raise OptionError("color_fix", mode, f"one of {', '.join(COLOR_FIXES)}",
                          message=f"unknown colour fix {mode!r}; expected one of {COLOR_FIXES}")


# ----------------------------------------------------------------------------- whole image


def _affine(x: torch.Tensor, mu_x, sigma_x, mu_ref, sigma_ref) -> torch.Tensor:
    return ((x - mu_x) / sigma_x * sigma_ref + mu_ref).clamp_(0.0, 1.0)


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(batch, channel) mean and sqrt(unbiased var + eps), accumulated in float64."""
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=(-2, -1), keepdim=True)
    std = (x64.var(dim=(-2, -1), keepdim=True, unbiased=True) + ADAIN_EPS).sqrt()
    return mean.to(x.dtype), std.to(x.dtype)


def adain(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Match each channel's mean and std of ``sr`` (B x C x H x W) to those of ``ref``."""
    mu_sr, sigma_sr = _mean_std(sr)
    mu_ref, sigma_ref = _mean_std(ref.to(sr.dtype))
    return _affine(sr, mu_sr, sigma_sr, mu_ref, sigma_ref)


def wavelet_blur(image: torch.Tensor, level: int) -> torch.Tensor:
    """One low-pass level: the 3x3 kernel at dilation 2**level on the replicate-padded image."""
    d = 2 ** level
    channels = image.shape[1]
    weight = WAVELET_KERNEL.to(image.dtype).to(image.device).expand(channels, 1, 3, 3)
    padded = F.pad(image, (d, d, d, d), mode="replicate")
    return F.conv2d(padded, weight, dilation=d, groups=channels)


def wavelet_low(image: torch.Tensor) -> torch.Tensor:
    """The low-frequency part: the image through blur levels 0..4."""
    low = image
    for level in range(WAVELET_LEVELS):
        low = wavelet_blur(low, level)
    return low


def wavelet(sr: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """High frequencies of ``sr`` plus low frequencies of ``ref`` (same shape, B x C x H x W)."""
    if sr.shape != ref.shape:
        raise ValueError(f"wavelet colour fix needs equal shapes, got {tuple(sr.shape)} "
                         f"and {tuple(ref.shape)}")
    ref = ref.to(sr.dtype)
    return (sr - wavelet_low(sr) + wavelet_low(ref)).clamp_(0.0, 1.0)


def color_fix(sr: torch.Tensor, ref: torch.Tensor, mode: str) -> torch.Tensor:
    """Dispatch on ``mode`` (one of COLOR_FIXES)."""
    _check_mode(mode)
    if mode == "adain":
        return adain(sr, ref)
    if mode == "wavelet":
        return wavelet(sr, ref)
    return sr


def color_fix_towards(images: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Colour-fix a batch ``images`` (B x C x H x W) towards ``reference`` of any size (bicubic-
    resized, antialiased when shrinking), one reference image for all or one per image."""
    _check_mode(mode)
    if images.ndim != 4 or reference.ndim != 4 or images.shape[1] != reference.shape[1]:
        raise ImageInputError(f"colour fix needs B x C x H x W images and reference with the same channels, got "
                              f"{tuple(images.shape)} and {tuple(reference.shape)}")
    if reference.shape[0] not in (1, images.shape[0]):
        raise ImageInputError(f"the reference batch has {reference.shape[0]} images; give 1 or {images.shape[0]} "
                              "(one per image)")
    ref = reference.to(images.dtype)
    if ref.shape[-2:] != images.shape[-2:]:
        shrinking = ref.shape[-2] > images.shape[-2] or ref.shape[-1] > images.shape[-1]
        ref = F.interpolate(ref, size=images.shape[-2:], mode="bicubic", align_corners=False,
                            antialias=shrinking).clamp_(0.0, 1.0)
    return color_fix(images, ref.expand(images.shape[0], -1, -1, -1), mode)


# ----------------------------------------------------------------------------- banded, in place


def _to_nchw(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rows).permute(2, 0, 1).unsqueeze(0)


def _to_hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).contiguous().numpy()


def _reference_rows(reference, row0: int, row1: int, width: int) -> torch.Tensor:
    ref = reference(row0, row1)
    if tuple(ref.shape) != (1, 3, row1 - row0, width):
        raise ValueError(f"reference({row0}, {row1}) returned shape {tuple(ref.shape)}, "
                         f"expected {(1, 3, row1 - row0, width)}")
    return ref.to(device="cpu", dtype=torch.float32)


def _buffer_adain(buffer: np.ndarray, reference, band_rows: int) -> None:
    height, width, _ = buffer.shape
    bands = [(r0, min(r0 + band_rows, height)) for r0 in range(0, height, band_rows)]
    sums = np.zeros((2, 2, 3), dtype=np.float64)  # [sr|ref][sum|sum of squares][channel]
    for r0, r1 in bands:  # pass 1: exact float64 statistics
        sr = to_unit_float(buffer[r0:r1]).astype(np.float64)
        ref = _reference_rows(reference, r0, r1, width)[0].to(torch.float64).numpy()
        sums[0] += (sr.sum(axis=(0, 1)), np.square(sr).sum(axis=(0, 1)))
        sums[1] += (ref.sum(axis=(1, 2)), np.square(ref).sum(axis=(1, 2)))
    n = height * width
    mean = sums[:, 0] / n
    var = (sums[:, 1] - n * mean * mean) / (n - 1)
    std = np.sqrt(np.maximum(var, 0.0) + ADAIN_EPS)
    mu_sr, mu_ref, sigma_sr, sigma_ref = (v.astype(np.float32) for v in (mean[0], mean[1], std[0], std[1]))
    for r0, r1 in bands:  # pass 2: the affine, band by band
        sr = to_unit_float(buffer[r0:r1])
        buffer[r0:r1] = from_unit_float((sr - mu_sr) / sigma_sr * sigma_ref + mu_ref, buffer.dtype)


def _buffer_wavelet(buffer: np.ndarray, reference, band_rows: int) -> None:
    height, width, _ = buffer.shape
    halo = WAVELET_RADIUS
    # Original (dequantised) rows [max(0, r0 - halo), r0) above the current band: those rows of
    # ``buffer`` have already been overwritten, so they come from this small carry instead.
    carry = np.zeros((0, width, 3), dtype=np.float32)
    for r0 in range(0, height, band_rows):
        r1 = min(r0 + band_rows, height)
        top, bottom = r0 - carry.shape[0], min(r1 + halo, height)
        slab = np.concatenate([carry, to_unit_float(buffer[r0:bottom])], axis=0)  # rows [top, bottom)
        ref = _reference_rows(reference, top, bottom, width)
        # Rows at least `halo` from a cut (non-image) slab edge are exact; band rows are.
        fixed = wavelet(_to_nchw(slab), ref)[:, :, r0 - top:r1 - top]
        carry = slab[max(r1 - halo, 0) - top:r1 - top].copy()
        buffer[r0:r1] = from_unit_float(_to_hwc(fixed), buffer.dtype)


def color_fix_buffer(buffer: np.ndarray, reference: Callable[[int, int], torch.Tensor], mode: str,
                     band_rows: int = 256) -> None:
    """Apply colour fix ``mode`` in place to ``buffer`` (H x W x 3 uint8 / uint16 / float32).

    ``reference(row0, row1)`` returns rows [row0, row1) of the reference as a 1 x 3 x rows x W
    float32 tensor in [0, 1]. Works on bands of ``band_rows`` rows (wavelet: plus WAVELET_RADIUS
    halo rows each side), so the result equals the whole-image fix on the dequantised buffer.
    """
    _check_mode(mode)
    if mode == "none":
        return
    if buffer.ndim != 3 or buffer.shape[2] != 3:
        raise ValueError(f"buffer must be H x W x 3, got shape {buffer.shape}")
    if buffer.dtype not in BUFFER_DTYPES:
        raise ValueError(f"buffer dtype must be uint8, uint16 or float32, got {buffer.dtype}")
    if band_rows < 1:
        raise ValueError(f"band_rows must be >= 1, got {band_rows}")
    if buffer.shape[0] == 0 or buffer.shape[1] == 0:
        return
    if mode == "adain":
        _buffer_adain(buffer, reference, band_rows)
    else:
        _buffer_wavelet(buffer, reference, band_rows)
