"""The w pathway of guidance distillation on a diffusers UNet (``onestep_sr.sd.guidance`` has the
maths and the file format; this module attaches them to training networks).

* :func:`attach_cond_proj` -- diffusers' own hook for it: ``unet.time_embedding.cond_proj``, a
  bias-free ``Linear(dim -> C)`` whose output ``TimestepEmbedding`` adds to the sinusoidal time
  features when the UNet is called with ``timestep_cond``; zero-initialised (the student starts as
  the unguided model).
* :func:`conditioned` -- one UNet call at per-sample guidance weights ``w``.
* :func:`guided_output` -- the two-call CFG target ``(1 + w) out_c - w out_u`` in the model's own
  parameterisation (eps or v: x0, eps and v are affine in the output for a fixed ``z_t`` and t with
  coefficients that sum to one, so the combination is the same in every parameterisation).
* :class:`HookedLora` -- a w-conditioned student FILE applied to a UNet by forward hooks only
  inside ``with hooks.active(w)``: the OSEDiff trainer's one-call real score, on the score UNet that
  also carries the fake score's adapter (no third UNet in memory, peft's adapter state untouched).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from onestep_sr.sd.guidance import EMBED_DIM, TIME_EMBED_KEY, GuidedLora, guidance_features
from onestep_sr.sd.lora import LoraFormatError, kohya_unet_name


def attach_cond_proj(unet: nn.Module, dim: int = EMBED_DIM) -> nn.Linear:
    """Give ``unet`` (diffusers UNet2DConditionModel, peft-wrapped or not) a zero ``cond_proj``."""
    embedding = unet.time_embedding
    if getattr(embedding, "cond_proj", None) is not None:
        raise ValueError("this UNet already has a time_embedding.cond_proj (an LCM-style model?)")
    proj = nn.Linear(dim, embedding.linear_1.in_features, bias=False)
    nn.init.zeros_(proj.weight)
    proj.to(embedding.linear_1.weight.device)
    embedding.cond_proj = proj
    return proj


def per_sample(w: torch.Tensor | float, batch: int) -> torch.Tensor:
    """``w`` as a float32 vector of ``batch`` values."""
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    return w.expand(batch) if w.numel() == 1 else w


def conditioned(unet: nn.Module, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                w: torch.Tensor | float) -> torch.Tensor:
    """The UNet output at guidance ``w`` (one call; ``cond_proj`` must be attached)."""
    dim = getattr(unet, "module", unet).time_embedding.cond_proj.in_features  # (a DDP wrapper: its module)
    features = guidance_features(per_sample(w, z_t.shape[0]), dim).to(z_t.device, z_t.dtype)
    return unet(z_t, t, encoder_hidden_states=context, timestep_cond=features).sample


def guided_output(uncond: torch.Tensor, cond: torch.Tensor, w: torch.Tensor | float) -> torch.Tensor:
    """``(1 + w) cond - w uncond`` with ``w`` per sample (CFG scale 1 + w)."""
    w = per_sample(w, cond.shape[0]).to(cond.device, cond.dtype).view(-1, *([1] * (cond.dim() - 1)))
    return cond + w * (cond - uncond)


def _base(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


class HookedLora:
    """Apply ``guided`` (kohya LoRA keys + ``cond_proj``) to ``unet`` as forward hooks: each
    targeted module's output gains ``alpha / rank * up(down(x))`` (or ``diff`` / ``diff_b``), and
    ``time_embedding.linear_1``'s gains ``W c(w)``. Equal to merging the file baked at ``w`` (up to
    float rounding) but reversible and per-sample in ``w``. Every key must map to a module."""

    def __init__(self, unet: nn.Module, guided: GuidedLora, source: str = "guided file"):
        names = {kohya_unet_name(n): m for n, m in unet.named_modules() if n and ".lora_" not in n}
        names[TIME_EMBED_KEY] = unet.time_embedding.linear_1
        self.unet, self.guided = unet, guided
        self.parts: dict[nn.Module, dict[str, torch.Tensor]] = {}
        unused = []
        for key, value in guided.lora.items():
            prefix, _, suffix = key.partition(".")
            if prefix not in names or suffix not in ("lora_down.weight", "lora_up.weight", "alpha", "diff", "diff_b"):
                unused.append(key)
                continue
            self.parts.setdefault(names[prefix], {})[suffix] = value.detach()
        if unused:
            raise LoraFormatError(f"{source}: {len(unused)} key(s) match no module of this UNet (another base "
                                  f"model?): {', '.join(sorted(unused)[:5])}")
        self.time_linear = _base(unet.time_embedding.linear_1)
        self._w: torch.Tensor | None = None

    def _hook(self, module: nn.Module, inputs, output):
        x, base, part = inputs[0], _base(module), self.parts.get(module, {})
        conv = isinstance(base, nn.Conv2d)

        def apply(weight, bias=None):
            weight = weight.to(x.device, x.dtype)
            bias = None if bias is None else bias.to(x.device, x.dtype)
            if conv:
                return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation, base.groups)
            return F.linear(x, weight, bias)

        if "lora_down.weight" in part:
            down, up = part["lora_down.weight"], part["lora_up.weight"]
            scale = float(part["alpha"]) / down.shape[0] if "alpha" in part else 1.0
            hidden = apply(down)
            up = up.to(x.device, x.dtype)
            output = output + scale * (F.conv2d(hidden, up) if conv else F.linear(hidden, up))
        if "diff" in part:
            output = output + apply(part["diff"].reshape(base.weight.shape), part.get("diff_b"))
        elif "diff_b" in part and module is not self.unet.time_embedding.linear_1:
            shape = (1, -1, 1, 1) if conv else (1, -1)
            output = output + part["diff_b"].to(x.device, x.dtype).view(shape)
        if module is self.unet.time_embedding.linear_1 and self._w is not None:
            c = self.guided.time_condition(self._w.cpu()).to(x.device, x.dtype)  # B x C
            output = output + F.linear(c, self.time_linear.weight.to(x.dtype))
        return output

    @contextmanager
    def active(self, w: torch.Tensor | float):
        """Inside: the UNet is the student at guidance ``w`` (per sample, or one number)."""
        self._w = per_sample(w, 1).float()
        modules = set(self.parts) | {self.unet.time_embedding.linear_1}
        handles = [m.register_forward_hook(self._hook) for m in modules]
        try:
            yield self.unet
        finally:
            for h in handles:
                h.remove()
            self._w = None
