"""The V3 registration: ``comfy_entrypoint`` returns the extension listing the nodes.

No NODE_CLASS_MAPPINGS here or in the root ``__init__``: ComfyUI registers a module's
NODE_CLASS_MAPPINGS instead of its ``comfy_entrypoint`` when it finds both."""
from __future__ import annotations

from . import host
from .api import ComfyExtension, io
from .colorfix import OneStepColorFix
from .latent import OneStepDecode, OneStepEncode, ResShiftSampler
from .loader import LoadOneStepModel
from .sd_upscale import OneStepSDUpscale
from .upscale import OneStepUpscale
from .upscale_model import OneStepAsUpscaleModel, register_architecture

NODES: list[type[io.ComfyNode]] = [LoadOneStepModel, OneStepUpscale, OneStepEncode, ResShiftSampler,
                                   OneStepDecode, OneStepColorFix, OneStepSDUpscale, OneStepAsUpscaleModel]


class OneStepSRExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> OneStepSRExtension:
    host.register_model_folder()
    register_architecture()  # OneStep files load in the stock Load Upscale Model (spandrel)
    return OneStepSRExtension()
