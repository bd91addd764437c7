"""One-step super-resolution with a Stable Diffusion 1.x/2.x UNet (the OSEDiff inference path).

For each image (float RGB in [0, 1]):

1. ``ref`` = bicubic resize of the LR image to ``round(scale * H) x round(scale * W)`` (clamped to
   [0, 1]); the networks always run at the output size.
2. Pad ``ref`` to multiples of 8 (reflect), map to [-1, 1], VAE-encode; the latent is the posterior
   mode (deterministic, as ComfyUI does) or, with ``vae_sample=True``, a sample drawn from a CPU
   generator seeded with ``seed`` (as OSEDiff does); times the VAE's ``scaling_factor``.
3. The UNet at ``t = 999`` with the prompt's text embedding (empty prompt by default), over
   Gaussian-blended latent tiles when the latent is larger than one tile.
4. ``x0`` in closed form from the epsilon or v prediction (``formulas``), divided by the scaling
   factor, VAE-decoded, clamped to [-1, 1], mapped to [0, 1], cropped back to the output size.
5. Colour fix towards ``ref`` (``adain`` by default, ``wavelet`` or ``none``; ``onestep_sr.colorfix``).

Alpha channels are resized with bicubic on their own and re-attached; image kinds round-trip through
``onestep_sr.imageio``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..colorfix import COLOR_FIXES, color_fix as apply_color_fix
from ..imageio import from_unit_float, prepare
from ..options import check_overlap, check_scale, check_sd_tile, check_seed
from .checkpoint import SDModel, load_sd_model
from .formulas import (LATENT_OVERLAP, LATENT_TILE, ONE_STEP_T, abar_at, crop_to, pad_to_multiple,
                       run_tiled_halving, x0_from_prediction)
from .prompt import encode_prompt


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(scale * H), round(scale * W))``, at least 1 x 1 (``scale`` by its rule, in (0, 64])."""
    scale = check_scale(scale)
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_sd_options(scale: float, tile: int, overlap: int,
                     seed: int | None = None) -> tuple[float, int, int, int | None]:
    """The SD path's numeric options checked by their rules (``onestep_sr.options``)."""
    tile = check_sd_tile(tile)
    return check_scale(scale), tile, check_overlap(overlap, tile), check_seed(seed)


def bicubic_to(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of B x C x H x W to ``size`` (antialiased when shrinking), clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.clone()
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False,
                         antialias=shrinking).clamp_(0.0, 1.0)


class SDOneStepSR:
    """One-step SR engine on an :class:`~onestep_sr.sd.checkpoint.SDModel` (see module doc)."""

    def __init__(self, model: SDModel, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        for net in (model.unet, model.vae, model.text_encoder):
            net.to(self.device)
            if next(net.parameters()).dtype != dtype:   # (diffusers warns on every dtype cast)
                net.to(dtype=dtype)
        self._embeddings: dict[str, torch.Tensor] = {}

    @classmethod
    def from_checkpoint(cls, path, family: str | None = None, prediction_type: str | None = None,
                        config_dir=None, lora=None, lora_strength: float = 1.0, guidance: float | None = None,
                        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "SDOneStepSR":
        """Load an SD 1.x/2.x checkpoint (file or diffusers folder) offline, optionally merging a
        kohya LoRA (a file path or a state dict) into the UNet / VAE first. A w-conditioned student
        file (``onestep_sr.sd.guidance``) is baked at ``guidance`` (w = CFG scale - 1) first."""
        model = load_sd_model(path, family=family, prediction_type=prediction_type, config_dir=config_dir)
        if lora is not None:
            merge_lora(model, lora, lora_strength, guidance)
        elif guidance is not None:
            raise ValueError("guidance needs a w-conditioned student file as lora")
        return cls(model, device=device, dtype=dtype)

    @property
    def prediction_type(self) -> str:
        return self.model.prediction_type

    # ------------------------------------------------------------------------- stages
    def text_embedding(self, prompt: str = "") -> torch.Tensor:
        """``1 x 77 x D`` embedding of ``prompt`` (cached per prompt)."""
        if prompt not in self._embeddings:
            self._embeddings[prompt] = encode_prompt(self.model.text_encoder, prompt, self.model.prompt)
        return self._embeddings[prompt]

    @torch.no_grad()
    def encode(self, image: torch.Tensor, vae_sample: bool = False, seed: int | None = None) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] (H, W multiples of 8) -> scaled latent B x 4 x H/8 x W/8."""
        x = (image.to(self.device, self.dtype) * 2.0 - 1.0)
        posterior = self.model.vae.encode(x).latent_dist
        if vae_sample:
            generator = torch.Generator("cpu").manual_seed(0 if seed is None else int(seed))
            noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
            latent = posterior.mean + posterior.std * noise.to(posterior.mean)
        else:
            latent = posterior.mode()
        return latent * self.model.scaling_factor

    @torch.no_grad()
    def predict_x0(self, latent: torch.Tensor, prompt: str = "", tile: int = LATENT_TILE,
                   overlap: int = LATENT_OVERLAP, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One UNet call at t = 999 (tiled) -> clean latent x0 (same scale as ``latent``)."""
        context = self.text_embedding(prompt).to(self.device, self.dtype)
        timestep = torch.tensor([ONE_STEP_T], device=self.device)

        def unet(z: torch.Tensor) -> torch.Tensor:
            return self.model.unet(z, timestep, encoder_hidden_states=context.expand(z.shape[0], -1, -1)).sample

        out = run_tiled_halving(unet, latent, tile=tile, overlap=overlap, on_tile=progress)
        return x0_from_prediction(latent.float(), out.float(), abar_at(ONE_STEP_T), self.prediction_type)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Scaled clean latent -> B x 3 x 8h x 8w image in [0, 1] (float32)."""
        image = self.model.vae.decode(x0.to(self.device, self.dtype) / self.model.scaling_factor).sample
        return ((image.float().clamp(-1.0, 1.0) + 1.0) / 2.0)

    # ------------------------------------------------------------------------- whole path
    @torch.no_grad()
    def upscale_tensor(self, lr: torch.Tensor, scale: float = 4, prompt: str = "", vae_sample: bool = False,
                       seed: int | None = None, tile: int = LATENT_TILE, overlap: int = LATENT_OVERLAP,
                       color_fix: str = "adain", progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """B x 3 x h x w float in [0, 1] -> B x 3 x round(scale h) x round(scale w) float32 on CPU."""
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"unknown colour fix {color_fix!r}; expected one of {COLOR_FIXES}")
        if lr.ndim != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected a B x 3 x H x W RGB tensor, got shape {tuple(lr.shape)}")
        scale, tile, overlap, seed = check_sd_options(scale, tile, overlap, seed)
        ref = bicubic_to(lr.float().cpu(), output_size(*lr.shape[-2:], scale))
        padded, size = pad_to_multiple(ref)
        latent = self.encode(padded, vae_sample=vae_sample, seed=seed)
        x0 = self.predict_x0(latent, prompt=prompt, tile=tile, overlap=overlap, progress=progress)
        sr = crop_to(self.decode(x0).cpu(), size)
        return apply_color_fix(sr, ref, color_fix)

    def upscale(self, image, scale: float = 4, prompt: str = "", vae_sample: bool = False,
                seed: int | None = None, tile: int = LATENT_TILE, overlap: int = LATENT_OVERLAP,
                color_fix: str = "adain", progress: Callable[[int, int], None] | None = None):
        """PIL image / numpy H x W [x C] / torch [B x] C x H x W -> the same kind at ``scale`` x size."""
        items, restore = prepare(image)
        outputs = []
        for item in items:
            rgb = self.upscale_tensor(item.rgb, scale=scale, prompt=prompt, vae_sample=vae_sample, seed=seed,
                                      tile=tile, overlap=overlap, color_fix=color_fix, progress=progress)
            alpha = None
            if item.alpha is not None:
                alpha = from_unit_float(bicubic_to(item.alpha, tuple(rgb.shape[-2:]))[0, 0], item.out_dtype)
            outputs.append((from_unit_float(rgb[0].permute(1, 2, 0), item.out_dtype), alpha))
        return restore(outputs)


def merge_lora(model: SDModel, lora, strength: float = 1.0, guidance: float | None = None) -> None:
    """Merge kohya-format LoRA(s) into ``model``'s UNet / VAE in place, through
    ``onestep_sr.sd.kohya_lora.merge_kohya_lora``. ``lora``: a file path, a state dict, or a list of them.
    A path ``NAME.safetensors`` whose sibling ``NAME_vae.safetensors`` exists (the VAE-encoder half
    written by ``onestep-sr convert``) merges both files. A w-conditioned student (its
    ``cond_proj`` key) is baked at ``guidance`` first (``guidance.bake``); ``guidance`` without one
    is an error, as is such a file without ``guidance``."""
    from . import guidance as G
    from .kohya_lora import merge_kohya_lora

    items = list(lora) if isinstance(lora, (list, tuple)) else [lora]
    used = False

    def merge(state, source: str) -> None:
        nonlocal used
        if G.is_guided(state):
            if guidance is None:
                raise ValueError(f"{source} is a w-conditioned student: give the guidance w (CFG scale - 1)")
            state = G.bake(G.parse_guided(state, source=source), model.unet.time_embedding.linear_1.weight, guidance)
            used = True
        merge_kohya_lora(model.unet, model.vae, state, strength=strength)

    for item in items:
        if isinstance(item, (str, os.PathLike)):
            from ..checkpoint import read_checkpoint

            path = Path(item)
            state, metadata = read_checkpoint(path)
            merge(state, str(path))
            # the VAE-encoder half: NAME_vae beside NAME, or the file the header names (a guided file's)
            sibling = path.with_name(metadata.get("vae_file") or f"{path.stem}_vae{path.suffix}")
            if sibling.is_file() and sibling != path and not path.stem.endswith("_vae"):
                merge(read_checkpoint(sibling)[0], str(sibling))
        else:
            merge(item, "LoRA state dict")
    if guidance is not None and not used:
        raise ValueError("guidance was given but no LoRA is a w-conditioned student (no "
                         f"{G.COND_PROJ_KEY} key)")
