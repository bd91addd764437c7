"""The OneStep Upscale ComfyUI node vs the bare engine on the same image (goal: ratio <= 1.05).

The node is loaded and run the way ComfyUI does it (root __init__ -> comfy_entrypoint -> the
node's execute with a B x H x W x C IMAGE), against the small fake of ComfyUI in tests/comfy_fake:
the ratio measures the pack's adapter (layout conversion, progress/interrupt callbacks, the
ModelPatcher hand-off), not ComfyUI's own executor. Networks are the FULL-size released
architectures with random weights, saved in the official layout into a temporary models folder.
Runs alternate (node, engine, node, ...) so drift affects both alike. All figures from one run.

    python benchmarks/bench_nodes.py [--size 64] [--repeats 3] [--steps 1] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import comfy_pack  # noqa: E402
from onestep_sr import load_model  # noqa: E402
from onestep_sr.models import build_official_autoencoder, build_official_denoiser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="LR image side in pixels (output is 4x)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "models" / "onestep_sr"
        folder.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(build_official_denoiser().state_dict(), folder / "SinSR_v1.pth")
        torch.save(build_official_autoencoder().state_dict(), folder / "autoencoder_vq_f4.pth")
        _, nodes = comfy_pack.load_pack(Path(tmp))
        try:
            (node_model,) = comfy_pack.run_node(nodes["OneStepSR_LoadModel"], model_name="sinsr_v1 (auto-download)")
            engine = load_model((folder / "SinSR_v1.pth", folder / "autoencoder_vq_f4.pth"), device="cpu")
            image = torch.rand(args.batch, args.size, args.size, 3)
            options = dict(steps=args.steps, seed=1, tile=256, overlap=32, color_fix="wavelet", scale=4.0)
            engine_options = dict(options, stochastic=False)

            def node() -> torch.Tensor:
                return comfy_pack.run_node(nodes["OneStepSR_Upscale"], model=node_model, image=image, **options)[0]

            def bare() -> torch.Tensor:
                return engine.upscale(image.movedim(-1, 1), **engine_options).movedim(1, -1)

            same = torch.equal(node(), bare())  # also a warm-up of both
            times = {"node": [], "engine": []}
            for _ in range(args.repeats):
                for name, run in (("node", node), ("engine", bare)):
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        finally:
            comfy_pack.unload_pack()

    print(f"OneStep Upscale node vs bare engine: {args.batch} x {args.size}x{args.size} -> x4, steps {args.steps}, "
          f"full-size random networks, fp32, {args.threads} threads, CPU")
    for name, values in times.items():
        print(f"  {name:<7} median {statistics.median(values):7.3f} s   min {min(values):7.3f} s   (n={len(values)})")
    ratio = statistics.median(times["node"]) / statistics.median(times["engine"])
    best = min(times["node"]) / min(times["engine"])
    print(f"  ratio node / engine: medians {ratio:.3f}, minimums {best:.3f}   (goal <= 1.05)   "
          f"outputs identical: {same}")


if __name__ == "__main__":
    main()
