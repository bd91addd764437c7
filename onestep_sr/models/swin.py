"""Swin layer of the ResShift/SinSR denoiser, on NCHW feature maps.

Differences from textbook Swin that the released weights depend on (spec section 3):
- the block norms are GroupNorm(32) over the whole feature map, not per-token LayerNorm;
- the MLP is made of 1x1 convolutions;
- the shifted-window mask is the reference's: only the last row of windows is masked, and
  there tokens are split by their column inside the window (see ``shifted_window_mask``);
- the mask is rebuilt for the actual input size at every call; the stored ``attn_mask``
  buffer (for the construction-time size) exists only so state dicts match the official ones.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .cancel import cancel_point
from .layers import GroupNorm32, attention_fp32

MASKED_LOGIT = -100.0


def relative_position_index(window: int) -> torch.Tensor:
    """Standard Swin index into the (2w-1)^2 bias table for every (query, key) pair, int64 [N, N]."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """Additive attention mask [num_windows, N, N] of a shifted block, as the reference builds it.

    Windows are numbered row-major. Only windows in the last row of windows are masked: there,
    tokens whose column inside the window is < window - shift and those whose column is >= it
    may not attend to each other (logit -100).
    """
    n_rows, n_cols = height // window, width // window
    col_in_window = torch.arange(window * window) % window
    group = (col_in_window >= window - shift).long()
    pair_mask = (group[:, None] != group[None, :]).float() * MASKED_LOGIT  # N, N
    mask = torch.zeros(n_rows, n_cols, window * window, window * window)
    mask[-1] = pair_mask
    return mask.flatten(0, 1)


@lru_cache(maxsize=32)
def _runtime_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """CPU copy of :func:`shifted_window_mask`, cached per size (callers must not modify it)."""
    with torch.device("cpu"):
        return shifted_window_mask(height, width, window, shift)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, num_windows, window*window, C); windows and tokens row-major."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    b, _, _, c = windows.shape
    x = windows.view(b, height // window, width // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window = window
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        n = self.window * self.window
        index = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[index].view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows: (B, nW, N, C); mask: (nW, N, N) additive or None."""
        b, nw, n, c = windows.shape
        qkv = self.qkv(windows).view(b, nw, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each B, nW, heads, N, d
        bias = self.position_bias()  # heads, N, N
        if mask is not None:
            bias = bias + mask[:, None]  # nW, heads, N, N
        out = attention_fp32(q, k, v, bias)  # B, nW, heads, N, d
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float,
                 resolution: int):
        super().__init__()
        self.window = window
        self.shift = shift
        if shift:
            self.register_buffer(
                "attn_mask", shifted_window_mask(resolution, resolution, window, shift)
            )
        self.norm1 = GroupNorm32(32, dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = GroupNorm32(32, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(2, 3))
            mask = _runtime_mask(h, w, self.window, self.shift).to(x.device)
        out = window_merge(self.attn(window_partition(x, self.window), mask), self.window, h, w)
        if self.shift:
            out = torch.roll(out, shifts=(self.shift, self.shift), dims=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cancel_point()
        x = x + self._attend(self.norm1(x))
        cancel_point()
        return x + self.mlp(self.norm2(x))


class _Proj(nn.Module):
    """1x1 conv kept under a ``proj`` child to match the official key names."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class SwinLayer(nn.Module):
    """1x1 embed -> ``depth`` Swin blocks (even ones unshifted, odd ones shifted) -> 1x1 unembed.

    ``resolution`` is the construction-time feature size: at or below the window size the
    blocks never shift, whatever size the layer later sees.
    """

    def __init__(self, channels: int, embed_dim: int, heads: int, depth: int, window: int,
                 mlp_ratio: float, resolution: int):
        super().__init__()
        if resolution <= window:
            window, shift = resolution, 0
        else:
            shift = window // 2
        self.patch_embed = _Proj(channels, embed_dim)
        self.patch_unembed = _Proj(embed_dim, channels)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, heads, window, shift if i % 2 else 0, mlp_ratio, resolution)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x)
        for block in self.blocks:
            h = block(h)
        return self.patch_unembed(h)
