"""Proof that distillation works, at small scale on a CPU: train a small pixel-space ResShift
teacher (x4, T = 15) on patches of ../shared/images/train, distil a one-step SinSR student from
it, and measure on ../shared/images/val (LR = bicubic x1/4 of each image):

- PSNR(student 1 step, teacher 15 deterministic steps from the same noise), Y channel (goal >= 35 dB);
- PSNR / SSIM (Y) against GT of the student, the teacher and bicubic.

The run folder is resumable (rerun the same command to continue; a larger --teacher-steps extends
the first stage). With --finetune-steps the teacher gets a second stage on larger crops with
rotations and RGB permutations, and the student trains on those too. The figures come from one run.

    python benchmarks/bench_distill.py --out runs/distill [--teacher-steps 2000] [--student-steps 400]
        [--finetune-steps 1200 --student-gt-size 256 --student-batch-size 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr import load_model  # noqa: E402
from training.common.evaluate import evaluate_folder, format_table, list_images, load_rgb, summarise  # noqa: E402
from training.common.degradations import bicubic_degrade  # noqa: E402
from training.common.metrics import psnr_y  # noqa: E402
from training.resshift.trainer import Run, TrainConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/distill")
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--arch", default="small")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--student-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--gt-size", type=int, default=64)
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="second teacher stage: this many steps on --finetune-gt-size crops, from the first")
    parser.add_argument("--finetune-gt-size", type=int, default=256)
    parser.add_argument("--finetune-batch-size", type=int, default=2)
    parser.add_argument("--student-gt-size", type=int, default=None, help="default: --gt-size")
    parser.add_argument("--student-batch-size", type=int, default=None, help="default: --batch-size / 2")
    parser.add_argument("--degradation", default="bicubic")
    parser.add_argument("--finetune-augment", default="all", help="augment of the second teacher stage and the student")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = dict(data=args.train, degradation=args.degradation, arch=args.arch, log_every=25, save_every=100, seed=0)
    student_batch = args.student_batch_size or max(1, args.batch_size // 2)
    student_gt = args.student_gt_size or args.gt_size

    started = time.perf_counter()
    teacher = Run(TrainConfig(mode="resshift", out=str(out / "teacher"), steps=args.teacher_steps,
                              batch_size=args.batch_size, gt_size=args.gt_size, lr=4e-4, warmup=100, ema=0.999,
                              **common)).train()
    if args.finetune_steps:  # the same teacher on larger crops: inference sees 64+ px LR tiles
        teacher = Run(TrainConfig(mode="resshift", out=str(out / "teacher_finetune"), init=str(teacher),
                                  steps=args.finetune_steps, batch_size=args.finetune_batch_size,
                                  gt_size=args.finetune_gt_size, augment=args.finetune_augment, lr=2e-4, warmup=20,
                                  ema=0.99, **common)).train()
    teacher_seconds = time.perf_counter() - started
    started = time.perf_counter()
    student = Run(TrainConfig(mode="sinsr", out=str(out / "student"), teacher=str(teacher),
                              steps=args.student_steps, batch_size=student_batch, gt_size=student_gt,
                              augment=args.finetune_augment if args.finetune_steps else "flip", lr=1e-4,
                              warmup=20, ema=0.99, **common)).train()
    student_seconds = time.perf_counter() - started

    teacher_model, student_model = load_model(teacher, device="cpu"), load_model(student, device="cpu")

    def run_student(lr):
        return student_model.upscale(lr, steps=1).clamp(0, 1)

    def run_teacher(lr):
        return teacher_model.upscale(lr, steps=15, stochastic=False).clamp(0, 1)

    rows = {"student (1 step)": evaluate_folder(run_student, args.val),
            "teacher (15 steps)": evaluate_folder(run_teacher, args.val)}
    agreement = []
    for path in list_images(args.val):
        hr = load_rgb(path, scale=4)
        lr = bicubic_degrade(hr, 4)
        agreement.append(psnr_y((run_student(lr) * 255).round() / 255, (run_teacher(lr) * 255).round() / 255))
    summaries = {name: summarise(r) for name, r in rows.items()}

    print(f"pixel-space x4 ResShift teacher ({args.arch}, T=15) + SinSR student, trained on {args.train} "
          f"({args.degradation} degradation, {args.gt_size}px crops), CPU {args.threads} threads")
    finetune = (f" + {args.finetune_steps} steps x batch {args.finetune_batch_size} on {args.finetune_gt_size}px crops"
                if args.finetune_steps else "")
    print(f"teacher: {args.teacher_steps} steps x batch {args.batch_size} on {args.gt_size}px crops{finetune} "
          f"in {teacher_seconds / 60:.1f} min (this invocation); student: {args.student_steps} steps x batch "
          f"{student_batch} on {student_gt}px crops in {student_seconds / 60:.1f} min")
    for name, r in rows.items():
        print(f"\n{name} vs GT on {args.val}:\n{format_table(r, summaries[name])}")
    mean_agreement = sum(agreement) / len(agreement)
    print(f"\nPSNR(student 1 step, teacher 15 steps), Y, per image: {', '.join(f'{a:.2f}' for a in agreement)} dB; "
          f"mean {mean_agreement:.2f} dB (goal >= 35)")
    s, t = summaries["student (1 step)"], summaries["teacher (15 steps)"]
    print(f"PSNR-Y vs GT: student {s['psnr_y']:.2f} dB, teacher {t['psnr_y']:.2f} dB, bicubic {s['bicubic_psnr_y']:.2f} dB; "
          f"student gain over bicubic {s['psnr_gain']:+.2f} dB (goal >= +1)")
    (out / "results.json").write_text(json.dumps({"rows": rows, "summaries": summaries, "agreement_psnr_y": agreement,
                                                  "teacher": str(teacher), "student": str(student),
                                                  "args": vars(args)}, indent=1, default=str))


if __name__ == "__main__":
    main()
