"""Fake of comfy.model_base: BaseModel with ComfyUI 0.3.64's apply_model contract (sigma in,
x0 out: calculate_input -> nearest discrete timestep -> diffusion_model(xc, t, context=...) ->
calculate_denoised), process_latent_in/out and model_sampling. The diffusion model is any
module called as ``diffusion_model(x, timesteps, context=None, control=None,
transformer_options={}, **kwargs)`` (the tests wrap a tiny UNet)."""
from enum import Enum

import torch

from . import latent_formats
from .model_sampling import CONST, EPS, V_PREDICTION, ModelSamplingDiscrete, ModelSamplingDiscreteFlow


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2
    FLOW = 8


def model_sampling(model_config, model_type):
    kind = {ModelType.EPS: EPS, ModelType.V_PREDICTION: V_PREDICTION, ModelType.FLOW: CONST}[model_type]
    base = ModelSamplingDiscreteFlow if model_type == ModelType.FLOW else ModelSamplingDiscrete

    class ModelSampling(base, kind):
        pass

    return ModelSampling(model_config)


class ModelConfig:
    """The bits of comfy.supported_models_base.BASE a BaseModel reads."""

    def __init__(self, unet_config=None, latent_format=None, sampling_settings=None, manual_cast_dtype=None):
        self.unet_config = dict(unet_config or {})
        self.latent_format = latent_format if latent_format is not None else latent_formats.SD15()
        self.sampling_settings = dict(sampling_settings or {})
        self.manual_cast_dtype = manual_cast_dtype


class BaseModel(torch.nn.Module):
    comfy_native = True  # its layers can run partially loaded (the fake loads them fully anyway)

    def __init__(self, model_config, model_type=ModelType.EPS, device=None, diffusion_model=None):
        super().__init__()
        self.latent_format = model_config.latent_format
        self.model_config = model_config
        self.manual_cast_dtype = model_config.manual_cast_dtype
        self.device = device
        self.diffusion_model = diffusion_model
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.adm_channels = model_config.unet_config.get("adm_in_channels", None) or 0
        self.calls = []  # (x shape, sigma) of every apply_model call, for the tests

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        self.calls.append((tuple(x.shape), float(t.flatten()[0])))
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc)], dim=1)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = c_crossattn
        if context is not None:
            context = context.to(xc.device, dtype)
        out = self.diffusion_model(xc, t, context=context, control=control,
                                   transformer_options=transformer_options, **kwargs).float()
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)
