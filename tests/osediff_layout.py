"""OSEDiff's LoRA targets (anchors 1.3) and a synthetic checkpoint in its pickle layout, shared by
the conversion tests (tests/test_sd_lora.py) and the real-ComfyUI suite.

``unet_targets`` / ``vae_targets`` pick the modules OSEDiff puts LoRA on from a diffusers UNet /
AutoencoderKL (any size; a model built on the meta device is enough). ``synthetic_osediff``
fills a checkpoint dict with random LoRA factors of the right shapes for every target (PEFT names,
three UNet adapters, a fully trained ``conv_in``), without PEFT.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# the target selection lives in the engine (the trainer uses it too)
from onestep_sr.sd.lora_targets import ADAPTERS, UNET_PATTERNS, VAE_PATTERNS, matches, unet_targets, vae_targets  # noqa: F401


def _lora_factors(module: nn.Module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's lora_A / lora_B weights for ``module`` (Linear: r x in, out x r; Conv2d: r x in x k x k,
    out x r x 1 x 1), small enough that the patched model stays well-behaved."""
    if isinstance(module, nn.Linear):
        a_shape, b_shape = (rank, module.in_features), (module.out_features, rank)
    else:
        a_shape, b_shape = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
    fan_in = math.prod(a_shape[1:])
    return (torch.randn(a_shape, generator=generator) / math.sqrt(fan_in),
            0.02 * torch.randn(b_shape, generator=generator))


def synthetic_osediff(unet: nn.Module, vae: nn.Module, rank: int = 4, seed: int = 0) -> dict:
    """An OSEDiff checkpoint dict (what its ``save_model`` writes) with random factors for every
    OSEDiff target of ``unet`` / ``vae`` (shapes only are read: meta-device models work)."""
    generator = torch.Generator().manual_seed(seed)
    groups, vae_names = unet_targets(unet), vae_targets(vae)
    modules = dict(unet.named_modules())
    state_unet = {}
    for group, names in groups.items():
        for name in names:
            a, b = _lora_factors(modules[name], rank, generator)
            state_unet[f"{name}.lora_A.{ADAPTERS[group]}.weight"] = a
            state_unet[f"{name}.lora_B.{ADAPTERS[group]}.weight"] = b
    conv_in = unet.conv_in   # trained in full; PEFT wraps it, so the names carry base_layer
    fan_in = math.prod(conv_in.weight.shape[1:])
    state_unet["conv_in.base_layer.weight"] = torch.randn(conv_in.weight.shape, generator=generator) / math.sqrt(fan_in)
    state_unet["conv_in.base_layer.bias"] = 0.01 * torch.randn(conv_in.weight.shape[0], generator=generator)
    vae_modules = dict(vae.named_modules())
    state_vae = {}
    for name in vae_names:
        a, b = _lora_factors(vae_modules[name], rank, generator)
        state_vae[f"{name}.lora_A.default_encoder.weight"] = a
        state_vae[f"{name}.lora_B.default_encoder.weight"] = b
    return {"unet_lora_encoder_modules": groups["encoder"], "unet_lora_decoder_modules": groups["decoder"],
            "unet_lora_others_modules": groups["others"], "vae_lora_encoder_modules": vae_names,
            "rank_unet": rank, "rank_vae": rank, "state_dict_unet": state_unet, "state_dict_vae": state_vae}
