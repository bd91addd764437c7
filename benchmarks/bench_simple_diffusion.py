"""simple diffusion on a CPU (simple_diffusion.md section 3), in one resumable command:

    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/bench_simple_diffusion.py --out runs/simple_diffusion --threads 1

``--part multiscale`` (section 3.1, the multiscale loss): two compact pixel-space x4 ResShift teachers
with the bundled model's recipe (T4, kappa 128, first-step noise 4, bicubic degradation, 96-px crops,
batch 16, lr 1e-3 cosine), the same seed and the same ``--steps``: one with the plain x0 MSE, one with
``--multiscale-loss``. Each is measured on ../shared/images/val (LR = bicubic x1/4) with 1 and 4
deterministic calls: PSNR-Y / SSIM-Y (border 4), the colour error (mean over images and RGB channels
of |mean_c(SR) - mean_c(GT)|, in 8-bit levels) and the PSNR of 8x8 average-pooled RGB images
(low-frequency fidelity), without and with the engine's AdaIN colour fix.

``--part shift`` (section 3.3, the SD timestep shift): the tiny SD-like model of bench_osediff.py
(same builders and pre-training, default sizes) is pre-trained on ``--pretrain-size`` crops (64 px:
its UNet's ``sample_size`` is 8 latents, so its native size is 64), then the real OSEDiff trainer
distils a one-step LoRA from it on ``--shift-gt-size`` crops (128 px, twice native) twice per seed
in ``--shift-seeds``, identical except ``schedule_shift`` "auto" (factor 2: every VSD / regulariser
timestep moved to a log-SNR 2 log 2 lower) or "none". The students, the base one-step without LoRA
and bicubic are measured with ``training.common.evaluate.evaluate_folder`` on ../shared/images/val
(x4, LR = bicubic x1/4, 8-bit, Y with a 4 px border, AdaIN colour fix as bench_osediff). The shift
factor in the table is read back from each LoRA's metadata; the spread of the on - off difference
over images and over seeds is printed as the noise of the comparison.

``--part all`` (the default) runs both. Run again with the same --out to resume: finished stages
(trained models, pre-training, OSEDiff runs, scores) are cached under --out.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
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


def multiscale_part(args) -> None:
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


SHIFT_ARMS = (("auto", "shift on (auto)"), ("none", "shift off (none)"))


def paired_difference(rows_a: list[dict], rows_b: list[dict], key: str = "psnr_y") -> tuple[float, float]:
    """Mean and sample standard deviation over images of ``rows_a[i][key] - rows_b[i][key]`` (rows of
    ``evaluate_folder`` on the same folder, matched by name); the deviation is NaN for one image."""
    b = {r["name"]: float(r[key]) for r in rows_b}
    if sorted(b) != sorted(r["name"] for r in rows_a):
        raise ValueError("the two evaluations cover different images")
    d = np.array([float(r[key]) - b[r["name"]] for r in rows_a])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else math.nan


def lora_shift(path: str | Path) -> str:
    """The ``schedule_shift`` field of an exported OSEDiff LoRA's header ("?" when absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("schedule_shift", "?")


def pretrain_tiny_sd(folder: Path, args) -> dict:
    """bench_osediff's tiny SD-like model, pre-trained on ``args.pretrain_size`` crops with its UNet's
    ``sample_size`` = pretrain_size / 8 (so its native size is the pre-training crop); writes
    ``folder/model.safetensors`` + ``folder/config`` and returns the pre-training record."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_osediff import build_configs, latent_std, train_unet, train_vae  # also puts tests/ on sys.path
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from sd_tiny import ldm_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel

    from onestep_sr.sd.prompt import encode_prompt
    from training.common.data import list_images as train_images
    from training.common.data import load_rgb as train_rgb

    ns = argparse.Namespace(unet_channels=(32, 64), vae_channels=(16, 32, 64, 64), gt_size=args.pretrain_size,
                            pretrain_size=args.pretrain_size, pretrain_batch=8, vae_steps=args.vae_steps,
                            vae_lr=1e-3, kl=1e-5, unet_steps=args.unet_steps, unet_lr=5e-4, seed=0)
    torch.manual_seed(0)
    ns.gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    configs = build_configs(ns)  # UNet sample_size = gt_size // 8 = the pre-training crop in latents
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval().requires_grad_(False)
    images = [train_rgb(p) for p in train_images(args.train)]
    print(f"[shift 1 pretrain] tiny SD-like model, {args.vae_steps} VAE + {args.unet_steps} UNet steps on "
          f"{args.pretrain_size}-px crops (UNet sample_size {configs['unet']['sample_size']})", flush=True)
    vae_mse = train_vae(vae, images, ns, rng)
    scaling = 1.0 / latent_std(vae, images, ns, rng)
    configs["vae"]["scaling_factor"] = scaling
    with torch.no_grad():
        context = encode_prompt(text, "", configs["prompt"])
    unet_loss = train_unet(unet, vae, context, scaling, images, ns, rng)
    config_dir = folder / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        atomic_write_text(config_dir / f"{name}.json", json.dumps(cfg, indent=1))
    save_file(ldm_state_dict(unet, vae, text, "sd1", 0), str(folder / "model.safetensors.tmp"))
    (folder / "model.safetensors.tmp").replace(folder / "model.safetensors")
    return {"vae_recon_mse": vae_mse, "scaling_factor": scaling, "unet_eps_mse": unet_loss,
            "native": configs["unet"]["sample_size"] * 8, "seconds": time.perf_counter() - started}


def shift_part(args) -> None:
    out = Path(args.out) / "shift"
    sd_dir = out / "sd"
    ckpt, config_dir, record_path = sd_dir / "model.safetensors", sd_dir / "config", sd_dir / "pretrain.json"
    if not record_path.is_file():  # a new base: any run on an older one is stale
        for seed in args.shift_seeds:
            for spec, _ in SHIFT_ARMS:
                shutil.rmtree(out / f"{spec}_seed{seed}", ignore_errors=True)
        (out / "scores.json").unlink(missing_ok=True)
        sd_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps(pretrain_tiny_sd(sd_dir, args), indent=1))
    pretrain = json.loads(record_path.read_text())
    print(f"[shift 1 pretrain] native size {pretrain['native']} px, VAE recon MSE {pretrain['vae_recon_mse']:.5f}, "
          f"UNet eps MSE {pretrain['unet_eps_mse']:.4f} ({pretrain['seconds'] / 60:.1f} min)", flush=True)

    from training.sd.osediff import LORA_FILE, OSEDiffConfig, OSEDiffRun

    loras = {}
    for seed in args.shift_seeds:
        for spec, _ in SHIFT_ARMS:
            run_dir = out / f"{spec}_seed{seed}"
            lora = run_dir / LORA_FILE
            config_file = run_dir / "config.json"
            if config_file.is_file():
                done = json.loads(config_file.read_text())
                wanted = {"steps": args.shift_steps, "batch_size": args.shift_batch, "gt_size": args.shift_gt_size}
                if any(done[k] != v for k, v in wanted.items()):
                    raise SystemExit(f"{run_dir} was trained with other settings than {wanted}; use another --out")
            if not lora.is_file():
                steps = args.shift_steps
                config = OSEDiffConfig(checkpoint=str(ckpt), config_dir=str(config_dir), data=args.train,
                                       out=str(run_dir), steps=steps, batch_size=args.shift_batch,
                                       gt_size=args.shift_gt_size, lr=5e-4, lr_regulariser=5e-4,
                                       warmup=min(50, steps // 10), ema=0.99, degradation="bicubic",
                                       perceptual="vae", cfg=1.0, lambda_vsd=1.0, schedule_shift=spec, seed=seed,
                                       log_every=25, save_every=max(1, steps // 4), keep=1)
                print(f"[shift 2 osediff] schedule_shift {spec}, seed {seed}: {steps} steps x {args.shift_batch} "
                      f"crops of {args.shift_gt_size} px", flush=True)
                lora = OSEDiffRun(config).train(progress=False)
            loras[(spec, seed)] = lora

    from onestep_sr.sd.onestep import SDOneStepSR
    from training.common.evaluate import evaluate_folder, summarise

    cache_path = out / "scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    engines = {"base": None, **{f"{spec}_seed{seed}": lora for (spec, seed), lora in loras.items()}}
    for key, lora in engines.items():
        if key not in cache:
            engine = SDOneStepSR.from_checkpoint(ckpt, config_dir=config_dir, lora=str(lora) if lora else None)

            def upscale(lr, engine=engine):
                return engine.upscale_tensor(lr[None], scale=SCALE, color_fix="adain")[0]
            cache[key] = evaluate_folder(upscale, args.val, scale=SCALE)
            atomic_write_text(cache_path, json.dumps(cache, indent=1, default=str))

    print(f"\nschedule shift on vs off: tiny SD-like model (native {pretrain['native']} px) distilled by the OSEDiff "
          f"trainer on {args.shift_gt_size}-px crops, {args.shift_steps} steps x batch {args.shift_batch} per run, "
          f"seeds {' '.join(map(str, args.shift_seeds))}; {torch.get_num_threads()} CPU threads; val {args.val} "
          f"(x4, LR = bicubic x1/4, AdaIN colour fix, Y, border 4); pre-training {pretrain['seconds'] / 60:.1f} min")
    print("| model | seed | shift factor (LoRA header) | train min | PSNR-Y | SSIM-Y | PSNR-Y vs bicubic |")
    print("|---|---|---|---|---|---|---|")
    base = summarise(cache["base"])
    for seed in args.shift_seeds:
        for spec, label in SHIFT_ARMS:
            s = summarise(cache[f"{spec}_seed{seed}"])
            minutes = stage_seconds(out / f"{spec}_seed{seed}" / "log.csv") / 60
            print(f"| student, {label} | {seed} | {lora_shift(loras[(spec, seed)])} | {minutes:.1f} | "
                  f"{s['psnr_y']:.2f} | {s['ssim_y']:.4f} | {s['psnr_gain']:+.2f} |")
    print(f"| base one-step, no LoRA | - | - | - | {base['psnr_y']:.2f} | {base['ssim_y']:.4f} | {base['psnr_gain']:+.2f} |")
    print(f"| bicubic | - | - | - | {base['bicubic_psnr_y']:.2f} | {base['bicubic_ssim_y']:.4f} | +0.00 |")
    diffs, positive, pairs = [], 0, 0
    for seed in args.shift_seeds:
        on = {r["name"]: r["psnr_y"] for r in cache[f"auto_seed{seed}"]}
        positive += sum(on[r["name"]] > r["psnr_y"] for r in cache[f"none_seed{seed}"])
        pairs += len(on)
        mean, spread = paired_difference(cache[f"auto_seed{seed}"], cache[f"none_seed{seed}"])
        ssim, _ = paired_difference(cache[f"auto_seed{seed}"], cache[f"none_seed{seed}"], "ssim_y")
        diffs.append(mean)
        print(f"seed {seed}: shift on - off = {mean:+.2f} dB PSNR-Y (per-image std {spread:.2f} dB over "
              f"{len(cache['base'])} images), {ssim:+.4f} SSIM-Y")
    for spec, label in SHIFT_ARMS:
        if len(args.shift_seeds) > 1:
            p = [summarise(cache[f"{spec}_seed{seed}"])["psnr_y"] for seed in args.shift_seeds]
            print(f"{label}: PSNR-Y over seeds {np.mean(p):.2f} (seed-to-seed range {max(p) - min(p):.2f} dB)")
    if len(diffs) > 1:
        print(f"shift on - off, mean over {len(diffs)} seeds: {np.mean(diffs):+.2f} dB PSNR-Y (std over seeds "
              f"{np.std(diffs, ddof=1):.2f} dB)")
    print(f"shift on above off in {positive} of {pairs} (image, seed) pairs (PSNR-Y)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/simple_diffusion")
    parser.add_argument("--part", choices=("multiscale", "shift", "all"), default="all")
    parser.add_argument("--steps", type=int, default=1200, help="multiscale: teacher steps")
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--seed", type=int, default=1, help="multiscale: noise seed of the evaluation")
    parser.add_argument("--pretrain-size", type=int, default=64, help="shift: the tiny SD's pre-training crop "
                        "(= its native size)")
    parser.add_argument("--vae-steps", type=int, default=1500, help="shift: VAE pre-training steps")
    parser.add_argument("--unet-steps", type=int, default=1500, help="shift: UNet pre-training steps")
    parser.add_argument("--shift-gt-size", type=int, default=128, help="shift: OSEDiff HR crop size")
    parser.add_argument("--shift-steps", type=int, default=350, help="shift: OSEDiff steps per run")
    parser.add_argument("--shift-batch", type=int, default=4, help="shift: OSEDiff batch size")
    parser.add_argument("--shift-seeds", type=int, nargs="+", default=(0, 1), help="shift: OSEDiff seeds (one "
                        "on/off pair each)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("multiscale", "all"):
        multiscale_part(args)
    if args.part in ("shift", "all"):
        shift_part(args)


if __name__ == "__main__":
    main()
