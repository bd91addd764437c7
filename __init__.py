"""ComfyUI entry point of the OneStep SR node pack (V3 schema).

ComfyUI imports this file as a package named after the checkout folder, so the nodes and the
engine use relative imports. The nodes are in ``nodes/``, the engine in ``onestep_sr/``.
Outside ComfyUI (no ``comfy_api`` to import, e.g. when pytest collects the checkout) there is
nothing to register and this file defines nothing.
"""
from importlib.util import find_spec

if find_spec("comfy_api") is not None:
    from .nodes.extension import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
