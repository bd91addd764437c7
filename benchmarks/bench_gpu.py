"""One command for the day a GPU is lent: speed, peak GPU memory and fp16-vs-fp32 differences of
the three inference paths, written to one JSON file, in under 5 minutes on one CUDA device.

    python benchmarks/bench_gpu.py --out runs/bench_gpu.json     # on a CUDA machine, no network needed
    python benchmarks/bench_gpu.py --smoke                       # anywhere: tiny networks, seconds (CI)

Cases (random weights: nothing is downloaded; the architectures are the released ones):

* ``sinsr``: the full-size SinSR / ResShift architecture (Swin-UNet denoiser 118.6 M + VQ-f4
  autoencoder 55.3 M parameters, the official layout) on a 128 x 128 LR -> 512 x 512 output,
  one step and the 15-step stochastic sampler, fp32 and fp16;
* ``bundled``: the bundled default model (weights/onestep_default_x4.safetensors) on a
  1024 x 768 LR -> 4096 x 3072 output, fp32 and fp16;
* ``sd``: the SD one-step path (``SDOneStepSR``) with a full-size SD 1.5 UNet / VAE / text encoder
  built from the shipped configs (weights/configs/sd1), 512 x 512 -> 2048 x 2048, fp32 and fp16.

Per case and precision: seconds (median of --repeats after one warm-up), peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each case) and, for fp16, the max / mean
absolute difference and PSNR against the fp32 output of the same input. A case that runs past
--budget seconds in total is skipped (named in the JSON), so the whole command stays bounded.

What to carry to an offline GPU machine: this repository (with weights/), a Python environment with
torch (CUDA), diffusers, transformers, safetensors, numpy and pillow; then the one command above.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"sinsr": (128, 128), "bundled": (768, 1024), "sd": (512, 512)}  # LR (h, w)
SMOKE_SIZES = {"sinsr": (16, 16), "bundled": (12, 16), "sd": (16, 16)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lr_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """1 x 3 x h x w in [0, 1]: smooth waves + noise."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    base = torch.stack([0.5 + 0.3 * torch.sin(x / 9 + y / 13), 0.5 + 0.3 * torch.cos(x / 7 - y / 11),
                        (x + y) / (h + w)])
    return (base + 0.05 * torch.randn(3, h, w, generator=g)).clamp(0, 1)[None]


# --- the three models --------------------------------------------------------------------------------


def sinsr_model(smoke: bool, device: torch.device):
    from onestep_sr.model import OneStepSR
    from onestep_sr.models import OFFICIAL_AUTOENCODER, OFFICIAL_DENOISER, build_autoencoder, build_denoiser

    denoiser_config, autoencoder_config = OFFICIAL_DENOISER, OFFICIAL_AUTOENCODER
    if smoke:  # the same layout, narrow
        denoiser_config = replace(OFFICIAL_DENOISER, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                                  attention_resolutions=(32,), swin_embed_dim=32, num_head_channels=16)
        autoencoder_config = replace(OFFICIAL_AUTOENCODER, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, n_embed=64)
    torch.manual_seed(0)
    return OneStepSR(build_denoiser(denoiser_config).eval(), build_autoencoder(autoencoder_config).eval()).to(device)


def bundled_model(smoke: bool, device: torch.device):
    from onestep_sr import load_model

    return load_model("onestep_default", device=device, dtype="fp32", offline=True)


def sd_configs(smoke: bool) -> dict:
    from onestep_sr.sd.checkpoint import config_dir_for, read_configs

    configs = read_configs(config_dir_for("sd1", "epsilon"))
    if smoke:
        configs["unet"] = {**configs["unet"], "block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32,
                           "attention_head_dim": 8, "layers_per_block": 1}
        configs["vae"] = {**configs["vae"], "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 8,
                          "layers_per_block": 1}
        configs["text_encoder"] = {**configs["text_encoder"], "hidden_size": 32, "intermediate_size": 37,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 16}
    return configs


def sd_model(smoke: bool):
    """An SD 1.5 model (UNet, VAE, text encoder) with random weights from the shipped configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from onestep_sr.sd.checkpoint import SDModel, _clip_config

    configs = sd_configs(smoke)
    torch.manual_seed(0)
    nets = [UNet2DConditionModel.from_config(configs["unet"]), AutoencoderKL.from_config(configs["vae"]),
            CLIPTextModel(_clip_config(configs["text_encoder"]))]
    for net in nets:
        net.eval().requires_grad_(False)
    return SDModel(*nets, family="sd1", prediction_type="epsilon", prompt=configs["prompt"], source="random SD 1.5")


# --- measuring ---------------------------------------------------------------------------------------


def timed(fn, device: torch.device, repeats: int) -> tuple[torch.Tensor, list[float], int | None]:
    """(output, seconds of each timed repeat after one warm-up, peak GPU bytes)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    out = fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out.detach().float().cpu(), times, peak


def difference(half: torch.Tensor, full: torch.Tensor) -> dict:
    d = (half - full).abs()
    mse = float(d.pow(2).mean())
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "psnr_db": float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()}


def run_case(name: str, smoke: bool, device: torch.device, repeats: int) -> dict:
    h, w = (SMOKE_SIZES if smoke else SIZES)[name]
    lr = lr_image(h, w)
    variants, result = {}, {"lr": [w, h], "variants": {}}
    if name in ("sinsr", "bundled"):
        model = (sinsr_model if name == "sinsr" else bundled_model)(smoke, device)
        result["parameters"] = sum(p.numel() for net in (model.denoiser, model.autoencoder) for p in net.parameters())
        steps = [1, 15] if name == "sinsr" else [None]
        for dtype in ("fp32", "fp16"):
            model.to(dtype=dtype)
            for n in steps:
                options = {"steps": n, "stochastic": True} if n == 15 else {"steps": n} if n else {}
                key = f"{dtype}" + (f"_{n}step" if n else "")
                variants[key] = lambda options=options, dtype=dtype: model.upscale(lr, seed=0, **options)
                out, times, peak = timed(variants[key], device, repeats)
                result["variants"][key] = {"seconds": statistics.median(times), "all_seconds": times,
                                           "peak_gpu_bytes": peak, "output": list(out.shape[-2:])[::-1]}
                result.setdefault("_outputs", {})[key] = out
    else:
        from onestep_sr.sd.onestep import SDOneStepSR

        model = sd_model(smoke)
        result["parameters"] = sum(p.numel() for net in (model.unet, model.vae) for p in net.parameters())
        for dtype in (torch.float32, torch.float16):
            key = "fp32" if dtype == torch.float32 else "fp16"
            engine = SDOneStepSR(model, device=device, dtype=dtype)  # the fp16 engine casts the same weights
            out, times, peak = timed(lambda: engine.upscale_tensor(lr, scale=4, seed=0, color_fix="none"), device, repeats)
            result["variants"][key] = {"seconds": statistics.median(times), "all_seconds": times,
                                       "peak_gpu_bytes": peak, "output": list(out.shape[-2:])[::-1]}
            result.setdefault("_outputs", {})[key] = out
    outputs = result.pop("_outputs")
    for key in list(outputs):
        if key.startswith("fp16"):
            result["variants"][key]["fp16_vs_fp32"] = difference(outputs[key], outputs["fp32" + key[4:]])
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_gpu.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny networks and images: a check in seconds")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu (then --smoke)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 3, smoke 1)")
    parser.add_argument("--budget", type=float, default=270.0, help="skip the cases left after this many seconds")
    parser.add_argument("--cases", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    smoke = args.smoke or device.type != "cuda"
    repeats = args.repeats or (1 if smoke else 3)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "smoke": smoke, "repeats": repeats, "cases": {}, "skipped": []}
    started = time.perf_counter()
    for name in args.cases:
        if time.perf_counter() - started > args.budget:
            report["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        report["cases"][name] = {**run_case(name, smoke, device, repeats), "case_seconds": time.perf_counter() - t0}
        for key, v in report["cases"][name]["variants"].items():
            peak = f", peak {v['peak_gpu_bytes'] / 2 ** 30:.2f} GiB" if v["peak_gpu_bytes"] is not None else ""
            diff = f", vs fp32 max {v['fp16_vs_fp32']['max_abs']:.3g}" if "fp16_vs_fp32" in v else ""
            print(f"{name:8} {key:11} {v['seconds']:8.3f} s -> {v['output'][0]}x{v['output'][1]}{peak}{diff}", flush=True)
    report["total_seconds"] = time.perf_counter() - started
    from onestep_sr.checkpoint import atomic_write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
