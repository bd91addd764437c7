"""The ResShift/SinSR Swin-UNet denoiser (x0 prediction in VQ latent space)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import DenoiserConfig
from .layers import Downsample, GroupNorm32, TimestepResBlock, Upsample, timestep_embedding
from .swin import SwinLayer


class _Step(nn.Sequential):
    """One entry of ``input_blocks``/``output_blocks``: modules applied in order, passing the
    time embedding to the residual blocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepResBlock) else layer(x)
        return x


class SwinUNetDenoiser(nn.Module):
    """``forward(x, t, lq)``: x is the already scaled noisy latent x_t / sqrt(1 + kappa^2 eta_t),
    t the integer step index (0..T-1), lq the LR condition in [-1, 1] at the latent's H x W (the LR
    image itself, or for ``lq_mode`` "unshuffle48" its 48-channel form, see ``lq_condition``).
    Returns the predicted clean latent x0 (unclamped)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.model_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def resblock(cin: int, cout: int) -> TimestepResBlock:
            return TimestepResBlock(cin, emb_dim, cout, cfg.dropout, cfg.use_scale_shift_norm)

        def swin(channels: int, ds: int) -> SwinLayer:
            return SwinLayer(channels, cfg.swin_embed_dim, cfg.swin_heads, cfg.swin_depth,
                             cfg.window_size, cfg.mlp_ratio, cfg.image_size // ds)

        self.input_blocks = nn.ModuleList([_Step(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [resblock(ch, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if i == 0 and cfg.image_size // ds in cfg.attention_resolutions:
                    layers.append(swin(ch, ds))
                self.input_blocks.append(_Step(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(_Step(Downsample(ch) if cfg.conv_resample else nn.AvgPool2d(2)))
                skip_channels.append(ch)
                ds *= 2

        middle = [resblock(ch, ch), swin(ch, ds), resblock(ch, ch)] if cfg.mid_attention else [resblock(ch, ch), resblock(ch, ch)]
        self.middle_block = _Step(*middle)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [resblock(ch + skip_channels.pop(), mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if i == 0 and cfg.image_size // ds in cfg.attention_resolutions:
                    layers.append(swin(ch, ds))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_Step(*layers))

        self.out = nn.Sequential(
            GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )

    def residual_base(self, lq: torch.Tensor) -> torch.Tensor:
        """The latent x0 is a correction of ("lq_bicubic"): the bicubic upsampled LR, space-to-depth.
        x0 = base + network output. Our proposal, not the papers': with the output convolution at
        zero the untrained model is bicubic. (A learnt per-step gate on the input's own detail,
        x0 = base + g(t) (x - base) + output, measured worse: see README "Training".)"""
        if self.config.lq_mode == "unshuffle48":  # the condition already is that base
            return lq.float()
        r = self.config.residual_scale
        up = F.interpolate(lq.float(), scale_factor=r, mode="bicubic", align_corners=False)
        return F.pixel_unshuffle(up, r)

    def check_input(self, x: torch.Tensor, lq: torch.Tensor) -> None:
        cfg = self.config
        mult = cfg.latent_multiple
        if x.ndim != 4 or x.shape[1] != cfg.out_channels:
            raise ValueError(f"denoiser input must be (B, {cfg.out_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % mult or x.shape[-1] % mult:
            raise ValueError(
                f"latent size {x.shape[-2]}x{x.shape[-1]} is not a multiple of {mult} "
                f"(pad the LR image to a multiple of {mult} first)"
            )
        if lq.shape[-2:] != x.shape[-2:] or lq.shape[1] != cfg.lq_channels or lq.shape[0] != x.shape[0]:
            raise ValueError(
                f"lq must be (B={x.shape[0]}, {cfg.lq_channels}, {x.shape[-2]}, {x.shape[-1]}), "
                f"got {tuple(lq.shape)}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, lq: torch.Tensor) -> torch.Tensor:
        self.check_input(x, lq)
        dtype = self.input_blocks[0][0].weight.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
        h = torch.cat([x, lq], dim=1).to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h)
        if self.config.residual == "lq_bicubic":
            return (self.residual_base(lq) + out.float()).to(x.dtype)
        return out.to(x.dtype)


def lq_condition(lq: torch.Tensor, lq_mode: str, scale: int, latent_factor: int = 4) -> torch.Tensor:
    """The LR condition a denoiser with ``lq_mode`` takes for an LR image ``lq`` (B x 3 x h x w in
    [-1, 1]) of a x``scale`` model: "lq3" the image itself (the latent grid is the LR grid: x4
    with an f4 latent only); "unshuffle48" the bicubic x``scale`` upsampled image, space-to-depth
    by the latent factor (48 channels at the latent grid for f4; lossless for scale <= 4)."""
    if lq_mode == "lq3":
        if scale != latent_factor:
            raise ValueError(f"a model with the LR image as its condition (lq3) runs x{latent_factor} only, not x{scale}")
        return lq
    if lq_mode != "unshuffle48":
        raise ValueError(f"unknown lq_mode {lq_mode!r}")
    up = F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False)
    return F.pixel_unshuffle(up, latent_factor)


def zero_init_outputs_(model: SwinUNetDenoiser) -> SwinUNetDenoiser:
    """Initialise as the official architecture does when it is built for training: the last
    convolution of every residual block and the output convolution start at zero (guided-diffusion's
    ``zero_module``), so each block starts as the identity and the network's first output is 0 (or
    the residual base). In place; returns the model."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TimestepResBlock):
                conv = module.out_layers[-1]
                conv.weight.zero_()
                conv.bias.zero_()
        model.out[-1].weight.zero_()
        model.out[-1].bias.zero_()
    return model
