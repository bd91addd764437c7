"""The web app's cost over the bare engine, and a large photo through it.

1. Overhead: the same model and image through ``OneStepSR.upscale`` (bare engine), the app's
   service (``AppService.upscale_files``: reading the upload, the upscale, writing the PNG and the
   comparison images) and the whole page over HTTP on loopback (``gradio_client``: upload, queue,
   the service, download of the result), alternating, ``--repeats`` each after one warm-up. Twice:
   with the released SinSR/VQ-f4 sizes (random weights saved in the official layout under SinSR
   v1's file names: a call costs what a real one does) and with a tiny model of the same layout
   (the network costs almost nothing, so the app's own seconds show).
2. Large photo: a ``--large`` input (default 1000x750, a 4000x3000 result) through the bare engine
   and through the service, each in its own process for its peak RSS, with a small pixel-space
   model (the kind ``training/`` exports) so the image, not the network, dominates.

All figures from one run.

    python benchmarks/bench_app.py [--size 64x48] [--repeats 3] [--large 1000x750] [--threads 2]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from onestep_sr.app.service import AppService, Settings  # noqa: E402


def size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def write_input(path: Path, wh: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)).save(path)
    return path


def memory_mib(field: str) -> float:
    """VmHWM (peak) or VmRSS of this process from /proc (the peak starts afresh at exec, unlike
    ru_maxrss, which a child inherits from its parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def official_models(folder: Path) -> None:
    from onestep_sr.models import build_official_autoencoder, build_official_denoiser

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_official_denoiser("cpu").state_dict(), folder / "SinSR_v1.pth")
    torch.save(build_official_autoencoder("cpu").state_dict(), folder / "autoencoder_vq_f4.pth")


def overhead(args, work: Path, kind: str) -> None:
    from gradio_client import Client, handle_file

    import webui_fake
    from onestep_sr import load_model
    from onestep_sr.app import add_arguments, launch

    work = work / kind
    models = work / "models"
    official_models(models) if kind == "full" else webui_fake.tiny_models(models)
    image = write_input(work / "photo.png", args.size)
    engine = load_model({"denoiser": models / "SinSR_v1.pth", "autoencoder": models / "autoencoder_vq_f4.pth"},
                        device="cpu", dtype="fp32")
    service = AppService(folders=[models], output_dir=work / "out", device="cpu", dtype="fp32")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    demo, url = launch(parser.parse_args(["--models-dir", str(models), "--output-dir", str(work / "out_http"),
                                          "--port", str(args.port), "--device", "cpu",
                                          "--dtype", "fp32"]), block=False)
    client = Client(url, verbose=False)
    settings = Settings(seed=1)

    def run_engine():
        return engine.upscale(Image.open(image), seed=1)

    def run_service():
        [result] = service.upscale_files([image], "registry:sinsr_v1", settings)
        return Image.open(result.output)

    def run_http():
        gallery, downloads, *_ = client.predict([handle_file(str(image))], "registry:sinsr_v1", "1", 1, 256, "none",
                                                4, api_name="/on_run")
        return Image.open(downloads[0])

    runs = {"engine": run_engine, "service": run_service, "http": run_http}
    outputs = {name: np.asarray(run()) for name, run in runs.items()}        # warm-up (model loads)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    demo.close()
    med = {name: statistics.median(t) for name, t in times.items()}
    w, h = args.size
    what = "SinSR/VQ-f4 full size" if kind == "full" else "a tiny model of the same layout"
    print(f"overhead: {w}x{h} -> {4 * w}x{4 * h}, {what} (random weights), one step, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name in runs:
        same = int(np.abs(outputs[name].astype(int) - outputs["engine"].astype(int)).max())
        print(f"  {name:8s} {med[name]:7.3f} s  ({', '.join(f'{t:.3f}' for t in times[name])})  "
              f"max pixel difference to the engine {same}")
    for name in ("service", "http"):
        print(f"  {name} overhead: +{med[name] - med['engine']:.3f} s ({med[name] / med['engine']:.3f}x the engine)")


def large_child(kind: str, work: Path, wh: tuple[int, int]) -> None:
    """One measurement in this (fresh) process: prints a JSON line."""
    from onestep_sr import load_model
    from test_app import bundled_stand_in

    model_path = work / "pixel_model.safetensors"
    if not model_path.exists():
        bundled_stand_in(model_path)
    image = work / "large.png"
    if not image.exists():
        write_input(image, wh)
    base = memory_mib("VmRSS")
    start = time.perf_counter()
    if kind == "engine":
        out = load_model(str(model_path), device="cpu", dtype="fp32").upscale(Image.open(image), seed=1)
        out_size = out.size
    else:
        from onestep_sr import model as engine_model

        engine_model.BUNDLED_MODELS["onestep_default"] = model_path
        service = AppService(folders=[work / "models"], output_dir=work / "out_large", device="cpu", dtype="fp32")
        [result] = service.upscale_files([image], "bundled:onestep_default", Settings(seed=1))
        out_size = result.size
    seconds = time.perf_counter() - start
    peak = memory_mib("VmHWM")
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_mib": peak, "rise_mib": peak - base, "size": out_size}))


def large(args, work: Path) -> None:
    w, h = args.large
    found = {}
    for kind in ("engine", "service", "engine", "service"):     # alternating; the second of each counts
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), "--large", f"{w}x{h}",
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        found[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    e, s = found["engine"], found["service"]
    print(f"large photo: {w}x{h} -> {s['size'][0]}x{s['size'][1]}, small pixel-space model (random weights), "
          f"each in a fresh process")
    for r in (e, s):
        print(f"  {r['kind']:8s} {r['seconds']:7.2f} s   peak RSS {r['peak_mib']:7.0f} MiB "
              f"(+{r['rise_mib']:.0f} MiB over the process before the upscale)")
    print(f"  service / engine: {s['seconds'] / e['seconds']:.2f}x time, +{s['rise_mib'] - e['rise_mib']:.0f} MiB "
          f"(the PNG, the thumbnail and the comparison crops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=size, default=(64, 48))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", type=size, default=(1000, 750))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=7877)
    parser.add_argument("--child", choices=["engine", "service"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["ONESTEP_SR_OFFLINE"] = "1"
    if args.child:
        large_child(args.child, args.work, args.large)
        return
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        work = Path(tmp)
        overhead(args, work, "full")
        overhead(args, work, "tiny")
        large(args, work)


if __name__ == "__main__":
    main()
