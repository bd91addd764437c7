"""OneStep SR models for every host that takes a spandrel model (ComfyUI's "Load Upscale Model" /
"Upscale Image (using Model)", UltimateSDUpscale, Impact Pack, chaiNNer, ...).

Importing this module adds the architecture ``OneStepSR`` to ``spandrel.MAIN_REGISTRY`` (the registry
every ``spandrel.ModelLoader()`` of the process uses), detected before spandrel's own architectures.
It claims exactly the state dicts with our header copy (``onefile.HEADER_KEY``, a key no other
architecture has): the bundled default, every model exported by training/ (x2 / x8 YONOS,
progressive), and ``onestep-sr convert --bundle`` files (official SinSR / ResShift + VQ-f4).

The descriptor's call is ``OneStepSR.upscale`` of a B x C x H x W batch in [0, 1] at the native scale
with the OneStep Upscale node's defaults (seed 12345, colour fix wavelet, tiles 256 / overlap 32,
the model's own sampler, deterministic for a ResShift teacher) and ``noise="tileable"``: the prior noise repeats every 32 input pixels, so a
tile that an outer tiler cuts at a multiple of 32 (ComfyUI: strides 480 / 224 / 96) gets the noise
the whole image has there. The output has the input's device and dtype. A model with two weight
sets (the bundled default) runs at a fixed restoration strength (default 0: the clean end, what its
file alone gives), since an automatic one would be measured per tile.

spandrel itself needs torchvision; the engine never imports this module by itself.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from spandrel import (MAIN_REGISTRY, ArchRegistry, ArchSupport, Architecture, ImageModelDescriptor, ModelTiling,
                      SizeRequirements)

from .model import OneStepSR
from .models import PixelSpaceAutoencoder
from .onefile import is_onestep_state_dict, model_from_state_dict
from .options import DEFAULT_SEED

ARCH_ID = "OneStepSR"
Placement = Callable[[torch.device], None]


class OneStepModule(torch.nn.Module):
    """What a descriptor's ``model`` is: the engine model's networks as submodules (so ``to``,
    ``state_dict`` and a host's memory estimate see them) and the call. ``placement``, when given,
    replaces the moves of ``to(device)``: a host's memory manager puts the weights on its device
    (ComfyUI's ModelPatcher), casts still happen here. ``progress``: the engine's progress callback
    for every call (a host's cancel check: raise from it to stop inside a tile)."""

    def __init__(self, sr: OneStepSR, *, strength: float | None = None, seed: int = DEFAULT_SEED,
                 color_fix: str = "wavelet", placement: Placement | None = None,
                 progress: Callable[[int, int], None] | None = None):
        super().__init__()
        self.denoiser, self.autoencoder = sr.denoiser, sr.autoencoder
        self.sr, self.placement, self.progress = sr, placement, progress
        self.settings: dict[str, Any] = dict(seed=seed, color_fix=color_fix, noise="tileable",
                                             strength=strength if sr.knob is not None else None,
                                             # a ResShift teacher's T steps, deterministic: no per-step noise
                                             stochastic=False if sr.sampler == "stochastic" else None)
        sr.check_options(**self.settings)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.sr.upscale(image, progress=self.progress, **self.settings)
        return out.to(image.device, image.dtype)

    def to(self, *args: Any, **kwargs: Any) -> "OneStepModule":
        if self.placement is None:
            return super().to(*args, **kwargs)
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            self.placement(device)
        return super().to(dtype=dtype) if dtype is not None else self


def describe(sr: OneStepSR, *, strength: float | None = 0.0, placement: Placement | None = None,
             progress: Callable[[int, int], None] | None = None,
             architecture: Architecture | None = None) -> ImageModelDescriptor:
    """A spandrel ``ImageModelDescriptor`` around ``sr`` (its networks, not a copy)."""
    module = OneStepModule(sr, strength=strength, placement=placement, progress=progress)
    tags = [f"x{sr.scale}", sr.sampler, "pixel" if isinstance(sr.autoencoder, PixelSpaceAutoencoder) else "vq_f4"]
    return ImageModelDescriptor(
        module, module.state_dict(), architecture or ARCHITECTURE, purpose="SR", tags=[t for t in tags if t],
        supports_half=True, supports_bfloat16=True,  # norms/attention in fp32, NaN/Inf recomputed in fp32
        scale=sr.scale, input_channels=3, output_channels=3,
        # any size: the engine pads to its block itself (after the colour fix has seen the image as it
        # is, as in OneStep Upscale); padding by the caller would change the border. Tiled inside in
        # bounded memory with one noise field: an outer tiler only adds calls (ComfyUI tiles anyway).
        size_requirements=SizeRequirements(), tiling=ModelTiling.INTERNAL)


class OneStepArchitecture(Architecture[OneStepModule]):
    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="OneStep SR", detect=is_onestep_state_dict)

    def load(self, state_dict: Mapping[str, Any]) -> ImageModelDescriptor:
        return describe(model_from_state_dict(state_dict), architecture=self)


ARCHITECTURE = OneStepArchitecture()


def register(registry: ArchRegistry = MAIN_REGISTRY) -> None:
    """Add the architecture to ``registry``, detected before every architecture already there (it
    claims only files with our header copy, so none of theirs); a second call does nothing."""
    if ARCH_ID not in registry:
        before = tuple(support.architecture.id for support in registry.architectures())
        registry.add(ArchSupport(ARCHITECTURE, ARCHITECTURE.detect, before=before), ignore_duplicates=True)


register()
