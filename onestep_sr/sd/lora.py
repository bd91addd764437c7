"""LoRA files of the one-step SD path, in one place for callers: this module re-exports

* ``onestep_sr.sd.kohya_lora``: the kohya key names, ``LoraFormatError`` and the reference merge
  ``merge_kohya_lora`` (applying a kohya LoRA file to diffusers modules);
* ``onestep_sr.sd.osediff_convert``: OSEDiff's released ``osediff.pkl`` -> kohya LoRA files
  (``onestep-sr convert``), ``osediff_to_kohya``, ``write_kohya_files``, ``vae_sibling_path``.

Only torch and safetensors are used: diffusers and peft are never imported.
"""
from __future__ import annotations

from .kohya_lora import (CONV_IN_LDM, FORMAT, UNET_PREFIX, LoraFormatError, kohya_unet_name, lora_delta,
                         merge_kohya_lora, unet_diffusers_to_ldm, unet_ldm_to_diffusers, vae_diffusers_to_ldm,
                         vae_ldm_to_diffusers)
from .osediff_convert import (DEFAULT_ALPHA, OSEDIFF_KEYS, UNET_GROUPS, VAE_GROUP, ConversionSummary,
                              OSEDiffCheckpoint, convert_osediff, is_osediff_file, looks_like_osediff,
                              osediff_to_kohya, parse_osediff, read_osediff, vae_sibling_path, write_kohya_files)

__all__ = [
    "CONV_IN_LDM", "ConversionSummary", "DEFAULT_ALPHA", "FORMAT", "LoraFormatError", "OSEDIFF_KEYS",
    "OSEDiffCheckpoint", "UNET_GROUPS", "UNET_PREFIX", "VAE_GROUP", "convert_osediff", "is_osediff_file",
    "kohya_unet_name", "looks_like_osediff", "lora_delta", "merge_kohya_lora", "osediff_to_kohya",
    "parse_osediff", "read_osediff", "unet_diffusers_to_ldm", "unet_ldm_to_diffusers", "vae_diffusers_to_ldm",
    "vae_ldm_to_diffusers", "vae_sibling_path", "write_kohya_files",
]
