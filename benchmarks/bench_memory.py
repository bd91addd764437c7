"""Peak memory of ``OneStepSR.upscale`` (x4, one-step, default tiles) against the image size.

Each LR size runs in its own subprocess, so ``ru_maxrss`` is that size's peak. The child loads
the model, makes a synthetic smooth + textured uint8 RGB image, records its RSS, upscales, and
reports the output buffer (16*H*W*3 bytes for uint8), RSS after loading (model + input), peak RSS and time. The
parent prints a table, peak(largest)/peak(smallest) (goal <= 2.0 for 512 vs 2048 LR) and the
growth above the after-load RSS next to the output buffer size. All figures come from this run.

    python benchmarks/bench_memory.py [--sizes 512 2048] [--arch golden|full|stub|bundled] [--threads 2]
        [--device cpu] [--tile 256] [--vq-tile 128] [--steps 1] [--max-seconds S]

``--arch bundled``: the bundled default model (weights/onestep_default_x4.safetensors).
``--arch golden``: the reduced-width goldens (../shared/reference/goldens); ``--arch full``: the
released architectures with random weights (a 512^2 LR input takes 10-20 min on 2 CPU cores);
``--arch stub``: the goldens with the networks replaced by cheap stand-ins of the same shapes (VQ:
4x4 mean / nearest x4, denoiser: identity; the real codebook), which measures the engine's own
size-dependent memory (input copies, latents, blending bands, output buffer) at sizes where the
real networks would take hours; its "after load" excludes the networks' activations.
``--max-seconds``: stop a size's upscale after S seconds (its peak is then only a lower bound)
and print the projected total time from the network calls done.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr.model import OneStepSR, load_model  # noqa: E402
from onestep_sr.models import build_official_autoencoder, build_official_denoiser  # noqa: E402
from onestep_sr.pipeline import Tiling, tile_counts  # noqa: E402

GOLDENS = ROOT.parent / "shared" / "reference" / "goldens"
MIB = 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def synthetic_image(size: int, seed: int = 0, band: int = 256) -> np.ndarray:
    """size x size x 3 uint8: smooth gradients and waves plus pixel noise, made band by band in
    float32 so no full-size float copy exists."""
    rng = np.random.default_rng(seed)
    out = np.empty((size, size, 3), dtype=np.uint8)
    x = np.arange(size, dtype=np.float32)[None, :]
    for r0 in range(0, size, band):
        y = np.arange(r0, min(size, r0 + band), dtype=np.float32)[:, None]
        channels = (128 + 80 * np.sin(x / 37 + y / 53) + 30 * np.sin(x / 5.3) * np.cos(y / 7.1),
                    128 + 90 * np.cos(x / 23 - y / 41),
                    255 * (x + y) / (2 * size))
        for c, plane in enumerate(channels):
            noise = rng.integers(-24, 25, size=plane.shape, dtype=np.int16)
            out[r0:r0 + plane.shape[0], :, c] = np.clip(plane + noise, 0, 255).astype(np.uint8)
    return out


def build(arch: str, device: str) -> OneStepSR:
    if arch == "bundled":
        return load_model("onestep_default", device=device, dtype="fp32")
    if arch in ("golden", "stub"):
        model = load_model((GOLDENS / "unet.safetensors", GOLDENS / "vq.safetensors"), device=device, dtype="fp32")
        if arch == "stub":  # instance attributes shadow the methods / forward
            model.autoencoder.encode = lambda image: F.avg_pool2d(image, 4)
            model.autoencoder.decode = lambda z, quantize=True: F.interpolate(z, scale_factor=4, mode="nearest")
            model.denoiser.forward = lambda x, t, lq: x.clone()
        return model
    torch.manual_seed(0)
    return OneStepSR(build_official_denoiser(device).eval(), build_official_autoencoder(device).eval())


def tiling_of(model: OneStepSR, tile: int | None, vq_tile: int | None) -> Tiling:
    """The tiling ``upscale`` resolves from these arguments (as ``OneStepSR._job`` does)."""
    base, multiple = Tiling(), model.denoiser.config.latent_multiple
    tile = (base.tile if tile is None else tile) // multiple * multiple
    vq = base.vq_tile if vq_tile is None else vq_tile
    return Tiling(tile=tile, overlap=min(base.overlap, tile // 4), vq_tile=vq, vq_overlap=min(base.vq_overlap, vq // 4))


class Stop(Exception):
    pass


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    size = args.child
    start = time.perf_counter()
    model = build(args.arch, args.device)
    load_s = time.perf_counter() - start
    image = synthetic_image(size)
    after_load = current_rss_mib()
    tiling = tiling_of(model, args.tile, args.vq_tile)
    vq_tiles, den_tiles = tile_counts(image.shape[:2], tiling, model.denoiser.config.latent_multiple)
    state = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        state.update(done=done, total=total)
        if args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            raise Stop

    t0 = time.perf_counter()
    complete = True
    try:
        out = model.upscale(image, steps=args.steps, tile=args.tile, vq_tile=args.vq_tile, progress=progress)
        shape = out.shape
    except Stop:
        complete, shape = False, (4 * size, 4 * size, 3)
    seconds = time.perf_counter() - t0
    result = dict(size=size, out=list(shape), buffer_mib=16 * size * size * 3 / MIB, load_s=load_s,
                  after_load_mib=after_load, peak_mib=peak_rss_mib(), seconds=seconds, complete=complete,
                  vq_tiles=vq_tiles, den_tiles=den_tiles, calls_done=state["done"], calls=state["total"],
                  tiling=[tiling.tile, tiling.overlap, tiling.vq_tile, tiling.vq_overlap])
    print("RESULT " + json.dumps(result), flush=True)


def run_size(size: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), "--arch", args.arch, "--threads", str(args.threads),
           "--device", args.device, "--steps", str(args.steps)]
    for flag, value in (("--tile", args.tile), ("--vq-tile", args.vq_tile), ("--max-seconds", args.max_seconds)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"size {size} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="LR side lengths")
    parser.add_argument("--arch", choices=["golden", "full", "stub", "bundled"], default="golden")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=None, help="denoiser tile, LR px (default: the engine's)")
    parser.add_argument("--vq-tile", type=int, default=None, help="VQ tile, LR px (default: the engine's)")
    parser.add_argument("--steps", type=int, default=1, help="1 = one-step, 15 = full sampling")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop each upscale after this long")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return

    print(f"torch {torch.__version__}, arch {args.arch}, device {args.device}, threads {args.threads}, "
          f"steps {args.steps}, fp32, uint8 RGB input, one subprocess per size")
    results = []
    for size in args.sizes:
        r = run_size(size, args)
        results.append(r)
        tile, overlap, vq_tile, vq_overlap = r["tiling"]
        print(f"  LR {size}: tiles {tile}/{overlap} (denoiser), {vq_tile}/{vq_overlap} (VQ): {r['vq_tiles']} VQ "
              f"tiles x 2 (encode + decode) + {r['den_tiles']} denoiser tiles x {args.steps} step(s) "
              f"= {r['calls']} network calls; model load {r['load_s']:.1f} s", flush=True)
    print()
    print(f"{'LR':>6} {'output':>11} {'buffer MiB':>10} {'after load':>10} {'peak MiB':>9} "
          f"{'peak-load':>9} {'(p-l)/buf':>9} {'seconds':>9}")
    for r in results:
        grow = r["peak_mib"] - r["after_load_mib"]
        projected = r["seconds"] * r["calls"] / max(1, r["calls_done"])
        note = "" if r["complete"] else (f"  STOPPED after {r['calls_done']}/{r['calls']} calls, projected "
                                         f"{projected:.0f} s; peak is a lower bound")
        print(f"{r['size']:>6} {r['out'][1]:>5}x{r['out'][0]:<5} {r['buffer_mib']:>10.1f} {r['after_load_mib']:>10.1f} "
              f"{r['peak_mib']:>9.1f} {grow:>9.1f} {grow / r['buffer_mib']:>9.2f} {r['seconds']:>9.1f}{note}")
    small, large = min(results, key=lambda r: r["size"]), max(results, key=lambda r: r["size"])
    if large is not small:
        print(f"peak RSS ratio LR {large['size']} / LR {small['size']}: {large['peak_mib'] / small['peak_mib']:.2f} "
              f"(goal <= 2.0); output buffer ratio {large['buffer_mib'] / small['buffer_mib']:.0f}")
        growth = (large["peak_mib"] - large["after_load_mib"]) - (small["peak_mib"] - small["after_load_mib"])
        print(f"growth of (peak - after load) from LR {small['size']} to {large['size']}: {growth:.1f} MiB, "
              f"vs the output buffer growth {large['buffer_mib'] - small['buffer_mib']:.1f} MiB "
              f"({growth / (large['buffer_mib'] - small['buffer_mib']):.2f}x)")


if __name__ == "__main__":
    main()
