"""Export of an OSEDiff training run as kohya-format LoRA files.

The trained generator weights (peft names, the three UNet adapters, ``conv_in.base_layer.*`` and
the VAE-encoder adapter) are arranged in memory as the dict OSEDiff itself saves and converted with
``onestep_sr.sd.lora.osediff_to_kohya``, so the files are the format ``onestep-sr convert`` writes
(the VAE half goes in ``NAME_vae.safetensors``), except that conv_in, whose base weights the run
has, is written as ``lora_unet_conv_in.diff`` / ``.diff_b`` so A1111 applies it too.
The header carries, besides the converter's fields, the base model's file name and SHA-256 (of the
single file, or of a diffusers folder's UNet weights file), family, prediction type, rank, steps
and the loss settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from onestep_sr.checkpoint import write_safetensors_atomic
from onestep_sr.sd.lora import osediff_to_kohya, vae_sibling_path, write_kohya_files
from onestep_sr.sd.lora_targets import ADAPTERS

UNET_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.fp16.safetensors")


def base_model_file(checkpoint) -> Path:
    """The file hashed for the header: the checkpoint itself, or a diffusers folder's UNet weights."""
    path = Path(checkpoint)
    if path.is_file():
        return path
    for name in UNET_WEIGHT_FILES:
        if (path / "unet" / name).is_file():
            return path / "unet" / name
    raise FileNotFoundError(f"{path}: no UNet weights file ({', '.join(UNET_WEIGHT_FILES)}) in unet/")


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def osediff_dict(groups: dict[str, list[str]], vae_names: list[str], rank: int,
                 weights: dict[str, torch.Tensor]) -> dict:
    """OSEDiff's checkpoint layout from trainer weights named ``unet.<peft name>`` / ``vae.<peft name>``."""
    unet = {k[len("unet."):]: v for k, v in weights.items()
            if k.startswith("unet.") and k != "unet." + COND_PROJ_PARAM}  # the w input: see export_kohya
    vae = {k[len("vae."):]: v for k, v in weights.items() if k.startswith("vae.")}
    return {f"unet_lora_{g}_modules": list(groups[g]) for g in ADAPTERS} | {
        "vae_lora_encoder_modules": list(vae_names), "rank_unet": rank, "rank_vae": rank,
        "state_dict_unet": unet, "state_dict_vae": vae}


def base_conv_in(run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base model's conv_in (weight, bias): the score UNet's, which is never trained in full.
    The export writes the generator's conv_in as its difference to these (``.diff`` keys, which
    A1111's Lora extension applies as well as ComfyUI; ``set_weight`` is ComfyUI-only)."""
    score = run.accelerator.unwrap_model(run.score) if hasattr(run, "accelerator") else run.score
    conv = getattr(score.unet.conv_in, "base_layer", score.unet.conv_in)
    bias = conv.bias.detach().float().cpu() if conv.bias is not None else None
    return conv.weight.detach().float().cpu(), bias


def export_kohya(run, weights: dict[str, torch.Tensor], dst: Path) -> Path:
    """Write ``dst`` (+ ``_vae`` sibling when the VAE has a LoRA); returns ``dst``."""
    c = run.config
    ckpt = osediff_dict(run.groups, run.vae_names, c.rank, weights)
    unet_sd, vae_sd, metadata = osediff_to_kohya(ckpt, alpha=c.lora_alpha, conv_in_base=base_conv_in(run))
    base = base_model_file(c.checkpoint)
    metadata.pop("converted_from", None)
    metadata.update({
        "trained_with": "onestep-sr train osediff",
        "source": Path(c.out).name,
        "base_model": Path(c.checkpoint).name,
        "base_model_sha256": sha256_file(base),
        "base_model_hashed_file": base.name,
        "base_model_family": run.sd.family,
        "prediction_type": run.prediction_type,
        "steps": str(run.step),
        "weights": "ema" if weights is run.ema else "current",
        "loss_weights": json.dumps({"mse": c.lambda_mse, "perceptual": c.lambda_perceptual, "vsd": c.lambda_vsd}),
        "losses_last_logged": json.dumps({k: round(v, 6) for k, v in run.last_losses.items()}),
        "perceptual": c.perceptual,
        "cfg": f"{c.cfg:g}",
        "schedule_shift": f"{run.schedule_shift:g}",
        "prompt": c.prompt,
        "ss_v2": str(run.sd.family == "sd2"),
        "ss_steps": str(run.step),
    })
    cond_proj = weights.get("unet." + COND_PROJ_PARAM)
    if cond_proj is not None:  # a guidance input: the w-conditioned file + the LoRA baked at one w
        from onestep_sr.sd.guidance import COND_PROJ_KEY, GuidedLora, bake, baked_metadata

        low, high = run.guidance_range
        w = c.export_guidance if c.export_guidance is not None else (low + high) / 2
        guided_meta = {**metadata, **guidance_header(cond_proj.float(), run.guidance_range),
                       "vae_file": vae_sibling_path(dst).name if vae_sd else ""}
        write_safetensors_atomic({**unet_sd, COND_PROJ_KEY: cond_proj.float().contiguous()},
                                 {**guided_meta, "onestep_sr_part": "unet"}, guided_path(dst))
        guided = GuidedLora(unet_sd, cond_proj.float(), run.guidance_range, guided_meta)
        time_embed = run.accelerator.unwrap_model(run.generator).unet.time_embedding.linear_1
        unet_sd, metadata = bake(guided, getattr(time_embed, "base_layer", time_embed).weight, w), \
            baked_metadata(guided, w)
    write_kohya_files(unet_sd, vae_sd, metadata, dst)
    return Path(dst)


def guided_path(dst) -> Path:
    """``out/osediff_lora.safetensors`` -> ``out/osediff_lora_guided.safetensors``."""
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}_guided{dst.suffix}")


# --- w-conditioned students (guidance distillation) -------------------------------------------------

COND_PROJ_PARAM = "time_embedding.cond_proj.weight"


def guidance_header(cond_proj: torch.Tensor, w_range: tuple[float, float]) -> dict[str, str]:
    from onestep_sr.sd.guidance import CONVENTION

    return {"guidance_embed_dim": str(cond_proj.shape[1]), "guidance_w_min": f"{w_range[0]:g}",
            "guidance_w_max": f"{w_range[1]:g}", "guidance_convention": CONVENTION,
            "guidance_embedding": "LCM sin/cos(1000 w f_k) minus its value at w = 0, through cond_proj into the "
                                  "time features (time_embed.0 input)"}


def guided_file_tensors(run, weights: dict[str, torch.Tensor], unet, w_range: tuple[float, float]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The w-conditioned file of a guidance-distillation run: its one LoRA adapter as kohya keys
    (through ``osediff_to_kohya``, conv_in's LoRA folded into a ``.diff`` against the base, which
    the run never changes) + ``onestep_guidance.cond_proj.weight``; and the header."""
    from onestep_sr.sd.guidance import COND_PROJ_KEY

    lora = {k: v for k, v in weights.items() if k != COND_PROJ_PARAM}
    conv = getattr(unet.conv_in, "base_layer", unet.conv_in)
    base = (conv.weight.detach().float().cpu(), conv.bias.detach().float().cpu())
    ckpt = {"unet_lora_encoder_modules": list(run.modules), "unet_lora_decoder_modules": [],
            "unet_lora_others_modules": [], "vae_lora_encoder_modules": [], "rank_unet": run.config.rank,
            "rank_vae": run.config.rank, "state_dict_unet": {**lora, "conv_in.base_layer.weight": base[0],
                                                             "conv_in.base_layer.bias": base[1]},
            "state_dict_vae": {}}
    unet_sd, _vae, metadata = osediff_to_kohya(ckpt, alpha=run.config.lora_alpha, conv_in_base=base)
    cond_proj = weights[COND_PROJ_PARAM].float().contiguous()
    c = run.config
    checkpoint = base_model_file(c.checkpoint)
    for key in ("converted_from", "vae_lora_modules", "vae_keys", "rank_vae"):
        metadata.pop(key, None)
    metadata.update(guidance_header(cond_proj, w_range))
    metadata.update({"source": Path(c.out).name, "base_model": Path(c.checkpoint).name,
                     "base_model_sha256": sha256_file(checkpoint), "base_model_family": run.sd.family,
                     "prediction_type": run.prediction_type, "schedule_shift": f"{run.schedule_shift:g}",
                     "unet_adapters": f"guided: {len(run.modules)}", "ss_v2": str(run.sd.family == "sd2")})
    return {**unet_sd, COND_PROJ_KEY: cond_proj}, metadata
