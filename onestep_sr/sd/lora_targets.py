"""Which modules of an SD UNet / VAE carry an OSEDiff-style LoRA (anchors 1.3), pure torch.

* UNet: every ``Linear`` / ``Conv2d`` whose name ends with one of :data:`UNET_PATTERNS`, split into
  three adapters: ``default_encoder`` (``down_blocks.*`` and ``conv_in``), ``default_decoder``
  (``up_blocks.*`` and ``conv_out``) and ``default_others`` (the rest: the mid block).
* VAE: the encoder's convolutions / attention projections (:data:`VAE_PATTERNS`) and
  ``quant_conv``; the decoder has none.

Used by the OSEDiff trainer (``training/sd/osediff.py``) and the conversion tests. A model built on
the meta device is enough: only names and module types are read.
"""
from __future__ import annotations

from torch import nn

UNET_PATTERNS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                 "conv_out", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
VAE_PATTERNS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0")
ADAPTERS = {"encoder": "default_encoder", "decoder": "default_decoder", "others": "default_others"}
VAE_ADAPTER = "default_encoder"


def matches(name: str, patterns) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def _lora_able(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def unet_targets(unet: nn.Module) -> dict[str, list[str]]:
    """``{"encoder": [...], "decoder": [...], "others": [...]}``: diffusers module names."""
    groups: dict[str, list[str]] = {"encoder": [], "decoder": [], "others": []}
    for name, module in unet.named_modules():
        if not _lora_able(module) or not matches(name, UNET_PATTERNS):
            continue
        if name.startswith("down_blocks.") or name == "conv_in":
            groups["encoder"].append(name)
        elif name.startswith("up_blocks.") or name == "conv_out":
            groups["decoder"].append(name)
        else:
            groups["others"].append(name)
    return groups


def vae_targets(vae: nn.Module) -> list[str]:
    """The VAE-encoder LoRA modules: encoder convs / attention projections and ``quant_conv``."""
    return [name for name, module in vae.named_modules()
            if _lora_able(module)
            and ((name.startswith("encoder.") and matches(name, VAE_PATTERNS)) or name == "quant_conv")]
