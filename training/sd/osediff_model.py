"""The networks of OSEDiff-style training, built on one user SD checkpoint (diffusers + peft).

* the **generator**: the checkpoint's UNet with three LoRA adapters (``default_encoder`` /
  ``default_decoder`` / ``default_others``, OSEDiff's split, ``onestep_sr.sd.lora_targets``) and a
  fully trainable ``conv_in``, plus a LoRA (``default_encoder``) on the VAE encoder and
  ``quant_conv``; the VAE decoder is frozen. Its forward is the inference path of
  ``onestep_sr.sd.onestep.SDOneStepSR`` (bicubic x4 -> VAE posterior mode x scaling factor ->
  UNet at t = 999 -> x0 -> VAE decode), so a trained LoRA reproduces at inference.
* the **score UNet**: a second copy of the checkpoint's UNet with one LoRA adapter
  (``regulariser``) on the same targets. With its adapters disabled it is the frozen base model
  (the "real" score); with the adapter it is the "fake" score trained on generated latents.
  The copy is needed because the generator trains ``conv_in`` in full, which would otherwise
  change the base weights the real score must keep.

peft and diffusers are imported lazily (the ``sd`` extra).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from onestep_sr.sd.formulas import ONE_STEP_T, abar_at, x0_from_prediction
from onestep_sr.sd.lora_targets import ADAPTERS, VAE_ADAPTER, unet_targets, vae_targets
from onestep_sr.sd.onestep import bicubic_to

REGULARISER = "regulariser"
SCALE = 4


def _lora_config(rank: int, alpha: float, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)


def _activate(model: nn.Module, names: list[str]) -> None:
    try:
        model.set_adapter(names)
    except (TypeError, ValueError):
        model.set_adapters(names)


def add_generator_adapters(unet: nn.Module, rank: int, alpha: float) -> dict[str, list[str]]:
    """Attach OSEDiff's three UNet adapters (trainable) and make ``conv_in`` trainable in full."""
    groups = unet_targets(unet)
    with warnings.catch_warnings():  # peft warns that a second adapter makes several: intended
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for group, names in groups.items():
            if names:
                unet.add_adapter(_lora_config(rank, alpha, names), adapter_name=ADAPTERS[group])
    _activate(unet, [ADAPTERS[g] for g, names in groups.items() if names])
    conv_in = unet.conv_in.base_layer if hasattr(unet.conv_in, "base_layer") else unet.conv_in
    conv_in.requires_grad_(True)
    return groups


def add_vae_adapter(vae: nn.Module, rank: int, alpha: float) -> list[str]:
    names = vae_targets(vae)
    vae.add_adapter(_lora_config(rank, alpha, names), adapter_name=VAE_ADAPTER)
    _activate(vae, [VAE_ADAPTER])
    return names


def add_full_adapter(unet: nn.Module, rank: int, alpha: float, adapter: str) -> list[str]:
    """One trainable adapter on every OSEDiff UNet target (the regulariser; the guided student);
    returns the module names."""
    names = [n for group in unet_targets(unet).values() for n in group]
    unet.add_adapter(_lora_config(rank, alpha, names), adapter_name=adapter)
    _activate(unet, [adapter])
    return names


def add_regulariser_adapter(unet: nn.Module, rank: int, alpha: float) -> None:
    add_full_adapter(unet, rank, alpha, REGULARISER)


class OneStepGenerator(nn.Module):
    """``forward(lq in [0, 1], context) -> (z, x_hat)``: the clean latent (scaled) and the decoded
    image in [-1, 1] (not clamped), with gradients to the LoRA / conv_in parameters."""

    def __init__(self, unet: nn.Module, vae: nn.Module, prediction_type: str):
        super().__init__()
        self.unet, self.vae, self.prediction_type = unet, vae, prediction_type

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def forward(self, lq: torch.Tensor, context: torch.Tensor, size: tuple[int, int] | None = None,
                guidance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``size``: the HR size the LR is resized to before encoding (default x4); ``guidance``:
        per-sample w of a generator with a guidance input (``attach_cond_proj``)."""
        z = self.latent(lq, context, size, guidance)
        x_hat = self.vae.decode(z / self.scaling_factor).sample
        return z, x_hat

    def latent(self, lq: torch.Tensor, context: torch.Tensor, size: tuple[int, int] | None = None,
               guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The clean latent z (scaled) only: the forward without the VAE decoder."""
        h, w = lq.shape[-2:]
        ref = bicubic_to(lq.float(), tuple(size) if size is not None else (SCALE * h, SCALE * w))
        latent = self.vae.encode(ref * 2.0 - 1.0).latent_dist.mode() * self.scaling_factor
        t = torch.full((latent.shape[0],), ONE_STEP_T, device=latent.device, dtype=torch.long)
        if guidance is None:
            out = self.unet(latent, t, encoder_hidden_states=context).sample
        else:
            from .guidance_model import conditioned
            out = conditioned(self.unet, latent, t, context, guidance)
        return x0_from_prediction(latent.float(), out.float(), abar_at(ONE_STEP_T), self.prediction_type)


class ScoreUNet(nn.Module):
    """The regulariser: ``forward(z_t, t, context)`` is the fake score (the ``regulariser``
    adapter); :meth:`real` is the frozen base UNet (every adapter disabled)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(z_t, t, encoder_hidden_states=context).sample

    @contextmanager
    def adapters_disabled(self):
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def real(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with self.adapters_disabled():
            return self.unet(z_t, t, encoder_hidden_states=context).sample


def build_networks(sd, rank: int, alpha: float, vae_lora: bool):
    """(generator, score UNet, UNet adapter groups, VAE LoRA module names) from an ``SDModel``;
    ``sd.unet`` / ``sd.vae`` become the generator's (adapters attached in place)."""
    score_unet = copy.deepcopy(sd.unet)
    groups = add_generator_adapters(sd.unet, rank, alpha)
    vae_names = add_vae_adapter(sd.vae, rank, alpha) if vae_lora else []
    add_regulariser_adapter(score_unet, rank, alpha)
    return OneStepGenerator(sd.unet, sd.vae, sd.prediction_type), ScoreUNet(score_unet), groups, vae_names


def trainable(module: nn.Module, prefix: str) -> dict[str, nn.Parameter]:
    """``{prefix + name: parameter}`` of the parameters that require grad."""
    return {prefix + n: p for n, p in module.named_parameters() if p.requires_grad}
