"""OneStep SR as Upscale Model: a loaded OneStep model as an ``UPSCALE_MODEL`` (a spandrel
``ImageModelDescriptor``), for every node that takes one: ComfyUI's "Upscale Image (using Model)",
UltimateSDUpscale, Impact Pack's upscalers. Any model "Load OneStep SR Model" loads works, the
official SinSR / ResShift weights included. The call is the engine's upscale at the native scale with
OneStep Upscale's defaults and tileable noise (``onestep_sr.spandrel``); the weights are the loader's
(no copy), placed on the device by ComfyUI's memory manager when a node moves the model there.

``register_architecture`` (at pack load) also lets the stock "Load Upscale Model" load OneStep files
from models/upscale_models."""
from __future__ import annotations

import logging

import torch

from ..onestep_sr.options import OptionError
from . import host
from .api import io
from .loader import OneStepModel
from .widgets import model_input

log = logging.getLogger("onestep_sr")


def register_architecture() -> bool:
    """Add the OneStep SR architecture to spandrel's registry (the one "Load Upscale Model" uses);
    False, with one warning, where spandrel cannot be imported (ComfyUI's own upscale-model nodes
    are then missing too)."""
    try:
        from ..onestep_sr import spandrel  # noqa: F401  (registers on import)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision under spandrel
        log.warning("OneStep SR: spandrel cannot be imported (%s: %s); OneStep files in models/upscale_models "
                    "and OneStep SR as Upscale Model need it", type(exc).__name__, exc)
        return False
    return True


class OneStepAsUpscaleModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_AsUpscaleModel",
            display_name="OneStep SR as Upscale Model",
            category="image/upscaling/OneStep SR",
            description="The loaded OneStep model as an UPSCALE_MODEL for nodes that take one (Upscale Image "
                        "(using Model), UltimateSDUpscale, ...). Each call is OneStep Upscale at the model's "
                        "native scale with its defaults (seed 12345, wavelet colour fix, tile 256 / overlap 32) "
                        "and noise that repeats every 32 input pixels, so the 512-pixel tiles of Upscale Image "
                        "(using Model) blend without noise seams.",
            inputs=[
                model_input(),
                io.Float.Input("strength", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Restoration strength of the bundled onestep_default (fixed: an automatic one "
                                       "would be measured per tile): 0 = faithful to the input (its clean weight "
                                       "set), 1 = full real-world restoration. Models with one weight set (SinSR, "
                                       "ResShift) take only 0."),
            ],
            outputs=[io.UpscaleModel.Output(display_name="upscale_model")],
        )

    @classmethod
    def execute(cls, model: OneStepModel, strength: float = 0.0) -> io.NodeOutput:
        if strength and model.sr.knob is None:
            raise OptionError("strength", strength, "0 for this model", message=(
                f"OneStep SR as Upscale Model: strength {strength:g} needs a model with a restoration-strength knob "
                f"(the bundled onestep_default); {model.sr.name or 'this model'} has one weight set: use 0"))
        if not register_architecture():
            raise RuntimeError("OneStep SR as Upscale Model needs spandrel (a ComfyUI requirement), which cannot be "
                               "imported here; see the warning at start-up")
        from ..onestep_sr.spandrel import describe

        def placement(device: torch.device) -> None:
            """A node's ``to(device)``: to the loader's device through ComfyUI's memory manager; a move
            elsewhere (Upscale Image (using Model) sends the model to the CPU after its run) is left
            to ComfyUI, which offloads the weights when it needs the memory."""
            if torch.device(device) == model.patcher.load_device:
                model.ready()

        # Cancel is checked inside every call too (the stock node's progress bar checks it between tiles)
        return io.NodeOutput(describe(model.sr, strength=strength, placement=placement,
                                      progress=lambda done, total: host.check_interrupted()))
