"""The perceptual term of the OSEDiff generator loss, offline.

OSEDiff uses LPIPS-VGG, whose weights (ImageNet VGG16 + LPIPS linear layers) are downloads. Here
``--perceptual vae`` (the default) is an **LPIPS-style substitute, not LPIPS**: the frozen encoder
of the checkpoint's own VAE (a copy without any LoRA; its weights are in the user's SD file, so it
works offline) gives feature maps after ``conv_in`` and after each down block; every map is
normalised to unit length over its channels at each pixel (as LPIPS does), and the distance is the
squared difference summed over channels, averaged over pixels, summed over the maps:

    d(x, y) = sum_l mean_{h,w} || f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)| ||^2

``--perceptual none`` disables the term. ``--perceptual lpips --lpips-weights FILE[,FILE]`` is the
real LPIPS-VGG (``lpips_vgg``), from VGG16 / LPIPS weight files you supply; without them it stops
with an error saying where to get them and that ``vae`` / ``none`` work offline.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

PERCEPTUALS = ("vae", "none", "lpips")


def normalise_channels(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def feature_distance(features: Callable[[torch.Tensor], Sequence[torch.Tensor]], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum_l mean_{h,w} ||n(f_l(x)) - n(f_l(y))||^2`` (see the module docstring)."""
    total = x.new_zeros(x.shape[0], dtype=torch.float32)
    for fx, fy in zip(features(x), features(y)):
        diff = (normalise_channels(fx.float()) - normalise_channels(fy.float())).pow(2).sum(dim=1)
        total = total + diff.flatten(1).mean(dim=1)
    return total


class VAEEncoderFeatures(nn.Module):
    """Feature maps of a frozen copy of a diffusers ``AutoencoderKL`` encoder: after ``conv_in``
    and after each down block. Input: images in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        encoder = vae.encoder
        self.conv_in = copy.deepcopy(encoder.conv_in)
        self.down_blocks = copy.deepcopy(encoder.down_blocks)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.conv_in(x)
        out = [h]
        for block in self.down_blocks:
            h = block(h)
            out.append(h)
        return out


def build_perceptual(kind: str, vae: nn.Module | None, lpips_weights: str | None = None
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``kind`` -> a per-sample distance ``(x_hat, x_hq) -> (B,)`` (its module in ``.net``) or None."""
    if kind == "none":
        return None
    if kind == "lpips":
        from .lpips_vgg import load_lpips

        lpips = load_lpips(lpips_weights)

        def lpips_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return lpips(x, y)

        lpips_distance.net = lpips
        return lpips_distance
    if kind != "vae":
        raise ValueError(f"unknown perceptual loss {kind!r}; use one of {', '.join(PERCEPTUALS)}")
    net = VAEEncoderFeatures(vae)

    def distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return feature_distance(net, x, y)

    distance.net = net
    return distance
