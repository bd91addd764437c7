"""RRDBNet, the ESRGAN / Real-ESRGAN x4plus generator, written from its published description for
timing comparisons only (random weights; no pretrained file is read).

Architecture (Wang et al., ESRGAN 2018; Real-ESRGAN x4plus 2021 uses it unchanged):
- ``conv_first``: 3x3 conv, ``in_channels`` -> ``features``;
- ``body``: ``blocks`` residual-in-residual dense blocks (RRDB). An RRDB is three residual dense
  blocks in a row, its output ``0.2 * rdbs(x) + x``. A residual dense block has five 3x3 convs;
  conv k (k = 1..4) sees the block input concatenated with the outputs of convs 1..k-1 and gives
  ``growth`` channels (LeakyReLU 0.2 after it); conv 5 sees all of them and gives ``features``
  channels (no activation); the block returns ``0.2 * conv5 + x``;
- ``conv_body``: 3x3 conv after the body, added to the ``conv_first`` features (long skip);
- two upsampling stages: nearest x2, then 3x3 conv (``conv_up1``, ``conv_up2``) + LeakyReLU 0.2;
- ``conv_hr`` (3x3 + LeakyReLU 0.2) and ``conv_last`` (3x3, -> ``out_channels``).

The module names follow the public checkpoint layout (``conv_first``, ``body.N.rdb1.conv1``, ...),
so a reader can compare parameter shapes with a released file. ``parameter_count`` gives the same
total from the formula, without building anything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

X4PLUS = dict(in_channels=3, out_channels=3, features=64, blocks=23, growth=32)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    def __init__(self, features: int = 64, growth: int = 32):
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"conv{k}", _conv(features + (k - 1) * growth, growth))
        self.conv5 = _conv(features + 4 * growth, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for k in range(1, 5):
            conv = getattr(self, f"conv{k}")
            seen.append(F.leaky_relu(conv(torch.cat(seen, 1)), 0.2))
        return self.conv5(torch.cat(seen, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, features: int = 64, growth: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """x4 generator (``RRDBNet(**X4PLUS)`` is Real-ESRGAN x4plus: 16,697,987 parameters)."""

    scale = 4

    def __init__(self, in_channels: int = 3, out_channels: int = 3, features: int = 64, blocks: int = 23,
                 growth: int = 32):
        super().__init__()
        self.conv_first = _conv(in_channels, features)
        self.body = nn.Sequential(*[RRDB(features, growth) for _ in range(blocks)])
        self.conv_body = _conv(features, features)
        self.conv_up1 = _conv(features, features)
        self.conv_up2 = _conv(features, features)
        self.conv_hr = _conv(features, features)
        self.conv_last = _conv(features, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def parameter_count(in_channels: int = 3, out_channels: int = 3, features: int = 64, blocks: int = 23,
                    growth: int = 32) -> int:
    """Weights + biases of ``RRDBNet(...)`` from the formula (3x3 convs: 9 * cin * cout + cout)."""
    def conv(cin: int, cout: int) -> int:
        return 9 * cin * cout + cout

    rdb = sum(conv(features + k * growth, growth) for k in range(4)) + conv(features + 4 * growth, features)
    return (conv(in_channels, features) + blocks * 3 * rdb + 4 * conv(features, features)
            + conv(features, out_channels))


def macs_per_input_pixel(features: int = 64, blocks: int = 23, growth: int = 32, in_channels: int = 3,
                         out_channels: int = 3) -> int:
    """Multiply-accumulates per LR pixel of an x4 forward (the convs only; the body runs at LR size,
    ``conv_up1`` at 4x the pixels, ``conv_up2``, ``conv_hr`` and ``conv_last`` at 16x)."""
    rdb = sum(9 * (features + k * growth) * growth for k in range(4)) + 9 * (features + 4 * growth) * features
    lr = 9 * in_channels * features + blocks * 3 * rdb + 9 * features * features
    return lr + 4 * 9 * features * features + 16 * (2 * 9 * features * features + 9 * features * out_channels)
