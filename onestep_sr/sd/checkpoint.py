"""Load a Stable Diffusion 1.x / 2.x checkpoint offline into diffusers / transformers modules.

Accepted: a single-file checkpoint as found in ComfyUI / A1111 model folders (``.safetensors``, or
``.ckpt``/``.pt``/``.pth`` read with ``torch.load(weights_only=True)``) or a diffusers folder
(``unet/``, ``vae/``, ``text_encoder/``, optional ``scheduler/``). Nothing is downloaded: the
networks are built from the configs shipped in ``weights/configs/<sd1|sd2|sd2-v>/`` (or a folder you
give) and the LDM key names are converted with diffusers' own single-file conversion functions.

Family detection (single file), in this order; ``family=`` / ``prediction_type=`` override it:

1. SDXL (``conditioner.embedders.*``) and files without ``model.diffusion_model.*`` are refused.
2. Text tower: ``cond_stage_model.transformer.*`` (CLIP ViT-L/14) -> SD 1.x;
   ``cond_stage_model.model.*`` (OpenCLIP ViT-H) -> SD 2.x. Without a text tower: the UNet's
   ``input_blocks.1.1.proj_in.weight`` is a 1x1 conv (4-D) in SD 1.x and a linear (2-D) in SD 2.x.
   When both are present and disagree, the file is refused.
3. Prediction type: a ``v_pred`` key in the file, or a ``modelspec.prediction_type`` metadata entry
   (``v``/``v_prediction``/``epsilon``), decides. Otherwise SD 2.x uses ComfyUI's weight statistic:
   v-prediction when the population std of ``output_blocks.11.1.transformer_blocks.0.norm1.bias``
   exceeds 0.09 (true of SD 2.0/2.1-768, false of the 512 base models). Everything else: epsilon.
   Weights cannot prove the prediction type; pass ``prediction_type=`` when you know it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import CheckpointError, read_checkpoint, state_dict_problems
from .formulas import PREDICTION_TYPES

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "weights" / "configs"
FAMILIES = ("sd1", "sd2")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."      # SD 1.x: HF CLIPTextModel inside the LDM wrapper
OPENCLIP_PREFIX = "cond_stage_model.model."        # SD 2.x: OpenCLIP text tower
SDXL_PREFIX = "conditioner.embedders."
PROJ_IN_KEY = UNET_PREFIX + "input_blocks.1.1.proj_in.weight"
V_STAT_KEY = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_STAT_THRESHOLD = 0.09
CONFIG_FILES = ("unet.json", "vae.json", "text_encoder.json", "prompt.json")
_SHOW = 5


@dataclass
class SDModel:
    """The three networks of an SD checkpoint plus what the one-step path needs to know."""
    unet: Any
    vae: Any
    text_encoder: Any
    family: str                      # "sd1" or "sd2"
    prediction_type: str             # "epsilon" or "v_prediction"
    prompt: dict = field(default_factory=dict)   # max_length, bos/eos/pad token ids
    source: str = ""

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def _listing(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"config file not found: {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def config_dir_for(family: str, prediction_type: str) -> Path:
    """The shipped config folder: sd1, sd2 (512 base, epsilon) or sd2-v (768, v-prediction)."""
    return CONFIG_ROOT / ("sd2-v" if family == "sd2" and prediction_type == "v_prediction" else family)


def _check_choice(value, choices, what: str) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {choices}")


# ----------------------------------------------------------------------------- detection


def _has_prefix(state: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def detect_family(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> str:
    """"sd1" or "sd2" from the key names / shapes of an LDM single-file state dict (see module doc)."""
    if _has_prefix(state, SDXL_PREFIX):
        raise CheckpointError(f"{source}: this is an SDXL checkpoint (conditioner.embedders.*); only "
                              "Stable Diffusion 1.x and 2.x are supported")
    if not _has_prefix(state, UNET_PREFIX):
        raise CheckpointError(f"{source}: not a Stable Diffusion 1.x/2.x checkpoint: no "
                              f"'{UNET_PREFIX}*' keys (found e.g. {_listing(list(state)[:_SHOW])})")
    by_text = "sd1" if _has_prefix(state, CLIP_PREFIX) else "sd2" if _has_prefix(state, OPENCLIP_PREFIX) else None
    proj_in = state.get(PROJ_IN_KEY)
    by_unet = None if proj_in is None else ("sd1" if proj_in.ndim == 4 else "sd2")
    if by_text and by_unet and by_text != by_unet:
        raise CheckpointError(f"{source}: the text encoder keys say {by_text} but {PROJ_IN_KEY} has shape "
                              f"{list(proj_in.shape)} ({by_unet}); pass family= to choose")
    family = by_text or by_unet
    if family is None:
        raise CheckpointError(f"{source}: cannot tell SD 1.x from SD 2.x (no text encoder keys and no "
                              f"{PROJ_IN_KEY}); pass family='sd1' or 'sd2'")
    return family


def detect_prediction_type(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], family: str) -> str:
    """"epsilon" or "v_prediction" (see module doc for the heuristic)."""
    if "v_pred" in state:
        return "v_prediction"
    spec = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec in ("epsilon", "eps"):
        return "epsilon"
    stat = state.get(V_STAT_KEY)
    if family == "sd2" and stat is not None and float(stat.float().std(unbiased=False)) > V_STAT_THRESHOLD:
        return "v_prediction"
    return "epsilon"


# ----------------------------------------------------------------------------- building


def _build(cls_from_config, config: dict, state: dict, what: str, source: str):
    """Build a module on the meta device, check ``state`` against it strictly, then assign."""
    with torch.device("meta"):
        model = cls_from_config(config)
    expected = model.state_dict()
    state = _match_text_model_prefix(state, expected)
    problems = state_dict_problems(expected, state)
    if problems:
        raise CheckpointError(f"{source}: the {what} weights do not fit the configured architecture "
                              f"(wrong family or config?): " + "; ".join(problems))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:   # non-persistent buffers (e.g. CLIP position_ids) are recomputable
            if name.endswith("position_ids"):
                module = model.get_submodule(name.rsplit(".", 1)[0])
                module.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape),
                                       persistent=False)
            else:
                raise CheckpointError(f"{source}: {what} buffer {name} could not be initialised")
    return model.eval().requires_grad_(False)


def _match_text_model_prefix(state: dict, expected: Mapping) -> dict:
    """transformers < 5 names CLIPTextModel weights ``text_model.*``, transformers 5 without the
    prefix; LDM files and diffusers' converters use the prefix. Follow the installed version."""
    prefix = "text_model."
    model_has = any(k.startswith(prefix) for k in expected)
    state_has = any(k.startswith(prefix) for k in state)
    if state_has and not model_has:
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    if model_has and not state_has:
        return {(prefix + k if prefix + k in expected else k): v for k, v in state.items()}
    return state


def _subset(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _convert(fn, what: str, source: str, *args):
    try:
        return fn(*args)
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: cannot convert the {what} weights "
                              f"({type(exc).__name__}: {exc}); wrong family or not an SD checkpoint?") from exc


def _text_state(state, family: str, text_config: dict, text_model_cls, source: str) -> dict:
    from diffusers.loaders import single_file_utils as sfu

    if family == "sd1":
        sub = _subset(state, CLIP_PREFIX)
        if not sub:
            raise CheckpointError(f"{source}: no SD 1.x text encoder weights ('{CLIP_PREFIX}*')")
        out = _convert(sfu.convert_ldm_clip_checkpoint, "text encoder", source, sub)
        out.pop("text_model.embeddings.position_ids", None)
        return out
    sub = _subset(state, OPENCLIP_PREFIX)
    if not sub:
        raise CheckpointError(f"{source}: no SD 2.x text encoder weights ('{OPENCLIP_PREFIX}*')")
    # SD 2.x uses the penultimate layer: drop the last resblock(s), the projection and logit scale.
    layers = int(text_config["num_hidden_layers"])
    block = OPENCLIP_PREFIX + "transformer.resblocks."
    keep = {k: v for k, v in sub.items()
            if not (k.startswith(block) and int(k[len(block):].split(".")[0]) >= layers)
            and k not in (OPENCLIP_PREFIX + "text_projection", OPENCLIP_PREFIX + "logit_scale")}
    with torch.device("meta"):
        probe = text_model_cls(_clip_config(text_config))
    return _convert(sfu.convert_open_clip_checkpoint, "text encoder", source, probe, keep, OPENCLIP_PREFIX)


def _clip_config(config: dict):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})


def read_configs(config_dir: Path) -> dict[str, dict]:
    """The JSON configs of one family folder (unet, vae, text_encoder, prompt)."""
    return {name.split(".")[0]: _read_json(Path(config_dir) / name) for name in CONFIG_FILES}


def load_single_file(path, family: str | None = None, prediction_type: str | None = None,
                     config_dir=None) -> SDModel:
    """An SD 1.x/2.x single-file checkpoint -> :class:`SDModel` (fp32, CPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel

    _check_choice(family, FAMILIES, "family")
    _check_choice(prediction_type, PREDICTION_TYPES, "prediction type")
    source = str(path)
    state, metadata = read_checkpoint(path)
    detected = detect_family(state, source)
    family = family or detected
    prediction_type = prediction_type or detect_prediction_type(state, metadata, family)
    configs = read_configs(Path(config_dir) if config_dir else config_dir_for(family, prediction_type))

    unet_state = _convert(sfu.convert_ldm_unet_checkpoint, "UNet", source, _subset(state, UNET_PREFIX),
                          configs["unet"])
    unet = _build(UNet2DConditionModel.from_config, configs["unet"], unet_state, "UNet", source)
    vae_sub = _subset(state, VAE_PREFIX)
    if not vae_sub:
        raise CheckpointError(f"{source}: no VAE weights ('{VAE_PREFIX}*')")
    vae_state = _convert(sfu.convert_ldm_vae_checkpoint, "VAE", source, vae_sub, configs["vae"])
    vae = _build(AutoencoderKL.from_config, configs["vae"], vae_state, "VAE", source)
    text_state = _text_state(state, family, configs["text_encoder"], CLIPTextModel, source)
    text = _build(lambda c: CLIPTextModel(_clip_config(c)), configs["text_encoder"], text_state,
                  "text encoder", source)
    return SDModel(unet, vae, text, family, prediction_type, configs["prompt"], source)


def load_diffusers_folder(path, family: str | None = None, prediction_type: str | None = None) -> SDModel:
    """A diffusers folder (``unet/``, ``vae/``, ``text_encoder/``) -> :class:`SDModel`, offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    _check_choice(family, FAMILIES, "family")
    _check_choice(prediction_type, PREDICTION_TYPES, "prediction type")
    folder = Path(path)
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise CheckpointError(f"{folder}: not a diffusers Stable Diffusion folder (no {sub}/config.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: cannot load the diffusers folder ({exc})") from exc
    if family is None:
        family = "sd1" if text.config.hidden_act == "quick_gelu" else "sd2"
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if prediction_type is None:
        prediction_type = _read_json(scheduler).get("prediction_type", "epsilon") if scheduler.is_file() else "epsilon"
    _check_choice(prediction_type, PREDICTION_TYPES, f"prediction type in {scheduler}")
    prompt = _read_json(CONFIG_ROOT / family / "prompt.json")
    models = [m.eval().requires_grad_(False) for m in (unet, vae, text)]
    return SDModel(*models, family, prediction_type, prompt, str(folder))


def load_sd_model(path, family: str | None = None, prediction_type: str | None = None,
                  config_dir=None) -> SDModel:
    """Single file or diffusers folder -> :class:`SDModel` (fp32 on the CPU; move it yourself)."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path, family, prediction_type)
    return load_single_file(path, family, prediction_type, config_dir)


def read_conv_in(path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The UNet's conv_in (weight, bias) of an SD checkpoint, read without building any network (and
    from a ``.safetensors`` file without reading the rest): ``model.diffusion_model.input_blocks.0.0.*``
    of a single file, ``conv_in.*`` of a diffusers folder's ``unet/``."""
    path = Path(path)
    if path.is_dir():
        files = sorted((path / "unet").glob("diffusion_pytorch_model*.safetensors")) + \
            sorted((path / "unet").glob("diffusion_pytorch_model*.bin"))
        if not files:
            raise CheckpointError(f"{path}: not a diffusers folder with unet/diffusion_pytorch_model.safetensors")
        path, keys = files[0], ("conv_in.weight", "conv_in.bias")
    else:
        keys = (f"{UNET_PREFIX}input_blocks.0.0.weight", f"{UNET_PREFIX}input_blocks.0.0.bias")
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                found = {k: f.get_tensor(k) for k in keys if k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        state, _ = read_checkpoint(path)
        found = {k: state[k] for k in keys if k in state}
    if keys[0] not in found:
        raise CheckpointError(f"{path}: key {keys[0]!r} is missing; not a Stable Diffusion 1.x/2.x UNet checkpoint")
    return found[keys[0]].float(), found[keys[1]].float() if keys[1] in found else None
