"""ComfyUI adapters (V3 schema): thin, no maths. ``extension.comfy_entrypoint`` is what the
pack's root ``__init__`` hands to ComfyUI; ``host`` is the only module touching ComfyUI's own
modules (``comfy.*``, ``folder_paths``), ``api`` the only one importing ``comfy_api``."""
