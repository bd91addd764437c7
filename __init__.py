"""ComfyUI entry point of the OneStep SR node pack.

ComfyUI imports this file as a package named after the checkout folder, so everything here and
in the engine uses relative imports. The nodes (V3 schema, ``comfy_entrypoint``) are added by the
ComfyUI issue; the engine is ``onestep_sr/``.
"""
