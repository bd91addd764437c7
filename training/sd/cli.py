"""The ``osediff`` subcommand of ``python -m training`` / ``onestep-sr train``."""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from .osediff import LORA_FILE, OSEDiffConfig

HELP = {
    "checkpoint": "your SD 1.x/2.x checkpoint: a single .safetensors/.ckpt (ComfyUI/A1111 models folder) "
                  "or a diffusers folder; nothing is downloaded",
    "data": "folder of HR images (searched recursively); IMAGE.txt beside IMAGE.png is its prompt",
    "out": "run folder (resumed if it has checkpoints)",
    "steps": "optimiser steps", "batch_size": "images per micro-batch", "grad_accum": "micro-batches per step",
    "lr": "generator AdamW learning rate", "lr_regulariser": "regulariser (fake score) AdamW learning rate",
    "weight_decay": "AdamW weight decay (both)", "warmup": "linear warm-up steps (both)",
    "grad_clip": "gradient norm clipping (0: off)", "ema": "EMA decay of the exported LoRA weights",
    "gt_size": "HR crop size, a multiple of 32 (the LR is gt_size / 4)",
    "degradation": "realesrgan (second order) or bicubic", "augment": "flip or all",
    "rank": "LoRA rank (UNet, VAE encoder and regulariser)", "lora_alpha": "LoRA alpha (scale alpha / rank)",
    "vae_lora": "LoRA on the VAE encoder too (written as NAME_vae.safetensors)",
    "prompt": "prompt of images without a caption file", "negative_prompt": "negative prompt of the real score's CFG",
    "cfg": "classifier-free guidance scale of the real score",
    "lambda_mse": "weight of the pixel MSE", "lambda_perceptual": "weight of the perceptual term",
    "lambda_vsd": "weight of the VSD/DMD regularisation",
    "perceptual": "vae (LPIPS-style distance on the checkpoint's own VAE-encoder features, offline), "
                  "none, or lpips (LPIPS-VGG; needs --lpips-weights)",
    "lpips_weights": "--perceptual lpips: VGG16 trunk + LPIPS linear-layer weights (torchvision's "
                     "vgg16-397923af.pth and LPIPS' weights/v0.1/vgg.pth), one file or two comma-separated",
    "family": "sd1 or sd2 (default: detected)", "prediction_type": "epsilon or v_prediction (default: detected)",
    "config_dir": "folder of unet/vae/text_encoder/prompt JSON configs (default: the shipped ones)",
    "gradient_checkpointing": "trade compute for memory (UNets and VAE)",
    "mixed_precision": "no, fp16 or bf16 (GPU)", "seed": "seed of the pairs, timesteps, noise and LoRA init",
    "log_every": "steps between log.csv rows", "save_every": "steps between checkpoints", "keep": "checkpoints kept",
    "scale": "LR scale of the pairs: 2, 4 or 8 (the generator resizes the LR to the HR crop)",
    "init": "start from an earlier osediff run folder (its newest checkpoint; the generator's EMA)",
    "scale_teacher": "scale curriculum: the x(scale/2) run folder whose generator gives a latent target on the same "
                     "HR crop (coupled degradations); e.g. --scale 4 --init runs/x2 --scale-teacher runs/x2",
    "lambda_scale": "weight of the latent MSE against --scale-teacher",
    "schedule_shift": "training timesteps (VSD and regulariser) shifted by simple diffusion's log-SNR rule, "
                      "lambda - 2 log(factor): auto (factor = crop / the checkpoint's native size when the crop is "
                      "larger, else none), none, or a factor >= 1; recorded in the LoRA's metadata",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("osediff", help="distil a one-step LoRA (OSEDiff VSD) from your SD 1.x/2.x checkpoint")
    for f in fields(OSEDiffConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        if isinstance(f.default, bool):
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=HELP.get(f.name))
            continue
        kind = {int: int, float: float}.get(type(f.default), str)
        parser.add_argument(flag, dest=f.name, type=kind, required=required, default=None if required else f.default,
                            help=HELP.get(f.name))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, prog: str) -> int:
    from onestep_sr.checkpoint import CheckpointError

    from .osediff import OSEDiffRun

    options = {f.name: getattr(args, f.name) for f in fields(OSEDiffConfig) if f.name != "extra"}
    try:
        path = OSEDiffRun(OSEDiffConfig(**options)).train(progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # diffusers / transformers / peft are the optional "sd" extra
        print(f"{prog}: error: osediff training needs diffusers, transformers and peft: "
              f"pip install 'onestep-sr[train,sd]' ({exc})", file=sys.stderr)
        return 2
    print(f"exported {path} (+ {path.stem}_vae{path.suffix} when the VAE has a LoRA); load it with ComfyUI's "
          f"LoraLoader, A1111, or the OneStep SD Upscale node (default name {LORA_FILE})")
    return 0
