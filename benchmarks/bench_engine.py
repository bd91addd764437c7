"""Engine speed and memory on the FULL-size released architectures (random init, fp32).

Prints parameter counts, per-call times of the denoiser (latent 64^2 and 128^2) and of VQ
encode/decode at 256 px, the end-to-end time of one-step vs 15-step deterministic SR at 256 px
output (ratio; goal <= 0.47, FLOP ideal 0.44), and peak RSS. All figures come from this one run.

    python benchmarks/bench_engine.py [--threads 2] [--repeats 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onestep_sr.models import build_official_autoencoder, build_official_denoiser  # noqa: E402
from onestep_sr.pipeline import super_resolve  # noqa: E402
from onestep_sr.schedule import SCHEDULE_T15  # noqa: E402

# FLOPs per 256 px output from the spec (section 9): encode + decode fixed, denoiser per call
FLOP_VQ, FLOP_DENOISER = 0.345 + 0.671, 0.101


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> float:
    med = statistics.median(times)
    print(f"{name:<42} min {min(times):8.3f} s   median {med:8.3f} s   (n={len(times)})")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    denoiser = build_official_denoiser(device).eval()
    vq = build_official_autoencoder(device).eval()
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, fp32")
    print(f"denoiser parameters: {sum(p.numel() for p in denoiser.parameters()):,}")
    print(f"autoencoder parameters: {sum(p.numel() for p in vq.parameters()):,}")
    print(f"RSS after building both: {peak_rss_gib():.2f} GiB")

    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        for size in (64, 128):
            x = torch.randn(1, 3, size, size, generator=g).to(device)
            lq = torch.randn(1, 3, size, size, generator=g).to(device)
            t = torch.tensor([14], device=device)
            denoiser(x, t, lq)  # warm-up
            report(f"denoiser forward, latent {size}x{size}", timed(lambda: denoiser(x, t, lq), args.repeats, device))
        image = torch.rand(1, 3, 256, 256, generator=g).to(device) * 2 - 1
        latent = vq.encode(image)
        report("VQ encode 256 px", timed(lambda: vq.encode(image), args.repeats, device))
        report("VQ decode 256 px (with quantisation)", timed(lambda: vq.decode(latent), args.repeats, device))

        lq = torch.rand(1, 3, 64, 64, generator=g).to(device) * 2 - 1
        noise = torch.randn(1, 3, 64, 64, generator=g).to(device)

        def one_step():
            super_resolve(lq, denoiser, vq, SCHEDULE_T15, noise, "one_step")

        def fifteen_steps():
            super_resolve(lq, denoiser, vq, SCHEDULE_T15, noise, "deterministic")

        t1 = report("end to end, one-step, 256 px output", timed(one_step, args.repeats, device))
        t15 = report("end to end, 15-step deterministic, 256 px", timed(fifteen_steps, 1, device))
    ideal = (FLOP_VQ + FLOP_DENOISER) / (FLOP_VQ + 15 * FLOP_DENOISER)
    print(f"ratio one-step / 15-step: {t1 / t15:.3f}   (goal <= 0.47, FLOP ideal {ideal:.2f})")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
