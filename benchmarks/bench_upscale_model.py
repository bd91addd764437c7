"""A OneStep model as an UPSCALE_MODEL: "Upscale Image (using Model)" vs one OneStep Upscale call.

The bundled default model's file is loaded by the stock "Load Upscale Model" (spandrel) and run by
"Upscale Image (using Model)" (ComfyUI's tiled_scale: 512-pixel tiles, 32 overlap, linear feather),
alternating with the OneStep Upscale node at the same settings (seed 12345, wavelet, tile 256 /
overlap 32, strength 0, tileable noise), which upscales the whole image in one call. Both against the
fakes of the tests (tests/comfy_fake: spandrel's contract and ComfyUI 0.3.64's two stock nodes, whose
tiling copies ComfyUI's), so the figures are the model's work, not ComfyUI's executor. Prints s per
output megapixel of each, their ratio, and how far the tiled result is from the one-call result
(the seam error of ComfyUI's outer tiling), also with the official whole-image noise for contrast, and
how far the node's own 256-pixel tiles are from one tile (the model's own tiling error).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_upscale_model.py [--sizes 256x192 1024x768] [--repeats 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import comfy_pack  # noqa: E402
from onestep_sr.model import BUNDLED_MODELS  # noqa: E402

SETTINGS = dict(steps=1, seed=12345, tile=256, overlap=32, color_fix="wavelet", scale=4.0, auto_strength=False,
                strength=0.0)


def photo_like(w: int, h: int, seed: int = 0) -> torch.Tensor:
    """A smooth random field plus edges and grain (an IMAGE, 1 x H x W x 3 in [0, 1])."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, max(2, h // 32), max(2, w // 32)), dtype=np.float32))
    base = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    y, x = np.mgrid[0:h, 0:w]
    edges = torch.from_numpy(((x // 24 + y // 24) % 2).astype(np.float32))[None, None] * 0.2
    grain = torch.from_numpy(rng.normal(0, 0.03, (1, 3, h, w)).astype(np.float32))
    return (base * 0.8 + edges + grain).clamp(0, 1).movedim(1, -1)


def difference(a: torch.Tensor, b: torch.Tensor) -> str:
    d = (a - b).abs()
    return (f"max {float(d.max()):.4f}, mean {float(d.mean()):.5f}, "
            f"{100 * float((d.amax(-1) > 1 / 255).float().mean()):.2f}% of pixels over 1/255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["256x192", "1024x768"], help="LR sizes WxH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundled = BUNDLED_MODELS["onestep_default"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models" / "upscale_models").mkdir(parents=True)
        shutil.copy(bundled, Path(tmp) / "models" / "upscale_models" / bundled.name)
        _, nodes = comfy_pack.load_pack(Path(tmp))
        try:
            from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel, UpscaleModelLoader

            (upscale_model,) = UpscaleModelLoader.execute(bundled.name).args
            (model,) = comfy_pack.run_node(nodes["OneStepSR_LoadModel"], model_name="onestep_default (bundled)")
            print(f"OneStep model as UPSCALE_MODEL vs OneStep Upscale: bundled default ({bundled.name}), x4, CPU, "
                  f"{args.threads} threads, fp32, torch {torch.__version__}; {args.repeats} round(s) after a warm-up")
            print(f"{'LR input':>10} {'output':>10} {'tiles':>5} {'stock s':>8} {'node s':>8} {'stock s/MP':>10} "
                  f"{'node s/MP':>9} {'ratio':>6}")
            for size in args.sizes:
                w, h = (int(v) for v in size.split("x"))
                image = photo_like(w, h)

                def stock() -> torch.Tensor:
                    return ImageUpscaleWithModel.execute(upscale_model, image).args[0]

                def node(noise: str = "tileable", tile: int = SETTINGS["tile"]) -> torch.Tensor:
                    return comfy_pack.run_node(nodes["OneStepSR_Upscale"], model=model, image=image, noise=noise,
                                               **{**SETTINGS, "tile": tile})[0]

                times = {"stock": [], "node": []}
                outputs = {"stock": stock(), "node": node()}  # warm-up
                for _ in range(args.repeats):
                    for name, run in (("stock", stock), ("node", node)):
                        started = time.perf_counter()
                        outputs[name] = run()
                        times[name].append(time.perf_counter() - started)
                mp = 16 * w * h / 1e6
                tiles = len(range(0, h - 32, 480) if h > 512 else [0]) * len(range(0, w - 32, 480) if w > 512 else [0])
                s, n = statistics.median(times["stock"]), statistics.median(times["node"])
                print(f"{size:>10} {f'{4 * w}x{4 * h}':>10} {tiles:>5} {s:8.2f} {n:8.2f} {s / mp:10.2f} {n / mp:9.2f} "
                      f"{s / n:6.2f}")
                assert outputs["stock"].shape == outputs["node"].shape == (1, 4 * h, 4 * w, 3)
                print(f"{'':>10} stock vs one call: {difference(outputs['stock'], outputs['node'])}")
                if tiles > 1:
                    print(f"{'':>10} stock vs one call with the official noise: "
                          f"{difference(outputs['stock'], node('official'))}")
                    whole = -(-max(w, h) // 64) * 64  # one denoiser tile: the model's own tiling left out
                    print(f"{'':>10} the node's own 256-pixel tiles vs one tile: "
                          f"{difference(outputs['node'], node(tile=whole))}")
        finally:
            comfy_pack.unload_pack()


if __name__ == "__main__":
    main()
