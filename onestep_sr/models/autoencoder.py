"""The VQ-f4 autoencoder (LDM ``vq-f4`` as used by ResShift/SinSR), with official key names.

``encode`` returns the pre-quantisation latent; ``decode`` snaps to the codebook first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cancel import cancel_point
from .configs import AutoencoderConfig
from .layers import GroupNorm32, attention_fp32

#: rows of the latent quantised at once (bounds the distance matrix to rows x n_embed floats)
QUANTISE_CHUNK = 4096


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cancel_point()  # one full-resolution convolution of a 128-pixel VQ tile: seconds on a CPU
        h = self.conv1(F.silu(self.norm1(x)))
        cancel_point()
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class SelfAttention(nn.Module):
    """Single-head attention over all positions (quadratic in H*W), in float32."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, c, h * w).transpose(2, 3)

        out = attention_fp32(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class _Resample(nn.Module):
    def __init__(self, channels: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cancel_point()
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self._resample_name = name
        if resample is not None:
            self.add_module(name, resample)  # official key: ``downsample`` / ``upsample``

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self._resample_name, None)
        return x if resample is None else resample(x)


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = SelfAttention(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = [cfg.ch * m for m in (1,) + cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        levels = []
        for i in range(len(cfg.ch_mult)):
            cin, cout = chans[i], chans[i + 1]
            blocks = [ResnetBlock(cin if j == 0 else cout, cout, cfg.dropout) for j in range(cfg.num_res_blocks)]
            down = _Resample(cout, down=True) if i != len(cfg.ch_mult) - 1 else None
            levels.append(_Level(blocks, down, "downsample"))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(chans[-1], cfg.dropout)
        self.norm_out = _norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], cfg.z_channels * (2 if cfg.double_z else 1), 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        cancel_point()
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[-1], 3, padding=1)
        self.mid = _Mid(chans[-1], cfg.dropout)
        levels: list[nn.Module] = []
        for i in range(len(cfg.ch_mult)):
            cin = chans[i + 1] if i + 1 < len(chans) else chans[-1]
            cout = chans[i]
            blocks = [ResnetBlock(cin if j == 0 else cout, cout, cfg.dropout) for j in range(cfg.num_res_blocks + 1)]
            levels.append(_Level(blocks, _Resample(cout, down=False) if i else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(chans[0])
        self.conv_out = nn.Conv2d(chans[0], cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        cancel_point()
        return self.conv_out(F.silu(self.norm_out(h)))


class Codebook(nn.Module):
    def __init__(self, n_embed: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook row per position (squared L2 as |z|^2 + |e|^2 - 2 z.e, float32);
        (B, C, H, W) -> (B, H, W) int64. Ties go to the first index."""
        b, c, h, w = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)
        codes = self.embedding.weight.float()
        code_sq = (codes ** 2).sum(dim=1)
        out = torch.empty(flat.shape[0], dtype=torch.long, device=z.device)
        for start in range(0, flat.shape[0], QUANTISE_CHUNK):
            rows = flat[start:start + QUANTISE_CHUNK]
            dist = (rows ** 2).sum(dim=1, keepdim=True) + code_sq - 2 * rows @ codes.t()
            out[start:start + QUANTISE_CHUNK] = dist.argmin(dim=1)
        return out.view(b, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised latent, as the straight-through value z + (e - z) (bit-equal to the reference).

        Done in bands of latent rows into one output tensor, so a huge latent needs no extra
        latent-size temporaries."""
        out = torch.empty_like(z)
        rows = max(1, QUANTISE_CHUNK // z.shape[-1])
        codes = self.embedding.weight.float()
        for r in range(0, z.shape[-2], rows):
            part = z[..., r:r + rows, :]
            nearest = codes[self.indices(part)].permute(0, 3, 1, 2)
            zf = part.float()
            out[..., r:r + rows, :] = (zf + (nearest - zf)).to(z.dtype)
        return out


class VQAutoencoder(nn.Module):
    """VQ-f4: image in [-1, 1] (B, 3, H, W) <-> latent (B, embed_dim, H/4, W/4); scale factor 1."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = Codebook(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent ``quant_conv(encoder(image))``, in the input's dtype."""
        f = self.config.downscale
        if image.shape[-2] % f or image.shape[-1] % f:
            raise ValueError(f"image size {tuple(image.shape[-2:])} is not a multiple of {f}")
        return self.quant_conv(self.encoder(image.to(self.dtype))).to(image.dtype)

    def decode(self, latent: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Image (unclamped) from a latent, snapped to the codebook first unless ``quantize=False``."""
        z = self.quantize(latent) if quantize else latent
        return self.decoder(self.post_quant_conv(z.to(self.dtype))).to(latent.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(image))
