"""One-step super-resolution on a Stable Diffusion checkpoint (OSEDiff-style LoRA students).

Modules here may use diffusers / peft (the ``sd`` extra) only inside functions that need them; the
ComfyUI and A1111 paths never import diffusers, peft or torchvision.

* ``formulas``   -- pure torch: the scaled_linear schedule, x0 from eps / v, Gaussian latent tiles,
  pad-to-8 / crop.
* ``checkpoint`` -- SD 1.x / 2.x single files or diffusers folders -> diffusers modules, offline
  (configs in ``weights/configs/``), with family / prediction-type detection.
* ``prompt``     -- CLIP token ids (empty prompt without any vocabulary file) and text embeddings.
* ``onestep``    -- :class:`SDOneStepSR`, the one-step engine (bicubic -> VAE -> UNet t=999 -> x0
  -> VAE -> colour fix).
* ``kohya_lora`` -- kohya-format LoRA files: key names and the reference merge into diffusers modules.
* ``osediff_convert`` -- OSEDiff's released ``osediff.pkl`` -> kohya LoRA files (``onestep-sr convert``).
* ``lora``       -- both of the above under one name, for callers.
* ``lora_targets``, ``guidance`` -- the OSEDiff LoRA target modules; the w-conditioned (guided) file format.
"""
from .checkpoint import SDModel, detect_family, detect_prediction_type, load_sd_model
from .onestep import SDOneStepSR

__all__ = ["SDModel", "SDOneStepSR", "detect_family", "detect_prediction_type", "load_sd_model"]
