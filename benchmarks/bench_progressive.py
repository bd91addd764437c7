"""Progressive distillation vs SinSR on a CPU (guided_progressive.md section 7, D1), in one
resumable command:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_progressive.py --out runs/progressive

From one x4 pixel-space ResShift teacher (T15, kappa 2; ``--teacher FILE``, or trained here first
with ``--teacher-steps``): progressive rounds 15 -> 8 -> 4 -> 2 -> 1 (``--round-steps`` each, lr
reset per round), and SinSR one-step students with the same total optimiser steps and with the
same total teacher calls (PD: two teacher calls per sample and step; SinSR: the teacher's 15-step
trajectory, L_distill only). Per model on ../shared/images/val (LR = bicubic x1/4, PSNR-Y/SSIM-Y,
border 4, one noise seed): PSNR-Y against its round's teacher (the per-round copy error), against
the original 15-step teacher (the accumulated error) and against GT; wall time and teacher calls.
Run again with the same --out to resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr.checkpoint import atomic_write_text, load_denoiser  # noqa: E402
from onestep_sr.model_info import read_model_info  # noqa: E402
from onestep_sr.models import PixelSpaceAutoencoder, PixelSpaceConfig  # noqa: E402
from training.common.degradations import bicubic_degrade  # noqa: E402
from training.common.evaluate import list_images, load_rgb  # noqa: E402
from training.common.metrics import psnr_y, ssim_y  # noqa: E402
from training.common.runs import stage_seconds  # noqa: E402
from training.resshift.progressive import run_rounds  # noqa: E402
from training.resshift.sampling import upscale_calls  # noqa: E402
from training.resshift.trainer import Run, TrainConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
SCALE = 4


def outputs(path: str, calls: int, val: str, seed: int) -> list[torch.Tensor]:
    """The model's SR of every val image with ``calls`` deterministic calls (its own grid)."""
    denoiser = load_denoiser(path).eval()
    schedule = read_model_info(path).resshift_schedule()
    autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=SCALE))
    out = []
    for image in list_images(val):
        hr = load_rgb(image, SCALE)
        sr = upscale_calls(denoiser, autoencoder, schedule, SCALE, bicubic_degrade(hr, SCALE), calls, seed)
        out.append((sr.clamp(0, 1) * 255).round() / 255)
    return out


def mean_psnr(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(psnr_y(x, y, crop_border=SCALE) for x, y in zip(a, b)) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/progressive")
    parser.add_argument("--teacher", help="an x4 pixel-space T15 teacher (default: train one here)")
    parser.add_argument("--teacher-steps", type=int, default=2600)
    parser.add_argument("--round-steps", type=int, default=150, help="optimiser steps per progressive round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the evaluation")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = dict(data=args.train, degradation="bicubic", augment="all", gt_size=96, log_every=25, save_every=50,
                  seed=0, batch_size=args.batch_size, lr=args.lr, warmup=20, lr_decay="cosine", ema=0.99)
    teacher = args.teacher
    if not teacher:
        teacher = str(Run(TrainConfig(mode="resshift", out=str(out / "teacher"), arch="compact", schedule="T15",
                                      steps=args.teacher_steps, **{**common, "lr": 1e-3, "warmup": 100,
                                                                   "batch_size": 16, "ema": 0.999})).train())
    config = TrainConfig(mode="progressive", out=str(out / "pd"), teacher=teacher, steps=args.round_steps, **common)
    rounds = run_rounds(config)
    total_steps = args.round_steps * len(rounds)
    steps_per_t = read_model_info(teacher).resshift_schedule().steps
    calls_pd = 2 * args.batch_size * total_steps  # (the last segment of round 1 costs 1 call: an upper bound)
    sinsr_equal_calls = max(1, round(calls_pd / (steps_per_t * args.batch_size)))
    sinsr = {}
    for name, steps in (("SinSR, equal steps", total_steps), ("SinSR, equal teacher calls", sinsr_equal_calls)):
        folder = out / name.replace(", ", "_").replace(" ", "_")
        run = replace(config, mode="sinsr", out=str(folder), steps=steps, lambda_inverse=0.0, lambda_gt=0.0)
        path = folder / "model.safetensors"
        sinsr[name] = (str(path if path.is_file() else Run(run).train()), steps, folder)

    cache_path = out / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    started = time.perf_counter()
    gt = [load_rgb(p, SCALE) for p in list_images(args.val)]
    reference = outputs(teacher, steps_per_t, args.val, args.seed)
    rows = [("teacher", steps_per_t, teacher, None, 0.0, 0)]
    previous = (teacher, steps_per_t)
    for number, path in enumerate(rounds, 1):
        levels = read_model_info(path).levels
        folder = Path(path).parent
        rows.append((f"PD round {number}", len(levels), str(path), previous, stage_seconds(folder / "log.csv"),
                     2 * args.batch_size * args.round_steps))
        previous = (str(path), len(levels))
    for name, (path, steps, folder) in sinsr.items():
        rows.append((f"{name} ({steps} steps)", 1, path, (teacher, steps_per_t), stage_seconds(folder / "log.csv"),
                     steps_per_t * args.batch_size * steps))
    table = ["| model | calls | PSNR-Y vs its teacher | PSNR-Y vs the 15-step teacher | PSNR-Y / SSIM-Y vs GT | "
             "train min | teacher calls |", "|---|---|---|---|---|---|---|"]
    for name, calls, path, parent, seconds, teacher_calls in rows:
        key = f"{path}|{calls}|{args.seed}"
        if key not in cache:
            sr = outputs(path, calls, args.val, args.seed)
            copy = mean_psnr(sr, outputs(parent[0], parent[1], args.val, args.seed)) if parent else None
            cache[key] = {"copy": copy, "vs_teacher": mean_psnr(sr, reference), "psnr": mean_psnr(sr, gt),
                          "ssim": sum(ssim_y(x, y, crop_border=SCALE) for x, y in zip(sr, gt)) / len(gt)}
            atomic_write_text(cache_path, json.dumps(cache, indent=1))
        c = cache[key]
        copy = f"{c['copy']:.2f}" if c["copy"] is not None else "-"
        vs = f"{c['vs_teacher']:.2f}" if parent else "-"
        table.append(f"| {name} | {calls} | {copy} | {vs} | {c['psnr']:.2f} / {c['ssim']:.4f} | {seconds / 60:.1f} | "
                     f"{teacher_calls} |")
    bicubic = [torch.nn.functional.interpolate(bicubic_degrade(h, SCALE)[None], size=h.shape[-2:], mode="bicubic",
                                               align_corners=False)[0].clamp(0, 1) for h in gt]
    bicubic = [(b * 255).round() / 255 for b in bicubic]
    print(f"progressive distillation vs SinSR from {teacher} ({steps_per_t} steps), compact pixel-space x4, "
          f"batch {args.batch_size}, {args.round_steps} steps per round, {torch.get_num_threads()} CPU threads; "
          f"val {args.val} (LR = bicubic x1/4, Y, border 4, noise seed {args.seed}); evaluation "
          f"{time.perf_counter() - started:.0f} s")
    print("\n".join(table))
    print(f"bicubic: {mean_psnr(bicubic, gt):.2f} / {sum(ssim_y(b, g, crop_border=SCALE) for b, g in zip(bicubic, gt)) / len(gt):.4f}")


if __name__ == "__main__":
    main()
