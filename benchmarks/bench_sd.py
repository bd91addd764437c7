"""One-step SD SR (``SDOneStepSR.upscale_tensor``) vs a 50-step SD img2img loop, and peak memory.

Builds a seeded random SD-1.x-like model in memory with diffusers / transformers (a "medium" UNet,
a small KL VAE, a small CLIP text encoder; sizes printed), wraps it in an ``SDModel`` exactly as
the loader returns it, and measures on the same networks and the same output size:

* one-step: the real ``SDOneStepSR.upscale_tensor`` (bicubic -> VAE encode -> UNet at t=999 ->
  closed-form x0 -> VAE decode -> AdaIN colour fix);
* 50-step baseline: img2img with strength 1 (bicubic -> VAE encode -> noise to t=999 -> 50 DDIM
  steps, eta 0, t = 999, 979, ..., 19, final alpha-bar 1, scaled_linear schedule, written with
  ``onestep_sr.sd.formulas`` -> VAE decode -> the same colour fix). Same VAE cost as one-step.

Runs alternate (baseline, one-step, baseline, ...) after a warm-up; medians and the ratio
50-step / one-step come from this one run. Peak memory: each case (512^2 and 1024^2 output with
the default latent tiles 96 / overlap 32, and 1024^2 untiled) runs ``upscale_tensor`` once in a
fresh subprocess that reports the increase of its peak RSS (ru_maxrss) over its RSS after building
the model and, on CUDA, torch.cuda.max_memory_allocated.

    python benchmarks/bench_sd.py [--threads 2] [--repeats 3] [--steps 50] [--quick] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "OMP_NUM_THREADS" not in os.environ:   # before torch is imported; --threads still sets torch's
    os.environ["OMP_NUM_THREADS"] = "2"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onestep_sr.colorfix import color_fix as apply_color_fix  # noqa: E402
from onestep_sr.sd.checkpoint import CONFIG_ROOT, SDModel  # noqa: E402
from onestep_sr.sd.formulas import (LATENT_OVERLAP, LATENT_TILE, crop_to, pad_to_multiple,  # noqa: E402
                                    scaled_linear_alphas_cumprod, x0_from_prediction)
from onestep_sr.sd.onestep import SDOneStepSR, bicubic_to, output_size  # noqa: E402

UNTILED = 10**6   # a latent tile larger than any latent: one UNet call on the whole latent


def medium_configs() -> dict[str, dict]:
    unet = {"block_out_channels": [64, 128, 256, 256], "layers_per_block": 1, "cross_attention_dim": 256,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "attention_head_dim": 8,
            "norm_num_groups": 32, "sample_size": 64, "in_channels": 4, "out_channels": 4,
            "use_linear_projection": False, "flip_sin_to_cos": True, "freq_shift": 0}
    vae = {"block_out_channels": [32, 64, 128, 128], "layers_per_block": 1, "norm_num_groups": 32,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "latent_channels": 4, "in_channels": 3, "out_channels": 3, "sample_size": 512,
           "scaling_factor": 0.18215}
    text = {"vocab_size": 49408, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
            "num_attention_heads": 4, "max_position_embeddings": 77, "layer_norm_eps": 1e-05,
            "hidden_act": "quick_gelu", "projection_dim": 256}
    prompt = json.loads((CONFIG_ROOT / "sd1" / "prompt.json").read_text())
    return {"unet": unet, "vae": vae, "text_encoder": text, "prompt": prompt}


def build_model(seed: int = 0) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = medium_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return SDModel(unet=unet, vae=vae, text_encoder=text, family="sd1", prediction_type="epsilon",
                   prompt=configs["prompt"], source="random medium SD-like model (bench_sd)")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def img2img_ddim(engine: SDOneStepSR, lr: torch.Tensor, scale: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Strength-1 img2img with ``steps`` DDIM (eta 0) steps on the engine's own UNet / VAE."""
    model, device, dtype = engine.model, engine.device, engine.dtype
    abar = scaled_linear_alphas_cumprod()
    stride = 1000 // steps
    timesteps = list(range(999, -1, -stride))[:steps]          # 999, 979, ..., 19 for 50 steps
    ref = bicubic_to(lr.float().cpu(), output_size(*lr.shape[-2:], scale))
    padded, size = pad_to_multiple(ref)
    z0 = engine.encode(padded).float()                           # same VAE encode as one-step
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    a = float(abar[timesteps[0]])
    z = a ** 0.5 * z0 + (1 - a) ** 0.5 * noise
    context = engine.text_embedding("").to(device, dtype)
    for i, t in enumerate(timesteps):
        a = float(abar[t])
        a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        eps = model.unet(z.to(dtype), torch.tensor([t], device=device), encoder_hidden_states=context).sample.float()
        x0 = x0_from_prediction(z, eps, a, model.prediction_type)
        z = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    sr = crop_to(engine.decode(z).cpu(), size)
    return apply_color_fix(sr, ref, "adain")


def memory_case(args) -> None:
    """Child process: build the model, one upscale at the given output size / tile, print JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    engine = SDOneStepSR(build_model(), device=device)
    engine.text_embedding("")
    lr = torch.rand(1, 3, args.mem_lr, args.mem_lr, generator=torch.Generator().manual_seed(1))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    before = rss_mib()
    start = time.perf_counter()
    out = engine.upscale_tensor(lr, scale=args.scale, tile=args.mem_tile, overlap=LATENT_OVERLAP)
    sync(device)
    result = {"seconds": time.perf_counter() - start, "rss_before": before, "peak_rss": peak_rss_mib(),
              "out": list(out.shape[-2:])}
    if device.type == "cuda":
        result["cuda_peak"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    print("RESULT " + json.dumps(result))


def run_memory_case(args, lr_size: int, tile: int) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device,
           "--scale", str(args.scale), "--mem-lr", str(lr_size), "--mem-tile", str(tile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory case failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="32->128 px timing, 256/512 px memory")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--mem-lr", type=int, default=0, help=argparse.SUPPRESS)     # child process
    parser.add_argument("--mem-tile", type=int, default=LATENT_TILE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mem_lr:
        return memory_case(args)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lr_size = 32 if args.quick else 128
    out_size = lr_size * args.scale
    mem_outputs = (256, 512) if args.quick else (512, 1024)

    model = build_model()
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, fp32, "
          f"random medium SD-1.x-like model (epsilon)")
    print(f"UNet parameters:         {count(model.unet):>12,}   block_out_channels "
          f"{tuple(model.unet.config.block_out_channels)}, layers_per_block 1")
    print(f"VAE parameters:          {count(model.vae):>12,}   block_out_channels "
          f"{tuple(model.vae.config.block_out_channels)}")
    print(f"text encoder parameters: {count(model.text_encoder):>12,}   hidden 256, 4 layers")
    engine = SDOneStepSR(model, device=device)
    lr = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():   # per-call times of the parts
        engine.text_embedding("")
        ref = bicubic_to(lr, (out_size, out_size))
        latent = engine.encode(ref)
        context = engine.text_embedding("").to(device)
        t = torch.tensor([999], device=device)
        parts = {}
        for name, fn in (("VAE encode", lambda: engine.encode(ref)),
                         ("UNet call", lambda: model.unet(latent, t, encoder_hidden_states=context).sample),
                         ("VAE decode", lambda: engine.decode(latent))):
            fn()
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            parts[name] = time.perf_counter() - start
    print(f"parts at {out_size}x{out_size} output (latent {latent.shape[-1]}x{latent.shape[-2]}, one call each): "
          + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items()))

    one = lambda: engine.upscale_tensor(lr, scale=args.scale)          # noqa: E731
    multi = lambda: img2img_ddim(engine, lr, args.scale, args.steps)   # noqa: E731
    one()  # warm-up
    times = {"one": [], "multi": []}
    for _ in range(args.repeats):
        for key, fn in (("multi", multi), ("one", one)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    print()
    print(f"end to end, {lr_size}x{lr_size} LR -> {out_size}x{out_size}, alternating, n={args.repeats} each")
    med = {}
    for key, label in (("one", "one-step SDOneStepSR.upscale_tensor"),
                       ("multi", f"{args.steps}-step DDIM img2img (strength 1)")):
        med[key] = statistics.median(times[key])
        print(f"  {label:<40} median {med[key]:8.3f} s   min {min(times[key]):8.3f} s")
    print(f"  ratio {args.steps}-step / one-step: medians {med['multi'] / med['one']:.1f}x, "
          f"minimums {min(times['multi']) / min(times['one']):.1f}x")

    if args.no_memory:
        return
    print()
    print(f"peak memory of one upscale_tensor call, fresh subprocess per case "
          f"(latent tile {LATENT_TILE} / overlap {LATENT_OVERLAP}; 'untiled' = one UNet call)")
    header = f"  {'output':<10} {'UNet tiles':<11} {'RSS after build':>16} {'peak RSS':>10} {'increase':>10} {'time':>9}"
    if device.type == "cuda":
        header += f" {'CUDA peak':>11}"
    print(header)
    cases = [(size, LATENT_TILE) for size in mem_outputs] + [(mem_outputs[-1], UNTILED)]
    for size, tile in cases:
        r = run_memory_case(args, size // args.scale, tile)
        label = "untiled" if tile == UNTILED else f"{tile}/{LATENT_OVERLAP}"
        line = (f"  {f'{size}x{size}':<10} {label:<11} {r['rss_before']:>12.0f} MiB {r['peak_rss']:>6.0f} MiB "
                f"{r['peak_rss'] - r['rss_before']:>6.0f} MiB {r['seconds']:>7.1f} s")
        if "cuda_peak" in r:
            line += f" {r['cuda_peak']:>7.0f} MiB"
        print(line, flush=True)


if __name__ == "__main__":
    main()
