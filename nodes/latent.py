"""The upscale split into Encode -> ResShift Sampler -> Decode, for graphs that want the LATENT.

The LATENT carries the sampler's latent in ``samples`` and, under ``onestep_lq`` and
``onestep_size``, the LR image the denoiser is conditioned on."""
from __future__ import annotations

from typing import Any

import torch

from ..onestep_sr.errors import IncompatibleInputError
from ..onestep_sr.model import SRLatent
from ..onestep_sr.options import OptionError
from . import host
from .api import io
from .loader import OneStepModel
from .upscale import from_engine, to_engine
from .widgets import model_input, seed_input, tile_inputs

CATEGORY = "image/upscaling/OneStep SR"


def to_latent(latent: SRLatent) -> dict[str, Any]:
    return {"samples": latent.samples, "onestep_lq": latent.lq, "onestep_size": tuple(latent.size)}


def from_latent(latent: dict[str, Any]) -> SRLatent:
    if "onestep_lq" not in latent or "onestep_size" not in latent:
        raise IncompatibleInputError("this LATENT was not made by OneStep SR Encode (it has no LR image to condition "
                                     "on); connect OneStep SR Encode -> OneStep SR ResShift Sampler -> OneStep SR "
                                     "Decode")
    h, w = latent["onestep_size"]
    return SRLatent(latent["samples"], latent["onestep_lq"], (int(h), int(w)))


class OneStepEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_Encode", display_name="OneStep SR Encode", category=CATEGORY,
            description="Encode the low-resolution image (bicubic x4 through the VQ encoder) for the "
                        "OneStep SR ResShift Sampler. Only RGB goes through; use OneStep Upscale to keep alpha.",
            inputs=[model_input(), io.Image.Input("image", tooltip="The low-resolution images (RGB).")],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model: OneStepModel, image: torch.Tensor) -> io.NodeOutput:
        host.check_interrupted()
        sr = model.ready()
        rgb = to_engine(image[..., :3])
        return io.NodeOutput(to_latent(sr.encode(rgb, progress=host.NodeProgress())))


class ResShiftSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_ResShiftSampler", display_name="OneStep SR ResShift Sampler", category=CATEGORY,
            description="Sample the SR latent: deterministic (SinSR's ODE form; 1 step = one-step) or "
                        "stochastic (the original ResShift sampler, the model's full schedule).",
            inputs=[
                model_input(),
                io.Latent.Input("latent", tooltip="From OneStep SR Encode."),
                io.Combo.Input("sampler", options=["deterministic", "stochastic"], default="deterministic",
                               tooltip="deterministic: SinSR's ODE form of ResShift (1 step = the one-step "
                                       "model); stochastic: the original ResShift sampler, the full schedule."),
                io.Int.Input("steps", default=15, min=1, max=50,
                             tooltip="1 (deterministic only) or the model's schedule length (15 or 4)."),
                seed_input(),
                *tile_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model: OneStepModel, latent: dict[str, Any], sampler: str = "deterministic",
                steps: int = 15, seed: int = 12345, tile: int = 256, overlap: int = 32) -> io.NodeOutput:
        if sampler == "stochastic" and steps == 1:
            raise OptionError("steps", steps, f"{model.sr.schedule.steps} for the stochastic sampler",
                              message=f"the stochastic sampler runs the model's full schedule: set steps to "
                                      f"{model.sr.schedule.steps}, or use the deterministic sampler for one step")
        options = dict(steps=steps, stochastic=sampler == "stochastic", seed=seed, tile=tile, overlap=overlap)
        model.sr.check_options(**options)
        sr_latent = from_latent(latent)
        host.check_interrupted()
        sr = model.ready()
        return io.NodeOutput(to_latent(sr.sample(sr_latent, progress=host.NodeProgress(), **options)))


class OneStepDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_Decode", display_name="OneStep SR Decode", category=CATEGORY,
            description="Quantise and decode a sampled latent into the 4x image.",
            inputs=[model_input(), io.Latent.Input("latent", tooltip="From OneStep SR ResShift Sampler.")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, model: OneStepModel, latent: dict[str, Any]) -> io.NodeOutput:
        sr_latent = from_latent(latent)
        host.check_interrupted()
        sr = model.ready()
        return io.NodeOutput(from_engine(sr.decode(sr_latent, progress=host.NodeProgress())))
