"""End-to-end CLI time of one-step vs 15-step SR on the same image, and each run's peak RSS.

Writes random-init FULL-size weights of the released architectures once to a temp folder as
.safetensors (or, with ``--arch golden``, uses the reduced goldens as they are: a fast smoke run),
writes a synthetic LR PNG, then times ``python -m onestep_sr upscale`` in subprocesses with
``--steps 1`` and ``--steps 15`` (same image, same seed). Also times a child that only imports
the CLI and loads the weights, so the ratio can be read with and without start-up + loading.
Peak RSS is each child's own (``os.wait4``). All figures come from this one run.

    python benchmarks/bench_upscale.py [--arch full|golden] [--size 64] [--repeats 1]
        [--threads 2] [--device cpu]

``--threads`` sets OMP_NUM_THREADS/MKL_NUM_THREADS of the children; ``--device`` other than cpu
is passed to the CLI as ``--device`` (the loading child uses it too).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr.models import build_official_autoencoder, build_official_denoiser  # noqa: E402

GOLDENS = ROOT.parent / "shared" / "reference" / "goldens"
SEED = 12345
LOAD_ONLY = """
import sys, time
t0 = time.perf_counter()
import onestep_sr.cli
from onestep_sr.checkpoint import load_autoencoder, load_denoiser
t1 = time.perf_counter()
device = None if sys.argv[3] == "cpu" else sys.argv[3]
load_denoiser(sys.argv[1], device=device), load_autoencoder(sys.argv[2], device=device)
print(f"import {t1 - t0:.2f} s, weights {time.perf_counter() - t1:.2f} s")
"""


def save_random_weights(folder: Path) -> tuple[Path, Path]:
    """Random-init full-size denoiser and VQ as .safetensors with their config in the metadata."""
    torch.manual_seed(0)
    paths = []
    for name, build in (("denoiser", build_official_denoiser), ("autoencoder", build_official_autoencoder)):
        model = build().eval()
        tensors, storages = {}, set()
        for key, tensor in model.state_dict().items():
            tensor = tensor.detach().contiguous()
            if tensor.untyped_storage().data_ptr() in storages:  # safetensors refuses shared storage
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            tensors[key] = tensor
        path = folder / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"config": json.dumps(model.config.to_dict())})
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
              f"{path.stat().st_size / 2**20:.0f} MiB -> {path}")
        paths.append(path)
        del model, tensors
    return paths[0], paths[1]


def write_image(path: Path, size: int) -> None:
    """Smooth waves plus pixel noise, uint8 RGB."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    noise = np.random.default_rng(0).integers(-24, 25, size=(size, size, 3))
    smooth = np.stack([128 + 90 * np.sin(x / 7 + y / 11), 128 + 90 * np.cos(x / 5 - y / 9),
                       255 * (x + y) / (2 * size)], -1)
    Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(path)


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, the child's own peak RSS in MiB, its output); exits on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode:
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return wall, usage.ru_maxrss / 1024, output.strip()  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["full", "golden"], default="full")
    parser.add_argument("--size", type=int, default=64, help="LR side length (the output is 4x)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    print(f"torch {torch.__version__}, arch {args.arch}, device {args.device}, threads {args.threads}, "
          f"LR {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, seed {SEED}")

    with tempfile.TemporaryDirectory(prefix="bench_upscale_") as tmp:
        folder = Path(tmp)
        if args.arch == "golden":
            denoiser, autoencoder = GOLDENS / "unet.safetensors", GOLDENS / "vq.safetensors"
        else:
            denoiser, autoencoder = save_random_weights(folder)
        image = folder / "lr.png"
        write_image(image, args.size)

        load, rss, text = run_child([sys.executable, "-c", LOAD_ONLY, str(denoiser), str(autoencoder), args.device],
                                    env)
        print(f"{'start-up + import + load only':<34} {load:8.2f} s   peak RSS {rss:7.0f} MiB   ({text})")

        times: dict[int, list[float]] = {1: [], 15: []}
        for _ in range(args.repeats):
            for steps in (1, 15):
                cmd = [sys.executable, "-m", "onestep_sr", "upscale", str(image), "-o", str(folder / f"sr{steps}.png"),
                       "--denoiser", str(denoiser), "--autoencoder", str(autoencoder),
                       "--steps", str(steps), "--seed", str(SEED)]
                if args.device != "cpu":
                    cmd += ["--device", args.device]
                wall, rss, _ = run_child(cmd, env)
                times[steps].append(wall)
                print(f"{f'CLI upscale --steps {steps}':<34} {wall:8.2f} s   peak RSS {rss:7.0f} MiB", flush=True)

    t1, t15 = statistics.median(times[1]), statistics.median(times[15])
    print(f"ratio one-step / 15-step, end to end (medians): {t1 / t15:.3f}")
    if min(t1, t15) > load:
        print(f"ratio without start-up + loading ({load:.2f} s subtracted): {(t1 - load) / (t15 - load):.3f}")
    else:
        print("ratio without start-up + loading: n/a (a run took less than the loading child)")


if __name__ == "__main__":
    main()
