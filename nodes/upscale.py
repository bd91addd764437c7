"""OneStep Upscale: IMAGE -> 4x IMAGE in one network step (or N deterministic ResShift steps).

Restoration strength (``onestep_sr.strength``; one meaning in every host: 0 = faithful to the input,
keeps grain; 1 = full real-world restoration; auto = measured per image): the ``auto_strength``
toggle (default on) and the ``strength`` slider used when it is off. Both were added after the
node's release, so they are optional and their defaults (auto) are what an older graph gets. The
strength used is the node's second output (a STRING appended after IMAGE, so saved links keep their
slots: link it to Preview Any to see it) and its UI text (``text`` in /history). A model with one
weight set (the official SinSR / ResShift weights) takes auto as a no-op and refuses a manual
strength with the engine's OptionError: a value that silently changed nothing would look like it
worked."""
from __future__ import annotations

import torch

from ..onestep_sr.colorfix import COLOR_FIXES
from ..onestep_sr.options import OptionError
from ..onestep_sr.samplers import NOISES
from ..onestep_sr.strength import AUTO, check_strength, describe
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


def strength_report(sr, auto: bool) -> str:
    """What the node reports after an upscale: the engine's ``last_strengths`` in words."""
    return describe(sr.last_strengths, auto) or f"restoration strength: none ({sr.name or 'this model'} has one " \
                                                "weight set; the knob is the bundled onestep_default's)"


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
                # added after the node's release: optional, their defaults (auto) are what an older graph gets
                io.Boolean.Input("auto_strength", default=True, optional=True, label_on="auto", label_off="manual",
                                 tooltip="Restoration strength of the bundled onestep_default model: auto (default) "
                                         "measures each image's noise and JPEG blocking and picks the strength; off "
                                         "uses the strength below. Models with one weight set (SinSR, ResShift) "
                                         "have no such knob: leave this on for them."),
                io.Float.Input("strength", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Restoration strength when auto_strength is off: 0 = faithful to the input "
                                       "(keeps grain; best on clean images), 1 = full real-world restoration "
                                       "(removes noise and JPEG artefacts, smooths fine texture). The strength used "
                                       "is the node's strength output."),
                io.Combo.Input("noise", options=list(NOISES), default="official", optional=True,
                               tooltip="official: the official scripts' noise for the whole image (their image for "
                                       "the same seed). tileable: noise repeating every 32 input pixels, as OneStep "
                                       "models give in Upscale Image (using Model): an image cut at multiples of 32 "
                                       "gets the whole image's noise in every piece."),
            ],
            outputs=[io.Image.Output(),
                     io.String.Output(display_name="strength",
                                      tooltip="The restoration strength used, per image when they differ (e.g. "
                                              "'restoration strength 0.35 (auto)'); link it to Preview Any to see "
                                              "it.")],
        )

    @classmethod
    def execute(cls, model: OneStepModel, image: torch.Tensor, steps: int = 1, seed: int = 12345,
                tile: int = 256, overlap: int = 32, color_fix: str = "wavelet", scale: float = 4.0,
                auto_strength: bool = True, strength: float = 0.5, noise: str = "official") -> io.NodeOutput:
        requested = AUTO if auto_strength else check_strength(strength)
        if requested != AUTO and model.sr.knob is None:
            raise OptionError("strength", strength, "used with auto_strength on for this model", message=(
                f"OneStep Upscale: strength {requested:g} (auto_strength off) needs a model with a restoration-"
                f"strength knob (the bundled onestep_default); {model.sr.name or 'this model'} has one weight set: "
                "turn auto_strength on"))
        options = dict(steps=steps, stochastic=False, seed=seed, tile=tile, overlap=overlap,
                       color_fix=color_fix, scale=scale, strength=requested, noise=noise)
        model.sr.check_options(**options)  # a wrong option fails before any weights move
        host.check_interrupted()
        sr = model.ready()
        out = from_engine(sr.upscale(to_engine(image), progress=host.NodeProgress(), **options))
        report = strength_report(sr, auto_strength)
        return io.NodeOutput(out, report, ui={"text": [report]})
