"""OneStep Color Fix: pull an image's colours towards a reference (e.g. the LR input)."""
from __future__ import annotations

import torch

from ..onestep_sr.colorfix import color_fix_towards
from .api import io
from .upscale import from_engine, to_engine


class OneStepColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_ColorFix", display_name="OneStep Color Fix", category="image/upscaling/OneStep SR",
            description="Wavelet: the image's details on the reference's low frequencies. AdaIN: match each "
                        "channel's mean and spread. The reference may have any size (it is resized); one "
                        "reference for the whole batch or one per image. Alpha is kept.",
            inputs=[
                io.Image.Input("image", tooltip="The images to correct (e.g. an upscale); alpha is kept."),
                io.Image.Input("reference", tooltip="The colours to match (e.g. the low-resolution input): one "
                                                    "image for the batch or one per image, any size."),
                io.Combo.Input("method", options=["wavelet", "adain"], default="wavelet",
                               tooltip="wavelet: the image's details on the reference's low frequencies; "
                                       "adain: match each channel's mean and spread."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, reference: torch.Tensor, method: str = "wavelet") -> io.NodeOutput:
        fixed = color_fix_towards(to_engine(image[..., :3]).float(), to_engine(reference[..., :3]).float(), method)
        out = from_engine(fixed)
        if image.shape[-1] == 4:
            out = torch.cat([out, image[..., 3:].to(out)], dim=-1)
        return io.NodeOutput(out)
