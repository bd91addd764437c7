"""Still fast and small: the bundled default model against Real-ESRGAN x4plus (RRDBNet, random
weights: ``rrdbnet.py``), CPU time per output megapixel, and the default model's peak RSS for a
1024x768 -> 4096x3072 upscale, in one run.

- Timing (this process): ``onestep_sr.load_model()`` then ``.upscale(image)`` (uint8 RGB numpy in
  and out, default tiles) against a bare RRDBNet forward on the same image as a 1 x 3 x H x W float
  tensor (no tiling, no conversion timed: the case most favourable to RRDBNet). One warm-up call
  each, then ``--repeats`` rounds, interleaved (RRDBNet, default, RRDBNet, default, ...), so both
  see the same load on a shared CPU; the figures are medians and the speed ratio is the ratio of
  the medians of s per output MP. RRDBNet runs only on the ``--sizes`` inputs (a 1024x768 input
  would take about 20 min here); the ``--large`` input is timed for the default model alone and
  compared with RRDBNet's lowest s per output MP over ``--sizes`` (per-pixel cost of a fully
  convolutional net does not fall with size, so that is the conservative comparison).
- Strength: with the restoration-strength knob (both weight sets present:
  weights/onestep_default_x4_realworld.safetensors) the default model is timed at ``strength=0``
  and at ``strength="auto"`` (measures each image first; the interpolated weights are cached);
  without it, as it is (no ``strength`` argument).
- Memory: the ``--large`` upscale in a fresh subprocess per measurement (``ru_maxrss`` as its
  peak, as ``bench_memory.py`` does), at each strength timed.
- ``--full-sizes 512``: also the earlier comparison with full-size SinSR (random weights, square LR
  sides, ``bench_memory``'s child per run, stopped after ``--full-max-seconds`` and projected).
- ``--smoke``: tiny sizes, one round: checks the script end to end in seconds (tests use it).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_default_model.py [--sizes 128x128 256x192]
        [--large 1024x768] [--repeats 3] [--threads 2] [--full-sizes 512] [--full-max-seconds 300] [--smoke]

Sizes are LR width x height.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_memory import ROOT, current_rss_mib, peak_rss_mib, run_size, synthetic_image  # noqa: E402
from rrdbnet import X4PLUS, RRDBNet, macs_per_input_pixel, parameter_count  # noqa: E402

X4PLUS_PARAMETERS = 16_697_987  # Real-ESRGAN x4plus (16.70 M), also checked by tests/test_bench_default_model.py
RESTORATION = ROOT / "weights" / "onestep_default_x4_realworld.safetensors"
SCALE = 4


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (width 1024, height 768); ``"512"`` -> (512, 512)."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        w = h = 0
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1024x768")
    return w, h


def label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def image_of(size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8, photo-like (``bench_memory.synthetic_image``, cropped)."""
    w, h = size
    return np.ascontiguousarray(synthetic_image(max(w, h))[:h, :w])


def output_mp(size: tuple[int, int]) -> float:
    return size[0] * size[1] * SCALE * SCALE / 1e6


def load_default():
    """``onestep_sr.load_model()`` as a user calls it. An engine that already expects the knob's
    second weight set while weights/onestep_default_x4_realworld.safetensors does not exist yet is
    loaded without it (the clean weights alone: what such a model computes at strength 0)."""
    import onestep_sr
    from onestep_sr import model as engine

    try:
        return onestep_sr.load_model()
    except FileNotFoundError:
        pending = getattr(engine, "BUNDLED_RESTORATION", {})
        if RESTORATION.exists() or "onestep_default" not in pending:
            raise
        pending.pop("onestep_default")
        return onestep_sr.load_model()


def variants(model) -> list[tuple[str, dict]]:
    """The ``upscale`` keyword sets to time: strength 0 and auto with the knob, else none."""
    if getattr(model, "knob", None) is not None:
        return [("strength=0", {"strength": 0}), ("strength=auto", {"strength": "auto"})]
    return [("no knob", {})]


# --- peak RSS: one subprocess per measurement --------------------------------------------------


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = load_default()
    value = args.child_strength
    options = {} if value is None else {"strength": value if value == "auto" else float(value)}
    image = image_of(args.child)
    after_load = current_rss_mib()
    t0 = time.perf_counter()
    out = model.upscale(image, **options)
    seconds = time.perf_counter() - t0
    print("RESULT " + json.dumps(dict(out=list(out.shape), after_load_mib=after_load, peak_mib=peak_rss_mib(),
                                      seconds=seconds, strengths=getattr(model, "last_strengths", None))),
          flush=True)


def measure_rss(size: tuple[int, int], variant: str, options: dict, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", label(size), "--threads", str(threads)]
    if "strength" in options:
        cmd += ["--child-strength", str(options["strength"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"peak RSS child {label(size)} {variant} failed (exit {proc.returncode}):\n"
                 f"{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --- timing: interleaved in this process ---------------------------------------------------------


def timed(call) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def rrdb_call(net: torch.nn.Module, image: np.ndarray):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255)

    def run():
        with torch.inference_mode():
            y = net(x)
        assert y.shape[-2:] == (SCALE * x.shape[-2], SCALE * x.shape[-1]) and bool(torch.isfinite(y).all())
    return run


def default_call(model, image: np.ndarray, options: dict, chosen: dict, key: str):
    def run():
        out = model.upscale(image, **options)
        assert out.shape == (SCALE * image.shape[0], SCALE * image.shape[1], 3)
        chosen[key] = getattr(model, "last_strengths", [None])[0]
    return run


def full_size_sinsr(args: argparse.Namespace) -> None:
    """The earlier comparison: bundled default vs full-size SinSR, square LR, bench_memory children."""
    print()
    print("vs full-size SinSR (random weights), one bench_memory subprocess each, square LR")
    for size in args.full_sizes:
        rows = {}
        for arch, max_seconds in (("bundled", None), ("full", args.full_max_seconds)):
            child_args = argparse.Namespace(arch=arch, threads=args.threads, device="cpu", steps=1, tile=None,
                                            vq_tile=None, max_seconds=max_seconds)
            r = run_size(size, child_args)
            seconds = r["seconds"] if r["complete"] else r["seconds"] * r["calls"] / max(1, r["calls_done"])
            rows[arch] = dict(r, total_s=seconds, s_per_mp=seconds / (r["out"][0] * r["out"][1] / 1e6))
            note = "" if r["complete"] else f"  projected from {r['calls_done']}/{r['calls']} calls; peak >= shown"
            print(f"  {arch:8s} LR {size}x{size}: {seconds:9.1f} s, {rows[arch]['s_per_mp']:8.2f} s / out MP, "
                  f"peak RSS {r['peak_mib']:.0f} MiB{note}", flush=True)
        full, ours = rows["full"], rows["bundled"]
        print(f"  LR {size}: full-size SinSR / bundled: time {full['total_s'] / ours['total_s']:.0f}x, "
              f"peak RSS {full['peak_mib'] / ours['peak_mib']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None,
                        help="LR WxH timed for both models (default 128x128 256x192)")
    parser.add_argument("--large", type=parse_size, default=None,
                        help="LR WxH timed for the default model alone, and its peak RSS (default 1024x768)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-sizes", type=int, nargs="*", default=[], help="LR sides vs full-size SinSR (slow)")
    parser.add_argument("--full-max-seconds", type=float, default=300.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: seconds")
    parser.add_argument("--child", type=parse_size, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-strength", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    smoke = args.smoke
    sizes = args.sizes or ([(16, 16), (24, 16)] if smoke else [(128, 128), (256, 192)])
    large = args.large or ((32, 24) if smoke else (1024, 768))
    repeats = args.repeats or (1 if smoke else 3)
    torch.set_num_threads(args.threads)

    print(f"Still fast and small: bundled default model vs Real-ESRGAN x4plus (RRDBNet), x4, CPU, "
          f"{args.threads} threads, fp32, torch {torch.__version__}{', SMOKE sizes' if smoke else ''}")
    torch.manual_seed(0)
    net = RRDBNet(**X4PLUS).eval()
    count = sum(p.numel() for p in net.parameters())
    formula = parameter_count(**X4PLUS)
    if count != X4PLUS_PARAMETERS or formula != X4PLUS_PARAMETERS:
        sys.exit(f"RRDBNet x4plus has {count:,} parameters (formula {formula:,}), expected {X4PLUS_PARAMETERS:,}")
    print(f"RRDBNet x4plus, random weights: {count:,} parameters ({count / 1e6:.2f} M, = the formula), "
          f"{macs_per_input_pixel() / 1e6:.1f} M MAC per LR pixel")
    model = load_default()
    kinds = variants(model)
    den = sum(p.numel() for p in model.denoiser.parameters())
    ae = sum(p.numel() for p in model.autoencoder.parameters())
    knob = ("knob present: timed at strength=0 and strength=auto" if len(kinds) == 2 else
            "no strength knob (weights/onestep_default_x4_realworld.safetensors "
            f"{'present but not loaded' if RESTORATION.exists() else 'absent'}): timed as it is")
    print(f"bundled default ({model.name}): {den + ae:,} parameters (denoiser {den:,}, autoencoder {ae:,}); {knob}")

    # interleaved timing: one warm-up call each, then rounds of (RRDBNet, default...) per size
    images = {size: image_of(size) for size in [*sizes, large]}
    chosen: dict[str, float | None] = {}
    calls = []  # (model key, size, call)
    for size in [*sizes, large]:
        if size in sizes:
            calls.append(("rrdb", size, rrdb_call(net, images[size])))
        for name, options in kinds:
            calls.append((name, size, default_call(model, images[size], options, chosen, f"{name} {label(size)}")))
    warm = sizes[0]
    for key, size, call in calls:
        if size == warm:
            call()
    times: dict[tuple[str, tuple[int, int]], list[float]] = {}
    for _ in range(repeats):
        for key, size, call in calls:
            times.setdefault((key, size), []).append(timed(call))

    def s_per_mp(key: str, size: tuple[int, int]) -> float:
        return statistics.median(times[key, size]) / output_mp(size)

    names = {"rrdb": "Real-ESRGAN x4plus (RRDBNet)", **{k: f"default, {k}" for k, _ in kinds}}
    print(f"interleaved, {repeats} round(s) after one warm-up call each; default tiles; RRDBNet: bare forward")
    print(f"{'model':31s} {'LR input':>9} {'output':>10} {'out MP':>7} {'median s':>9} {'min s':>8} "
          f"{'s / out MP':>10}  auto chose")
    for (key, size), values in times.items():
        pick = chosen.get(f"{key} {label(size)}")
        note = f"  {pick:g}" if key == "strength=auto" and pick is not None else ""
        print(f"{names[key]:31s} {label(size):>9} {label((SCALE * size[0], SCALE * size[1])):>10} "
              f"{output_mp(size):7.3f} {statistics.median(values):9.2f} {min(values):8.2f} "
              f"{s_per_mp(key, size):10.2f}{note}")

    print("speed ratio, RRDBNet s per out MP / default s per out MP (ratio of medians; goal >= 20x):")
    ratios = []
    for size in sizes:
        parts = []
        for name, _ in kinds:
            ratios.append(s_per_mp("rrdb", size) / s_per_mp(name, size))
            parts.append(f"{name} {ratios[-1]:.1f}x")
        print(f"  LR {label(size)}: " + ", ".join(parts))
    best = min(sizes, key=lambda size: s_per_mp("rrdb", size))
    parts = []
    for name, _ in kinds:
        ratios.append(s_per_mp("rrdb", best) / s_per_mp(name, large))
        parts.append(f"{name} {ratios[-1]:.1f}x")
    print(f"  default at LR {label(large)} vs RRDBNet's lowest s / out MP (LR {label(best)}): " + ", ".join(parts))
    print(f"  lowest ratio {min(ratios):.1f}x: goal >= 20x {'MET' if min(ratios) >= 20 else 'NOT MET'}")

    print(f"peak RSS of the default model, LR {label(large)} -> {label((SCALE * large[0], SCALE * large[1]))}, "
          f"one fresh subprocess each (ru_maxrss):")
    for name, options in kinds:
        r = measure_rss(large, name, options, args.threads)
        pick = r["strengths"][0] if name == "strength=auto" and r.get("strengths") else None
        print(f"  {name:14s} peak RSS {r['peak_mib']:7.0f} MiB  (after load + input {r['after_load_mib']:.0f} MiB, "
              f"upscale {r['seconds']:.1f} s{f', auto chose {pick:g}' if pick is not None else ''})", flush=True)

    if args.full_sizes:
        full_size_sinsr(args)


if __name__ == "__main__":
    main()
