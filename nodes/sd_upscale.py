"""OneStep SD Upscale: one-step super-resolution with the user's own Stable Diffusion 1.x/2.x MODEL
and VAE (OSEDiff-style students: a LoRA on the UNet, loaded with LoraLoader, plus optionally a
LoRA on the VAE encoder, the ``_vae`` file that ``onestep-sr convert`` writes next to it).

Per image batch (the recipe verified in a real ComfyUI, shared/specs/comfyui.md section 3):

1. ``ref`` = bicubic resize of the input to ``round(scale * H) x round(scale * W)``; padded
   (reflect, bottom/right) to multiples of the VAE's 8 and at least 64 px, because ComfyUI's
   ``VAE.encode`` centre-crops to multiples of 8; ``z = vae.encode(padded)`` (tiled above
   ``vae_tile`` pixels).
2. ``x = process_latent_in(z) * sqrt(1 + sigma^2)`` with ``sigma = model_sampling.sigma(999)``:
   the LR latent fed as the fully noised input at t = 999, in ComfyUI's sigma space.
3. ``load_models_gpu([model])`` (so LoraLoader's patches are in the weights), then
   ``x0 = model.model.apply_model(x, sigma, c_crossattn=context)`` on overlapping latent tiles
   (``tile`` / ``overlap`` latent pixels, OSEDiff's 96 / 32) blended with Gaussian weights
   (``onestep_sr.sd.formulas.run_tiled_halving``: out of memory halves the tile and starts the
   blend again). ComfyUI's apply_model returns x0; OSEDiff blends the
   eps prediction instead. For one fixed sigma, x0 = a * x + b * eps (eps models) or
   a' * x + b' * v (v models) pixel by pixel, and the blend weights are normalised to sum to one,
   so blending x0 equals converting the blended eps (tests/test_nodes_sd.py checks it).
4. ``image = vae.decode(process_latent_out(x0))`` (tiled above ``vae_tile``), cropped back to the
   output size, colour-fixed towards ``ref`` (``onestep_sr.colorfix``; OSEDiff's default AdaIN).

Guidance: ``guided_lora`` (a w-conditioned student file, ``onestep_sr.sd.guidance``) is applied to a
clone of the MODEL at the ``guidance`` widget's w as ordinary weight patches (its LoRA plus the
exact time-embedding bias of that w): one UNet call at any w; w = 0 is the plain student.

Conditioning: the ``positive`` input (e.g. CLIPTextEncode, an empty prompt or tags); without it,
the optional ``clip`` input encodes the empty prompt (the engine's default); with neither the node
stops with a sentence saying what to connect. A zero tensor is never substituted: the UNet's
cross-attention was trained on real text embeddings.

The maths (resize, pad / crop, tiles, blending, colour fix) is the engine's (``onestep_sr``);
ComfyUI's services are called through ``host``; the MODEL / VAE / CLIP objects are used through
their own methods only.
"""
from __future__ import annotations

from typing import Any

import torch

from ..onestep_sr.colorfix import COLOR_FIXES, color_fix as apply_color_fix
from ..onestep_sr.sd.formulas import (LATENT_OVERLAP, LATENT_TILE, MIN_PIXELS, ONE_STEP_T, crop_to,
                                      latent_tile_boxes, pad_to_multiple, run_tiled_halving)
from ..onestep_sr.errors import IncompatibleInputError
from ..onestep_sr.imageio import ImageInputError
from ..onestep_sr.options import VAE_FACTOR, VAE_TILE_FLOOR, OptionError, check_finite, check_vae_tile
from ..onestep_sr import LoraFormatError  # wherever the engine keeps it (lazy, see onestep_sr.__init__)
from ..onestep_sr.sd import guidance as G
from ..onestep_sr.sd.onestep import bicubic_to, check_sd_options, output_size
from . import host
from .api import io

CATEGORY = "image/upscaling/OneStep SR"
COLOR_FIX_CHOICES = ["adain", "wavelet", "none"]
assert set(COLOR_FIX_CHOICES) == set(COLOR_FIXES)
NO_VAE_LORA = "none"
VAE_TILE = 1024             # OSEDiff's VAE-encoder tile (pixels)
SUPPORTED_MODEL_TYPES = ("EPS", "V_PREDICTION")
_LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha", ".dora_scale",
                  ".diff", ".diff_b", ".set_weight", ".lora_A.weight", ".lora_B.weight")


# --- checks (readable errors before anything heavy runs) -------------------------------------------


def check_model_and_vae(model: Any, vae: Any) -> None:
    """Refuse pairings the one-step recipe cannot run, naming what is wrong."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "apply_model") or not hasattr(base, "process_latent_in"):
        raise IncompatibleInputError("OneStep SD Upscale: 'model' is not a diffusion MODEL (connect the MODEL output "
                                     "of Load Checkpoint, or of LoraLoader after it)")
    kind = getattr(getattr(base, "model_type", None), "name", str(getattr(base, "model_type", "?")))
    if kind not in SUPPORTED_MODEL_TYPES:
        raise IncompatibleInputError("OneStep SD Upscale runs Stable Diffusion 1.x/2.x-style models (eps or v "
                                     "prediction on the 1000-step DDPM schedule); this MODEL's prediction type is "
                                     f"{kind} (e.g. SD3 / Flux flow models are not supported)")
    if getattr(base, "adm_channels", 0):
        raise IncompatibleInputError("OneStep SD Upscale: this MODEL needs pooled/size conditioning (SDXL-style, "
                                     f"adm_channels={base.adm_channels}); only SD 1.x/2.x models are supported")
    if vae is None or getattr(vae, "first_stage_model", None) is None:
        raise IncompatibleInputError("OneStep SD Upscale: 'vae' is invalid (the checkpoint has no VAE? load one with "
                                     "Load VAE)")
    if getattr(vae, "latent_dim", 2) != 2:
        raise IncompatibleInputError("OneStep SD Upscale: this VAE is a video/audio VAE; use the image VAE of the "
                                     "checkpoint")
    model_channels = getattr(base.latent_format, "latent_channels", None)
    if model_channels is not None and model_channels != vae.latent_channels:
        raise IncompatibleInputError(f"OneStep SD Upscale: the VAE makes {vae.latent_channels}-channel latents but "
                                     f"the MODEL works on {model_channels} channels: use the VAE that belongs to the "
                                     "checkpoint (an SD 1.x/2.x VAE)")


def conditioning_tensor(positive: Any, clip: Any, batch: int, model: Any) -> torch.Tensor:
    """The cross-attention context ``batch x tokens x width`` from ``positive`` (its first entry),
    or the empty prompt encoded with ``clip``."""
    if positive is None:
        if clip is None:
            raise IncompatibleInputError("OneStep SD Upscale needs text conditioning for the UNet's cross-attention: "
                                         "connect 'positive' (e.g. CLIP Text Encode with an empty prompt, or the "
                                         "student's tags) or the checkpoint's CLIP to 'clip' (then the empty prompt "
                                         "is used)")
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    try:
        context = positive[0][0]
    except (TypeError, IndexError, KeyError):
        raise IncompatibleInputError("OneStep SD Upscale: 'positive' is not a CONDITIONING (a list of [tensor, "
                                     "options])")
    if not torch.is_tensor(context) or context.ndim != 3:
        raise IncompatibleInputError("OneStep SD Upscale: the conditioning tensor should be batch x tokens x width, "
                                     f"got {getattr(context, 'shape', type(context))}")
    width = getattr(getattr(model.model, "model_config", None), "unet_config", {}).get("context_dim")
    if width is not None and context.shape[-1] != width:
        raise IncompatibleInputError(f"OneStep SD Upscale: the conditioning is {context.shape[-1]} wide but this "
                                     f"MODEL's cross-attention takes {width} (text encoder of another SD family?): "
                                     "encode the prompt with the same checkpoint's CLIP")
    if context.shape[0] not in (1, batch):
        raise IncompatibleInputError(f"OneStep SD Upscale: the conditioning has a batch of {context.shape[0]}; give 1 "
                                     f"or {batch} (one per image)")
    return context.expand(batch, -1, -1) if context.shape[0] == 1 else context


def vae_lora_key_map(vae: Any) -> dict[str, str]:
    """LoRA key prefix -> VAE weight: the LDM names of ``first_stage_model`` (``encoder.mid.attn_1.q``
    -> ``encoder.mid.attn_1.q.weight``), which the ``_vae`` files use."""
    return {k[: -len(".weight")]: k for k in vae.first_stage_model.state_dict() if k.endswith(".weight")}


def unmatched_lora_keys(lora: dict[str, torch.Tensor], key_map: dict[str, str]) -> list[str]:
    out = []
    for key in lora:
        prefix = next((key[: -len(s)] for s in _LORA_SUFFIXES if key.endswith(s)), key)
        if prefix not in key_map:
            out.append(key)
    return out


def patched_vae(vae: Any, name: str, strength: float) -> Any:
    """``vae`` with the VAE-encoder LoRA file ``name`` (``loras`` folder) through a cloned patcher;
    the VAE given to the node is never modified."""
    lora = host.read_lora(name)
    key_map = vae_lora_key_map(vae)
    unmatched = unmatched_lora_keys(lora, key_map)
    if unmatched:
        raise LoraFormatError(f"OneStep SD Upscale: {len(unmatched)} of {len(lora)} keys of vae_lora {name!r} match "
                              f"no VAE weight (e.g. {unmatched[0]!r}). Pick the '_vae' file written by onestep-sr "
                              f"convert (LDM names such as encoder.mid.attn_1.q.lora_down.weight); the UNet LoRA goes "
                              f"into LoraLoader")
    patched, keys = host.vae_with_patches(vae, lora, key_map, strength)
    if not keys:
        raise LoraFormatError(f"OneStep SD Upscale: vae_lora {name!r} patched no VAE weight")
    return patched


def guided_model(model: Any, name: str, w: float) -> Any:
    """A clone of ``model`` carrying the w-conditioned student file ``name`` (``loras`` folder) at
    guidance ``w``: its LoRA and the exact time-embedding bias ``W c(w)`` (``onestep_sr.sd.guidance.
    bake``) as ordinary weight patches, applied like LoraLoader's. ``model`` is left as it was."""
    try:
        guided = G.parse_guided(host.read_lora(name), source=f"guided_lora {name!r}")
    except LoraFormatError as exc:
        raise LoraFormatError(f"OneStep SD Upscale: {exc}") from None
    key_map = host.unet_lora_key_map(model)
    if G.TIME_EMBED_KEY not in key_map:
        raise IncompatibleInputError("OneStep SD Upscale: this MODEL has no time_embed.0 layer to take the guidance "
                                     "(not an SD 1.x/2.x UNet?)")
    baked = G.bake(guided, host.model_weight(model, key_map[G.TIME_EMBED_KEY]), w)
    unmatched = unmatched_lora_keys(baked, key_map)
    if unmatched:
        raise LoraFormatError(f"OneStep SD Upscale: {len(unmatched)} of {len(baked)} keys of guided_lora {name!r} "
                              f"match no weight of this MODEL (a student of another base model?), e.g. {unmatched[0]}")
    return host.model_with_patches(model, baked, key_map)


# --- the recipe ----------------------------------------------------------------------------------


def one_step_sigma(model: Any) -> torch.Tensor:
    """ComfyUI's sigma for DDPM timestep 999 (SD 1.x/2.x: 14.6146)."""
    sampling = model.get_model_object("model_sampling")
    return sampling.sigma(torch.tensor([float(ONE_STEP_T)])).float().reshape(1)


def encode(vae: Any, image: torch.Tensor, vae_tile: int) -> torch.Tensor:
    """B x 3 x H x W (H, W multiples of 8) in [0, 1] -> the VAE's raw latent."""
    pixels = image.movedim(1, -1)
    if max(pixels.shape[1:3]) > vae_tile:
        return vae.encode_tiled(pixels, tile_x=vae_tile, tile_y=vae_tile, overlap=vae_tile // 8)
    return vae.encode(pixels)


def decode(vae: Any, latent: torch.Tensor, vae_tile: int) -> torch.Tensor:
    """Raw latent -> B x 3 x 8h x 8w in [0, 1]."""
    ratio = vae.spacial_compression_decode()
    if max(latent.shape[-2:]) * ratio > vae_tile:
        image = vae.decode_tiled(latent, tile_x=vae_tile // ratio, tile_y=vae_tile // ratio,
                                 overlap=vae_tile // 8 // ratio)
    else:
        image = vae.decode(latent)
    return image.movedim(-1, 1).float()


def predict_x0(model: Any, latent_in: torch.Tensor, context: torch.Tensor, sigma: torch.Tensor, tile: int,
               overlap: int, on_tile=None) -> torch.Tensor:
    """x0 (model latent space) of ``latent_in`` fed as the noised input at ``sigma``, tiled."""
    device = model.load_device
    x = (latent_in.float() * torch.sqrt(1.0 + sigma.double() ** 2).float()).to(device)
    sigma, context = sigma.to(device), context.to(device)
    options = dict(model.model_options.get("transformer_options", {}))

    def x0_of(piece: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.model.apply_model(piece, sigma.expand(piece.shape[0]), c_crossattn=context,
                                           transformer_options=options).float()

    return run_tiled_halving(x0_of, x, tile=tile, overlap=overlap, on_tile=on_tile, what="the image")


def upscale(model: Any, vae: Any, image: torch.Tensor, context: torch.Tensor, scale: float = 4.0,
            tile: int = LATENT_TILE, overlap: int = LATENT_OVERLAP, vae_tile: int = VAE_TILE,
            color_fix: str = "adain", progress=None) -> torch.Tensor:
    """B x 3 x h x w in [0, 1] -> B x 3 x round(scale h) x round(scale w) float32 (CPU)."""
    ref = bicubic_to(image.float().cpu(), output_size(*image.shape[-2:], scale))
    padded, size = pad_to_multiple(ref, vae.spacial_compression_encode(), MIN_PIXELS)
    ratio = vae.spacial_compression_encode()
    boxes = latent_tile_boxes(padded.shape[-2] // ratio, padded.shape[-1] // ratio, tile, overlap)
    steps = {"total": len(boxes) + 2}   # encode, the tiles, decode; the tiles change if memory runs out
    tick = progress or (lambda done, total: None)

    def on_tile(done: int, tiles: int) -> None:
        steps["total"] = tiles + 2
        tick(1 + done, steps["total"])

    host.check_interrupted()
    z = encode(vae, padded, vae_tile)
    tick(1, steps["total"])
    sigma = one_step_sigma(model)
    host.load_models([model])
    x0 = predict_x0(model, model.model.process_latent_in(z), context, sigma, tile, overlap, on_tile=on_tile)
    sr = crop_to(decode(vae, model.model.process_latent_out(x0), vae_tile).cpu(), size)
    tick(steps["total"], steps["total"])
    return apply_color_fix(sr, ref, color_fix)


class OneStepSDUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_SDUpscale",
            display_name="OneStep SD Upscale",
            category=CATEGORY,
            description="One-step diffusion super-resolution with your Stable Diffusion 1.x/2.x checkpoint and "
                        "a one-step student LoRA (OSEDiff style; load it with LoraLoader): the bicubic "
                        "upscale is VAE-encoded, denoised in ONE UNet call from t = 999 (latent tiles with "
                        "Gaussian blending) and decoded. Needs 'positive' or 'clip' for the text conditioning.",
            inputs=[
                io.Model.Input("model", tooltip="Load Checkpoint's MODEL, after LoraLoader with the student LoRA."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE (it is not modified)."),
                io.Image.Input("image", tooltip="The images to upscale."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Text conditioning (e.g. CLIP Text Encode; OSEDiff uses tags or "
                                              "an empty prompt). Takes precedence over 'clip'."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Without 'positive': the empty prompt is encoded with this CLIP."),
                io.Float.Input("scale", default=4.0, min=1.0, max=16.0, step=0.25,
                               tooltip="Output size / input size (the network runs at the output size)."),
                io.Int.Input("tile", default=LATENT_TILE, min=16, max=1024, step=8,
                             tooltip="UNet tile in latent pixels (x8 image pixels); 96 as OSEDiff."),
                io.Int.Input("overlap", default=LATENT_OVERLAP, min=0, max=512, step=8,
                             tooltip="Overlap of neighbouring UNet tiles in latent pixels, Gaussian-blended."),
                io.Int.Input("vae_tile", default=VAE_TILE, min=VAE_TILE_FLOOR, max=8192, step=64,
                             tooltip="Images larger than this (pixels, either side) go through ComfyUI's "
                                     f"tiled VAE encode / decode with this tile (a multiple of {VAE_FACTOR})."),
                io.Combo.Input("color_fix", options=COLOR_FIX_CHOICES, default="adain",
                               tooltip="Pull the colours towards the bicubic upscale (AdaIN as OSEDiff)."),
                io.Combo.Input("vae_lora", options=[NO_VAE_LORA, *host.lora_files()], default=NO_VAE_LORA,
                               tooltip="The student's VAE-encoder LoRA (the '_vae' file next to the UNet "
                                       "LoRA in models/loras), applied to a copy of the VAE."),
                io.Float.Input("vae_lora_strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Strength of vae_lora (1 = as trained; ignored without a VAE LoRA)."),
                # inputs added after the node was first released are optional, with the default that gives
                # the old behaviour: an API graph saved before them still validates and runs unchanged
                io.Combo.Input("guided_lora", options=[NO_VAE_LORA, *host.lora_files()], default=NO_VAE_LORA,
                               optional=True,
                               tooltip="A student with a guidance input (NAME_guided.safetensors from onestep-sr "
                                       "train osediff --guidance-range, or guided_lora.safetensors): applied "
                                       "here with the guidance below, instead of LoraLoader."),
                io.Float.Input("guidance", default=0.0, min=-G.W_LIMIT, max=G.W_LIMIT, step=0.1, optional=True,
                               tooltip="w of guided_lora: CFG scale - 1 (0 = no guidance, the plain student; "
                                       "the file's header gives the trained range). One UNet call at any w. "
                                       "Needs guided_lora."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, model: Any, vae: Any, image: torch.Tensor, positive: Any = None, clip: Any = None,
                scale: float = 4.0, tile: int = LATENT_TILE, overlap: int = LATENT_OVERLAP,
                vae_tile: int = VAE_TILE, color_fix: str = "adain", vae_lora: str = NO_VAE_LORA,
                vae_lora_strength: float = 1.0, guided_lora: str = NO_VAE_LORA,
                guidance: float = 0.0) -> io.NodeOutput:
        if color_fix not in COLOR_FIXES:
            raise OptionError("color_fix", color_fix, f"one of {', '.join(COLOR_FIXES)}")
        if image.ndim != 4 or image.shape[-1] not in (3, 4):
            raise ImageInputError(f"OneStep SD Upscale: expected an IMAGE (B x H x W x 3 or 4), got "
                                  f"{tuple(image.shape)}")
        scale, tile, overlap, _ = check_sd_options(scale, tile, overlap)
        vae_tile = check_vae_tile(vae_tile)
        vae_lora_strength = check_finite(vae_lora_strength, "vae_lora_strength")
        guidance = G.check_guidance(check_finite(guidance, "guidance"))
        guided = bool(guided_lora) and guided_lora != NO_VAE_LORA
        if guidance != 0.0 and not guided:
            raise OptionError("guidance", guidance, "0 without a guided_lora",
                              message="OneStep SD Upscale: guidance needs a guided_lora (a student trained with a "
                                      "guidance input); a plain LoRA from LoraLoader has none")
        check_model_and_vae(model, vae)
        context = conditioning_tensor(positive, clip, image.shape[0], model)
        host.check_interrupted()
        if vae_lora and vae_lora != NO_VAE_LORA:
            vae = patched_vae(vae, vae_lora, vae_lora_strength)
        if guided:
            model = guided_model(model, guided_lora, guidance)
        rgb = image[..., :3].movedim(-1, 1)
        out = upscale(model, vae, rgb, context, scale=scale, tile=tile, overlap=overlap, vae_tile=vae_tile,
                      color_fix=color_fix, progress=host.NodeProgress())
        out = out.movedim(1, -1)
        if image.shape[-1] == 4:
            alpha = bicubic_to(image[..., 3:].movedim(-1, 1).float().cpu(), tuple(out.shape[1:3]))
            out = torch.cat([out, alpha.movedim(1, -1)], dim=-1)
        return io.NodeOutput(out.to(host.output_device()))
