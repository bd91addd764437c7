"""How long a cancel takes to stop ``OneStepSR.upscale`` with the full-size networks on a CPU.

Builds the released architectures (denoiser 118.6 M, VQ-f4 55.3 M parameters) with random weights,
starts an upscale of a synthetic photo-like image in a thread, requests a cancel at random moments
(the same moments in both modes) through the progress callback, as the hosts do (ComfyUI's
interrupt, A1111's ``state.interrupted``, the web app's Cancel button), and prints the time from
the request to the moment ``upscale`` has raised.

- ``before``: the callback is only called between network calls on tiles (the engine before the
  cancel points; emulated with an infinite check interval, the computation is the same);
- ``after``: it is also called from inside the networks (``onestep_sr.models.cancel``).

    python benchmarks/bench_cancel.py [--size 64] [--trials 3] [--window 30] [--at 5,20]
        [--modes before,after] [--vq-tile 128] [--threads 2] [--seed 0]

``--size``: LR side (64: one 64-pixel VQ tile, 256 px, about 15 s per VQ call on 2 cores; 128: one
128-pixel tile as in the issue, about a minute per VQ call). ``--window``: the random moments are
drawn in [1, window] seconds after the start; ``--at``: fixed moments instead. A moment after the
upscale has finished is reported as such.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import synthetic_image  # noqa: E402
from onestep_sr.model import OneStepSR  # noqa: E402
from onestep_sr.models import build_official_autoencoder, build_official_denoiser, cancel  # noqa: E402
from onestep_sr.pipeline import tile_counts  # noqa: E402


class Cancelled(Exception):
    pass


def stage_of(done: int, vq_tiles: int, den_calls: int) -> str:
    if done < vq_tiles:
        return "VQ encode"
    return "denoiser" if done < vq_tiles + den_calls else "VQ decode"


def trial(model: OneStepSR, image, options: dict, delay: float, vq_tiles: int, den_calls: int) -> dict:
    """Start an upscale, request a cancel after ``delay`` s; the latency from request to stop."""
    request = threading.Event()
    state = {"done": 0, "stopped": None, "error": None, "finished": False}

    def progress(done: int, total: int) -> None:
        state["done"] = done
        if request.is_set():
            raise Cancelled

    def work() -> None:
        try:
            model.upscale(image, progress=progress, **options)
            state["finished"] = True
        except Cancelled:
            state["stopped"] = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - reported, not hidden
            state["error"] = exc

    thread = threading.Thread(target=work)
    start = time.perf_counter()
    thread.start()
    thread.join(delay)
    if not thread.is_alive():
        if state["error"]:
            raise state["error"]
        return dict(delay=delay, finished=True, seconds=time.perf_counter() - start)
    stage = stage_of(state["done"], vq_tiles, den_calls)
    requested = time.perf_counter()
    request.set()
    thread.join()
    if state["error"]:
        raise state["error"]
    if state["finished"]:  # it ended before looking at the request
        return dict(delay=delay, stage=stage, latency=time.perf_counter() - requested, finished=True)
    return dict(delay=delay, stage=stage, latency=state["stopped"] - requested, finished=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--at", default="", help="comma-separated moments in seconds (instead of random ones)")
    parser.add_argument("--modes", default="before,after")
    parser.add_argument("--vq-tile", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    torch.manual_seed(0)
    model = OneStepSR(build_official_denoiser("cpu").eval(), build_official_autoencoder("cpu").eval())
    print(f"full-size random models built in {time.perf_counter() - start:.1f} s; {args.threads} threads, "
          f"LR {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}", flush=True)
    image = synthetic_image(args.size)
    options = dict(steps=1) if args.vq_tile is None else dict(steps=1, vq_tile=args.vq_tile)
    tiling = model.plan(**options).tiling
    vq_tiles, den_tiles = tile_counts(image.shape[:2], tiling, model.denoiser.config.latent_multiple)
    print(f"VQ tile {tiling.vq_tile} (+{tiling.vq_halo} halo): {vq_tiles} VQ tiles, {den_tiles} denoiser tiles, "
          f"one step", flush=True)
    if args.at:
        delays = [float(d) for d in args.at.split(",")]
    else:
        rng = random.Random(args.seed)
        delays = sorted(round(rng.uniform(1.0, args.window), 1) for _ in range(args.trials))

    results: dict[str, list[dict]] = {}
    default_interval = cancel.CHECK_INTERVAL_S
    for mode in args.modes.split(","):
        cancel.CHECK_INTERVAL_S = math.inf if mode == "before" else default_interval
        results[mode] = []
        for delay in delays:
            r = trial(model, image, options, delay, vq_tiles, den_tiles)
            results[mode].append(r)
            if r.get("stage") is None:
                print(f"{mode:>6}: cancel at {delay:5.1f} s: the upscale had finished ({r['seconds']:.1f} s)", flush=True)
            else:
                note = "  (finished before stopping)" if r["finished"] else ""
                print(f"{mode:>6}: cancel at {delay:5.1f} s during {r['stage']:<9}: stopped {r['latency']:6.2f} s "
                      f"after the request{note}", flush=True)
    cancel.CHECK_INTERVAL_S = default_interval

    print("\nlatency from cancel request to stop (seconds):")
    for mode, rows in results.items():
        lat = [r["latency"] for r in rows if r.get("stage") is not None]
        if lat:
            print(f"{mode:>6}: median {statistics.median(lat):6.2f}   max {max(lat):6.2f}   "
                  f"({len(lat)} cancels: {', '.join(f'{x:.2f}' for x in lat)})")
    print(f"total benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
