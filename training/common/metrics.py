"""Image-quality metrics as the super-resolution literature reports them: PSNR and SSIM on Y.

Conventions (those of the SR benchmark tables, after the MATLAB evaluation scripts):

* The metrics are computed on the luma channel Y of ITU-R BT.601 in "studio swing", the value of
  MATLAB's ``rgb2ycbcr``: ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1],
  so Y lies in [16, 235] on the 0..255 scale. Y is kept in float64 and is *not* rounded to an
  integer (MATLAB rounds when given uint8 input; the difference is well below 0.01 dB).
* ``crop_border`` pixels are removed from every side before measuring (the usual choice is the
  upscaling factor).
* PSNR uses a peak of 255; SSIM uses C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, an 11 x 11
  Gaussian window with sigma 1.5, 'valid' filtering (no padding) and the mean of the SSIM map
  (Wang, Bovik, Sheikh and Simoncelli, 2004).

Inputs are either torch tensors holding RGB in [0, 1], shaped (3, H, W) (a leading batch axis of
size 1 is accepted), or numpy arrays H x W x 3 (uint8 in 0..255, or float in [0, 1]). The metrics
measure the values they are given: to reproduce numbers of saved 8-bit images, round to 1/255
first (``training.common.evaluate`` does).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rgb_to_y", "psnr_y", "ssim_y", "Y_WEIGHTS", "SSIM_C1", "SSIM_C2", "gaussian_window"]

#: Weights of R, G, B (each in [0, 1]) in BT.601 studio-swing luma, on the 0..255 scale.
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
PEAK = 255.0
SSIM_C1 = (0.01 * PEAK) ** 2
SSIM_C2 = (0.03 * PEAK) ** 2
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _rgb_from_numpy(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 numpy (uint8 0..255 or float 0..1) -> float64 (3, H, W) tensor in [0, 1]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a numpy image of shape H x W x 3, got shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        arr = image.astype(np.float64) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        arr = image.astype(np.float64)
    else:
        raise TypeError(f"numpy images must be uint8 (0..255) or float (0..1), got {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _rgb_from_tensor(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) tensor (float in [0, 1], or uint8) -> float64 on the CPU in [0, 1]."""
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected a tensor of shape (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image.to(torch.float64) / 255.0
    if not image.is_floating_point():
        raise TypeError(f"tensor images must be float (0..1) or uint8 (0..255), got {image.dtype}")
    return image.to(torch.float64)


def rgb_to_y(image):
    """BT.601 luma Y on the 0..255 scale (range [16, 235]), in float64, as MATLAB ``rgb2ycbcr``.

    * torch (3, H, W) -> torch (H, W); torch (B, 3, H, W) -> torch (B, H, W). Float tensors are
      RGB in [0, 1]; uint8 tensors are 0..255.
    * numpy H x W x 3 -> numpy H x W. uint8 arrays are 0..255, float arrays are in [0, 1].

    Values are not clamped or rounded.
    """
    if isinstance(image, np.ndarray):
        return rgb_to_y(_rgb_from_numpy(image)).numpy()
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a torch tensor or numpy array, got {type(image).__name__}")
    rgb = _rgb_from_tensor(image)
    r, g, b = rgb.unbind(dim=-3)
    wr, wg, wb = Y_WEIGHTS
    return Y_OFFSET + wr * r + wg * g + wb * b


def _shape_of(image) -> tuple:
    return tuple(image.shape) if hasattr(image, "shape") else ()


def _y_pair(sr, hr, crop_border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as cropped (H, W) float64 Y planes, after checking that they match."""
    sr_shape, hr_shape = _shape_of(sr), _shape_of(hr)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    planes = []
    for image in (sr, hr):
        y = rgb_to_y(image)
        if isinstance(y, np.ndarray):
            y = torch.from_numpy(y)
        if y.ndim == 3:
            if y.shape[0] != 1:
                raise ValueError(f"metrics take one image at a time, got a batch of shape {_shape_of(image)}")
            y = y[0]
        planes.append(y)
    y_sr, y_hr = planes
    # Compared as Y planes, so a numpy H x W x 3 and a tensor (3, H, W) of one size may be mixed.
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got sr {sr_shape} and hr {hr_shape}")
    h, w = y_sr.shape
    if 2 * crop_border >= h or 2 * crop_border >= w:
        raise ValueError(f"crop_border={crop_border} leaves nothing of an image of shape {sr_shape}")
    if crop_border:
        c = crop_border
        y_sr, y_hr = y_sr[c:h - c, c:w - c], y_hr[c:h - c, c:w - c]
    return y_sr, y_hr


def psnr_y(sr, hr, crop_border: int = 4) -> float:
    """PSNR in dB between ``sr`` and ``hr`` on Y (0..255, peak 255), ``crop_border`` removed.

    Returns ``math.inf`` when the cropped Y planes are identical. Raises ``ValueError`` (naming
    both shapes) when the shapes differ.
    """
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    mse = torch.mean((y_sr - y_hr) ** 2).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(PEAK ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (float64); SSIM's 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _filter_valid(plane: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (N, 1, H, W) with the outer product g g^T."""
    k = g.numel()
    out = F.conv2d(plane, g.view(1, 1, k, 1))
    return F.conv2d(out, g.view(1, 1, 1, k))


def ssim_y(sr, hr, crop_border: int = 4) -> float:
    """Mean SSIM between ``sr`` and ``hr`` on Y (0..255), ``crop_border`` removed.

    11 x 11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01 * 255)^2 and
    C2 = (0.03 * 255)^2. The cropped image must be at least 11 x 11. Raises ``ValueError``
    (naming both shapes) when the shapes differ.
    """
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    h, w = y_sr.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping {crop_border} "
            f"from each side; images of shape {_shape_of(sr)} leave {h}x{w}")
    g = gaussian_window()
    # One batched filtering pass over x, y, x^2, y^2 and xy.
    x, y = y_sr[None], y_hr[None]
    stack = torch.cat([x, y, x * x, y * y, x * y])[:, None]
    mu_x, mu_y, e_xx, e_yy, e_xy = _filter_valid(stack, g)[:, 0]
    var_x = e_xx - mu_x ** 2
    var_y = e_yy - mu_y ** 2
    cov = e_xy - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * cov + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean().item()
