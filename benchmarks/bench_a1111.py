"""The A1111/Forge extension through a real webui's API: the one-step entry vs the same engine's
15-step entry on one image (ratio), and the webui's overhead vs the bare engine.

Starts the webui given by ``--webui`` / ``--python`` API-only on loopback with a throw-away data
dir (tests/webui_real.py) holding this checkout as an extension and FULL-size released
architectures with random weights saved in the official layout: the same file under SinSR v1's
name (entry ``OneStepSR 4x SinSR v1``: one step) and ResShift v1's (``OneStepSR 4x ResShift v1
(15 steps)``: 15 stochastic steps, the extension's default), so the two entries differ only in the
number of network calls. Each entry: one warm-up call (loads the model), then ``--repeats``
timed ``/sdapi/v1/extra-single-image`` calls (x4, the Extras cache off). The bare engine runs the
same models and options in this process, alternating with the API calls. All figures from one
run.

    python benchmarks/bench_a1111.py --webui ~/webui --python ~/webui/venv/bin/python [--flags=--always-cpu]
                                     [--size 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
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

from onestep_sr import load_model  # noqa: E402
from onestep_sr.models import build_official_autoencoder, build_official_denoiser  # noqa: E402
from webui_real import decode_image, png_base64, prepare_data_dir, start_webui  # noqa: E402

ONE_STEP, MULTI_STEP = "OneStepSR 4x SinSR v1", "OneStepSR 4x ResShift v1 (15 steps)"


def timed(run, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webui", required=True, help="webui checkout (A1111 1.10 or Forge)")
    parser.add_argument("--python", required=True, help="the webui environment's interpreter")
    parser.add_argument("--flags", default="", help="extra launch flags (Forge on a CPU: --always-cpu)")
    parser.add_argument("--size", type=int, default=64, help="LR image side in pixels (output is 4x)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data_dir(Path(tmp))
        folder = data / "models" / "OneStepSR"
        torch.manual_seed(0)
        torch.save(build_official_denoiser().state_dict(), folder / "SinSR_v1.pth")
        os.link(folder / "SinSR_v1.pth", folder / "resshift_realsrx4_s15_v1.pth")
        torch.save(build_official_autoencoder().state_dict(), folder / "autoencoder_vq_f4.pth")
        payload = {"image": png_base64(image), "upscaling_resize": 4}
        api: dict[str, list[float]] = {}
        bare: dict[str, list[float]] = {}
        same = {}
        with start_webui(args.webui, args.python, data, shlex.split(args.flags)) as webui:
            print(f"webui {args.webui}: ready in {webui.startup:.1f} s")
            for name, file in ((ONE_STEP, "SinSR_v1.pth"), (MULTI_STEP, "resshift_realsrx4_s15_v1.pth")):
                request = {**payload, "upscaler_1": name}

                def through_api() -> Image.Image:
                    status, body = webui.call("/sdapi/v1/extra-single-image", request)
                    if status != 200:
                        raise SystemExit(f"{name}: HTTP {status}: {body}\n{webui.log_tail()}")
                    return decode_image(body["image"])

                model = load_model({"denoiser": folder / file, "autoencoder": folder / "autoencoder_vq_f4.pth"},
                                   device="cpu", dtype="fp32",
                                   sampler="one_step" if name == ONE_STEP else "stochastic")

                def engine() -> Image.Image:
                    return model.upscale(image, seed=12345)     # the extension's default options

                first, expected = through_api(), engine()       # warm-ups (the webui loads its model)
                same[name] = int(np.abs(np.asarray(expected, dtype=int) - np.asarray(first, dtype=int)).max())
                api[name], bare[name] = [], []
                for _ in range(args.repeats):                   # alternating, so drift hits both alike
                    api[name] += timed(through_api, 1)
                    bare[name] += timed(engine, 1)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"{args.size}x{args.size} -> x4 through /sdapi/v1/extra-single-image, full-size random networks, fp32, "
          f"CPU, n={args.repeats} each after a warm-up")
    for name in (ONE_STEP, MULTI_STEP):
        print(f"  {name:<38} API median {median(api[name]):7.3f} s   bare engine median {median(bare[name]):7.3f} s   "
              f"max pixel difference {same[name]}")
    print(f"  ratio 15-step / one-step entry (API): {median(api[MULTI_STEP]) / median(api[ONE_STEP]):.1f}x")
    for name in (ONE_STEP, MULTI_STEP):
        overhead = median(api[name]) - median(bare[name])
        print(f"  webui overhead, {name}: {overhead:+.3f} s per call (API / engine {median(api[name]) / median(bare[name]):.3f})")


if __name__ == "__main__":
    main()
