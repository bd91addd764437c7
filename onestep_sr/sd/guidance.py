"""Distilled classifier-free guidance as a weight patch (Meng et al. 2023, stage 1; pure torch).

A w-conditioned student (``training/sd/guided.py``, ``osediff --guidance-range``) is the user's SD
UNet plus a LoRA plus ONE new linear map ``cond_proj`` (``dim -> C``, no bias, zero-initialised;
C = the UNet's ``model_channels``, 320 for SD 1.x/2.x). ``cond_proj(phi(w))`` is added to the
sinusoidal time features before the first time-embedding linear layer (diffusers'
``TimestepEmbedding.cond_proj``; ComfyUI / LDM ``time_embed.0``), where ``phi`` is the guidance-scale
embedding of the LCM pipelines: ``sin / cos(1000 w f_k)``, ``f_k = exp(-ln(10000) k / (dim/2 - 1))``
[diffusers, a public realisation of Meng's "w embedded like t"]. **Our choice:** the features are
taken relative to w = 0, ``phi(w) - phi(0)``, so w = 0 adds nothing: a student at w = 0 is exactly
its LoRA alone (the plain student), and the zero-initialised student is the base UNet at every w.

Convention: w = 0 is no guidance; ComfyUI / A1111 / diffusers "CFG scale" = 1 + w (Meng's w).

Because ``time_embed.0`` is linear, ``W (s + c) + b = W s + (W c + b)``: at a fixed w the whole
w pathway is a constant bias delta ``W c`` on ``time_embed.0``. That is exact and is what stock LoRA
loaders apply: :func:`bake` writes it as ``lora_unet_time_embed_0.diff_b`` beside the LoRA keys
(with a zero ``.diff``, which A1111 needs to build the module).

File format of the w-conditioned set (one ``.safetensors``): the kohya LoRA keys of the UNet (as
``onestep-sr convert`` writes them) plus ``onestep_guidance.cond_proj.weight`` (``C x dim``), header
``guidance_embed_dim``, ``guidance_w_min`` / ``guidance_w_max`` (the trained range) and
``guidance_convention``. Stock loaders cannot add ``cond_proj``; the OneStep SD Upscale node and
``SDOneStepSR.from_checkpoint(lora=..., guidance=w)`` read it and bake at the w asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..options import OptionError
from .kohya_lora import LoraFormatError

COND_PROJ_KEY = "onestep_guidance.cond_proj.weight"
TIME_EMBED_KEY = "lora_unet_time_embed_0"  # kohya name of the LDM time_embed.0 (diffusers time_embedding.linear_1)
EMBED_DIM = 256
CONVENTION = "w = CFG scale - 1 (0: no guidance)"
W_LIMIT = 100.0  # |w| above this is refused (a CFG scale of 101 is a typo, not a request)


def guidance_features(w: torch.Tensor | float, dim: int = EMBED_DIM) -> torch.Tensor:
    """``B x dim`` float32 features of guidance weights ``w`` (a number or a 1-D tensor):
    ``phi(w) - phi(0)`` with phi the LCM guidance-scale embedding (module docstring)."""
    if dim < 4 or dim % 2:
        raise ValueError(f"the guidance embedding dimension must be even and >= 4, got {dim}")
    w = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    angles = (w * 1000.0)[:, None] * freqs[None, :]
    phi = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    phi[:, half:] -= 1.0  # minus phi(0) = [0 ... 0, 1 ... 1]
    return phi.float()


def check_guidance(w: float, what: str = "guidance") -> float:
    """``w`` as a float, refused with a sentence when it is not a finite number within +-W_LIMIT."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(float(w)):
        raise OptionError(what, w, "a finite number (w = CFG scale - 1)")
    if abs(float(w)) > W_LIMIT:
        raise OptionError(what, w, f"within [-{W_LIMIT:g}, {W_LIMIT:g}]", message=f"{what} {w} is outside "
                          f"[-{W_LIMIT:g}, {W_LIMIT:g}] (w = CFG scale - 1; 0: no guidance)")
    return float(w)


@dataclass
class GuidedLora:
    """A w-conditioned student: its kohya LoRA keys and ``cond_proj`` (``C x dim``)."""
    lora: dict[str, torch.Tensor]
    cond_proj: torch.Tensor
    w_range: tuple[float, float] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return int(self.cond_proj.shape[1])

    def time_condition(self, w: torch.Tensor | float) -> torch.Tensor:
        """``B x C``: ``cond_proj(phi(w) - phi(0))``, what is added to the sinusoidal time features."""
        return guidance_features(w, self.embed_dim) @ self.cond_proj.float().t()


def is_guided(state: Mapping[str, torch.Tensor]) -> bool:
    return COND_PROJ_KEY in state


def parse_guided(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                 source: str = "LoRA file") -> GuidedLora:
    """Split a w-conditioned file's tensors; :class:`LoraFormatError` naming the file and key when
    it is not one."""
    if COND_PROJ_KEY not in state:
        raise LoraFormatError(f"{source}: no key {COND_PROJ_KEY!r}: not a w-conditioned (guided) student file; "
                              "a plain LoRA goes into LoraLoader")
    proj = state[COND_PROJ_KEY]
    if proj.dim() != 2 or not proj.is_floating_point() or proj.shape[1] < 4 or proj.shape[1] % 2:
        raise LoraFormatError(f"{source}: key {COND_PROJ_KEY!r} has shape {list(proj.shape)}; expected "
                              "[model channels, even embedding dim >= 4]")
    if TIME_EMBED_KEY + ".diff_b" in state:
        raise LoraFormatError(f"{source}: has both {COND_PROJ_KEY!r} and a baked {TIME_EMBED_KEY}.diff_b")
    metadata = dict(metadata or {})
    w_range = None
    if "guidance_w_min" in metadata and "guidance_w_max" in metadata:
        w_range = (float(metadata["guidance_w_min"]), float(metadata["guidance_w_max"]))
    lora = {k: v for k, v in state.items() if k != COND_PROJ_KEY}
    return GuidedLora(lora, proj, w_range, metadata)


def time_bias_delta(time_embed_weight: torch.Tensor, guided: GuidedLora, w: float) -> torch.Tensor:
    """``W c(w)``: the bias change of ``time_embed.0`` (weight ``W``, ``D x C``) that equals the w
    pathway at ``w`` (float32, on the CPU)."""
    weight = time_embed_weight.detach().float().cpu()
    if weight.dim() != 2 or weight.shape[1] != guided.cond_proj.shape[0]:
        raise LoraFormatError(f"the model's time_embed.0 weight has shape {list(weight.shape)} but the guided "
                              f"file's {COND_PROJ_KEY} makes {guided.cond_proj.shape[0]} features: a student "
                              "of another model family")
    return (guided.time_condition(check_guidance(w)) @ weight.t())[0]


def bake(guided: GuidedLora, time_embed_weight: torch.Tensor, w: float) -> dict[str, torch.Tensor]:
    """The kohya LoRA of the student at the fixed guidance ``w``: its LoRA keys plus
    ``lora_unet_time_embed_0.diff_b`` (exact) and a zero ``.diff`` beside it, because A1111's Lora
    extension only builds a "full" module (which applies ``diff_b``) when ``diff`` is present;
    ComfyUI applies both (a zero weight change)."""
    delta = time_bias_delta(time_embed_weight, guided, w)
    like = next((v for k, v in guided.lora.items() if k.endswith(".lora_up.weight")), delta)
    return {**guided.lora, f"{TIME_EMBED_KEY}.diff": torch.zeros(time_embed_weight.shape, dtype=like.dtype),
            f"{TIME_EMBED_KEY}.diff_b": delta.to(like.dtype).contiguous()}


def baked_metadata(guided: GuidedLora, w: float) -> dict[str, str]:
    """Header of a baked file: the guided file's, with the fixed w recorded."""
    meta = {k: v for k, v in guided.metadata.items() if k != "guidance_embed_dim"}
    meta.update({"guidance_w": f"{w:g}", "guidance_cfg_scale": f"{1 + w:g}", "guidance_convention": CONVENTION,
                 "guidance": f"baked into {TIME_EMBED_KEY}.diff_b at w = {w:g}"})
    return meta
