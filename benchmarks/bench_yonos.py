"""YONOS scale distillation on a CPU (../shared/specs/yonos.md section 4), in one resumable command:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_yonos.py --out runs/yonos

Runs (pixel space, compact architecture with the scale-agnostic "unshuffle48" LR condition, T15
schedule with ResShift's kappa 2, bicubic degradation, ../shared/images/train):
- T2: a ResShift teacher at x2 (``--teacher-steps``);
- S4-scale: x4 student started from T2, trained on T2's single-call x0 predictions (L_scale: same
  crop, eps and t, coupled LR images), ``--steps``;
- S4-direct: x4 model started from T2, ordinary ResShift loss on the GT, the same steps, batch
  and learning rate (equal optimiser steps);
- S4-direct-long: x4 model from scratch for teacher + student steps (equal total optimiser steps
  with the whole T2 -> S4-scale ladder);
- SinSR one-step students distilled from S4-scale and from S4-direct (``--sinsr-steps``).
Evaluation on ../shared/images/val (LR = bicubic x1/scale, PSNR-Y/SSIM-Y, border = scale) with
1, 2, 4 and 15 deterministic calls (levels of ``onestep_sr.samplers.level_grid``), mean over the
images, then mean +- std over ``--seeds`` prior-noise seeds. Run it again with the same --out
to resume (each run continues from its newest checkpoint; finished runs are reused).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr.checkpoint import atomic_write_text, load_denoiser  # noqa: E402
from onestep_sr.model_info import read_model_info  # noqa: E402
from onestep_sr.models import PixelSpaceAutoencoder, PixelSpaceConfig  # noqa: E402
from training.common.evaluate import evaluate_folder, summarise  # noqa: E402
from training.common.runs import stage_seconds  # noqa: E402
from training.resshift.sampling import upscale_calls  # noqa: E402
from training.resshift.trainer import Run, TrainConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
CALLS = (1, 2, 4, 15)


def train_runs(args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Train (or resume, or reuse) every run; returns name -> {path, scale, steps, seconds}."""
    common = dict(data=args.train, degradation="bicubic", augment="all", gt_size=args.gt_size, log_every=50,
                  save_every=100, seed=0, arch=args.arch, schedule="T15", batch_size=args.batch_size)
    scratch = dict(lr=args.teacher_lr, warmup=100, lr_decay="cosine", ema=0.999, lq_mode="unshuffle48")
    tune = dict(lr=args.lr, warmup=20, lr_decay="cosine", ema=0.99)
    plans = {
        "T2 (x2 teacher)": (2, dict(mode="resshift", scale=2, steps=args.teacher_steps, **scratch)),
        "S4-scale": (4, dict(mode="yonos", teacher="T2 (x2 teacher)", steps=args.steps, **tune)),
        "S4-direct": (4, dict(mode="resshift", scale=4, init="T2 (x2 teacher)", steps=args.steps, **tune)),
        "S4-direct-long": (4, dict(mode="resshift", scale=4, steps=args.teacher_steps + args.steps, **scratch)),
        "SinSR from S4-scale": (4, dict(mode="sinsr", teacher="S4-scale", steps=args.sinsr_steps, **_sinsr(args))),
        "SinSR from S4-direct": (4, dict(mode="sinsr", teacher="S4-direct", steps=args.sinsr_steps, **_sinsr(args))),
    }
    done: dict[str, dict] = {}
    for name, (scale, options) in plans.items():
        folder = out / name.split(" (")[0].replace(" ", "_")
        for key in ("teacher", "init"):
            if key in options:
                options[key] = done[options[key]]["path"]
        config = TrainConfig(out=str(folder), **{**common, **options})
        path = folder / "model.safetensors"
        if not path.is_file():
            print(f"training {name} -> {folder}", flush=True)
            path = Run(config).train(progress=args.progress)
        done[name] = {"path": str(path), "scale": scale, "steps": options["steps"], "mode": options["mode"],
                      "seconds": stage_seconds(folder / "log.csv")}
    return done


def _sinsr(args: argparse.Namespace) -> dict:
    return dict(lr=2e-4, warmup=20, lr_decay="cosine", ema=0.99, batch_size=args.sinsr_batch_size,
                lambda_inverse=0.0, lambda_gt=0.0)


def evaluate_run(path: str, scale: int, calls: tuple[int, ...], seeds: list[int], val: str) -> dict:
    denoiser = load_denoiser(path).eval()
    info = read_model_info(path)
    schedule = info.resshift_schedule()
    autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=4))
    result, bicubic = {}, None
    for n in calls:
        per_seed = []
        for seed in seeds:
            rows = evaluate_folder(lambda lr: upscale_calls(denoiser, autoencoder, schedule, scale, lr, n, seed),
                                   val, scale=scale)
            summary = summarise(rows)
            bicubic = (summary["bicubic_psnr_y"], summary["bicubic_ssim_y"])
            per_seed.append((summary["psnr_y"], summary["ssim_y"]))
        result[str(n)] = {"psnr_y": [p for p, _ in per_seed], "ssim_y": [s for _, s in per_seed]}
    return {"calls": result, "bicubic_psnr_y": bicubic[0], "bicubic_ssim_y": bicubic[1]}


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {std:.2f}"


def table(runs: dict, scores: dict) -> str:
    lines = ["| model | scale | optimiser steps | train min | " + " | ".join(f"{n} call{'s' * (n > 1)}" for n in CALLS)
             + " | bicubic |", "|---" * (5 + len(CALLS)) + "|"]
    for name, run in runs.items():
        score = scores[name]
        cells = []
        for n in CALLS:
            got = score["calls"].get(str(n))
            cells.append(f"{_mean_std(got['psnr_y'])} / {statistics.mean(got['ssim_y']):.4f}" if got else "-")
        lines.append(f"| {name} | x{run['scale']} | {run['steps']} | {run['seconds'] / 60:.1f} | " + " | ".join(cells)
                     + f" | {score['bicubic_psnr_y']:.2f} / {score['bicubic_ssim_y']:.4f} |")
    return "\n".join(lines)


def differences(scores: dict) -> str:
    """S4-scale minus each directly trained x4 model, per call count, PSNR-Y mean +- std over seeds
    (paired by seed)."""
    lines = []
    for other in ("S4-direct", "S4-direct-long"):
        cells = []
        for n in CALLS:
            a, b = scores["S4-scale"]["calls"][str(n)]["psnr_y"], scores[other]["calls"][str(n)]["psnr_y"]
            cells.append(f"{n}: {_mean_std([x - y for x, y in zip(a, b)])}")
        lines.append(f"S4-scale - {other} (PSNR-Y dB by calls): " + ", ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/yonos")
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--arch", default="compact")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=600, help="steps of S4-scale and S4-direct")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of S4-scale and S4-direct")
    parser.add_argument("--sinsr-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sinsr-batch-size", type=int, default=8)
    parser.add_argument("--gt-size", type=int, default=96)
    parser.add_argument("--seeds", type=int, default=3, help="prior-noise seeds of the evaluation")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = train_runs(args, out)
    cache_path = out / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    seeds = list(range(args.seeds))
    scores = {}
    for name, run in runs.items():
        calls = (1,) if run["mode"] == "sinsr" else CALLS
        key = f"{run['path']}|{calls}|{seeds}"
        if key not in cache:
            started = time.perf_counter()
            cache[key] = evaluate_run(run["path"], run["scale"], calls, seeds, args.val)
            print(f"evaluated {name} in {time.perf_counter() - started:.0f} s", flush=True)
            atomic_write_text(cache_path, json.dumps(cache, indent=1))
        scores[name] = cache[key]
    print(f"YONOS scale distillation, pixel space, {args.arch}, T15 (kappa 2), {args.gt_size}px HR crops, batch "
          f"{args.batch_size}, {torch.get_num_threads()} CPU threads; val {args.val}: PSNR-Y mean +- std over "
          f"{len(seeds)} noise seeds / SSIM-Y, LR = bicubic x1/scale, border = scale")
    print(table(runs, scores))
    print(differences(scores))


if __name__ == "__main__":
    main()
