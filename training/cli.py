"""``python -m training`` / ``onestep-sr train``: ``resshift`` (teacher), ``sinsr`` (one-step
distillation), ``yonos`` (scale distillation: a x2 teacher trains a x4 student, x4 a x8),
``progressive`` (rounds that halve the steps: 15 -> 8 -> 4 -> 2 -> 1),
``osediff`` (a one-step LoRA from your SD checkpoint), ``guided`` (guidance distillation of your SD
UNet: one call instead of two-call CFG), ``bake-guidance`` and ``eval`` (PSNR/SSIM on Y against GT and against bicubic).

    python -m training resshift --data HR_FOLDER --out runs/teacher --steps 20000
    python -m training sinsr --teacher runs/teacher/model.safetensors --data HR_FOLDER --out runs/student
    python -m training resshift --scale 2 --data HR_FOLDER --out runs/x2          # the ladder's first rung
    python -m training yonos --teacher runs/x2/model.safetensors --data HR_FOLDER --out runs/x4
    python -m training yonos --teacher runs/x4/model.safetensors --data HR_FOLDER --out runs/x8
    python -m training progressive --teacher runs/teacher/model.safetensors --data HR_FOLDER --out runs/pd
    python -m training osediff --checkpoint SD.safetensors --data HR_FOLDER --out runs/osediff
    python -m training guided --checkpoint SD.safetensors --data HR_FOLDER --out runs/guided
    python -m training osediff --checkpoint SD.safetensors --data HR_FOLDER --out runs/osediff_fast \
        --real-score runs/guided/guided_lora.safetensors
    python -m training eval --model runs/student/model.safetensors --data VAL_FOLDER
    torchrun --nproc_per_node 4 -m training sinsr ...                 # 4 processes (GPUs, else CPU)
    accelerate launch --multi_gpu --num_processes 4 -m training sinsr ...  # the same (docs/multi-gpu.md)
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from .common.distributed import is_main_process
from .errors import DEBUG_HELP, UsageError, run_guarded
from .sd import cli as sd_cli
from .resshift.trainer import ARCHS, TrainConfig

EVAL_SAMPLERS = ("one_step", "deterministic", "stochastic")

_HELP = {
    "data": "folder of HR images (searched recursively)", "out": "run folder (resumed if it has checkpoints)",
    "steps": "optimiser steps", "batch_size": "images per micro-batch and process (several processes: the global "
                                                    "batch per step is this x processes x --grad-accum)",
    "grad_accum": "micro-batches per step",
    "lr": "AdamW learning rate", "warmup": "linear warm-up steps",
    "lr_decay": "none (constant after the warm-up) or cosine (decays to 0 at --steps)", "ema": "EMA decay of the exported weights",
    "gt_size": "HR crop size (the LR is gt_size / 4)",
    "degradation": "realesrgan (second order), bicubic, or the real-world mixtures photo / realworld / realworld_photo "
                   "(training/common/realworld.py)",
    "augment": "flip (random horizontal flips) or all (also 90-degree rotations and RGB channel permutations)",
    "autoencoder": "'pixel' (identity, pixel space) or a VQ-f4 checkpoint / registry name (latent space)",
    "arch": f"denoiser size: {', '.join(ARCHS)} or a JSON file of DenoiserConfig fields",
    "schedule": "T15 or T4",
    "kappa": "noise scale kappa of the schedule (0: the schedule's own, 2.0); sinsr always uses the teacher's",
    "min_noise_level": "noise std at the first step, kappa sqrt(eta_0) (0: the schedule's own, 0.04; "
                       "clamped so that sqrt(eta_0) <= sqrt(0.001)); sinsr uses the teacher's",
    "teacher": "sinsr, yonos: teacher checkpoint (the student starts from it; yonos: trained at half the student's scale)",
    "scale": "LR scale of the training pairs: 2, 4 or 8 (0: 4 for resshift, the teacher's for sinsr, twice the "
             "teacher's for yonos)",
    "lq_mode": "LR condition of a new network: lq3 (the LR image, x4 only, as the official models) or unshuffle48 "
               "(the upsampled LR space-to-depth, any scale; the YONOS ladder); default lq3 at x4, else unshuffle48",
    "multiscale_loss": "measure the x0 terms also on 2x, 4x and 8x average-pooled images (weights 0.4, 0.09, 0.17, "
                       "0.34; simple diffusion's multiscale loss, aimed at colour casts)",
    "last_step_weight": "yonos: share of each batch trained at t = T-1, the step the one-step sampler calls "
                        "(our proposal; the rest uniform over all t)",
    "lambda_distill": "sinsr: weight of L_distill (student one step vs the teacher's deterministic T steps)",
    "lambda_inverse": "sinsr: weight of L_inverse (the student at t = 0 maps the teacher's output back to x_T)",
    "lambda_gt": "sinsr: weight of L_gt (the x_T the student assigns to the ground truth maps back onto it; "
                 "default 1); yonos: weight of an extra MSE to the ground truth (default 0: the paper's loss)",
    "init": "resshift: start from these weights",
    "gan_weight": "restore: weight of an adversarial term (a U-Net discriminator with spectral norm, trained from "
                  "scratch; the pixel loss becomes L1); 0: none", "mixed_precision": "no, fp16 or bf16 (GPU)",
    "seed": "seed of the pairs, timesteps and noise", "log_every": "steps between log.csv rows",
    "save_every": "steps between checkpoints", "keep": "checkpoints kept",
}


def _add_train_options(parser: argparse.ArgumentParser, mode: str) -> None:
    for f in fields(TrainConfig):
        if f.name in ("mode", "extra") or not _applies(f.name, mode):
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.name in ("data", "out") or f.name == "teacher"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action="store_true", help=_HELP.get(f.name))
            continue
        kind = float if f.name.startswith("lambda_") else {int: int, float: float}.get(type(f.default), str)
        parser.add_argument(flag, dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=_HELP.get(f.name))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _applies(name: str, mode: str) -> bool:
    """Whether TrainConfig field ``name`` is an option of ``mode``."""
    if name == "init":
        return mode in ("resshift", "restore")
    if name == "teacher":
        return mode in ("sinsr", "yonos", "progressive")
    if name == "lambda_gt":
        return mode in ("sinsr", "yonos")
    if name in ("lambda_distill", "lambda_inverse"):
        return mode == "sinsr"
    if name == "last_step_weight":
        return mode == "yonos"
    if name == "gan_weight":
        return mode == "restore"
    return True


def build_parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_options(sub.add_parser("resshift", help="train a ResShift teacher (MSE on x0)"), "resshift")
    _add_train_options(sub.add_parser("sinsr", help="distil a one-step SinSR student from a teacher"), "sinsr")
    _add_train_options(sub.add_parser("yonos", help="YONOS scale distillation: a student at twice the scale of a "
                                                     "frozen teacher, on the teacher's x0 predictions"), "yonos")
    _add_train_options(sub.add_parser("restore", help="fine-tune a one-step model (--init) on its one-step output "
                                                      "against the ground truth (e.g. --degradation realworld)"), "restore")
    progressive = sub.add_parser("progressive", help="progressive distillation: rounds that halve the steps "
                                                     "(--steps per round), each student from the previous model")
    _add_train_options(progressive, "progressive")
    progressive.add_argument("--rounds", type=int, default=0, help="rounds to run (0: until one step)")
    sd_cli.add_parser(sub)
    ev = sub.add_parser("eval", help="PSNR/SSIM (Y) of a model vs GT and vs bicubic on a folder")
    ev.add_argument("--model", required=True, help="checkpoint path or model name (as load_model takes)")
    ev.add_argument("--data", required=True, help="folder of HR images; the LR is their bicubic downscale by "
                                                  "the model's scale (x1/4 for a x4 model)")
    ev.add_argument("--sampler", choices=EVAL_SAMPLERS, default=None,
                    help="one_step (one network call), deterministic (SinSR's deterministic ResShift, T steps) or "
                         "stochastic (original ResShift, T steps); default: the model's own")
    ev.add_argument("--steps", type=int, default=None,
                    help="sampler steps: 1 or the schedule's T (default: 1 for one_step, else T)")
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--json", help="also write the rows and summary to this JSON file")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    from onestep_sr import load_model
    from onestep_sr.checkpoint import atomic_write_text

    from .common.evaluate import evaluate_folder, format_table, summarise

    check_eval_images(args.data)
    model = load_model(args.model, device="cpu")
    try:
        steps, stochastic = sampler_options(args.sampler, args.steps, model.schedule.steps)
        sampler = model.plan(steps=steps, stochastic=stochastic).sampler
    except ValueError as exc:
        raise UsageError(f"eval: {exc}") from None

    def upscale(lr):
        return model.upscale(lr, steps=steps, stochastic=stochastic, seed=args.seed).clamp(0, 1)

    rows = evaluate_folder(upscale, args.data, scale=model.scale)
    summary = summarise(rows)
    calls = 1 if sampler == "one_step" else model.schedule.steps
    print(f"model {args.model}: sampler {sampler}, {calls} network call(s) per tile, seed {args.seed}")
    print(format_table(rows, summary))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": str(args.model), "sampler": sampler, "steps": calls,
                                                 "seed": args.seed, "rows": rows, "summary": summary}, indent=1))
    return 0


def sampler_options(sampler: str | None, steps: int | None, schedule_steps: int) -> tuple[int | None, bool | None]:
    """(steps, stochastic) for ``OneStepSR.upscale`` from the eval options; ValueError if they disagree."""
    if sampler is None:
        return steps, None
    if sampler == "one_step":
        if steps not in (None, 1):
            raise ValueError(f"--sampler one_step runs 1 step, not --steps {steps}")
        return 1, None
    if steps not in (None, schedule_steps):
        raise ValueError(f"--sampler {sampler} runs the schedule's {schedule_steps} steps, not --steps {steps}")
    return schedule_steps, sampler == "stochastic"


def check_eval_images(folder: str) -> None:
    """Every image of an eval folder opens (header read): one UsageError naming all that do not."""
    from onestep_sr.imagefile import open_image

    from .common.data import IMAGE_EXTENSIONS, list_images

    paths = list_images(folder)
    if not paths:
        raise UsageError(f"--data {folder}: no images in the folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
    problems = []
    for path in paths:
        try:
            with open_image(path):
                pass
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError(f"--data {folder}: {len(problems)} of {len(paths)} image files cannot be read ("
                         + "; ".join(problems) + "); move them out of the folder or fix them")


def check_places(args: argparse.Namespace) -> None:
    """Where the command writes and the files it starts from, checked before any data is read
    or model loaded: UsageError naming the option."""
    from onestep_sr.imagefile import folder_problem

    if args.command == "eval":
        written = [("--json", args.json)] if args.json else []
    elif args.command == "bake-guidance":
        written = [("--out", args.out)]
    else:
        out = Path(args.out)
        problem = f"{out} is a file, not a folder" if out.is_file() else folder_problem(out)
        if problem:
            raise UsageError(f"--out {out}: cannot make the run folder there ({problem})")
        written = []
    for option, file in written:
        path = Path(file)
        problem = "it is an existing folder" if path.is_dir() else folder_problem(path.parent)
        if problem:
            raise UsageError(f"{option} {path}: cannot write the file there ({problem})")
    for option in ("teacher", "init"):
        given = getattr(args, option, None)
        if given and not Path(given).exists():
            raise UsageError(f"--{option} {given}: no such file (give a model.safetensors that training exported)")


def main(argv: list[str] | None = None, prog: str = "python -m training") -> int:
    """The command line; every error ends here as one line (see ``training.errors``)."""
    args = build_parser(prog).parse_args(argv)
    resumable = args.command not in ("eval", "bake-guidance")
    return run_guarded(prog, lambda: run(args, prog), debug=args.debug,
                       interrupted="the last checkpoint is intact: run the same command again to resume"
                       if resumable else "nothing was written")


def run(args: argparse.Namespace, prog: str) -> int:
    check_places(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command in ("osediff", "guided", "bake-guidance"):
        return sd_cli.run(args, prog)
    from .resshift.trainer import Run

    options = {k: v for k, v in vars(args).items() if k not in ("command", "no_progress", "rounds", "debug")}
    config = TrainConfig(mode=args.command, **options)
    if args.command == "progressive":
        from .resshift.progressive import run_rounds

        path = run_rounds(config, args.rounds, progress=not args.no_progress)[-1]
    else:
        path = Run.for_config(config).train(progress=not args.no_progress)
    if is_main_process():
        print(f"exported {path} (+ {path.with_suffix('.json').name}); load it with onestep_sr.load_model({str(path)!r})")
    return 0
