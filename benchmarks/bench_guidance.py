"""Guidance distillation on a CPU (demonstration D2 of ../shared/specs/guided_progressive.md), in
one resumable command:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_guidance.py --out runs/guidance --threads 1

1. **A tiny SD-like model with classifier-free guidance**: bench_osediff's tiny UNet / VAE / CLIP,
   the VAE pre-trained as an autoencoder, the UNet as an eps model on 64-px crops of
   ../shared/images/train with TWO captions ("a bright photo" / "a dark photo": the image's mean
   luma above / below the median of the train images) and **10 % caption dropout** to the empty
   prompt, so that a conditional and an unconditional model exist (CFG = 1 + w between the empty
   prompt and the caption). Written as an LDM single file + config folder.
2. **Stage 1** (`train guided`, ``training/sd/guided.py``): LoRA + zero-initialised cond_proj,
   w ~ U[0, 6], uncond = the empty prompt (consistent with the caption dropout), on the same
   captioned train images.
3. **Measured on held-out latents** (64-px crops of ../shared/images/val, captioned by the same
   rule; t ~ U[20, 980), fixed seeds): the relative L2 of x0, ``|x0_student(w) - x0_cfg(w)| /
   |x0_cfg(w)|``, at w = 0, 1.5, 3, 4.5, 6 (inside the trained range) and 8 (outside), against the
   obvious one-call alternative: the conditional UNet without guidance (what one call gives without
   distillation; also the student at step 0).
4. **The VSD step**: the OSEDiff trainer on this model (64-px crops, batch 4, real-score w = 3)
   with the two-call CFG real score vs ``--real-score`` the stage-1 file: UNet samples per step and
   seconds per step (median of ``--time-steps`` steps after two warm-up steps, same seed, the two
   runs taking their steps in turn), and the cosine similarity of the VSD gradient (``osediff_losses.vsd_gradient``)
   of the one-call real score against the two-call one on held-out batches.
5. **The baked export**: the stage-1 file baked at w = 3 into a kohya LoRA (``lora_unet_time_embed_0.
   diff_b``) and merged into a fresh UNet vs the trained student at w = 3 (max abs difference,
   fp32).

Prints a table and writes ``results.json`` (atomically) into --out; the pre-trained model is kept, and
the stage-1 run resumes (a larger ``--guided-steps`` on the same --out continues it).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onestep_sr.checkpoint import atomic_write_text  # noqa: E402
from training.common.data import list_images, load_rgb  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
CAPTIONS = ("a dark photo", "a bright photo")
W_EVAL = (0.0, 1.5, 3.0, 4.5, 6.0, 8.0)


def luma(image: torch.Tensor) -> float:
    return float((0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).mean())


def captioned_folder(src: str, dst: Path, threshold: float | None = None) -> tuple[Path, float, list[str]]:
    """Copy ``src``'s images to ``dst`` with ``<stem>.txt`` captions by luma (above / below the median
    of ``src`` unless ``threshold`` is given)."""
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    files = list_images(src)
    values = [luma(load_rgb(p)) for p in files]
    threshold = float(np.median(values)) if threshold is None else threshold
    captions = []
    for path, value in zip(files, values):
        Image.open(path).convert("RGB").save(dst / f"{path.stem}.png")
        caption = CAPTIONS[int(value > threshold)]
        (dst / f"{path.stem}.txt").write_text(caption + "\n")
        captions.append(caption)
    return dst, threshold, captions


def pretrain(args, out: Path) -> dict:
    """Stage 1: the tiny SD-like model with two captions and caption dropout."""
    from bench_osediff import build_configs, latent_std, random_crops, train_unet, train_vae
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from sd_tiny import ldm_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel

    from onestep_sr.sd.prompt import encode_prompt

    sd_dir = out / "sd"
    if (sd_dir / "done.json").is_file():
        return json.loads((sd_dir / "done.json").read_text())
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    args.gen = torch.Generator().manual_seed(args.seed)
    args.gt_size = args.pretrain_size = args.crop  # build_configs' sample_size = crop / 8: the native size is the crop
    configs = build_configs(args)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval().requires_grad_(False)
    folder = Path(args.data)
    files = list_images(folder)
    images = [load_rgb(p) for p in files]
    captions = [(folder / f"{p.stem}.txt").read_text().strip() for p in files]
    vae_mse = train_vae(vae, images, args, rng)
    scaling = 1.0 / latent_std(vae, images, args, rng)
    configs["vae"]["scaling_factor"] = scaling
    with torch.no_grad():
        contexts = {p: encode_prompt(text, p, configs["prompt"]) for p in ("", *CAPTIONS)}

    def batches(rng):
        picks = rng.integers(len(images), size=args.pretrain_batch)
        x = torch.cat([random_crops([images[i]], args.crop, 1, rng) for i in picks])
        drop = rng.random(args.pretrain_batch) < args.caption_dropout
        return x, torch.cat([contexts["" if d else captions[i]] for i, d in zip(picks, drop)])

    unet_loss = train_unet(unet, vae, None, scaling, images, args, rng, batches=batches)
    config_dir = sd_dir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        (config_dir / f"{name}.json").write_text(json.dumps(cfg, indent=1))
    save_file(ldm_state_dict(unet, vae, text, "sd1", args.seed), str(sd_dir / "model.safetensors"))
    done = {"vae_recon_mse": vae_mse, "scaling_factor": scaling, "unet_eps_mse": unet_loss,
            "minutes": (time.perf_counter() - started) / 60}
    atomic_write_text(sd_dir / "done.json", json.dumps(done, indent=1))
    return done


def held_out(run, folder: Path, count: int, seed: int):
    """(z_t, t, context, negative) of ``count`` val crops with their captions, fixed seeds."""
    from training.common.data import CaptionedPairDataset

    data = CaptionedPairDataset(str(folder), run.config.gt_size, 4, "bicubic", seed=seed + 777, augment="flip")
    items = [data[i] for i in range(count)]
    gt = torch.stack([it[1] for it in items])
    z0 = run.latents(gt)
    g = torch.Generator().manual_seed(seed + 778)
    t = torch.randint(20, 980, (count,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    a = run.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    return z_t, t, run.embeddings([it[2] for it in items]), run.embeddings([""] * count)


def relative_errors(run, batches) -> dict:
    from training.sd import osediff_losses as L

    rows = {}
    for w in W_EVAL:
        student, plain = [], []
        for z_t, t, context, negative in batches:
            wt = torch.full((z_t.shape[0],), w)
            with torch.no_grad():
                x0 = lambda out: L.x0_at(z_t, out.float(), t, run.alphas_cumprod, run.prediction_type)  # noqa: E731
                target = x0(run.teacher(z_t, t, context, negative, wt))
                unet = run.accelerator.unwrap_model(run.unet)
                unet.disable_adapters()
                try:
                    cond = x0(unet(z_t, t, encoder_hidden_states=context).sample)
                finally:
                    unet.enable_adapters()
                mine = x0(run.student(z_t, t, context, wt))
            for ours, sink in ((mine, student), (cond, plain)):
                sink.extend(((ours - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1)).tolist())
        rows[f"{w:g}"] = {"student": float(np.mean(student)), "one_call_unguided": float(np.mean(plain))}
    return rows


def vsd_comparison(args, out: Path, ckpt: Path, config_dir: Path, guided: Path, data: Path) -> dict:
    from training.sd import osediff_losses as L
    from training.sd.osediff import OSEDiffConfig, OSEDiffRun

    results = {}
    for folder in ("vsd_two", "vsd_one"):  # timing runs: always from scratch
        shutil.rmtree(out / folder, ignore_errors=True)
    runs, samples, times = {}, {}, {}
    for name, extra in (("two-call CFG", {}), ("one-call guided", {"real_score": str(guided)})):
        config = OSEDiffConfig(checkpoint=str(ckpt), config_dir=str(config_dir), data=str(data),
                               out=str(out / f"vsd_{'one' if extra else 'two'}"), steps=args.time_steps + 2,
                               batch_size=4, gt_size=args.time_crop or args.crop, lr=1e-4, warmup=0,
                               degradation="bicubic", schedule_shift="none",
                               negative_prompt="", cfg=1.0 + args.vsd_w, seed=args.seed, log_every=1,
                               save_every=10**6, keep=1, **extra)
        runs[name] = run = OSEDiffRun(config)
        samples[name], times[name] = [], []
        for net in (run.accelerator.unwrap_model(run.score).unet, run.accelerator.unwrap_model(run.generator).unet):
            net.register_forward_pre_hook(lambda m, a, k, sink=samples[name]: sink.append(a[0].shape[0]),
                                          with_kwargs=True)
    # the two runs take their steps in turn, so a change of machine load hits both alike
    for micro, batches in enumerate(zip(*(r.loader for r in runs.values()))):
        for (name, run), (lq, gt, prompts) in zip(runs.items(), batches):
            began = time.perf_counter()
            parts, z = run.generator_losses(lq, gt, prompts, micro)
            parts["regulariser"] = run.regulariser_loss(z, prompts, micro)
            run._update(parts["total"] + parts["regulariser"])
            times[name].append(time.perf_counter() - began)
    for name, run in runs.items():
        extra = name == "one-call guided"
        score = run.accelerator.unwrap_model(run.score)
        gen = run.accelerator.unwrap_model(run.generator)
        results[name] = {"seconds_per_step": statistics.median(times[name][2:]),
                         "unet_samples_per_step": sum(samples[name]) / len(times[name]),
                         "steps_timed": len(times[name]) - 2}
        if extra:  # the VSD gradient of both real scores on held-out batches, with this run's generator
            cosines = []
            val = held_out_lq(args, run)
            for i, (lq, prompts) in enumerate(val):
                context = run.embeddings(prompts)
                with torch.no_grad():
                    z = gen.latent(lq, context, (run.config.gt_size, run.config.gt_size))
                    t, noise = run._t_and_noise(z, *L.VSD_T_RANGE, run._rng(10_000 + i, 0))
                    z_t = L.add_noise(z.float(), noise.float(), t, run.alphas_cumprod)
                    w = torch.full((z.shape[0],), args.vsd_w)
                    x0_fake = L.score_x0(score, z_t, t, context, run.alphas_cumprod, run.prediction_type)
                    one = L.vsd_gradient(z, run.real_x0(z_t, t, context, w, one_call=True), x0_fake)
                    two = L.vsd_gradient(z, run.real_x0(z_t, t, context, w, one_call=False), x0_fake)
                cosines.extend(F.cosine_similarity(one.flatten(1), two.flatten(1)).tolist())
            results["cosine"] = {"mean": float(np.mean(cosines)), "min": float(np.min(cosines)), "n": len(cosines)}
    return results


def held_out_lq(args, run):
    from training.common.data import CaptionedPairDataset

    data = CaptionedPairDataset(args.val_captioned, args.crop, 4, "bicubic", seed=args.seed + 99, augment="flip")
    batches = []
    for b in range(args.cos_batches):
        items = [data[b * 4 + i] for i in range(4)]
        batches.append((torch.stack([it[0] for it in items]), [it[2] for it in items]))
    return batches


def baked_difference(run, batches, ckpt: Path, config_dir: Path, w: float) -> float:
    from onestep_sr.sd import guidance as G
    from onestep_sr.sd.checkpoint import load_sd_model
    from onestep_sr.sd.lora import merge_kohya_lora
    from training.sd.osediff_export import guided_file_tensors

    unet = run.accelerator.unwrap_model(run.unet)
    weights = {k: v.detach().cpu() for k, v in run.params.items()}
    tensors, meta = guided_file_tensors(run, weights, unet, run.w_range)
    base = load_sd_model(str(ckpt), config_dir=str(config_dir)).unet
    merge_kohya_lora(base, None, G.bake(G.parse_guided(tensors, meta), base.time_embedding.linear_1.weight, w))
    worst = 0.0
    for z_t, t, context, _ in batches:
        with torch.no_grad():
            a = run.student(z_t, t, context, torch.full((z_t.shape[0],), w))
            b = base(z_t, t, encoder_hidden_states=context).sample
        worst = max(worst, float((a - b).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/guidance")
    parser.add_argument("--unet-channels", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--vae-channels", type=int, nargs=4, default=(16, 32, 64, 64))
    parser.add_argument("--crop", type=int, default=64, help="crop size everywhere (the model's native size)")
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl", type=float, default=1e-5)
    parser.add_argument("--unet-steps", type=int, default=2000)
    parser.add_argument("--unet-lr", type=float, default=5e-4)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--guided-steps", type=int, default=600)
    parser.add_argument("--guided-lr", type=float, default=5e-4)
    parser.add_argument("--guided-batch", type=int, default=8)
    parser.add_argument("--eval-batches", type=int, default=4, help="held-out batches of 8 latents")
    parser.add_argument("--vsd-w", type=float, default=3.0, help="the real score's w in the VSD comparison")
    parser.add_argument("--time-steps", type=int, default=30)
    parser.add_argument("--time-crop", type=int, default=0, help="HR crop of the VSD comparison (default --crop)")
    parser.add_argument("--cos-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, threshold, train_caps = captioned_folder(str(IMAGES / "train"), out / "data" / "train")
    val, _, val_caps = captioned_folder(str(IMAGES / "val"), out / "data" / "val", threshold)
    args.data, args.val_captioned = str(train), str(val)
    print(f"captions: train {train_caps.count(CAPTIONS[1])} bright / {train_caps.count(CAPTIONS[0])} dark "
          f"(luma threshold {threshold:.3f}); val {val_caps}", flush=True)

    started = time.perf_counter()
    pre = pretrain(args, out)
    ckpt, config_dir = out / "sd" / "model.safetensors", out / "sd" / "config"
    print(f"[1 pretrain] VAE recon MSE {pre['vae_recon_mse']:.5f}, UNet eps MSE {pre['unet_eps_mse']:.4f} "
          f"({pre['minutes']:.1f} min when made)", flush=True)

    from training.sd.guided import GuidedConfig, GuidedRun

    config = GuidedConfig(checkpoint=str(ckpt), config_dir=str(config_dir), data=str(train), out=str(out / "guided"),
                          steps=args.guided_steps, batch_size=args.guided_batch, gt_size=args.crop, lr=args.guided_lr,
                          warmup=20, w_range="0,6", negative_prompt="", seed=args.seed, log_every=25,
                          save_every=100, keep=1, ema=0.0)
    run = GuidedRun(config)
    batches = [held_out(run, val, 8, args.seed + 1000 * b) for b in range(args.eval_batches)]
    began = time.perf_counter()
    guided = run.train(progress=False)
    guided_minutes = (time.perf_counter() - began) / 60
    print(f"[2 guided] {args.guided_steps} steps x {args.guided_batch} ({guided_minutes:.1f} min this call): {guided}",
          flush=True)
    errors = relative_errors(run, batches)
    baked = baked_difference(run, batches, ckpt, config_dir, args.vsd_w)
    vsd = vsd_comparison(args, out, ckpt, config_dir, guided, train)
    results = {"pretrain": pre, "relative_x0_error": errors, "baked_max_abs_diff": baked, "vsd": vsd,
               "guided_minutes_this_call": guided_minutes, "total_minutes": (time.perf_counter() - started) / 60,
               "args": {k: v for k, v in vars(args).items() if k != "gen"}}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))

    print(f"\nrelative x0 error vs two-call CFG on {sum(b[0].shape[0] for b in batches)} held-out val latents "
          f"(trained w range [0, 6]; CFG scale = 1 + w):")
    print(f"{'w':>5} {'student (1 call)':>17} {'unguided UNet (1 call)':>23}")
    for w, row in errors.items():
        print(f"{w:>5} {row['student']:17.4f} {row['one_call_unguided']:23.4f}")
    two, one = vsd["two-call CFG"], vsd["one-call guided"]
    print(f"\nVSD step (OSEDiff trainer, batch 4, {args.time_crop or args.crop}-px crops, real-score w {args.vsd_w:g}):")
    for name, row in (("two-call CFG", two), ("one-call guided", one)):
        print(f"  {name:<16} {row['unet_samples_per_step']:.0f} UNet samples / step, "
              f"{row['seconds_per_step']:.3f} s / step (median of {row['steps_timed']})")
    print(f"  time ratio one / two: {one['seconds_per_step'] / two['seconds_per_step']:.3f}")
    c = vsd["cosine"]
    print(f"  VSD gradient cosine, one-call vs two-call real score: mean {c['mean']:.4f}, min {c['min']:.4f} "
          f"over {c['n']} held-out samples")
    print(f"\nbaked w = {args.vsd_w:g} kohya LoRA merged vs the conditioned student: max |diff| {baked:.2e} (fp32)")
    print(f"wrote {out / 'results.json'}")
    if not math.isfinite(baked):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
