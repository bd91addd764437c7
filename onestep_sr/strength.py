"""The restoration-strength knob: deep network interpolation between two weight sets of one
network, and the automatic choice of the strength per image.

Deep network interpolation (Wang et al., CVPR 2019; ESRGAN's network interpolation; Real-ESRGAN's
``--denoise_strength``): theta(s) = (1 - s) theta_0 + s theta_1, tensor by tensor. theta_0 is a
model trained on clean downscales (faithful to the input: keeps grain, best on clean images),
theta_1 the same network fine-tuned from it on real-world degradations (removes noise and JPEG
artefacts, smooths fine texture). It works because theta_1 descends from theta_0.

``auto`` picks s per image from two cheap measurements of the input (see
``../shared/specs/realworld_default.md``):
- the noise level, Donoho & Johnstone's rule: sigma = median(|HH1|) / 0.6745 on the luma in 8-bit
  levels, HH1 the finest diagonal band of the orthonormal Haar transform;
- JPEG blockiness: the mean absolute luma step across 8-pixel block boundaries over the mean step
  inside blocks (1 = no blocks).
Each is mapped to a strength by a monotone piecewise-linear table (``AUTO_TABLE``: fitted on the
val measurement of ``benchmarks/bench_realworld.py``, our proposal) and the larger one wins.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from .options import OptionError

Strength = Union[float, str]
AUTO = "auto"
CACHE_SIZE = 8
CACHE_BYTES = 256 * 2**20  # and at most this much (a full-size network's sets are ~0.5 GB each)
QUANTUM = 0.05  # auto strengths are rounded to this grid, so the weight cache serves many images

# (measure value, strength) knots, strength rising with the measure; below the first knot 0,
# above the last the last strength. Fitted by hand to the best strength per image and LR kind that
# benchmarks/bench_realworld.py printed on the three val photos for the bundled restoration end
# (0.4, the "photo" mixture): clean LR has sigma 3.0-3.1 and blockiness 1.02-1.04 -> 0; JPEG q75
# has blockiness 1.19-1.20 (or sigma 7.4), sigma 8 + JPEG q90 sigma 7.2-9.6, and both are best at
# 1 (that end no longer smooths a clean image much: the clean val cat keeps +0.01 dB over bicubic
# at 1). Three photos are too few for a held-out check; the noise ramp ends at 4 rather than 5
# because the ten train photos (bench_realworld.py --val ../shared/images/train) have noisy JPEGs
# measuring 4.1 and 4.7 that gain 2.9 and 1.1 dB more at 1 than at 0.4 and 0.8; see docs/training.md.
AUTO_TABLE = {
    "noise": ((3.5, 0.0), (4.0, 1.0)),
    "blockiness": ((1.06, 0.0), (1.16, 1.0)),
}


def check_strength(value: Strength, name: str = "strength") -> Strength:
    """``"auto"`` or a number in [0, 1] (a numeric string is accepted); OptionError otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = float(text)
        except ValueError:
            raise OptionError(name, value, "auto or a number from 0 to 1") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise OptionError(name, value, "auto or a number from 0 to 1")
    return float(value)


def describe(strengths: Sequence[float | None], auto: bool) -> str | None:
    """The line hosts report for one call's ``last_strengths``: ``restoration strength 0.35 (auto)``;
    a batch whose images got different strengths lists them in order (``0.2, 0.6``); None for a
    model without the knob (its strengths are None)."""
    if not strengths or strengths[0] is None:
        return None
    values = [f"{value:g}" for value in strengths]
    shown = values[0] if len(set(values)) == 1 else ", ".join(values)
    return f"restoration strength {shown}" + (" (auto)" if auto else "")


def interpolate(clean: Mapping[str, torch.Tensor], restoration: Mapping[str, torch.Tensor],
                strength: float) -> dict[str, torch.Tensor]:
    """(1 - s) clean + s restoration, tensor by tensor (the ends themselves at s = 0 and 1).
    Integer tensors (indices) are taken from ``clean``."""
    if set(clean) != set(restoration):
        missing = sorted(set(clean) ^ set(restoration))[:5]
        raise ValueError(f"the two weight sets differ in their keys (e.g. {', '.join(missing)})")
    out = {}
    for key, a in clean.items():
        b = restoration[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} in one weight set, {tuple(b.shape)} in the other")
        if strength == 0.0 or not a.is_floating_point():
            out[key] = a
        elif strength == 1.0:
            out[key] = b
        else:
            out[key] = (1.0 - strength) * a + strength * b
    return out


class StrengthKnob:
    """Holds both ends (CPU, fp32) and loads theta(s) into a network on request; the interpolated
    sets are cached per strength (the last ``CACHE_SIZE``, within ``CACHE_BYTES``; the newest is
    always kept)."""

    def __init__(self, clean: Mapping[str, torch.Tensor], restoration: Mapping[str, torch.Tensor]):
        self.clean = {k: v.detach().cpu().float() if v.is_floating_point() else v.cpu() for k, v in clean.items()}
        self.restoration = {k: v.detach().cpu().float() if v.is_floating_point() else v.cpu()
                            for k, v in restoration.items()}
        interpolate(self.clean, self.restoration, 0.5)  # refuses two sets that do not match, now
        self.cache: OrderedDict[float, dict[str, torch.Tensor]] = OrderedDict()
        self.loaded: float | None = None

    def weights(self, strength: float) -> dict[str, torch.Tensor]:
        if strength not in self.cache:
            self.cache[strength] = interpolate(self.clean, self.restoration, strength)
            size = sum(v.numel() * v.element_size() for v in self.clean.values())
            while len(self.cache) > 1 and (len(self.cache) > CACHE_SIZE or len(self.cache) * size > CACHE_BYTES):
                self.cache.popitem(last=False)
        self.cache.move_to_end(strength)
        return self.cache[strength]

    def apply(self, network: torch.nn.Module, strength: float) -> None:
        """Load theta(``strength``) into ``network`` (kept on its device and dtype)."""
        if self.loaded == strength:
            return
        network.load_state_dict(self.weights(strength))
        self.loaded = strength


# --- measuring the input --------------------------------------------------------------------


def luma_255(rgb: torch.Tensor) -> np.ndarray:
    """(H, W) float64 luma (BT.601) in 8-bit levels of a (3, H, W) or (1, 3, H, W) image in [0, 1]."""
    x = rgb.detach().float().cpu().reshape(-1, *rgb.shape[-2:])
    if x.shape[0] == 1:
        return x[0].double().numpy() * 255.0
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).double().numpy() * 255.0


def noise_sigma(luma: np.ndarray) -> float:
    """Donoho's robust noise estimate: median(|HH1|) / 0.6745 (orthonormal Haar, finest diagonal band)."""
    h, w = (luma.shape[0] // 2) * 2, (luma.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    x = luma[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def blockiness(luma: np.ndarray, block: int = 8) -> float:
    """Mean |step| across ``block``-pixel boundaries / mean |step| inside blocks, both directions
    (1.0 for an image without blocking; 1.0 when the image is too small to tell)."""
    across, inside = [], []
    for x in (luma, luma.T):
        if x.shape[1] <= block:
            continue
        steps = np.abs(np.diff(x, axis=1))  # step j is between columns j and j + 1
        boundary = (np.arange(steps.shape[1]) % block) == block - 1
        across.append(steps[:, boundary].mean())
        inside.append(steps[:, ~boundary].mean())
    if not across:
        return 1.0
    inner = float(np.mean(inside))
    return float(np.mean(across)) / inner if inner > 1e-6 else 1.0


def _ramp(value: float, knots: tuple[tuple[float, float], ...]) -> float:
    xs, ys = zip(*knots)
    return float(np.interp(value, xs, ys, left=0.0, right=ys[-1]))


def measure(rgb: torch.Tensor) -> dict[str, float]:
    """``{"noise": sigma in 8-bit levels, "blockiness": ratio}`` of an image in [0, 1]."""
    luma = luma_255(rgb)
    return {"noise": noise_sigma(luma), "blockiness": blockiness(luma)}


def auto_strength(rgb: torch.Tensor, table: Mapping[str, tuple] = AUTO_TABLE) -> float:
    """The strength ``auto`` picks for an image (rounded to ``QUANTUM``)."""
    found = measure(rgb)
    strength = max(_ramp(found[name], knots) for name, knots in table.items())
    return round(round(strength / QUANTUM) * QUANTUM, 4)


def resolve_strengths(knob: StrengthKnob | None, requested: Strength | None, default: Strength,
                      images: list[torch.Tensor]) -> list[float | None]:
    """The strength of each image of one call: ``requested`` (or the model's ``default``),
    ``auto`` measured per image. A model without a knob takes only ``auto`` / None (-> None)."""
    value = check_strength(default if requested is None else requested)
    if knob is None:
        if value != AUTO:
            raise OptionError("strength", value, "auto for this model",
                              message=f"strength={value} needs a model with a restoration-strength knob (two weight "
                                      "sets, like the bundled default); this one has one weight set")
        return [None] * len(images)
    return [auto_strength(image) if value == AUTO else value for image in images]
