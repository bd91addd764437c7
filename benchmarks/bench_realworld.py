"""The default model on real-world LR kinds, at fixed restoration strengths and at ``auto``.

For every val image and LR kind (training/common/realworld.py: clean bicubic x1/4, JPEG q75,
Gaussian sigma 8 + JPEG q90, one fixed-seed Real-ESRGAN draw) it prints PSNR-Y (border 4, 8-bit
results) and the gain over bicubic of the same LR, at strengths 0, 0.25, 0.5, 0.75, 1 and auto,
the measures auto reads (noise sigma, blockiness) and the strength it chose, and the issue's goals.
With ``--draws N`` it also measures the Real-ESRGAN kind over N draws per image (seeds seed .. seed +
N - 1; the fixed draw of the goal is the first): one draw per image is a sample of a very wide
distribution, and the mean over several says more about what a user's degraded photos will get.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_realworld.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_realworld.py --restoration runs/default_model/restoration/model.safetensors
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_realworld.py --draws 10
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr import load_model  # noqa: E402
from onestep_sr.checkpoint import atomic_write_text  # noqa: E402
from onestep_sr.strength import auto_strength, measure  # noqa: E402
from training.common.evaluate import evaluate_folder, list_images, load_rgb  # noqa: E402
from training.common.realworld import DEGRADED_KINDS, LR_KINDS, lr_maker  # noqa: E402

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, "auto")
DRAW_STRENGTHS = (0.0, 0.5, 1.0, "auto")


def run(model_spec: str, restoration: str | None, val: str, seed: int) -> dict:
    model = load_model(model_spec, device="cpu", restoration=restoration)
    names = [p.name for p in list_images(val)]
    result: dict = {"names": names, "kinds": {}}
    for kind in LR_KINDS:
        # the LR images and what auto reads of them
        make = lr_maker(kind, seed)
        lrs = [make(load_rgb(p, 4), 4) for p in list_images(val)]
        measures = [measure(lr) for lr in lrs]
        chosen = [auto_strength(lr) for lr in lrs]
        rows = {}
        for strength in STRENGTHS:
            rows[str(strength)] = evaluate_folder(
                lambda lr, s=strength: model.upscale(lr, seed=seed, strength=s).clamp(0, 1), val,
                make_lr=lr_maker(kind, seed))
        result["kinds"][kind] = {"measures": measures, "auto": chosen, "rows": rows}
    return result


def run_draws(model_spec: str, restoration: str | None, val: str, seed: int, count: int) -> dict:
    """Gain over bicubic of every (draw, image) of the Real-ESRGAN kind, per strength of
    ``DRAW_STRENGTHS``: ``{strength: [[gain per image] per draw]}``."""
    model = load_model(model_spec, device="cpu", restoration=restoration)
    out: dict = {}
    for strength in DRAW_STRENGTHS:
        out[str(strength)] = [gains(evaluate_folder(
            lambda lr, s=strength: model.upscale(lr, seed=seed, strength=s).clamp(0, 1), val,
            make_lr=lr_maker("realesrgan", seed + draw))) for draw in range(count)]
    return out


def report_draws(names: list[str], draws: dict) -> list[str]:
    count = len(next(iter(draws.values())))
    lines = [f"Real-ESRGAN kind over {count} draws per image: mean gain over bicubic per image, "
             f"mean, draws below bicubic, worst and best draw",
             f"{'strength':>10s}" + "".join(f"{n:>16s}" for n in names) + f"{'mean':>8s}{'below':>8s}{'worst':>8s}{'best':>8s}"]
    for strength, per_draw in draws.items():
        flat = [g for row in per_draw for g in row]
        per_image = [sum(row[i] for row in per_draw) / count for i in range(len(names))]
        lines.append(f"{strength:>10s}" + "".join(f"{g:+16.2f}" for g in per_image)
                     + f"{sum(flat) / len(flat):+8.2f}{sum(g < 0 for g in flat):>4d}/{len(flat):<3d}"
                     + f"{min(flat):+8.2f}{max(flat):+8.2f}")
    return lines


def gains(rows: list[dict]) -> list[float]:
    return [r["psnr_y"] - r["bicubic_psnr_y"] for r in rows]


def report(result: dict) -> list[str]:
    names = result["names"]
    lines = [f"{'kind':15s}{'strength':>10s}" + "".join(f"{n:>22s}" for n in names) + f"{'mean gain':>11s}"]
    for kind, data in result["kinds"].items():
        first = next(iter(data["rows"].values()))
        lines.append(f"{kind:15s}{'bicubic':>10s}" + "".join(f"{r['bicubic_psnr_y']:22.2f}" for r in first))
        for strength, rows in data["rows"].items():
            g = gains(rows)
            cells = "".join(f"{r['psnr_y']:14.2f} ({x:+.2f})" for r, x in zip(rows, g))
            lines.append(f"{'':15s}{strength:>10s}{cells}{sum(g) / len(g):+11.2f}")
        lines.append(f"{'':15s}{'measures':>10s}" + "".join(
            f"{'sigma %.2f blk %.2f' % (m['noise'], m['blockiness']):>22s}" for m in data["measures"]))
        lines.append(f"{'':15s}{'auto chose':>10s}" + "".join(f"{s:22.2f}" for s in data["auto"]))
    return lines


def goals(result: dict) -> list[str]:
    out = []
    for kind, data in result["kinds"].items():
        g = gains(data["rows"]["auto"])
        need = 1.0 if kind == "clean" else 0.5
        mean = sum(g) / len(g)
        out.append(f"goal {kind}: auto mean gain {mean:+.2f} dB (>= +{need:.1f}), worst image {min(g):+.2f} dB (>= 0): "
                   + ("met" if mean >= need and min(g) >= 0 else "NOT met"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="onestep_default")
    parser.add_argument("--restoration", default=None, help="the restoration end (default: the bundled one)")
    parser.add_argument("--val", default=str(ROOT.parent / "shared" / "images" / "val"))
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--draws", type=int, default=1,
                        help="also measure the Real-ESRGAN kind over this many draws per image (1: only the fixed draw)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    if not Path(args.val).is_dir() or not list_images(args.val):
        parser.error(f"--val {args.val}: not a folder of images")
    started = time.perf_counter()
    result = run(args.model, args.restoration, args.val, args.seed)
    if args.draws > 1:
        result["draws"] = run_draws(args.model, args.restoration, args.val, args.seed, args.draws)
    result["seconds"] = time.perf_counter() - started
    print(f"model {args.model}, restoration end {args.restoration or 'bundled'}, val {args.val}, "
          f"{torch.get_num_threads()} threads; PSNR-Y dB (gain over bicubic of the same LR)")
    print("kinds: " + "; ".join(f"{k}: {d}" for k, (d, _) in LR_KINDS.items()))
    print("\n".join(report(result)))
    print("\n".join(goals(result)))
    if "draws" in result:
        print("\n".join(report_draws(result["names"], result["draws"])))
    print(f"degraded kinds: {', '.join(DEGRADED_KINDS)}; {result['seconds']:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
