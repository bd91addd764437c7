"""Architecture configurations of the Swin-UNet denoiser and the VQ-f4 autoencoder.

Field names follow the official YAML/constructor arguments so that a config read from a
checkpoint's metadata (or a YAML file) maps onto them one to one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


RESIDUAL_MODES = ("none", "lq_bicubic")
LQ_MODES = ("lq3", "unshuffle48")


@dataclass(frozen=True)
class DenoiserConfig:
    """Constructor arguments of the ResShift/SinSR Swin-UNet (``UNetModelSwin``)."""

    image_size: int = 64
    in_channels: int = 6
    model_channels: int = 160
    out_channels: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    attention_resolutions: tuple[int, ...] = (64, 32, 16, 8)
    dropout: float = 0.0
    conv_resample: bool = True
    use_scale_shift_norm: bool = True
    num_heads: int = 1
    num_head_channels: int = 32
    swin_depth: int = 2
    swin_embed_dim: int = 192
    window_size: int = 8
    mlp_ratio: float = 4.0
    # Our additions for compact students (the defaults are the official architecture):
    mid_attention: bool = True  # False: the middle block is two residual blocks, no Swin layer
    # "none": the network's output is x0 (official). "lq_bicubic": x0 = base + output, where the
    # base is the bicubic x4 upsampled LR input, space-to-depth (pixel-space models only:
    # out_channels = 3 r^2, r the scale), so the network learns the correction of bicubic.
    residual: str = "none"
    # The LR conditioning concatenated to x_t. "lq3" (official): the LR image itself, which has the
    # latent's size only for x4 with an f4 latent. "unshuffle48" (our YONOS adaptation, any scale):
    # the LR bicubic upsampled to the HR size, space-to-depth by 4: 48 channels at the latent grid
    # whatever the scale, so x2, x4 and x8 models share one architecture (see ``lq_condition``).
    lq_mode: str = "lq3"

    def __post_init__(self) -> None:
        res_blocks = self.num_res_blocks
        if isinstance(res_blocks, int):
            res_blocks = (res_blocks,) * len(self.channel_mult)
        object.__setattr__(self, "num_res_blocks", tuple(int(n) for n in res_blocks))
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(
            self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions)
        )
        if len(self.num_res_blocks) != len(self.channel_mult):
            raise ValueError("num_res_blocks must have one entry per channel_mult level")
        if self.model_channels % 32:
            raise ValueError("model_channels must be a multiple of 32 (GroupNorm with 32 groups)")
        if self.residual not in RESIDUAL_MODES:
            raise ValueError(f"unknown residual {self.residual!r}; use one of {', '.join(RESIDUAL_MODES)}")
        if self.lq_mode not in LQ_MODES:
            raise ValueError(f"unknown lq_mode {self.lq_mode!r}; use one of {', '.join(LQ_MODES)}")
        if self.lq_mode == "unshuffle48" and self.lq_channels != 48:
            raise ValueError(f"lq_mode 'unshuffle48' needs in_channels = out_channels + 48, got "
                             f"in_channels={self.in_channels}, out_channels={self.out_channels}")
        if self.residual == "lq_bicubic" and self.lq_mode == "unshuffle48" and self.out_channels != 48:
            raise ValueError("residual 'lq_bicubic' with lq_mode 'unshuffle48' needs a pixel-space f4 model "
                             f"(out_channels 48), got out_channels={self.out_channels}")
        if self.residual == "lq_bicubic" and self.lq_mode == "lq3" and (
                self.residual_scale < 2 or self.residual_scale ** 2 * 3 != self.out_channels or self.lq_channels != 3):
            raise ValueError("residual 'lq_bicubic' needs a pixel-space model (out_channels = 3 x scale^2, scale >= 2, "
                             f"3 LR channels), got out_channels={self.out_channels}, in_channels={self.in_channels}")

    @property
    def swin_heads(self) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        return self.swin_embed_dim // self.num_head_channels

    @property
    def has_attention(self) -> bool:
        return self.mid_attention or bool(self.attention_resolutions)

    @property
    def latent_multiple(self) -> int:
        """Latent H and W must be multiples of this: the window size at the coarsest level, or
        only the down-sampling factor for a model without attention."""
        window = self.window_size if self.has_attention else 1
        return window * 2 ** (len(self.channel_mult) - 1)

    @property
    def residual_scale(self) -> int:
        """r of a "lq_bicubic" residual model: its latent is the image space-to-depth by r."""
        return int(round((self.out_channels / 3) ** 0.5))

    @property
    def lq_channels(self) -> int:
        return self.in_channels - self.out_channels

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DenoiserConfig":
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class AutoencoderConfig:
    """Constructor arguments of the VQ-f4 autoencoder (``VQModelTorch`` with its ``ddconfig``)."""

    embed_dim: int = 3
    n_embed: int = 8192
    z_channels: int = 3
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    double_z: bool = False
    dropout: float = 0.0
    resolution: int = 256
    attn_resolutions: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.attn_resolutions:
            raise ValueError("attn_resolutions other than [] are not part of the VQ-f4 architecture")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoencoderConfig":
        """Accepts the flat form or the official nested ``{embed_dim, n_embed, ddconfig: {...}}``."""
        flat = dict(data)
        flat.update(flat.pop("ddconfig", None) or {})
        return cls(**_known_fields(cls, flat))


def _known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}


#: The released x4 SR denoiser (ResShift v1/v2/v3, SinSR v1/v2): 118,593,583 parameters.
OFFICIAL_DENOISER = DenoiserConfig()
#: The released VQ-f4 autoencoder ``autoencoder_vq_f4.pth``: 55,322,782 parameters.
OFFICIAL_AUTOENCODER = AutoencoderConfig()

