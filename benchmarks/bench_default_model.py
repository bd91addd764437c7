"""CPU time per output megapixel and peak RSS of the bundled default model, against the full-size
SinSR architecture (random weights: the released denoiser + VQ-f4), in one run.

Each (model, input size) runs in its own subprocess (``bench_memory``'s child: synthetic uint8 RGB
input, one-step upscale x4 at the default tiles, ``ru_maxrss`` as the peak). The full-size model
takes 10-20 min for a 512^2 input on 2 cores: ``--full-max-seconds`` stops it after that long and
projects its total time from the network calls done (its peak RSS is then a lower bound; the
figures say so).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_default_model.py [--sizes 512 1024]
        [--full-sizes 512] [--full-max-seconds 300] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import run_size  # noqa: E402


def measure(arch: str, size: int, args: argparse.Namespace, max_seconds: float | None) -> dict:
    child = argparse.Namespace(arch=arch, threads=args.threads, device="cpu", steps=1, tile=None, vq_tile=None,
                               max_seconds=max_seconds)
    r = run_size(size, child)
    seconds = r["seconds"] if r["complete"] else r["seconds"] * r["calls"] / max(1, r["calls_done"])
    megapixels = r["out"][0] * r["out"][1] / 1e6
    return {**r, "arch": arch, "total_s": seconds, "s_per_mp": seconds / megapixels, "megapixels": megapixels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="LR sides for the bundled model")
    parser.add_argument("--full-sizes", type=int, nargs="+", default=[512], help="LR sides for full-size SinSR")
    parser.add_argument("--full-max-seconds", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [measure("bundled", size, args, None) for size in args.sizes]
    rows += [measure("full", size, args, args.full_max_seconds) for size in args.full_sizes]
    print(f"one-step x4 upscale on the CPU, {args.threads} threads, fp32, default tiles, one subprocess each")
    print(f"{'model':32s} {'input':>9} {'output MP':>9} {'seconds':>9} {'s / out MP':>10} {'peak RSS MiB':>12}")
    names = {"bundled": "bundled default (onestep_default)", "full": "full-size SinSR (random weights)"}
    for r in rows:
        note = "" if r["complete"] else f"  projected from {r['calls_done']}/{r['calls']} calls; peak >= shown"
        print(f"{names[r['arch']]:32s} {r['size']:>4}x{r['size']:<4} {r['megapixels']:>9.2f} {r['total_s']:>9.1f} "
              f"{r['s_per_mp']:>10.2f} {r['peak_mib']:>12.0f}{note}")
    for size in args.full_sizes:
        full = next(r for r in rows if r["arch"] == "full" and r["size"] == size)
        ours = next((r for r in rows if r["arch"] == "bundled" and r["size"] == size), None)
        if ours:
            print(f"LR {size}: full-size SinSR / bundled: time {full['total_s'] / ours['total_s']:.0f}x, "
                  f"peak RSS {full['peak_mib'] / ours['peak_mib']:.1f}x")


if __name__ == "__main__":
    main()
