"""Building blocks shared by the denoiser and the autoencoder.

Normalisation and attention always run in float32, whatever dtype the weights are in: the
official fp16 VQ attention overflows (SinSR issue #5) and GroupNorm statistics in fp16 are
unreliable. Everything else runs in the dtype of the weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cancel import cancel_point

#: query rows of one CPU attention call (a multiple of 256, see ``attention_fp32``)
ATTENTION_CHUNK = 2048
_MIN_CHUNK = 768  # from this length on, the CPU flash kernel uses 256-row query blocks


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype.

    A group of one value (a 1x1 map with one channel per group: a 1x1 image through the bundled
    model) is normalised as GroupNorm defines it, to 0 (then ``* weight + bias``): ``F.group_norm``
    refuses that case ("Expected more than 1 value per channel when training"), so it goes to the
    same ATen kernel directly. Every other size takes ``F.group_norm`` as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        if x.dim() >= 2 and x.numel() == x.shape[0] * self.num_groups:  # one value per group
            out = torch.group_norm(x.float(), self.num_groups, weight, bias, self.eps, torch.backends.cudnn.enabled)
            return out.to(x.dtype)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def attention_fp32(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, computed in float32, returned in q's dtype.

    Inputs are made contiguous: with strided (e.g. transposed) q/k/v, PyTorch's CPU attention
    falls back to the plain kernel that materialises the whole N x N matrix (GBs for a VQ tile).

    On a CPU, long sequences (the VQ mid attention: 20,000 tokens, 20 s on 2 cores) run in chunks
    of ATTENTION_CHUNK query rows with a :func:`cancel_point` between them. Bit-identical to one
    call: every query row is independent, and the CPU flash kernel cuts any sequence of >= 768
    rows into the same 256-row blocks (chunks are multiples of 256, the last one over 768 rows)."""
    dtype, n = q.dtype, q.shape[-2]
    q, k, v = q.float().contiguous(), k.float().contiguous(), v.float().contiguous()
    if bias is not None or q.device.type != "cpu" or n < ATTENTION_CHUNK + _MIN_CHUNK:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.float()).to(dtype)
    out = torch.empty_like(q)
    starts = list(range(0, n - _MIN_CHUNK, ATTENTION_CHUNK))  # the last chunk gets > _MIN_CHUNK rows
    for start, end in zip(starts, starts[1:] + [n]):
        cancel_point()
        out[..., start:end, :] = F.scaled_dot_product_attention(q[..., start:end, :], k, v)
    return out.to(dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the raw integer step index: concat(cos(t f), sin(t f)), float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Downsample(nn.Module):
    """Strided 3x3 conv (``op``) halving H and W."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 followed by a 3x3 conv (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepResBlock(nn.Module):
    """Residual block conditioned on the time embedding through FiLM (scale, shift)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        cancel_point()
        h = self.in_layers(x)
        cancel_point()
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h
