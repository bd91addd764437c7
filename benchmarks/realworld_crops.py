"""Before/after crops of the bundled model's restoration-strength knob: one val photo's LR made
clean, JPEG q75 and noisy (sigma 8 + JPEG q90) (training/common/realworld.py's kinds), each
upscaled x4 by bicubic, strength 0, auto and strength 1, beside the original. Writes one PNG
(default docs/images/strength_crops.png) and prints the PSNR-Y of every crop's full image and its
detail: the standard deviation of the Laplacian of Y over the whole image, relative to the
original's (1 = as much fine detail as the original, below 1 smoother, above 1 sharper or noisier).

``--gan FILE`` adds a column: that one-step model (e.g. the adversarial fine-tune of the
restoration end, ``train restore --gan-weight``) at full strength, for issue 28's side-by-side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/realworld_crops.py [--image coffee.png] [--box X Y SIZE]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/realworld_crops.py --gan runs/default_model/gan/model.safetensors \
        --out docs/images/gan_crops.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onestep_sr import load_model  # noqa: E402
from onestep_sr.imageio import write_image_atomic  # noqa: E402
from training.common.evaluate import bicubic_upsample, load_rgb  # noqa: E402
from training.common.metrics import psnr_y  # noqa: E402
from training.common.realworld import lr_maker  # noqa: E402
from training.common.metrics import rgb_to_y  # noqa: E402

KINDS = (("clean", "clean LR"), ("jpeg75", "JPEG q75"), ("noise8_jpeg90", "noise 8 + JPEG q90"))


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def detail(image: torch.Tensor, reference: torch.Tensor) -> float:
    """std of the Laplacian of Y (8-bit rounded, border 4) of ``image`` over that of ``reference``."""
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)

    def lap_std(x: torch.Tensor) -> float:
        y = rgb_to_y((x.clamp(0, 1) * 255).round() / 255).float()
        y = y.reshape(1, 1, *y.shape[-2:])
        return float(torch.nn.functional.conv2d(y, kernel)[..., 4:-4, 4:-4].std())

    return lap_std(image) / lap_std(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=str(ROOT.parent / "shared" / "images" / "val" / "chelsea.png"))
    parser.add_argument("--box", type=int, nargs=3, default=(170, 90, 96), metavar=("X", "Y", "SIZE"),
                        help="crop of the HR image (pixels)")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "strength_crops.png"))
    parser.add_argument("--gan", default=None, help="add this one-step model's result as a column (full strength)")
    args = parser.parse_args()
    model = load_model(device="cpu")
    gan = load_model(args.gan, device="cpu") if args.gan else None
    hr = load_rgb(args.image, 4)
    x, y, size = args.box
    rows = []
    for kind, label in KINDS:
        lr = lr_maker(kind, args.seed)(hr, 4)
        results = {"bicubic": bicubic_upsample(lr, hr.shape[-2:])}
        for name, strength in (("strength 0", 0.0), ("auto", "auto"), ("strength 1", 1.0)):
            results[name] = model.upscale(lr, seed=args.seed, strength=strength).clamp(0, 1)
            if name == "auto":
                results[name + f" ({model.last_strengths[0]:g})"] = results.pop(name)
        if gan is not None:
            results["GAN"] = gan.upscale(lr, seed=args.seed).clamp(0, 1)
        results["original"] = hr
        print(f"{label:22s}" + "  ".join(f"{k}: {psnr_y((v * 255).round() / 255, hr, 4):.2f} dB, "
                                         f"detail {detail(v, hr):.2f}" for k, v in results.items() if k != "original"))
        rows.append((label, results))
    cell = size * args.zoom
    font = ImageFont.load_default()
    pad, head = 4, 16
    sheet = Image.new("RGB", (110 + len(rows[0][1]) * (cell + pad), head + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(rows[0][1]):
        draw.text((110 + c * (cell + pad), 2), name if "auto" not in name else "auto", fill="black", font=font)
    for r, (label, results) in enumerate(rows):
        top = head + r * (cell + pad)
        draw.text((4, top + cell // 2), label, fill="black", font=font)
        for c, (name, image) in enumerate(results.items()):
            crop = to_pil(image[:, y:y + size, x:x + size]).resize((cell, cell), Image.NEAREST)
            sheet.paste(crop, (110 + c * (cell + pad), top))
            if "auto (" in name:
                draw.text((110 + c * (cell + pad) + 3, top + 3), name[5:-1].strip("()"), fill="yellow", font=font)
    write_image_atomic(sheet, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} KB, {sheet.size[0]}x{sheet.size[1]})")


if __name__ == "__main__":
    main()
