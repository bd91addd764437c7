"""The SD-space subcommands of ``python -m training`` / ``onestep-sr train``: ``osediff`` (a
one-step LoRA), ``guided`` (guidance distillation: a w-conditioned copy of the UNet) and
``bake-guidance`` (a w-conditioned file -> a plain kohya LoRA at one w, for stock LoRA loaders)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from ..common.distributed import is_main_process
from .guided import GUIDED_FILE, GuidedConfig
from .osediff import LORA_FILE, OSEDiffConfig

HELP = {
    "checkpoint": "your SD 1.x/2.x checkpoint: a single .safetensors/.ckpt (ComfyUI/A1111 models folder) "
                  "or a diffusers folder; nothing is downloaded",
    "data": "folder of HR images (searched recursively); IMAGE.txt beside IMAGE.png is its prompt",
    "out": "run folder (resumed if it has checkpoints)",
    "steps": "optimiser steps", "grad_accum": "micro-batches per step",
    "batch_size": "images per micro-batch and process (several processes: the global batch per step is this x "
                  "processes x --grad-accum)",
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
    "adam_8bit": "bitsandbytes' 8-bit AdamW: optimiser state in 2 bytes per trainable parameter instead of 8 "
                 "(needs bitsandbytes, a CUDA GPU)",
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
    "real_score": "a w-conditioned file from `train guided` (guided_lora.safetensors): the VSD real score in ONE "
                  "UNet call at w = cfg - 1 instead of two-call CFG",
    "guidance_range": "W_MIN,W_MAX: give the generator a guidance input (w = CFG scale - 1) drawn per sample and "
                      "used by the real score; exports NAME_guided.safetensors (the OneStep SD Upscale node's "
                      "guided_lora) and NAME.safetensors baked at --export-guidance",
    "export_guidance": "the w baked into the plain kohya LoRA of a --guidance-range run (default: the range's middle)",
}

GUIDED_HELP = {
    "checkpoint": HELP["checkpoint"], "data": HELP["data"], "out": HELP["out"],
    "w_range": "W_MIN,W_MAX: w ~ U[W_MIN, W_MAX] per sample (w = CFG scale - 1; default 2,10 = CFG 3-11)",
    "embed_dim": "dimension of the sinusoidal w features (cond_proj: dim -> the UNet's 320 time features)",
    "lr": "AdamW learning rate", "rank": "LoRA rank (the OSEDiff target list, one adapter)",
    "negative_prompt": "the unconditional branch of the teacher's CFG (OSEDiff's negative prompt by default)",
    "prompt": "prompt of images without a caption file",
}


def _add_options(parser: argparse.ArgumentParser, config_cls, helps: dict[str, str]) -> None:
    for f in fields(config_cls):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        if isinstance(f.default, bool):
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=helps.get(f.name))
            continue
        kind = {int: int, float: float}.get(type(f.default), str)
        if f.name == "export_guidance":  # default None: typed by name
            kind = float
        parser.add_argument(flag, dest=f.name, type=kind, required=required, default=None if required else f.default,
                            help=helps.get(f.name))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--plan", action="store_true",
                        help="print the memory plan (parameters, optimiser state, activations for this crop, batch, "
                             "precision and checkpointing; made without reading any weights) and exit; every run "
                             "prints it first")


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_options(sub.add_parser("osediff", help="distil a one-step LoRA (OSEDiff VSD) from your SD 1.x/2.x "
                                                "checkpoint"), OSEDiffConfig, HELP)
    _add_options(sub.add_parser("guided", help="guidance distillation: a w-conditioned copy of your SD UNet (LoRA + "
                                               "w embedding) whose one call matches two-call CFG"),
                 GuidedConfig, {**HELP, **GUIDED_HELP})
    bake = sub.add_parser("bake-guidance", help="a w-conditioned file at one fixed w as a plain kohya LoRA "
                                                "(time_embed.0 bias delta) for stock LoRA loaders")
    bake.add_argument("--checkpoint", required=True, help="the SD checkpoint the file was trained on")
    bake.add_argument("--guided", required=True, help="the w-conditioned file (guided_lora / NAME_guided)")
    bake.add_argument("--w", type=float, required=True, help="guidance w = CFG scale - 1 (0: the plain student)")
    bake.add_argument("--out", required=True, help="the kohya LoRA to write")
    for name in ("family", "prediction_type", "config_dir"):
        bake.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=HELP[name])


def _fail(prog: str, exc: BaseException) -> int:
    if isinstance(exc, ImportError):  # diffusers / transformers / peft are the optional "sd" extra
        print(f"{prog}: error: SD training needs diffusers, transformers and peft: "
              f"pip install 'onestep-sr[train,sd]' ({exc})", file=sys.stderr)
    else:
        print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, prog: str) -> int:
    from onestep_sr.checkpoint import CheckpointError

    if args.command == "bake-guidance":
        return run_bake(args, prog)
    config_cls = GuidedConfig if args.command == "guided" else OSEDiffConfig
    options = {f.name: getattr(args, f.name) for f in fields(config_cls) if f.name != "extra"}
    try:
        config = config_cls(**options)
        show_plan(args.command, config, required=args.plan)
        if args.plan:
            return 0
        if args.command == "guided":
            from .guided import GuidedRun

            path = GuidedRun(config).train(progress=not args.no_progress)
        else:
            from .osediff import OSEDiffRun

            path = OSEDiffRun(config).train(progress=not args.no_progress)
    except (ValueError, FileNotFoundError, CheckpointError, ImportError) as exc:
        return _fail(prog, exc)
    if not is_main_process():
        return 0
    if args.command == "guided":
        print(f"exported {path}; use it as the OSEDiff real score (--real-score {path}) or bake it at one w "
              f"(bake-guidance; default name {GUIDED_FILE})")
        return 0
    print(f"exported {path} (+ {path.stem}_vae{path.suffix} when the VAE has a LoRA); load it with ComfyUI's "
          f"LoraLoader, A1111, or the OneStep SD Upscale node (default name {LORA_FILE})")
    if args.guidance_range:
        print(f"and {path.stem}_guided{path.suffix}: the guidance input, for the OneStep SD Upscale node's "
              "guided_lora and its guidance widget")
    return 0


def show_plan(command: str, config, required: bool) -> None:
    """Print the memory plan (main process). A plan that cannot be made is a warning, or with
    ``--plan`` (``required``) a ValueError."""
    from .memory_plan import memory_plan

    try:
        lines = memory_plan(command, config).lines()
    except Exception as exc:  # noqa: BLE001 - a plan is advice; the run itself reports real problems
        message = f"no memory plan ({' '.join(str(exc).split())[:300] or type(exc).__name__})"
        if required:
            raise ValueError(message) from exc
        lines = [f"warning: {message}"]
    if is_main_process():
        print("\n".join(lines), flush=True)


def run_bake(args: argparse.Namespace, prog: str) -> int:
    """``bake-guidance``: read the checkpoint's time_embed.0 weight, write the baked LoRA atomically."""
    from onestep_sr.checkpoint import CheckpointError, read_checkpoint, write_safetensors_atomic
    from onestep_sr.sd import guidance as G

    try:
        w = G.check_guidance(args.w, "--w")
        guided = G.parse_guided(*read_checkpoint(args.guided), source=args.guided)
        from onestep_sr.sd.checkpoint import load_sd_model

        sd = load_sd_model(args.checkpoint, family=args.family, prediction_type=args.prediction_type,
                           config_dir=args.config_dir)
        state = G.bake(guided, sd.unet.time_embedding.linear_1.weight, w)
        write_safetensors_atomic(state, {**G.baked_metadata(guided, w), "onestep_sr_part": "unet"}, args.out)
    except (ValueError, FileNotFoundError, CheckpointError, ImportError) as exc:
        return _fail(prog, exc)
    print(f"wrote {args.out}: the student at w = {w:g} (CFG scale {1 + w:g}) for LoraLoader / A1111")
    return 0
