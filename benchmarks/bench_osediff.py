"""CPU-scale demonstration of the OSEDiff trainer (``training/sd/osediff.py``) end to end: a tiny
SD-like model trained briefly on ../shared/images/train, its one-step student (the exported LoRA)
against bicubic on ../shared/images/val. No download; everything is seeded and runs on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_osediff.py --out runs/bench_osediff --threads 1

(about 15 min on one core. The networks are so small that every op is tiny: on a machine whose
cores are busy with other work, 2+ threads can be ~100x slower than 1 from OpenMP waits; use
``--threads 1`` unless the cores are idle.)

A random tiny SD cannot upscale anything, so the script first makes one that is "SD-like":

1. **Build** a tiny SD 1.x-shaped model with diffusers / transformers: UNet (block_out_channels
   ``--unet-channels``, cross-attention on the first block), VAE with four blocks (8x down-sampling,
   4 latent channels, ``--vae-channels``), the random tiny CLIP text encoder and SD 1.x prompt
   settings of ``tests/sd_tiny.py``.
2. **Pre-train** it on random crops of the train images: (a) the VAE as an autoencoder (pixel MSE
   + ``--kl`` x KL on the posterior sample), after which the latent ``scaling_factor`` is set to
   1 / std of the posterior means (as SD's 0.18215 was chosen); (b) the UNet as an eps-prediction
   diffusion model (scaled_linear schedule of ``onestep_sr.sd.formulas``, t ~ U[0, 1000)) on the
   scaled VAE latents of the crops with the empty-prompt text embedding. Both are then written as
   an LDM single-file checkpoint (``sd/model.safetensors``, the key mapping of ``tests/sd_tiny.py``)
   plus its config folder (``sd/config``), which ``onestep_sr.sd.checkpoint.load_sd_model`` reads.
3. **Distil** the one-step LoRA with the real trainer (``OSEDiffRun``, i.e. ``python -m training
   osediff``) on that checkpoint: ``--degradation bicubic``, ``--perceptual vae``, ``--gt-size``,
   ``--steps``; the real score's CFG is ``--cfg`` (1 by default: the tiny UNet was trained on the
   empty prompt only, so a guidance against OSEDiff's negative prompt would be meaningless).
4. **Evaluate** on every val image with ``training.common.evaluate.evaluate_folder`` (HR cropped to a
   multiple of 4, LR = bicubic x1/4, results rounded to 8 bit, PSNR / SSIM on Y with a 4 px border):
   the student (``SDOneStepSR.from_checkpoint(..., lora=osediff_lora.safetensors)``, which merges the
   ``_vae`` sibling too), the base tiny SD one-step without LoRA, and bicubic. Prints a table and
   writes ``results.json`` into ``--out``.

Each stage prints its wall time. Every call recomputes every stage (the trainer's run folder
``--out/osediff`` is removed first, since its base checkpoint has just been rebuilt).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod  # noqa: E402
from training.common.data import list_images, load_rgb  # noqa: E402
from training.common.evaluate import evaluate_folder, format_table, summarise  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"


def random_crops(images: list[torch.Tensor], size: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random ``size`` crops (random image, position, horizontal flip) -> count x 3 x size x size."""
    out = []
    for _ in range(count):
        image = images[int(rng.integers(len(images)))]
        _, h, w = image.shape
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        crop = image[:, y:y + size, x:x + size]
        out.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    return torch.stack(out)


def build_configs(args) -> dict[str, dict]:
    from sd_tiny import tiny_configs

    configs = tiny_configs("sd1")
    u = list(args.unet_channels)
    configs["unet"].update(block_out_channels=u, norm_num_groups=min(32, u[0]), attention_head_dim=8,
                           sample_size=args.gt_size // 8)
    v = list(args.vae_channels)
    configs["vae"].update(block_out_channels=v, norm_num_groups=min(8, v[0]), sample_size=args.gt_size,
                          scaling_factor=1.0)
    return configs


def train_vae(vae, images, args, rng) -> float:
    """Autoencoder pre-training; returns the last mean reconstruction MSE."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    recent = []
    for step in range(args.vae_steps):
        x = random_crops(images, args.pretrain_size, args.pretrain_batch, rng) * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=args.gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = mse + args.kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        recent = (recent + [mse.item()])[-50:]
        if (step + 1) % max(1, args.vae_steps // 5) == 0:
            print(f"  vae step {step + 1}/{args.vae_steps}: recon MSE ([-1,1] range) {np.mean(recent):.5f}", flush=True)
    vae.eval().requires_grad_(False)
    return float(np.mean(recent))


@torch.no_grad()
def latent_std(vae, images, args, rng) -> float:
    x = random_crops(images, args.pretrain_size, 64, rng) * 2 - 1
    return float(vae.encode(x).latent_dist.mean.std())


def train_unet(unet, vae, context, scaling, images, args, rng, batches=None) -> float:
    """eps-prediction diffusion pre-training on scaled VAE latents; returns the last mean loss.
    ``batches(rng) -> (crops in [0, 1], text embeddings)`` replaces the default draw (random crops,
    ``context`` for each), e.g. for captions (bench_guidance.py)."""
    abar = scaled_linear_alphas_cumprod().float()
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=1e-2)
    recent = []
    for step in range(args.unet_steps):
        if batches is None:
            x = random_crops(images, args.pretrain_size, args.pretrain_batch, rng)
            contexts = context.expand(x.shape[0], -1, -1)
        else:
            x, contexts = batches(rng)
        with torch.no_grad():
            z0 = vae.encode(x * 2 - 1).latent_dist.mode() * scaling
        t = torch.randint(0, 1000, (z0.shape[0],), generator=args.gen)
        noise = torch.randn(z0.shape, generator=args.gen)
        a = abar[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = unet(z_t, t, encoder_hidden_states=contexts).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if (step + 1) % max(1, args.unet_steps // 5) == 0:
            print(f"  unet step {step + 1}/{args.unet_steps}: eps MSE {np.mean(recent):.4f}", flush=True)
    unet.eval().requires_grad_(False)
    return float(np.mean(recent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_osediff")
    parser.add_argument("--train", default=str(IMAGES / "train"))
    parser.add_argument("--val", default=str(IMAGES / "val"))
    parser.add_argument("--unet-channels", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--vae-channels", type=int, nargs=4, default=(16, 32, 64, 64))
    parser.add_argument("--pretrain-size", type=int, default=64, help="crop size of the VAE / UNet pre-training")
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl", type=float, default=1e-5, help="KL weight of the VAE pre-training")
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--unet-lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=500, help="OSEDiff trainer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="OSEDiff trainer batch size")
    parser.add_argument("--gt-size", type=int, default=64, help="OSEDiff trainer HR crop size")
    parser.add_argument("--lr", type=float, default=5e-4, help="OSEDiff generator learning rate")
    parser.add_argument("--perceptual", default="vae", help="vae or none")
    parser.add_argument("--cfg", type=float, default=1.0, help="real-score CFG of the VSD term")
    parser.add_argument("--lambda-vsd", type=float, default=1.0)
    parser.add_argument("--color-fix", default="adain", help="colour fix of the one-step engine (adain, wavelet, none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from sd_tiny import ldm_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel

    from onestep_sr.sd.prompt import encode_prompt

    # 1. build
    started = time.perf_counter()
    configs = build_configs(args)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval().requires_grad_(False)
    n_unet, n_vae = (sum(p.numel() for p in m.parameters()) for m in (unet, vae))
    images = [load_rgb(p) for p in list_images(args.train)]
    times["build"] = time.perf_counter() - started
    print(f"[1 build] UNet {tuple(args.unet_channels)} {n_unet / 1e6:.2f} M params, VAE {tuple(args.vae_channels)} "
          f"{n_vae / 1e6:.2f} M params, {len(images)} train images ({times['build']:.1f} s)", flush=True)

    # 2a. VAE pre-training
    started = time.perf_counter()
    vae_mse = train_vae(vae, images, args, rng)
    scaling = 1.0 / latent_std(vae, images, args, rng)
    configs["vae"]["scaling_factor"] = scaling
    times["vae"] = time.perf_counter() - started
    print(f"[2a vae] {args.vae_steps} steps x {args.pretrain_batch} crops of {args.pretrain_size} px: recon MSE "
          f"{vae_mse:.5f} (PSNR ~{10 * np.log10(4 / vae_mse):.1f} dB), scaling_factor {scaling:.4f} "
          f"({times['vae'] / 60:.1f} min)", flush=True)

    # 2b. UNet pre-training
    started = time.perf_counter()
    with torch.no_grad():
        context = encode_prompt(text, "", configs["prompt"])
    unet_loss = train_unet(unet, vae, context, scaling, images, args, rng)
    sd_dir = out / "sd"
    config_dir = sd_dir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        (config_dir / f"{name}.json").write_text(json.dumps(cfg, indent=1))
    ckpt = sd_dir / "model.safetensors"
    save_file(ldm_state_dict(unet, vae, text, "sd1", args.seed), str(ckpt))
    times["unet"] = time.perf_counter() - started
    print(f"[2b unet] {args.unet_steps} steps x {args.pretrain_batch} latents of {args.pretrain_size // 8} px: eps MSE "
          f"{unet_loss:.4f}; wrote {ckpt} ({times['unet'] / 60:.1f} min)", flush=True)
    del unet, vae, text

    # 3. the OSEDiff trainer
    from training.sd.osediff import OSEDiffConfig, OSEDiffRun

    started = time.perf_counter()
    run_dir = out / "osediff"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = OSEDiffConfig(checkpoint=str(ckpt), config_dir=str(config_dir), data=args.train, out=str(run_dir),
                           steps=args.steps, batch_size=args.batch_size, gt_size=args.gt_size, lr=args.lr,
                           lr_regulariser=args.lr, warmup=min(50, args.steps // 10), ema=0.99,
                           degradation="bicubic", perceptual=args.perceptual, cfg=args.cfg,
                           lambda_vsd=args.lambda_vsd, seed=args.seed, log_every=25,
                           save_every=args.steps, keep=1)
    lora = OSEDiffRun(config).train(progress=False)
    times["osediff"] = time.perf_counter() - started
    log = (run_dir / "log.csv").read_text().strip().splitlines()
    print(f"[3 osediff] {args.steps} steps x {args.batch_size} crops of {args.gt_size} px (bicubic degradation, "
          f"perceptual {args.perceptual}, cfg {args.cfg}, lambda_vsd {args.lambda_vsd}, lr {args.lr}): exported "
          f"{lora} ({times['osediff'] / 60:.1f} min)\n  log.csv first / last rows:\n  {log[0]}\n  {log[1]}\n  {log[-1]}",
          flush=True)

    # 4. evaluation
    from onestep_sr.sd.onestep import SDOneStepSR

    started = time.perf_counter()
    engines = {"student (base + LoRA)": SDOneStepSR.from_checkpoint(ckpt, config_dir=config_dir, lora=str(lora)),
               "base tiny SD one-step (no LoRA)": SDOneStepSR.from_checkpoint(ckpt, config_dir=config_dir)}
    rows, summaries = {}, {}
    for name, engine in engines.items():
        def upscale(lr, engine=engine):
            return engine.upscale_tensor(lr[None], scale=4, color_fix=args.color_fix)[0]
        rows[name] = evaluate_folder(upscale, args.val, scale=4)
        summaries[name] = summarise(rows[name])
    times["eval"] = time.perf_counter() - started
    print(f"[4 eval] {len(list_images(args.val))} val images, LR = bicubic x1/4, colour fix {args.color_fix} "
          f"({times['eval']:.1f} s)")
    for name, r in rows.items():
        print(f"\n{name} vs GT on {args.val}:\n{format_table(r, summaries[name])}")
    s, b = summaries["student (base + LoRA)"], summaries["base tiny SD one-step (no LoRA)"]
    print(f"\n{'method':<32} {'PSNR-Y':>8} {'SSIM-Y':>8}")
    for label, p, q in (("student (one step, LoRA)", s["psnr_y"], s["ssim_y"]),
                        ("base tiny SD one step, no LoRA", b["psnr_y"], b["ssim_y"]),
                        ("bicubic", s["bicubic_psnr_y"], s["bicubic_ssim_y"])):
        print(f"{label:<32} {p:8.2f} {q:8.4f}")
    print(f"student gain over bicubic: {s['psnr_gain']:+.2f} dB PSNR-Y, {s['ssim_gain']:+.4f} SSIM-Y; "
          f"total time {sum(times.values()) / 60:.1f} min ({args.threads} threads)")
    (out / "results.json").write_text(json.dumps({
        "rows": rows, "summaries": summaries, "times_s": times, "checkpoint": str(ckpt), "lora": str(lora),
        "pretrain": {"vae_recon_mse": vae_mse, "scaling_factor": scaling, "unet_eps_mse": unet_loss},
        "args": {k: v for k, v in vars(args).items() if k != "gen"}}, indent=1, default=str))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
