"""ComfyUI adapters (V3 schema): thin, no maths. Filled in by the ComfyUI issue."""
