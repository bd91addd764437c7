"""Fake of ComfyUI 0.3.64's comfy_extras/nodes_upscale_model.py (the stock "Load Upscale Model" and
"Upscale Image (using Model)"), doing what they do with a spandrel model:

* the loader reads a file of the ``upscale_models`` folder with ``comfy.utils.load_torch_file(path,
  safe_load=True)`` (tensors only: a safetensors header never reaches spandrel), strips ``module.``
  from SwinIR-style keys, loads it with ``spandrel.ModelLoader().load_from_state_dict(sd).eval()``
  and refuses anything but an ``ImageModelDescriptor``;
* the upscaler frees memory for ``module_size(model.model)`` plus an estimate, calls
  ``model.to(device)``, runs ``comfy.utils.tiled_scale`` on the IMAGE moved to B x C x H x W with
  512-pixel tiles and 32 pixels of overlap (halving the tile on out-of-memory, giving up below 128),
  calls ``model.to("cpu")`` and returns the result clamped to [0, 1], channels last."""
from __future__ import annotations

import comfy.utils
import folder_paths
import torch
from comfy import model_management
from comfy_api.latest import ComfyExtension, io
from spandrel import ImageModelDescriptor, ModelLoader


class UpscaleModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="UpscaleModelLoader", display_name="Load Upscale Model", category="loaders",
                         inputs=[io.Combo.Input("model_name", options=folder_paths.get_filename_list("upscale_models"))],
                         outputs=[io.UpscaleModel.Output()])

    @classmethod
    def execute(cls, model_name):
        path = folder_paths.get_full_path_or_raise("upscale_models", model_name)
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        if "module.layers.0.residual_group.blocks.0.norm1.weight" in sd:
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        out = ModelLoader().load_from_state_dict(sd).eval()
        if not isinstance(out, ImageModelDescriptor):
            raise Exception("Upscale model must be a single-image model.")
        return io.NodeOutput(out)


class ImageUpscaleWithModel(io.ComfyNode):
    calls: list[tuple[str, object]] = []  # (what, argument) of the model calls, for the tests

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ImageUpscaleWithModel", display_name="Upscale Image (using Model)",
                         category="image/upscaling", inputs=[io.UpscaleModel.Input("upscale_model"),
                                                             io.Image.Input("image")],
                         outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, upscale_model, image):
        device = model_management.get_torch_device()
        memory = model_management.module_size(upscale_model.model)
        memory += 512 * 512 * 3 * image.element_size() * max(upscale_model.scale, 1.0) * 384.0
        memory += image.nelement() * image.element_size()
        model_management.free_memory(memory, device)
        cls.calls.append(("to", device))
        upscale_model.to(device)
        in_img = image.movedim(-1, -3).to(device)
        tile, overlap = 512, 32
        while True:
            try:
                steps = in_img.shape[0] * comfy.utils.get_tiled_scale_steps(in_img.shape[3], in_img.shape[2],
                                                                            tile_x=tile, tile_y=tile, overlap=overlap)
                pbar = comfy.utils.ProgressBar(steps)
                s = comfy.utils.tiled_scale(in_img, lambda a: upscale_model(a), tile_x=tile, tile_y=tile,
                                            overlap=overlap, upscale_amount=upscale_model.scale, pbar=pbar)
                break
            except model_management.OOM_EXCEPTION:
                tile //= 2
                if tile < 128:
                    raise
        cls.calls.append(("to", "cpu"))
        upscale_model.to("cpu")
        return io.NodeOutput(torch.clamp(s.movedim(-3, -1), min=0, max=1.0))


class UpscaleModelExtension(ComfyExtension):
    async def get_node_list(self):
        return [UpscaleModelLoader, ImageUpscaleWithModel]


async def comfy_entrypoint():
    return UpscaleModelExtension()
