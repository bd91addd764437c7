"""Reproduce the bundled default model on a CPU, in one resumable command: a compact pixel-space
ResShift teacher (x4), a one-step SinSR student distilled from it (the CLEAN end of the strength
knob, ``weights/onestep_default_x4.safetensors``), the evaluation on ../shared/images/val (LR =
bicubic x1/4, PSNR/SSIM on Y, border 4), then the RESTORATION end
(``weights/onestep_default_x4_realworld.safetensors``): the student fine-tuned (``train restore``)
on noisy / JPEG photo LR (``--degradation photo``) of the train photos at several scales (optionally
plus generated dead-leaves images), measured on the four val LR kinds at strengths 0..1 and auto
(benchmarks/bench_realworld.py).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_default_model.py --out runs/default_model --install
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_default_model.py --out runs/default_model \
        --clean weights/onestep_default_x4.safetensors --install     # only the restoration end

Run it again with the same --out to continue after an interruption (each stage resumes from its
newest checkpoint, exactly). ``--install`` copies the weights into weights/ with
``onestep_default_x4.training.json`` (the record: commands, data, steps, wall time, figures). Set
OMP_WAIT_POLICY=PASSIVE before Python starts: with the default policy, OpenMP threads spin and a
loaded 2-core machine runs the same step up to 12x slower.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onestep_sr import load_model  # noqa: E402
from onestep_sr.checkpoint import atomic_write_text  # noqa: E402
from onestep_sr.model import BUNDLED_MODELS  # noqa: E402
from training.common.degradations import bicubic_degrade  # noqa: E402
from training.common.data import min_side  # noqa: E402
from training.common.evaluate import evaluate_folder, list_images, load_rgb, summarise  # noqa: E402
from training.common.metrics import psnr_y  # noqa: E402
from training.common.realworld import MIXTURES  # noqa: E402
from training.common.runs import stage_seconds  # noqa: E402
from training.errors import run_guarded  # noqa: E402
from training.resshift.trainer import Run, TrainConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"


def quantised(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def evaluate(teacher_path: Path, student_path: Path, val: str, seed: int) -> dict:
    teacher, student = load_model(teacher_path, device="cpu"), load_model(student_path, device="cpu")
    steps = teacher.schedule.steps
    runs = {
        "student, 1 step": lambda lr: student.upscale(lr, steps=1, seed=seed),
        "teacher, 1 step": lambda lr: teacher.upscale(lr, steps=1, seed=seed),
        f"teacher, {steps} steps deterministic": lambda lr: teacher.upscale(lr, steps=steps, stochastic=False, seed=seed),
    }
    rows = {name: evaluate_folder(lambda lr, f=f: f(lr).clamp(0, 1), val) for name, f in runs.items()}
    agreement = []
    for path in list_images(val):
        lr = bicubic_degrade(load_rgb(path, scale=4), 4)
        agreement.append(psnr_y(quantised(runs["student, 1 step"](lr)),
                                quantised(runs[f"teacher, {steps} steps deterministic"](lr))))
    return {"rows": rows, "summaries": {k: summarise(v) for k, v in rows.items()}, "agreement_psnr_y": agreement,
            "names": [p.name for p in list_images(val)]}


def table(result: dict) -> str:
    names = result["names"]
    first = next(iter(result["rows"].values()))
    lines = [f"{'PSNR-Y dB (gain over bicubic)':40s}" + "".join(f"{n:>18s}" for n in names) + f"{'mean':>18s}"]
    lines.append(f"{'bicubic':40s}" + "".join(f"{r['bicubic_psnr_y']:18.2f}" for r in first)
                 + f"{result['summaries'][next(iter(result['rows']))]['bicubic_psnr_y']:18.2f}")
    for name, rows in result["rows"].items():
        s = result["summaries"][name]
        cells = "".join(f"{r['psnr_y']:9.2f} ({r['psnr_y'] - r['bicubic_psnr_y']:+.2f})" for r in rows)
        lines.append(f"{name:40s}{cells}{s['psnr_y']:9.2f} ({s['psnr_gain']:+.2f})")
    for name, rows in result["rows"].items():
        s = result["summaries"][name]
        lines.append(f"{'SSIM-Y ' + name:40s}" + "".join(f"{r['ssim_y']:18.4f}" for r in rows) + f"{s['ssim_y']:18.4f}")
    agreement = result["agreement_psnr_y"]
    lines.append(f"{'PSNR(student 1 step, teacher T steps)':40s}" + "".join(f"{a:18.2f}" for a in agreement)
                 + f"{sum(agreement) / len(agreement):18.2f}")
    return "\n".join(lines)


PHOTO_SCALES = (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.25)


def restoration_data(folder: Path, photos: Path, scales: tuple[float, ...], count: int, size: int,
                     gt_size: int = 96) -> Path:
    """The restoration end's data: every train photo at each of ``scales`` (1: a link to the file;
    smaller: a bicubic, antialiased downscale written as PNG) + ``count`` dead-leaves images coloured
    from them (licence-free, generated; see training/common/dead_leaves.py; 0 by default, as they
    measured worse, see docs/training.md).

    The downscaled copies are our choice (the usual scale augmentation of SR training): the train
    photos are large and smooth at the pixel level, the photos people upscale (and the val ones) are
    small and dense with texture; a network that never sees fur-like texture at the LR pixel scale
    takes it for noise and removes it. A downscale whose shorter side would be below what a
    ``gt_size`` crop is cut from (``min_side``) is skipped with a line, not written: the trainer
    would refuse the whole folder for it."""
    from PIL import Image

    from training.common.dead_leaves import palette_from_images, write_dead_leaves

    files = list_images(photos)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    for path in files:
        for scale in scales:
            name = f"{path.stem}_s{round(scale * 100):03d}"
            if scale == 1.0:
                link = folder / "photos" / f"{name}{path.suffix}"
                if not link.exists():
                    link.symlink_to(path.resolve())
                continue
            target = folder / "photos" / f"{name}.png"
            if target.exists():  # resumed
                continue
            with Image.open(path) as im:
                shape = (round(im.width * scale), round(im.height * scale))
                if min(shape) < min_side(gt_size):
                    print(f"{path.name} at scale {scale:g} would be {shape[0]}x{shape[1]}, below the "
                          f"{min_side(gt_size)} px a {gt_size} px crop needs: skipped", flush=True)
                    continue
                small = im.convert("RGB").resize(shape, Image.BICUBIC)
            partial = target.with_name(target.name + ".partial")  # not an image name: never listed as data
            small.save(partial, format="PNG")
            partial.replace(target)
    if count:
        write_dead_leaves(folder / "dead_leaves", count, size, palette_from_images(files), seed=0)
    return folder


def restoration_record(args: argparse.Namespace, out: Path, clean: Path, restoration: Path) -> dict:
    """Measure the knob on the val kinds (bench_realworld) and describe the restoration end's run."""
    from bench_realworld import goals, report, run

    started = time.perf_counter()
    result = run(str(clean), str(restoration), args.val, args.seed)
    seconds = time.perf_counter() - started
    print(f"restoration end {restoration} (fine-tuned from {clean}) on {args.val}; PSNR-Y dB (gain over bicubic):")
    print("\n".join(report(result)))
    print("\n".join(goals(result)))
    leaves = out / "data" / "dead_leaves"
    dead = sorted(p.name for p in list_images(leaves)) if leaves.is_dir() else []
    return {
        "command": "OMP_WAIT_POLICY=PASSIVE python " + " ".join(sys.argv),
        "init": str(clean), "steps": args.restore_steps, "batch_size": args.batch_size, "gt_size": args.gt_size,
        "lr": args.restore_lr, "loss": "MSE of the one-step output against the ground truth (train restore)",
        "degradation": f"{args.restore_degradation} (training/common/realworld.py, shares of clean bicubic, noisy "
                       f"JPEG photo and mild Real-ESRGAN second order: {MIXTURES[args.restore_degradation]}; the "
                       "rest: the full Real-ESRGAN second-order pipeline)",
        "data": {"photos": sorted(p.name for p in list_images(args.train)),
                 "photo_scales": list(args.photo_scales),
                 "files": sorted(p.name for p in list_images(out / "data", recursive=True)),
                 "dead_leaves": {"files": dead, "size": args.dead_leaves_size, "seed": 0,
                                 "generator": "training/common/dead_leaves.py (colours from the train photos)"},
                 "licences": "photos: ../shared/images/README.md (public domain / CC0); dead leaves: generated"},
        "wall_seconds": {"training": stage_seconds(out / "restoration" / "log.csv"), "evaluation": seconds},
        "results": result, "goals": goals(result),
    }


def adversarial_stage(args: argparse.Namespace, out: Path, clean: Path, restoration: Path, data: Path) -> dict:
    """Issue 28 item 5, measured and not installed: the restoration end fine-tuned with an
    adversarial term (``train restore --gan-weight``), then the knob's table with it as the far
    end (bench_realworld). Its crops: benchmarks/realworld_crops.py --gan out/gan/model.safetensors."""
    from bench_realworld import goals, report, run

    config = TrainConfig(mode="restore", out=str(out / "gan"), init=str(restoration), data=str(data),
                         degradation=args.restore_degradation, augment="all", gt_size=args.gt_size,
                         steps=args.gan_steps,
                         batch_size=args.gan_batch_size, lr=args.gan_lr, warmup=0, lr_decay="none", ema=0.999,
                         gan_weight=args.gan_weight, log_every=50, save_every=100, seed=2)
    gan = Run.for_config(config).train()
    started = time.perf_counter()
    result = run(str(clean), str(gan), args.val, args.seed)
    print(f"adversarial variant {gan} as the far end; PSNR-Y dB (gain over bicubic):")
    print("\n".join(report(result)))
    return {"steps": args.gan_steps, "batch_size": args.gan_batch_size, "gan_weight": args.gan_weight, "lr": args.gan_lr, "init": str(restoration),
            "loss": "L1 + gan_weight x BCE of a U-Net discriminator (spectral norm, from scratch)",
            "wall_seconds": {"training": stage_seconds(out / "gan" / "log.csv"),
                             "evaluation": time.perf_counter() - started},
            "results": result, "goals": goals(result)}


def install_restoration(restoration: Path, record: dict | None, record_path: Path | None) -> None:
    """Copy the restoration end beside the bundled model (and its record when given)."""
    from onestep_sr.model import BUNDLED_RESTORATION

    target = BUNDLED_RESTORATION["onestep_default"]
    shutil.copyfile(restoration, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)
    atomic_write_text(target.with_suffix(".json"), Path(restoration).with_suffix(".json").read_text())
    if record is not None:
        atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    print(f"installed {target} ({target.stat().st_size / 1e6:.2f} MB)")


def scales_list(text: str) -> tuple[float, ...]:
    """``1,0.5`` -> (1.0, 0.5): photo scales in (0, 1]."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"photo scales must be in (0, 1], got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/default_model")
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--arch", default="compact")
    parser.add_argument("--schedule", default="T4")
    parser.add_argument("--kappa", type=float, default=128.0)
    parser.add_argument("--min-noise-level", type=float, default=4.0,
                        help="noise std at the first step (ResShift's 0.04): high, so the T-step sample stays at "
                             "the one-step mean (README, 'The bundled default model')")
    parser.add_argument("--teacher-steps", type=int, default=6000)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--student-steps", type=int, default=800)
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument("--lambda-inverse", type=float, default=0.0,
                        help="SinSR's L_inverse weight (1 as released; see README for why 0 here)")
    parser.add_argument("--lambda-gt", type=float, default=0.0, help="SinSR's L_gt weight (1 as released)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gt-size", type=int, default=96)
    parser.add_argument("--student-batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12345, help="noise seed of the evaluation")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--install", action="store_true", help="copy the student into weights/ with its record")
    restore = parser.add_argument_group("the restoration end of the strength knob (issue 28)")
    restore.add_argument("--clean", default=None,
                         help="start the restoration fine-tune from this clean one-step model instead of training "
                              "the teacher and student first (e.g. weights/onestep_default_x4.safetensors, "
                              "itself made by this script's first two stages)")
    restore.add_argument("--restore-steps", type=int, default=3000)
    restore.add_argument("--restore-degradation", default="photo", choices=sorted(MIXTURES),
                         help="the LR mixture (training/common/realworld.py)")
    restore.add_argument("--restore-lr", type=float, default=4e-4)
    restore.add_argument("--photo-scales", type=scales_list, default=PHOTO_SCALES,
                         help="comma-separated scales at which every train photo is added (1: as it is)")
    restore.add_argument("--dead-leaves", type=int, default=0,
                         help="dead-leaves images generated into the data (0: none; 40 measured worse)")
    restore.add_argument("--dead-leaves-size", type=int, default=256)
    gan = parser.add_argument_group("the adversarial variant (issue 28 item 5; measured, not installed)")
    gan.add_argument("--gan-steps", type=int, default=0, help="adversarial fine-tune steps of the restoration end "
                                                               "(0: skip)")
    gan.add_argument("--gan-batch-size", type=int, default=8,
                     help="the discriminator triples the cost of a step: 3 s at batch 16 on 2 cores")
    gan.add_argument("--gan-weight", type=float, default=0.1, help="Real-ESRGAN's GAN weight (0.1)")
    gan.add_argument("--gan-lr", type=float, default=1e-4, help="Real-ESRGAN's GAN-stage lr (1e-4), constant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = dict(data=args.train, degradation="bicubic", augment="all", gt_size=args.gt_size, log_every=50,
                  save_every=100, seed=0)
    if args.clean and not Path(args.clean).is_file():
        parser.error(f"--clean {args.clean}: no such file")
    # the restoration end's data first: a problem with it shows before the hour of the first stages
    data = restoration_data(out / "data", Path(args.train), args.photo_scales, args.dead_leaves, args.dead_leaves_size,
                            args.gt_size)

    if args.clean:
        teacher, student = None, Path(args.clean)
    else:
        teacher = Run(TrainConfig(mode="resshift", out=str(out / "teacher"), arch=args.arch, schedule=args.schedule,
                                  kappa=args.kappa, min_noise_level=args.min_noise_level, steps=args.teacher_steps,
                                  batch_size=args.batch_size, lr=args.teacher_lr, warmup=100, lr_decay="cosine",
                                  ema=0.999, **common)).train()
        student = Run(TrainConfig(mode="sinsr", out=str(out / "student"), teacher=str(teacher), steps=args.student_steps,
                                  batch_size=args.student_batch_size, lr=args.student_lr, warmup=20, ema=0.99,
                                  lr_decay="cosine", lambda_inverse=args.lambda_inverse, lambda_gt=args.lambda_gt,
                                  **common)).train()
    restoration = Run(TrainConfig(mode="restore", out=str(out / "restoration"), init=str(student), data=str(data),
                                  degradation=args.restore_degradation, augment="all", gt_size=args.gt_size,
                                  steps=args.restore_steps, batch_size=args.batch_size, lr=args.restore_lr, warmup=50,
                                  lr_decay="cosine", ema=0.999, log_every=50, save_every=100, seed=1)).train()
    restored = restoration_record(args, out, student, restoration)
    if args.gan_steps:
        restored["adversarial"] = adversarial_stage(args, out, student, restoration, data)
    if args.clean:  # the clean end exists: add the restoration end to its record
        record_path = BUNDLED_MODELS["onestep_default"].with_name("onestep_default_x4.training.json")
        record = json.loads(record_path.read_text())
        record["restoration"] = restored
        atomic_write_text(out / "record.json", json.dumps(record, indent=1) + "\n")
        if args.install:
            install_restoration(restoration, record, record_path)
        return
    seconds = {"teacher": stage_seconds(out / "teacher" / "log.csv"),
               "student": stage_seconds(out / "student" / "log.csv")}
    started = time.perf_counter()
    result = evaluate(teacher, student, args.val, args.seed)
    seconds["evaluation"] = time.perf_counter() - started

    print(f"compact pixel-space x4 model ({args.arch}, {args.schedule}, kappa {args.kappa}, min noise level "
          f"{args.min_noise_level}) trained on {args.train} "
          f"(bicubic degradation, {args.gt_size}px crops, rotations/flips/RGB permutations), "
          f"{torch.get_num_threads()} CPU threads")
    print(f"teacher: {args.teacher_steps} steps x batch {args.batch_size} in {seconds['teacher'] / 60:.1f} min; "
          f"student: {args.student_steps} steps x batch {args.student_batch_size} in {seconds['student'] / 60:.1f} min")
    print(f"on {args.val} (LR = bicubic x1/4, Y channel, border 4, noise seed {args.seed}):")
    print(table(result))
    gain = result["summaries"]["student, 1 step"]["psnr_gain"]
    worst = min(r["psnr_y"] - r["bicubic_psnr_y"] for r in result["rows"]["student, 1 step"])
    agreement = min(result["agreement_psnr_y"])
    print(f"goals: mean gain {gain:+.2f} dB (>= +1.0), worst image {worst:+.2f} dB (>= 0), "
          f"lowest PSNR(student, teacher T steps) {agreement:.2f} dB (>= 35)")

    record = {
        "command": "OMP_WAIT_POLICY=PASSIVE python " + " ".join(sys.argv),
        "data": {"train": sorted(p.name for p in list_images(args.train)), "val": result["names"],
                 "licences": "../shared/images/README.md (public domain / CC0 / no known restrictions)"},
        "teacher": {"arch": args.arch, "schedule": args.schedule, "kappa": args.kappa,
                    "min_noise_level": args.min_noise_level, "steps": args.teacher_steps,
                    "batch_size": args.batch_size, "gt_size": args.gt_size, "lr": args.teacher_lr},
        "student": {"steps": args.student_steps, "batch_size": args.student_batch_size, "lr": args.student_lr,
                    "lambda": {"distill": 1.0, "inverse": args.lambda_inverse, "gt": args.lambda_gt}},
        "wall_seconds": seconds, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "results": result,
    }
    record["restoration"] = restored
    atomic_write_text(out / "record.json", json.dumps(record, indent=1) + "\n")
    if args.install:
        install_restoration(restoration, None, None)
        target = BUNDLED_MODELS["onestep_default"]
        shutil.copyfile(student, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
        # the model info + architecture as readable JSON beside it (the header holds the same)
        atomic_write_text(target.with_suffix(".json"), Path(student).with_suffix(".json").read_text())
        record_path = target.with_name(target.stem + ".training.json")
        atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
        print(f"installed {target} ({target.stat().st_size / 1e6:.2f} MB) and {record_path.name}")


if __name__ == "__main__":
    # an error is one line, Ctrl-C one line and exit 130 (ONESTEP_SR_DEBUG=1 for the traceback)
    sys.exit(run_guarded("train_default_model.py", lambda: main() or 0,
                         interrupted="every finished stage and the last checkpoint are kept: "
                                     "run the same command again to resume"))
