"""Recover the architecture config from a state dict's key names and shapes.

Lets a checkpoint of any width/depth (released, fine-tuned or trained with ``training/``) load
without a separate config file. ``image_size`` is read from the stored ``attn_mask`` buffers when
present (it decides which levels shift their windows) and defaults to the released 64.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..errors import public_error
from .configs import AutoencoderConfig, DenoiserConfig


@public_error
class ArchitectureMismatch(ValueError):
    """The state dict is not one of the architectures this package implements."""


def _need(state: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ArchitectureMismatch(f"not a {what} state dict: key {key!r} is missing")
    return state[key]


def _width(state: Mapping[str, torch.Tensor], key: str, what: str, unit: int) -> int:
    """The first dimension (output channels) of ``key``, which must be a positive multiple of ``unit``."""
    shape = list(_need(state, key, what).shape)
    if not shape or shape[0] <= 0 or shape[0] % unit:
        raise ArchitectureMismatch(f"key {key!r} has the shape {shape}, which no {what} has (its first "
                                   f"dimension must be a multiple of {unit}): the file is damaged, or not a {what}")
    return shape[0]


def infer_denoiser_config(state: Mapping[str, torch.Tensor]) -> DenoiserConfig:
    what = "ResShift/SinSR Swin-UNet denoiser"
    conv_in = _need(state, "input_blocks.0.0.weight", what)
    model_channels, in_channels = _width(state, "input_blocks.0.0.weight", what, 32), conv_in.shape[1]
    out_channels = _need(state, "out.2.weight", what).shape[0]

    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    channel_mult: list[int] = []
    num_res_blocks: list[int] = []
    swin_levels: list[int] = []
    count = 0
    for index in blocks[1:]:
        if f"input_blocks.{index}.0.op.weight" in state:
            num_res_blocks.append(count)
            count = 0
            continue
        out = _width(state, f"input_blocks.{index}.0.out_layers.3.weight", what, model_channels)
        if count == 0:
            channel_mult.append(out // model_channels)
        if f"input_blocks.{index}.1.patch_embed.proj.weight" in state:
            swin_levels.append(len(channel_mult) - 1)
        count += 1
    num_res_blocks.append(count)

    table = next((v for k, v in state.items() if k.endswith("relative_position_bias_table")), None)
    if table is None:
        raise ArchitectureMismatch(f"not a {what} state dict: no Swin attention found")
    window = (math.isqrt(table.shape[0]) + 1) // 2
    heads = table.shape[1]
    prefix = next(k for k in state if k.endswith("relative_position_bias_table")).split(".blocks.")[0]
    qkv = state[f"{prefix}.blocks.0.attn.qkv.weight"]
    embed = qkv.shape[1]
    depth = len({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"\.blocks\.(\d+)\.", k))})
    mlp_ratio = state[f"{prefix}.blocks.0.mlp.fc1.weight"].shape[0] / embed

    image_size = 64
    first_mask = f"input_blocks.{blocks[1]}.1.blocks.1.attn_mask"
    if first_mask in state:
        image_size = window * math.isqrt(state[first_mask].shape[0])
    emb_rows = state[f"input_blocks.{blocks[1]}.0.emb_layers.1.weight"].shape[0]
    first_out = state[f"input_blocks.{blocks[1]}.0.out_layers.3.weight"].shape[0]
    return DenoiserConfig(
        image_size=image_size, in_channels=in_channels, model_channels=model_channels,
        out_channels=out_channels, channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
        attention_resolutions=tuple(image_size // 2 ** level for level in swin_levels),
        use_scale_shift_norm=emb_rows == 2 * first_out,
        num_head_channels=embed // heads, swin_depth=depth, swin_embed_dim=embed,
        window_size=window, mlp_ratio=mlp_ratio,
    )


def infer_autoencoder_config(state: Mapping[str, torch.Tensor]) -> AutoencoderConfig:
    what = "VQ-f4 autoencoder"
    conv_in = _need(state, "encoder.conv_in.weight", what)
    ch = _width(state, "encoder.conv_in.weight", what, 32)
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    ch_mult = tuple(_width(state, f"encoder.down.{i}.block.0.conv1.weight", what, ch) // ch for i in levels)
    num_res_blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    n_embed, embed_dim = _need(state, "quantize.embedding.weight", what).shape
    z_channels = _need(state, "quant_conv.weight", what).shape[1]
    return AutoencoderConfig(
        embed_dim=embed_dim, n_embed=n_embed, z_channels=z_channels, in_channels=conv_in.shape[1],
        out_ch=_need(state, "decoder.conv_out.weight", what).shape[0], ch=ch, ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        double_z=state["encoder.conv_out.weight"].shape[0] == 2 * z_channels,
    )
