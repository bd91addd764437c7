"""Host adapters other than ComfyUI's (``nodes/``): thin, no maths. ``a1111/`` is the
AUTOMATIC1111 / Forge extension (entered through the repository's ``scripts/`` and ``preload.py``)."""
