"""Fake of the pinned comfy_api.v0_0_2, which re-exports latest (as in ComfyUI 0.3.64)."""
from comfy_api.latest import ComfyExtension, io  # noqa: F401
