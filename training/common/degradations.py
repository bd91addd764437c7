"""Real-ESRGAN-style online degradation (the "high-order" pipeline used to train ResShift / SinSR).

Clean-room implementation: written anew from the configuration facts recorded in
``shared/specs/resshift_sinsr.md`` section 8 (the degradation settings shared by the ResShift v1/v3
and SinSR training yamls, scale factor 4, GT 256) and from the published Real-ESRGAN formulas. No
code from Real-ESRGAN, BasicSR or ResShift was copied. Only torch, numpy and pillow are used.

Pipeline of :func:`degrade` (HR ``(3, H, W)`` in [0, 1] -> LR ``(3, H/sf, W/sf)``):

1. First stage: blur with kernel 1 (sinc with prob 0.1, else a mixed Gaussian-family kernel of odd
   size 3..19, zero-padded to 21) -> random resize (up 0.2 / down 0.7 / keep 0.1, scale U[1, 1.5] or
   U[0.15, 1], mode area / bilinear / bicubic) -> Gaussian noise (prob 0.5, sigma U[1, 30]/255) else
   Poisson noise (scale U[0.05, 3]), gray noise with prob 0.4 -> clamp -> JPEG (quality U[30, 95]).
2. Second stage, with prob 0.5: blur with kernel 2 (prob 0.8; size 3..13, padded to 15, sigma
   [0.2, 1.5]) -> random resize (0.3 / 0.4 / 0.3, scale U[1, 1.2] or U[0.3, 1]) to
   ``(H/sf * scale, W/sf * scale)`` -> Gaussian (sigma U[1, 25]/255) or Poisson (U[0.05, 2.5]) noise.
3. Final stage: with prob 0.5 [resize to (H/sf, W/sf) -> final sinc -> JPEG] else
   [JPEG -> resize -> final sinc]; the final sinc is applied with prob 0.8 (else an identity pulse).
4. ``clamp(round(x * 255), 0, 255) / 255``.

Deliberate, documented differences from the reference implementation:

* JPEG goes through Pillow (uint8 encode/decode, default 4:2:0 chroma subsampling) instead of a
  differentiable JPEG; the sampled quality is rounded to an integer.
* All randomness comes from one ``numpy.random.Generator`` (noise included), so a seed reproduces a
  degradation bit for bit and the global torch / numpy / ``random`` states are never touched.
* :func:`filter2d` drops all-zero outer rings of a padded kernel (exact) and falls back to
  replicate padding when the image is too small for reflect padding (the reference would fail).

The dataset-side settings (GT crop, flips, the paired crop and the pair queue) are recorded in
:class:`DegradationConfig` for the data loader; :func:`degrade` itself starts from a GT crop.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class DegradationConfig:
    """Every setting of the ResShift / SinSR Real-ESRGAN degradation (spec section 8 defaults)."""

    # Dataset side (consumed by the data loader, not by degrade()).
    gt_size: int = 256
    rescale_gt: bool = True  # square crop of side max(min(h, w), gt_size), area-resized to gt_size
    use_hflip: bool = True
    use_rot: bool = False
    # Kernel 1 (first stage).
    kernel_range: tuple[int, ...] = tuple(range(3, 21, 2))
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    kernel_pad: int = 21
    # Kernel 2 (second stage) and the final sinc kernel.
    kernel_range2: tuple[int, ...] = tuple(range(3, 15, 2))
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    kernel_pad2: int = 15
    final_sinc_prob: float = 0.8
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    # Sinc cut-off for kernels 1 and 2: the first range below size 13, the second from 13 up.
    sinc_omega_small: tuple[float, float] = (math.pi / 3, math.pi)
    sinc_omega_large: tuple[float, float] = (math.pi / 5, math.pi)
    # First stage.
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma, in 1/255 units
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # Second stage.
    second_order_prob: float = 0.5
    second_blur_prob: float = 0.8
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)  # the final-stage JPEG
    # Final stage: probability of [resize -> sinc -> JPEG] (else [JPEG -> resize -> sinc]).
    final_resize_first_prob: float = 0.5
    resize_modes: tuple[str, ...] = RESIZE_MODES  # drawn uniformly at every resize


# ----------------------------------------------------------------------------------------------
# Kernels (numpy float64, odd size, centred, sum 1)
# ----------------------------------------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    axis = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(axis, axis)  # x along columns, y along rows


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x with Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy  # coordinates in the kernel's principal axes (R^T x)
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """exp(-d/2), d the Mahalanobis form; isotropic when sigma_y is None (or equal to sigma_x)."""
    d = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(np.exp(-0.5 * d))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None,
                                theta: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """exp(-d^beta / 2); beta = 1 is the Gaussian."""
    d = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(np.exp(-0.5 * d ** beta))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None,
                   theta: float = 0.0, beta: float = 1.0) -> np.ndarray:
    """1 / (d^beta + 1): a flat top with heavier tails than a Gaussian."""
    d = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(1.0 / (d ** beta + 1.0))


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2D sinc): omega_c J1(omega_c r) / (2 pi r), centre omega_c^2 / (4 pi)."""
    xx, yy = _grid(size)
    r = np.hypot(xx, yy)
    safe_r = np.where(r == 0, 1.0, r)
    j1 = torch.special.bessel_j1(torch.from_numpy(omega_c * safe_r)).numpy()
    kernel = np.where(r == 0, omega_c ** 2 / (4 * math.pi), omega_c * j1 / (2 * math.pi * safe_r))
    return _normalise(kernel)


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a centred odd kernel to ``size x size`` (no-op when already that size)."""
    pad = (size - kernel.shape[0]) // 2
    if pad < 0 or kernel.shape[0] + 2 * pad != size:
        raise ValueError(f"cannot pad a {kernel.shape[0]}-kernel to {size}")
    return np.pad(kernel, pad)


def pulse_kernel(size: int) -> np.ndarray:
    """The identity kernel (a centred delta)."""
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel


def random_sinc_kernel(rng: np.random.Generator, size: int, omega_range: tuple[float, float],
                       pad_to: int | None = None) -> np.ndarray:
    """A sinc kernel with omega_c ~ U[omega_range], optionally zero-padded to ``pad_to``."""
    kernel = sinc_kernel(size, rng.uniform(*omega_range))
    return kernel if pad_to is None else pad_kernel(kernel, pad_to)


def _sample_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    """Half the draws from [lo, 1], half from [1, hi] (1 clipped into the range)."""
    lo, hi = beta_range
    split = min(max(1.0, lo), hi)
    return rng.uniform(lo, split) if rng.random() < 0.5 else rng.uniform(split, hi)


def random_mixed_kernel(rng: np.random.Generator, config: DegradationConfig, stage: int) -> np.ndarray:
    """Kernel 1 (``stage=1``, padded to 21) or kernel 2 (``stage=2``, padded to 15)."""
    c = config
    if stage == 1:
        sizes, kinds, probs, sinc_p = c.kernel_range, c.kernel_list, c.kernel_prob, c.sinc_prob
        sigma, betag, betap, pad_to = c.blur_sigma, c.betag_range, c.betap_range, c.kernel_pad
    elif stage == 2:
        sizes, kinds, probs, sinc_p = c.kernel_range2, c.kernel_list2, c.kernel_prob2, c.sinc_prob2
        sigma, betag, betap, pad_to = c.blur_sigma2, c.betag_range2, c.betap_range2, c.kernel_pad2
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    size = int(rng.choice(sizes))
    if rng.random() < sinc_p:
        omega = c.sinc_omega_small if size < 13 else c.sinc_omega_large
        return random_sinc_kernel(rng, size, omega, pad_to)

    p = np.asarray(probs, dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    family, _, shape = kind.rpartition("_")
    if shape not in ("iso", "aniso") or family not in ("", "generalized", "plateau"):
        raise ValueError(f"unknown kernel type {kind!r}")
    sigma_x = rng.uniform(*sigma)
    if shape == "iso":
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = rng.uniform(*sigma), rng.uniform(-math.pi, math.pi)
    if family == "":
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
    elif family == "generalized":
        kernel = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _sample_beta(rng, betag))
    else:
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, _sample_beta(rng, betap))
    return pad_kernel(kernel, pad_to)


# ----------------------------------------------------------------------------------------------
# Building blocks on torch tensors in [0, 1], shape (3, H, W) or (B, 3, H, W)
# ----------------------------------------------------------------------------------------------

def _as_batch(image: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if image.dim() == 3:
        return image[None], True
    if image.dim() == 4:
        return image, False
    raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")


def _trim_zero_border(kernel: torch.Tensor) -> torch.Tensor:
    while kernel.shape[0] > 1 and bool((kernel[0] == 0).all() and (kernel[-1] == 0).all()
                                       and (kernel[:, 0] == 0).all() and (kernel[:, -1] == 0).all()):
        kernel = kernel[1:-1, 1:-1]
    return kernel


def filter2d(image: torch.Tensor, kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Filter every channel with the same odd ``(k, k)`` kernel, reflect padding, same size out.

    Computes a correlation, which equals convolution for the point-symmetric kernels made here.
    """
    x, squeeze = _as_batch(image)
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    if k.dim() != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise ValueError(f"kernel must be odd and square, got shape {tuple(k.shape)}")
    k = _trim_zero_border(k)
    pad = k.shape[0] // 2
    channels = x.shape[1]
    if pad:
        mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
        x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = k.expand(channels, 1, *k.shape)
    out = F.conv2d(x, weight, groups=channels)
    return out[0] if squeeze else out


def random_resize(image: torch.Tensor, size_or_scale: float | tuple[int, int], mode: str) -> torch.Tensor:
    """Resize by a scale factor (float) or to ``(h, w)`` with mode area / bilinear / bicubic.

    No antialias flag: "area" averages (adaptive average pooling), bilinear / bicubic sample
    (``align_corners=False``), as in the reference pipeline.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    x, squeeze = _as_batch(image)
    align = None if mode == "area" else False
    if isinstance(size_or_scale, (tuple, list)):
        size = (max(1, int(size_or_scale[0])), max(1, int(size_or_scale[1])))
        out = F.interpolate(x, size=size, mode=mode, align_corners=align)
    else:
        scale = float(size_or_scale)
        h, w = x.shape[-2:]
        if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:  # never shrink to nothing
            size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
            out = F.interpolate(x, size=size, mode=mode, align_corners=align)
        else:
            out = F.interpolate(x, scale_factor=scale, mode=mode, align_corners=align)
    return out[0] if squeeze else out


def add_gaussian_noise(image: torch.Tensor, sigma: float, gray: bool, rng: np.random.Generator,
                       clip: bool = True) -> torch.Tensor:
    """Add N(0, sigma^2) noise (sigma in [0, 1] units, i.e. sigma_255 / 255).

    ``gray``: one noise field shared by all channels.
    """
    x, squeeze = _as_batch(image)
    b, c, h, w = x.shape
    noise = rng.standard_normal((b, 1 if gray else c, h, w)) * sigma
    out = x + torch.from_numpy(noise).to(dtype=x.dtype, device=x.device).expand(b, c, h, w)
    out = out.clamp(0, 1) if clip else out
    return out[0] if squeeze else out


def add_poisson_noise(image: torch.Tensor, scale: float, gray: bool, rng: np.random.Generator,
                      clip: bool = True) -> torch.Tensor:
    """Add ``scale * (Poisson(img * vals) / vals - img)`` noise.

    ``vals = 2 ** ceil(log2(n))`` with ``n`` the number of distinct 8-bit levels in the (quantised)
    image, computed per image exactly. ``gray``: the noise is computed on the luma
    (0.299 R + 0.587 G + 0.114 B) and added to every channel.
    """
    x, squeeze = _as_batch(image)
    out = []
    for img in x:
        src = img.detach().double().cpu()
        if gray:
            weights = torch.tensor(_GRAY_WEIGHTS[: src.shape[0]], dtype=src.dtype)
            src = (src * weights[:, None, None]).sum(0, keepdim=True)
        src = (src.clamp(0, 1) * 255).round() / 255
        levels = np.unique(src.numpy()).size
        vals = 2.0 ** math.ceil(math.log2(levels))
        lam = src.numpy() * vals
        noise = torch.from_numpy(rng.poisson(lam) / vals - src.numpy()) * scale
        out.append(img + noise.to(dtype=img.dtype, device=img.device).expand_as(img))
    result = torch.stack(out)
    result = result.clamp(0, 1) if clip else result
    return result[0] if squeeze else result


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through Pillow (in-memory) of the clamped, 8-bit-rounded image."""
    x, squeeze = _as_batch(image)
    quality = int(round(quality))
    out = []
    for img in x:
        arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    result = torch.stack(out).to(dtype=x.dtype, device=x.device)
    return result[0] if squeeze else result


def quantise(image: torch.Tensor) -> torch.Tensor:
    """clamp(round(x * 255), 0, 255) / 255."""
    return torch.clamp((image * 255.0).round(), 0, 255) / 255.0


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------

def random_scale(rng: np.random.Generator, probs: tuple[float, ...], scale_range: tuple[float, float]) -> float:
    """Resize factor: up U[1, hi] / down U[lo, 1] / keep 1, chosen with ``probs`` = (up, down, keep)."""
    p = np.asarray(probs, dtype=np.float64)
    choice = ("up", "down", "keep")[int(rng.choice(3, p=p / p.sum()))]
    if choice == "up":
        return rng.uniform(1.0, scale_range[1])
    if choice == "down":
        return rng.uniform(scale_range[0], 1.0)
    return 1.0


def _random_mode(rng: np.random.Generator, config: DegradationConfig) -> str:
    return config.resize_modes[int(rng.integers(len(config.resize_modes)))]


def _random_noise(x: torch.Tensor, rng: np.random.Generator, gaussian_prob: float,
                  sigma_range: tuple[float, float], poisson_range: tuple[float, float],
                  gray_prob: float) -> torch.Tensor:
    """The noise field comes from a child generator seeded by ONE draw of ``rng``, so the main
    stream consumes the same number of values whatever the image size: two calls of ``degrade``
    from equal generator states at different scales make the same random choices (coupled LR
    images for scale distillation, see ``degrade_coupled``)."""
    if rng.random() < gaussian_prob:
        sigma = rng.uniform(*sigma_range) / 255.0
        gray = bool(rng.random() < gray_prob)
        return add_gaussian_noise(x, sigma, gray, _child(rng))
    scale = rng.uniform(*poisson_range)
    gray = bool(rng.random() < gray_prob)
    return add_poisson_noise(x, scale, gray, _child(rng))


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(2**63)))


def _check_hr(hr: torch.Tensor, scale: int) -> None:
    if hr.dim() != 3 or hr.shape[0] != 3:
        raise ValueError(f"hr must be (3, H, W), got shape {tuple(hr.shape)}")
    if hr.shape[1] % scale or hr.shape[2] % scale:
        raise ValueError(f"H and W ({hr.shape[1]}, {hr.shape[2]}) must be multiples of scale {scale}")


def degrade(hr: torch.Tensor, scale: int, rng: np.random.Generator,
            config: DegradationConfig = DegradationConfig()) -> torch.Tensor:
    """Two-stage Real-ESRGAN degradation of ``hr`` (3, H, W) in [0, 1] -> (3, H/scale, W/scale).

    The output is float32, in [0, 1], on the 1/255 grid. Every random draw comes from ``rng``.
    """
    _check_hr(hr, scale)
    c = config
    h, w = hr.shape[-2:]
    lr_size = (h // scale, w // scale)

    kernel1 = random_mixed_kernel(rng, c, stage=1)
    kernel2 = random_mixed_kernel(rng, c, stage=2)
    if rng.random() < c.final_sinc_prob:
        size = int(rng.choice(c.kernel_range2))
        final_kernel = random_sinc_kernel(rng, size, c.final_sinc_omega, pad_to=c.kernel_pad2)
    else:
        final_kernel = pulse_kernel(c.kernel_pad2)

    x = hr.detach().to(torch.float32)[None]
    # First stage.
    x = filter2d(x, kernel1)
    x = random_resize(x, random_scale(rng, c.resize_prob, c.resize_range), _random_mode(rng, c))
    x = _random_noise(x, rng, c.gaussian_noise_prob, c.noise_range, c.poisson_scale_range, c.gray_noise_prob)
    x = jpeg(x, rng.uniform(*c.jpeg_range))

    # Second stage.
    if rng.random() < c.second_order_prob:
        if rng.random() < c.second_blur_prob:
            x = filter2d(x, kernel2)
        s = random_scale(rng, c.resize_prob2, c.resize_range2)
        x = random_resize(x, (int(h / scale * s), int(w / scale * s)), _random_mode(rng, c))
        x = _random_noise(x, rng, c.gaussian_noise_prob2, c.noise_range2, c.poisson_scale_range2,
                          c.gray_noise_prob2)

    # Final stage: resize to the LR size, sinc and JPEG in one of two orders.
    if rng.random() < c.final_resize_first_prob:
        x = random_resize(x, lr_size, _random_mode(rng, c))
        x = filter2d(x, final_kernel)
        x = jpeg(x, rng.uniform(*c.jpeg_range2))
    else:
        x = jpeg(x, rng.uniform(*c.jpeg_range2))
        x = random_resize(x, lr_size, _random_mode(rng, c))
        x = filter2d(x, final_kernel)
    return quantise(x)[0].to(torch.float32)


def degrade_coupled(hr: torch.Tensor, scales: tuple[int, ...], rng: np.random.Generator,
                    config: DegradationConfig = DegradationConfig()) -> list[torch.Tensor]:
    """One Real-ESRGAN degradation draw applied at several final scales: every random choice
    (kernels, resize factors and modes, noise levels and fields' seeds, JPEG qualities, the order
    of the final stage) is the same; only the final down-scale (and the sizes that follow from
    it) differ. Leaves ``rng`` as one call of :func:`degrade` would."""
    state = rng.bit_generator.state
    out = []
    for scale in scales:
        rng.bit_generator.state = state
        out.append(degrade(hr, scale, rng, config))
    return out


def bicubic_degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscale of ``hr`` (3, H, W), clamped and rounded to the 1/255 grid."""
    _check_hr(hr, scale)
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr.detach().to(torch.float32)[None], size=(h // scale, w // scale),
                       mode="bicubic", antialias=True, align_corners=False)
    return quantise(lr)[0]
