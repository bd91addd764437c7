"""OneStep Upscale: IMAGE -> 4x IMAGE in one network step (or N deterministic ResShift steps)."""
from __future__ import annotations

import torch

from ..onestep_sr.colorfix import COLOR_FIXES
from . import host
from .api import io
from .loader import OneStepModel
from .widgets import model_input, seed_input, tile_inputs

COLOR_FIX_CHOICES = ["wavelet", "adain", "none"]
assert set(COLOR_FIX_CHOICES) == set(COLOR_FIXES)


def to_engine(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's IMAGE (B x H x W x C, float in [0, 1]) -> the engine's B x C x H x W."""
    return image.movedim(-1, 1)


def from_engine(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(1, -1).to(host.output_device())


class OneStepUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_Upscale",
            display_name="OneStep Upscale",
            category="image/upscaling/OneStep SR",
            description="Diffusion super-resolution x4 in one network step (SinSR), or in the model's "
                        "full schedule with deterministic ResShift sampling. Large images are tiled "
                        "in latent space without seams; alpha is upscaled separately and re-attached.",
            inputs=[
                model_input(),
                io.Image.Input("image", tooltip="The images to upscale (a 4th channel is alpha, upscaled "
                                                "separately)."),
                io.Int.Input("steps", default=1, min=1, max=50,
                             tooltip="1 = one step (SinSR). The model's schedule length (15 for SinSR / "
                                     "ResShift v1-v2, 4 for ResShift v3) = deterministic ResShift sampling. A "
                                     "progressively distilled model runs only the step count it was distilled for "
                                     "(any other is refused with that number)."),
                seed_input(),
                *tile_inputs(),
                io.Combo.Input("color_fix", options=COLOR_FIX_CHOICES, default="wavelet",
                               tooltip="Pull the colours towards the input's (wavelet keeps detail)."),
                io.Float.Input("scale", default=4.0, min=0.25, max=16.0, step=0.25,
                               tooltip="Output size / input size. The model's native scale (4x; 2x or 8x for "
                                       "YONOS models) is one pass; larger scales run more passes while the result "
                                       "does not exceed the request, and what is left is one Lanczos resize."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, model: OneStepModel, image: torch.Tensor, steps: int = 1, seed: int = 12345,
                tile: int = 256, overlap: int = 32, color_fix: str = "wavelet", scale: float = 4.0) -> io.NodeOutput:
        options = dict(steps=steps, stochastic=False, seed=seed, tile=tile, overlap=overlap,
                       color_fix=color_fix, scale=scale)
        model.sr.check_options(**options)  # a wrong option fails before any weights move
        host.check_interrupted()
        sr = model.ready()
        return io.NodeOutput(from_engine(sr.upscale(to_engine(image), progress=host.NodeProgress(), **options)))
