"""Kohya-format LoRA files: the key names and applying a file to diffusers modules.

The one-step SD path reads and writes LoRA files in the layout that ComfyUI's LoraLoader and A1111's
Lora extension load ("kohya" keys):

* UNet modules by their diffusers name with dots as underscores: ``lora_unet_<name>``
  (:func:`kohya_unet_name`); the top-level UNet modules also by their LDM name,
  ``diffusion_model.input_blocks.0.0`` or ``lora_unet_time_embed_0`` (:func:`unet_diffusers_to_ldm`);
* VAE-encoder modules by their LDM (ComfyUI ``first_stage_model`` / A1111) name,
  ``encoder.mid.attn_1.q`` or ``quant_conv`` (:func:`vae_diffusers_to_ldm`);
* each with ``.lora_down.weight`` / ``.lora_up.weight`` [/ ``.alpha``] (a LoRA, scaled by
  ``alpha / rank``), ``.set_weight`` (a full weight), ``.diff`` / ``.diff_b`` (a full difference).

:func:`merge_kohya_lora` is the reference merge of such a file into a diffusers ``UNet2DConditionModel``
/ ``AutoencoderKL`` (used by ``onestep_sr.sd.onestep`` and the tests that compare with the hosts).
Writing OSEDiff's released weights in this format is ``onestep_sr.sd.osediff_convert``.

Only torch is used here: diffusers and peft are never imported.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..errors import public_error

FORMAT = "kohya-lora"
UNET_PREFIX = "lora_unet_"
CONV_IN_LDM = "diffusion_model.input_blocks.0.0"
_SHOW = 5


@public_error
class LoraFormatError(CheckpointError):
    """An OSEDiff or kohya LoRA file (or state dict) that cannot be converted or applied."""


def _listing(items: list[str]) -> str:
    shown = ", ".join(repr(x) for x in items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


# ---------------------------------------------------------------------------------------------
# module names: diffusers <-> LDM (VAE encoder, UNet top level) and kohya


def kohya_unet_name(diffusers_module: str) -> str:
    """``down_blocks.0.resnets.0.conv1`` -> ``lora_unet_down_blocks_0_resnets_0_conv1``."""
    return UNET_PREFIX + diffusers_module.replace(".", "_")


_UNET_TOP = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2"}
_UNET_TOP_INV = {v: k for k, v in _UNET_TOP.items()}


def unet_diffusers_to_ldm(name: str) -> Optional[str]:
    """LDM name of a top-level UNet module (``conv_in`` -> ``input_blocks.0.0``); ``None`` for the
    block modules, which the kohya keys address by their diffusers names."""
    return _UNET_TOP.get(name)


def unet_ldm_to_diffusers(name: str) -> Optional[str]:
    return _UNET_TOP_INV.get(name)


_RESNET_TO_LDM = {"conv1": "conv1", "conv2": "conv2", "norm1": "norm1", "norm2": "norm2",
                  "conv_shortcut": "nin_shortcut"}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_LDM.items()}
_ATTN_TO_LDM = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out", "group_norm": "norm"}
_ATTN_TO_DIFFUSERS = {v: k for k, v in _ATTN_TO_LDM.items()}
_VAE_TOP = {"encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
            "encoder.conv_norm_out": "encoder.norm_out", "quant_conv": "quant_conv"}
_VAE_TOP_INV = {v: k for k, v in _VAE_TOP.items()}


def vae_diffusers_to_ldm(name: str) -> Optional[str]:
    """LDM (ComfyUI ``first_stage_model`` / A1111) name of a diffusers AutoencoderKL encoder module,
    e.g. ``encoder.mid_block.attentions.0.to_q`` -> ``encoder.mid.attn_1.q``; ``None`` if it is not
    an encoder / ``quant_conv`` module."""
    if name in _VAE_TOP:
        return _VAE_TOP[name]
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", name)
    if m and m[3] in _RESNET_TO_LDM:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_RESNET_TO_LDM[m[3]]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", name)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv"
    m = re.fullmatch(r"encoder\.mid_block\.resnets\.([01])\.(\w+)", name)
    if m and m[2] in _RESNET_TO_LDM:
        return f"encoder.mid.block_{int(m[1]) + 1}.{_RESNET_TO_LDM[m[2]]}"
    m = re.fullmatch(r"encoder\.mid_block\.attentions\.0\.(.+)", name)
    if m and m[1] in _ATTN_TO_LDM:
        return f"encoder.mid.attn_1.{_ATTN_TO_LDM[m[1]]}"
    return None


def vae_ldm_to_diffusers(name: str) -> Optional[str]:
    """Inverse of :func:`vae_diffusers_to_ldm`."""
    if name in _VAE_TOP_INV:
        return _VAE_TOP_INV[name]
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)", name)
    if m and m[3] in _RESNET_TO_DIFFUSERS:
        return f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_RESNET_TO_DIFFUSERS[m[3]]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv", name)
    if m:
        return f"encoder.down_blocks.{m[1]}.downsamplers.0.conv"
    m = re.fullmatch(r"encoder\.mid\.block_([12])\.(\w+)", name)
    if m and m[2] in _RESNET_TO_DIFFUSERS:
        return f"encoder.mid_block.resnets.{int(m[1]) - 1}.{_RESNET_TO_DIFFUSERS[m[2]]}"
    m = re.fullmatch(r"encoder\.mid\.attn_1\.(\w+)", name)
    if m and m[1] in _ATTN_TO_DIFFUSERS:
        return f"encoder.mid_block.attentions.0.{_ATTN_TO_DIFFUSERS[m[1]]}"
    return None


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape: torch.Size, scale: float) -> torch.Tensor:
    """``scale * up @ down`` as a weight of ``shape`` (float32): linear ``[out, r] @ [r, in]``, conv
    ``[out, r, 1, 1]`` with ``[r, in, k, k]`` through the flattened ``[out, r] @ [r, in*k*k]``."""
    product = up.flatten(1).to(torch.float32) @ down.flatten(1).to(torch.float32)
    if product.numel() != torch.Size(shape).numel():
        raise ValueError(f"LoRA product {list(product.shape)} does not fit a weight of shape {list(shape)}")
    return product.reshape(shape) * scale


# ---------------------------------------------------------------------------------------------
# the reference merge


_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha", ".set_weight", ".diff", ".diff_b")


def _split(key: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def _weighted_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if name and isinstance(getattr(m, "weight", None), torch.Tensor)}


def _targets(unet: Optional[nn.Module], vae: Optional[nn.Module]) -> dict[str, tuple[str, nn.Module, str]]:
    """kohya / LDM key prefix -> (description, module, parameter name)."""
    out: dict[str, tuple[str, nn.Module, str]] = {}
    if unet is not None:
        for name, module in _weighted_modules(unet).items():
            out[kohya_unet_name(name)] = (f"unet.{name}", module, "weight")
            ldm = unet_diffusers_to_ldm(name)
            if ldm is not None:
                out[f"diffusion_model.{ldm}"] = (f"unet.{name}", module, "weight")
                out[UNET_PREFIX + ldm.replace(".", "_")] = (f"unet.{name}", module, "weight")  # lora_unet_time_embed_0
                if isinstance(getattr(module, "bias", None), torch.Tensor):
                    out[f"diffusion_model.{ldm}.bias"] = (f"unet.{name}.bias", module, "bias")
    if vae is not None:
        for name, module in _weighted_modules(vae).items():
            ldm = vae_diffusers_to_ldm(name)
            if ldm is not None:
                out[ldm] = (f"vae.{name}", module, "weight")
    return out


@torch.no_grad()
def merge_kohya_lora(unet: Optional[nn.Module], vae: Optional[nn.Module], state_dict: Mapping[str, torch.Tensor],
                     strength: float = 1.0) -> dict[str, int]:
    """Apply a kohya LoRA state dict (UNet keys, VAE-encoder keys, or both merged into one dict) to
    a diffusers ``UNet2DConditionModel`` and/or ``AutoencoderKL``, in place:

    * ``P.lora_down.weight`` / ``P.lora_up.weight`` [/ ``P.alpha``]:
      ``W += strength * alpha / rank * up @ down`` (no alpha: scale 1, as kohya and ComfyUI);
    * ``P.set_weight``: ``W = value`` (like ComfyUI, not scaled by ``strength``);
    * ``P.diff`` / ``P.diff_b``: ``W += strength * diff``, ``bias += strength * diff_b``.

    ``P`` is ``lora_unet_<diffusers name, dots as underscores>``, ``diffusion_model.<LDM name>``
    (top-level UNet modules such as ``input_blocks.0.0``; with ``.bias`` for the bias), ``lora_unet_<LDM
    name, dots as underscores>`` for those (``lora_unet_time_embed_0``, as ComfyUI maps) or an LDM VAE
    encoder name (``encoder.mid.attn_1.q``, ``quant_conv``). Every key must be used: otherwise, or
    on a shape mismatch, a :class:`LoraFormatError` lists the keys and nothing is changed.
    Returns counts of what was applied."""
    targets = _targets(unet, vae)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unused: list[str] = []
    for key, value in state_dict.items():
        split = _split(key)
        if split is None or split[0] not in targets:
            unused.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = value
    plan: list[tuple[nn.Module, str, str, torch.Tensor]] = []  # (module, param, kind, value)
    problems: list[str] = []
    for prefix, parts in groups.items():
        what, module, param = targets[prefix]
        target = getattr(module, param)
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if (down is None) != (up is None):
            problems.append(f"{prefix}: only one of lora_down / lora_up")
            unused += [prefix + s for s in (".lora_down.weight", ".lora_up.weight", ".alpha") if s in parts]
        elif down is not None:
            rank = down.shape[0]
            alpha = float(parts[".alpha"].item()) if ".alpha" in parts else float(rank)
            try:
                plan.append((module, param, "lora", lora_delta(down, up, target.shape, strength * alpha / rank)))
            except ValueError as exc:
                problems.append(f"{prefix} ({what}): {exc}")
        elif ".alpha" in parts:
            unused.append(prefix + ".alpha")
        if ".set_weight" in parts:
            value = parts[".set_weight"]
            if value.numel() != target.numel():
                problems.append(f"{prefix}.set_weight: shape {list(value.shape)} does not fit {what} "
                                f"{list(target.shape)}")
            else:
                plan.append((module, param, "set", value.reshape(target.shape)))
        if ".diff" in parts:
            value = parts[".diff"]
            if value.numel() != target.numel():
                problems.append(f"{prefix}.diff: shape {list(value.shape)} does not fit {what} {list(target.shape)}")
            else:
                plan.append((module, param, "diff", strength * value.reshape(target.shape).to(torch.float32)))
        if ".diff_b" in parts:
            bias = getattr(module, "bias", None) if param == "weight" else None
            value = parts[".diff_b"]
            if bias is None or value.numel() != bias.numel():
                problems.append(f"{prefix}.diff_b: no bias of {bias.numel() if bias is not None else 0} values "
                                f"to add {list(value.shape)} to")
            else:
                plan.append((module, "bias", "diff", strength * value.reshape(bias.shape).to(torch.float32)))
    if unused:
        problems.insert(0, f"{len(unused)} key(s) not used (no matching module in the given "
                           f"{' / '.join(n for n, m in (('UNet', unet), ('VAE', vae)) if m is not None) or 'models'}): "
                           f"{_listing(sorted(unused))}")
    if problems:
        raise LoraFormatError("cannot apply the LoRA: " + "; ".join(problems))
    # `set` patches first, then the additions (within one file ComfyUI keeps one patch per weight,
    # so the order only matters for a hand-made dict holding both for the same weight)
    plan.sort(key=lambda item: item[2] != "set")
    counts = {"lora": 0, "set": 0, "diff": 0}
    for module, param, kind, value in plan:
        tensor = getattr(module, param)
        if kind == "set":
            tensor.copy_(value.to(tensor.dtype))
        else:
            tensor.copy_((tensor.to(torch.float32) + value.to(tensor.device)).to(tensor.dtype))
        counts[kind] += 1
    return counts
