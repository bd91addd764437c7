"""Real-world LR images: the training mixture of the default model's restoration end, and the
fixed LR kinds it is measured on.

Training (``--degradation photo``, ``realworld`` or ``realworld_photo``, our proposals, tuned on
the val kinds below; ``MIXTURES`` has the shares): one draw per pair of ``realworld`` picks
- 15 %: the clean bicubic downscale (so full strength does not forget clean inputs),
- 40 %: a phone/web photo: bicubic downscale, Gaussian noise (sigma 1-15 in 8-bit levels,
  luma-only with probability 0.4) with probability 0.6, then JPEG quality 40-95,
- 20 %: Real-ESRGAN's second-order pipeline with milder ranges (``MILD``: blur sigma <= 1.5,
  noise <= 15, JPEG >= 50, second order with probability 0.3),
- 25 %: Real-ESRGAN's second-order pipeline with its public ranges (``degradations.degrade``).
``realworld_photo``: 25 % clean, 50 % photo, 25 % mild, no full pipeline.
``photo`` (the bundled restoration end since 0.4): 25 % clean, 75 % photo, no blur at all.
Every share of blurred LR (mild or full) taught the blind network to sharpen what it gets: at equal
steps on the same data, full strength scored 0.1-0.4 dB lower on the val cat's JPEG and noisy
JPEG with a blur share than without (docs/training.md, "The restoration end and the strength knob").
Every random choice comes from the pair's generator, so pairs stay reproducible.

Measurement (``LR_KINDS``): clean bicubic x1/scale; JPEG q75 of it; Gaussian sigma 8 then JPEG
q90 (a phone photo); one fixed-seed draw of the Real-ESRGAN pipeline. The noise and the draw depend
only on (seed, image index).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .degradations import DegradationConfig, add_gaussian_noise, bicubic_degrade, degrade, jpeg, quantise

# name -> shares of (clean, photo, mild Real-ESRGAN); the rest is the full Real-ESRGAN pipeline.
# "photo" is the bundled restoration end's (since 0.4; "realworld_photo" in 0.3, "realworld"
# before): no blurred LR, see the module's text.
MIXTURES = {"realworld": (0.15, 0.40, 0.20), "realworld_photo": (0.25, 0.50, 0.25), "photo": (0.25, 0.75, 0.0)}
MILD = DegradationConfig(blur_sigma=(0.2, 1.5), blur_sigma2=(0.2, 1.0), resize_range=(0.5, 1.5),
                         noise_range=(1.0, 15.0), poisson_scale_range=(0.05, 1.5), jpeg_range=(50.0, 95.0),
                         second_order_prob=0.3, noise_range2=(1.0, 10.0), poisson_scale_range2=(0.05, 1.0),
                         jpeg_range2=(50.0, 95.0))
PHOTO_NOISE_PROB, PHOTO_NOISE_RANGE, PHOTO_GRAY_PROB = 0.6, (1.0, 15.0), 0.4
PHOTO_JPEG_RANGE = (40.0, 95.0)


def degrade_realworld(hr: torch.Tensor, scale: int, rng: np.random.Generator,
                      config: DegradationConfig = DegradationConfig(), mixture: str = "realworld") -> torch.Tensor:
    """One LR of the training ``mixture`` (see the module's text) for ``hr`` (3, H, W) in [0, 1]."""
    clean_share, photo_share, mild_share = MIXTURES[mixture]
    pick = rng.random()
    if pick < clean_share:
        return bicubic_degrade(hr, scale)
    if pick < clean_share + photo_share:
        lr = bicubic_degrade(hr, scale)
        if rng.random() < PHOTO_NOISE_PROB:
            sigma = rng.uniform(*PHOTO_NOISE_RANGE) / 255.0
            lr = add_gaussian_noise(lr, sigma, bool(rng.random() < PHOTO_GRAY_PROB), rng)
        return quantise(jpeg(lr, rng.uniform(*PHOTO_JPEG_RANGE)))
    if pick < clean_share + photo_share + mild_share:
        return degrade(hr, scale, rng, MILD)
    return degrade(hr, scale, rng, config)


def _clean(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    return bicubic_degrade(hr, scale)


def _jpeg75(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    return jpeg(bicubic_degrade(hr, scale), 75)


def _noise8_jpeg90(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    noisy = quantise(add_gaussian_noise(bicubic_degrade(hr, scale), 8 / 255.0, False, rng))
    return jpeg(noisy, 90)


def _realesrgan(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    return degrade(hr, scale, rng, DegradationConfig())


# name -> (description, LR maker (hr, scale, rng))
LR_KINDS: dict[str, tuple[str, Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]]] = {
    "clean": ("bicubic x1/4", _clean),
    "jpeg75": ("JPEG q75 of the bicubic LR", _jpeg75),
    "noise8_jpeg90": ("Gaussian sigma 8, then JPEG q90", _noise8_jpeg90),
    "realesrgan": ("one fixed-seed draw of the Real-ESRGAN pipeline", _realesrgan),
}
DEGRADED_KINDS = ("jpeg75", "noise8_jpeg90", "realesrgan")


def lr_maker(kind: str, seed: int = 0) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``make_lr(hr, scale)`` for ``evaluate_folder``: the ``kind`` LR, its randomness fixed by
    (seed, kind, call index) so the i-th image of a folder always gets the same draw."""
    if kind not in LR_KINDS:
        raise ValueError(f"unknown LR kind {kind!r}; use one of {', '.join(LR_KINDS)}")
    make = LR_KINDS[kind][1]
    counter = iter(range(10**9))
    kind_id = list(LR_KINDS).index(kind)

    def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
        return make(hr, scale, np.random.default_rng([seed, kind_id, next(counter)])).float().clamp(0, 1)

    return make_lr
