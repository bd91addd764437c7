"""The ComfyUI V3 node API the pack is written against.

The pinned, versioned module first (a Comfy-Org maintainer's advice, so later changes to
``latest`` cannot break the pack), the newest API when a future ComfyUI no longer ships it.
"""
try:
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError:  # pragma: no cover - depends on the installed ComfyUI
    from comfy_api.latest import ComfyExtension, io

__all__ = ["ComfyExtension", "io", "ONESTEP_SR_MODEL"]

# the socket type the loader's output and the other nodes' model input share
ONESTEP_SR_MODEL = io.Custom("ONESTEP_SR_MODEL")
