"""Fake of comfy.sd.VAE (ComfyUI 0.3.64's contract for an SD 1.x/2.x VAE): ``encode(IMAGE)`` centre-crops
H and W down to multiples of 8, maps to [-1, 1] and returns the raw (unscaled) posterior mode;
``decode(latent)`` returns an IMAGE clamped to [0, 1]; ``encode_tiled`` (tiles in pixels) /
``decode_tiled`` (tiles in latent pixels) run the fake tiler; the weights live in ``patcher``
(a ModelPatcher), loaded with ``load_models_gpu`` before every call so patches apply.

The fake is built from a module with ``encode(x) -> mode latent`` / ``decode(z) -> image in
[-1, 1]`` and LDM-named weights (``first_stage_model=``), not from a state dict."""
import torch

from . import model_management, utils
from .model_patcher import ModelPatcher


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None, first_stage_model=None):
        self.downscale_ratio = 8
        self.upscale_ratio = 8
        self.latent_channels = 4
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.crop_input = True
        self.disable_offload = False
        self.first_stage_model = first_stage_model.eval()
        self.first_stage_model.comfy_native = True
        self.device = device or model_management.vae_device()
        self.vae_dtype = dtype or torch.float32
        self.output_device = model_management.intermediate_device()
        self.patcher = ModelPatcher(self.first_stage_model, load_device=self.device,
                                    offload_device=model_management.vae_offload_device())
        self.calls = []  # (method, shape, kwargs) for the tests

    def throw_exception_if_invalid(self):
        if self.first_stage_model is None:
            raise RuntimeError("ERROR: VAE is invalid: None")

    def vae_encode_crop_pixels(self, pixels):
        ratio = self.spacial_compression_encode()
        dims = pixels.shape[1:-1]
        for d in range(len(dims)):
            x = (dims[d] // ratio) * ratio
            offset = (dims[d] % ratio) // 2
            if x != dims[d]:
                pixels = pixels.narrow(d + 1, offset, x)
        return pixels

    def _encode_fn(self, a):
        return self.first_stage_model.encode(self.process_input(a).to(self.vae_dtype).to(self.device)).float()

    def _decode_fn(self, a):
        return self.first_stage_model.decode(a.to(self.vae_dtype).to(self.device)).float()

    @torch.no_grad()
    def encode(self, pixel_samples):
        self.throw_exception_if_invalid()
        self.calls.append(("encode", tuple(pixel_samples.shape), {}))
        pixel_samples = self.vae_encode_crop_pixels(pixel_samples).movedim(-1, 1)
        model_management.load_models_gpu([self.patcher], memory_required=0, force_full_load=self.disable_offload)
        return self._encode_fn(pixel_samples).to(self.output_device)

    @torch.no_grad()
    def decode(self, samples_in, vae_options={}):
        self.throw_exception_if_invalid()
        self.calls.append(("decode", tuple(samples_in.shape), {}))
        model_management.load_models_gpu([self.patcher], memory_required=0, force_full_load=self.disable_offload)
        out = self.process_output(self._decode_fn(samples_in).to(self.output_device))
        return out.movedim(1, -1)

    @torch.no_grad()
    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        self.throw_exception_if_invalid()
        tile_x, tile_y, overlap = tile_x or 512, tile_y or 512, 64 if overlap is None else overlap
        self.calls.append(("encode_tiled", tuple(pixel_samples.shape), dict(tile_x=tile_x, tile_y=tile_y,
                                                                            overlap=overlap)))
        pixel_samples = self.vae_encode_crop_pixels(pixel_samples).movedim(-1, 1)
        model_management.load_models_gpu([self.patcher], memory_required=0, force_full_load=self.disable_offload)
        return utils.tiled_scale(pixel_samples, self._encode_fn, tile_x, tile_y, overlap,
                                 upscale_amount=1 / self.downscale_ratio, out_channels=self.latent_channels,
                                 output_device=self.output_device)

    @torch.no_grad()
    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        self.throw_exception_if_invalid()
        tile_x, tile_y, overlap = tile_x or 64, tile_y or 64, 16 if overlap is None else overlap
        self.calls.append(("decode_tiled", tuple(samples.shape), dict(tile_x=tile_x, tile_y=tile_y,
                                                                       overlap=overlap)))
        model_management.load_models_gpu([self.patcher], memory_required=0, force_full_load=self.disable_offload)
        out = utils.tiled_scale(samples, self._decode_fn, tile_x, tile_y, overlap, upscale_amount=self.upscale_ratio,
                                out_channels=self.output_channels, output_device=self.output_device)
        return self.process_output(out).movedim(1, -1)

    def get_sd(self):
        return self.first_stage_model.state_dict()

    def spacial_compression_decode(self):
        return self.upscale_ratio

    def spacial_compression_encode(self):
        return self.downscale_ratio
