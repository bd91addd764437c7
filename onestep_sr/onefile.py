"""One file, one model: what a host that sees only a file's tensors needs to load a OneStep model.

Hosts that load upscale models through spandrel (ComfyUI's "Load Upscale Model", chaiNNer) read a
file into a plain state dict: a safetensors header, where our exports keep the architecture
(``config``) and the model info (``onestep_sr``: autoencoder, scale, schedule, sampler, levels), never
reaches them. So a OneStep file also carries those header fields as one tensor,
``onestep_sr.header`` (uint8, the UTF-8 JSON of the fields): written by ``model_info.save_model``
(every model exported by training/, the bundled default) and by ``onestep-sr convert``; every loader
of ours drops it with the other non-weights (``checkpoint.normalise_state_dict``).

A model that needs two networks (an official SinSR / ResShift denoiser and the VQ-f4 autoencoder) is
packed by ``onestep-sr convert --bundle DENOISER AUTOENCODER OUT.safetensors`` into a *bundle*: keys
``denoiser.*`` and ``autoencoder.*``, header fields ``config`` (the denoiser's), ``autoencoder_config``
and ``onestep_sr`` with ``autoencoder: "included"``. ``load_denoiser`` / ``load_autoencoder`` take
their part of a bundle (:func:`select`), so ``load_model(bundle)`` needs nothing else.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import torch

HEADER_KEY = "onestep_sr.header"
INCLUDED = "included"  # ModelInfo.autoencoder of a bundle: the autoencoder is in the same file
PARTS = ("denoiser", "autoencoder")
CONFIG_FIELDS = {"denoiser": "config", "autoencoder": "autoencoder_config"}
HEADER_FIELDS = ("config", "autoencoder_config", "onestep_sr", "name")  # what the tensor copies


def header_tensor(fields: Mapping[str, str]) -> torch.Tensor:
    """The header ``fields`` (str -> str) as a uint8 tensor of their JSON."""
    text = json.dumps({k: str(v) for k, v in fields.items()}, sort_keys=True)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def header_from_state(state: Mapping[str, Any]) -> dict[str, str] | None:
    """The header fields a state dict carries in :data:`HEADER_KEY`; None without it. ValueError
    when the tensor is not such a copy."""
    tensor = state.get(HEADER_KEY)
    if tensor is None:
        return None
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ValueError(f"{HEADER_KEY} is not a 1-D uint8 tensor")
    try:
        fields = json.loads(bytes(tensor.tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{HEADER_KEY} is not UTF-8 JSON ({exc})") from exc
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise ValueError(f"{HEADER_KEY} is not a JSON object of strings")
    return fields


def is_onestep_state_dict(state: Mapping[str, Any]) -> bool:
    """True for a state dict with our header copy naming a denoiser architecture (any other
    architecture's file has no ``onestep_sr.header`` key); never raises."""
    try:
        fields = header_from_state(state)
    except ValueError:
        return False
    return bool(fields) and "model_channels" in fields.get("config", "")


def is_bundle(state: Mapping[str, Any]) -> bool:
    """Every weight under ``denoiser.`` or ``autoencoder.``, both present."""
    keys = [k for k in state if k != HEADER_KEY]
    return (bool(keys) and all(k.startswith(tuple(p + "." for p in PARTS)) for k in keys)
            and all(any(k.startswith(p + ".") for k in keys) for p in PARTS))


def select(state: Mapping[str, Any], metadata: Mapping[str, str] | None,
           part: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(the tensors, the header) that ``part`` (``denoiser`` / ``autoencoder``) loads from: for a
    bundle its prefixed keys, prefix removed, and its own config as ``config``; else the state as
    it is. The header is the file's, else the tensor copy's; the copy is never among the tensors."""
    try:
        fields = dict(metadata or {}) or header_from_state(state) or {}
    except ValueError:
        fields = {}
    tensors = {k: v for k, v in state.items() if k != HEADER_KEY}
    if not is_bundle(tensors):
        return tensors, fields
    prefix = part + "."
    config = fields.get(CONFIG_FIELDS[part])
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, (
        {"config": config} if config else {})


def header_of(fields: Mapping[str, str]) -> dict[str, str]:
    """The fields of a file's header the tensor copy keeps."""
    return {k: fields[k] for k in HEADER_FIELDS if fields.get(k)}


def model_from_state_dict(state: Mapping[str, Any], device: Any = None, dtype: Any = None):
    """A :class:`onestep_sr.OneStepSR` from a one-file state dict (plain tensors, as spandrel hosts
    read a file): a pixel-space model or a bundle. A denoiser that needs a separate autoencoder
    file is refused with what to do."""
    from .checkpoint import CheckpointError, load_autoencoder, load_denoiser
    from .model import OneStepSR
    from .model_info import INFO_KEY, ModelInfo
    from .models import PIXEL_AUTOENCODER, PixelSpaceAutoencoder, PixelSpaceConfig

    try:
        fields = header_from_state(state)
    except ValueError as exc:
        raise CheckpointError(f"not a OneStep SR model file: {exc}") from exc
    if not fields or INFO_KEY not in fields:
        raise CheckpointError(f"not a one-file OneStep SR model: no model info in {HEADER_KEY} (convert it with "
                              "`onestep-sr convert`, or pack a denoiser and its autoencoder with "
                              "`onestep-sr convert --bundle`)")
    info = ModelInfo.from_json(fields[INFO_KEY], HEADER_KEY)
    name = fields.get("name", "")
    if info.autoencoder not in (PIXEL_AUTOENCODER, INCLUDED):
        raise CheckpointError(
            f"{name or 'this OneStep SR model'} needs its autoencoder {info.autoencoder!r} from a second file, "
            "which a one-file host cannot load: pack both into one file with `onestep-sr convert --bundle "
            "DENOISER AUTOENCODER OUT.safetensors`")
    denoiser = load_denoiser(state, device=device, dtype=dtype)
    if info.autoencoder == INCLUDED:
        autoencoder = load_autoencoder(state, device=device, dtype=dtype)
    else:
        autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=4)).to(device)
    return OneStepSR(denoiser, autoencoder, info.resshift_schedule(), info.sampler, name=name, scale=info.scale,
                     levels=info.levels)
