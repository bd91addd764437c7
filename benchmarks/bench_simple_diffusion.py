"""simple diffusion's multiscale loss on a CPU (simple_diffusion.md section 3.1), in one resumable
command:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_simple_diffusion.py --out runs/simple_diffusion

Two compact pixel-space x4 ResShift teachers with the bundled model's recipe (T4, kappa 128, first-step
noise 4, bicubic degradation, 96-px crops, batch 16, lr 1e-3 cosine), the same seed and the same
``--steps``: one with the plain x0 MSE, one with ``--multiscale-loss``. Each is measured on
../shared/images/val (LR = bicubic x1/4) with 1 and 4 deterministic calls: PSNR-Y / SSIM-Y (border 4),
the colour error (mean over images and RGB channels of |mean_c(SR) - mean_c(GT)|, in 8-bit levels)
and the PSNR of 8x8 average-pooled RGB images (low-frequency fidelity), without and with the engine's
AdaIN colour fix. Run again with the same --out to resume.

The schedule-shift half of section 3 (osediff on a tiny SD-like model at twice its native size)
is not part of this script.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr.checkpoint import atomic_write_text, load_denoiser  # noqa: E402
from onestep_sr.colorfix import adain  # noqa: E402
from onestep_sr.model_info import read_model_info  # noqa: E402
from onestep_sr.models import PixelSpaceAutoencoder, PixelSpaceConfig  # noqa: E402
from training.common.degradations import bicubic_degrade  # noqa: E402
from training.common.evaluate import list_images, load_rgb  # noqa: E402
from training.common.metrics import psnr_y, ssim_y  # noqa: E402
from training.common.runs import stage_seconds  # noqa: E402
from training.resshift.sampling import upscale_calls  # noqa: E402
from training.resshift.trainer import Run, TrainConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
SCALE = 4


def colour_error(sr: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean over RGB channels of |mean(SR) - mean(GT)| in 8-bit levels."""
    return float((sr.mean(dim=(1, 2)) - gt.mean(dim=(1, 2))).abs().mean() * 255)


def pooled_psnr(sr: torch.Tensor, gt: torch.Tensor, factor: int = 8) -> float:
    a, b = F.avg_pool2d(sr[None], factor), F.avg_pool2d(gt[None], factor)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def measure(path: str, val: str, calls: int, seed: int) -> dict:
    denoiser = load_denoiser(path).eval()
    schedule = read_model_info(path).resshift_schedule()
    autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=SCALE))
    rows = {"plain": [], "adain": []}
    for image in list_images(val):
        gt = load_rgb(image, SCALE)
        lr = bicubic_degrade(gt, SCALE)
        sr = upscale_calls(denoiser, autoencoder, schedule, SCALE, lr, calls, seed).clamp(0, 1)
        reference = F.interpolate(lr[None], scale_factor=SCALE, mode="bicubic", align_corners=False)[0].clamp(0, 1)
        fixed = adain(sr[None], reference[None])[0].clamp(0, 1)
        for key, out in (("plain", sr), ("adain", fixed)):
            out = (out * 255).round() / 255
            rows[key].append((psnr_y(out, gt, SCALE), ssim_y(out, gt, SCALE), colour_error(out, gt),
                              pooled_psnr(out, gt)))
    return {k: [float(np.mean([r[i] for r in v])) for i in range(4)] for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/simple_diffusion")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--seed", type=int, default=1, help="noise seed of the evaluation")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    common = dict(mode="resshift", data=args.train, degradation="bicubic", augment="all", gt_size=96, batch_size=16,
                  lr=1e-3, warmup=100, lr_decay="cosine", ema=0.999, arch="compact", schedule="T4", kappa=128.0,
                  min_noise_level=4.0, steps=args.steps, log_every=50, save_every=100, seed=0)
    paths = {}
    for name, multiscale in (("plain MSE", False), ("multiscale loss", True)):
        folder = out / ("multiscale" if multiscale else "plain")
        path = folder / "model.safetensors"
        if not path.is_file():
            path = Run(TrainConfig(out=str(folder), multiscale_loss=multiscale, **common)).train()
        paths[name] = (str(path), stage_seconds(folder / "log.csv"))
    cache_path = out / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    print(f"multiscale loss vs plain x0 MSE: compact pixel-space x4 teachers, {args.steps} steps each (batch 16, "
          f"96-px crops, T4, kappa 128), {torch.get_num_threads()} CPU threads; val {args.val}, LR = bicubic x1/4, "
          f"noise seed {args.seed}")
    print("| teacher | train min | calls | colour fix | PSNR-Y | SSIM-Y | colour error (levels) | PSNR 8x8-pooled RGB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (path, seconds) in paths.items():
        for calls in (1, 4):
            key = f"{path}|{calls}|{args.seed}"
            if key not in cache:
                cache[key] = measure(path, args.val, calls, args.seed)
                atomic_write_text(cache_path, json.dumps(cache, indent=1))
            for fix, (p, s, c, pooled) in cache[key].items():
                print(f"| {name} | {seconds / 60:.1f} | {calls} | {fix} | {p:.2f} | {s:.4f} | {c:.2f} | {pooled:.2f} |")


if __name__ == "__main__":
    main()
