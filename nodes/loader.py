"""Load OneStep SR Model: a registry model (downloaded into ``models/onestep_sr`` on first use)
or a checkpoint file found in any ``onestep_sr`` model folder."""
from __future__ import annotations

import os

import torch

from ..onestep_sr.download import DownloadError, WeightsUnavailableError, ensure_all
from ..onestep_sr.errors import ModelNotFoundError
from ..onestep_sr.model import BUNDLED_MODELS, OneStepSR, autoencoder_for, load_model
from ..onestep_sr.models import PIXEL_AUTOENCODER
from ..onestep_sr.onefile import INCLUDED
from ..onestep_sr.registry import RegistryEntry, get_entry, list_entries
from . import host
from .api import ONESTEP_SR_MODEL, io

AUTO_DOWNLOAD = " (auto-download)"
BUNDLED = " (bundled)"
DEVICES = ["auto", "cpu"]
DTYPES = ["auto", "fp32", "fp16", "bf16"]


class _Networks(torch.nn.Module):
    """Both networks as one module: one ModelPatcher moves them together."""

    def __init__(self, sr: OneStepSR):
        super().__init__()
        self.denoiser, self.autoencoder = sr.denoiser, sr.autoencoder


class OneStepModel:
    """What the ONESTEP_SR_MODEL socket carries: the engine's model, and the ModelPatcher through
    which ComfyUI loads it to the GPU and offloads it when it frees memory for other models."""

    def __init__(self, sr: OneStepSR, load_device: torch.device, offload_device: torch.device):
        self.sr = sr
        self.patcher = host.managed(_Networks(sr), load_device, offload_device)

    def ready(self) -> OneStepSR:
        """The engine model, its weights on the load device."""
        host.load_to_device(self.patcher)
        return self.sr

    def __repr__(self) -> str:
        return f"OneStepModel({self.sr!r})"


def model_choices() -> list[str]:
    """The bundled default model, registry models (fetched when first used), then the checkpoint
    files found locally; the autoencoder files are not models on their own and are left out."""
    entries = list_entries()
    autoencoder_files = {e.file for e in entries if e.kind == "autoencoder"}
    files = [f for f in host.model_files() if os.path.basename(f) not in autoencoder_files]
    bundled = [name + BUNDLED for name, path in BUNDLED_MODELS.items() if path.is_file()]
    return bundled + [e.name + AUTO_DOWNLOAD for e in entries if e.kind == "denoiser"] + files


def _download(entries: list[RegistryEntry], needed_by: str = "") -> list[str]:
    """The registry files not found in any onestep_sr folder, fetched into the download folder;
    offline, one error names every one of them (see ``ensure_all``)."""
    progress = host.NodeProgress()
    paths = ensure_all(entries, models_dir=host.download_folder(), needed_by=needed_by,
                       progress=lambda done, total: progress(done, total) if total else host.check_interrupted())
    return [str(path) for path in paths]


def _entry_for_file(name: str) -> RegistryEntry | None:
    return next((e for e in list_entries() if e.kind == "denoiser" and e.file == os.path.basename(name)), None)


def resolve_weights(choice: str) -> tuple[dict[str, str], RegistryEntry | None]:
    """({"denoiser": path, "autoencoder": path}, the registry entry if the choice is one)."""
    denoiser: str | None = None
    if choice.endswith(BUNDLED) and choice[: -len(BUNDLED)] in BUNDLED_MODELS:
        entry, denoiser = None, str(BUNDLED_MODELS[choice[: -len(BUNDLED)]])
    elif choice.endswith(AUTO_DOWNLOAD):
        entry = get_entry(choice[: -len(AUTO_DOWNLOAD)])
        denoiser = host.find_model_file(entry.file)
    else:
        denoiser = host.find_model_file(choice)
        if denoiser is None:
            raise ModelNotFoundError(f"OneStep SR model file {choice!r} is not in any onestep_sr model folder "
                                     f"({', '.join(host.model_folders())})")
        entry = _entry_for_file(choice)  # a registry file placed by hand keeps its schedule and sampler
    name = (entry.autoencoder or "vq_f4") if entry else autoencoder_for(denoiser)
    if name == INCLUDED:  # a bundle (onestep-sr convert --bundle): its autoencoder is in the same file
        return {"denoiser": denoiser, "autoencoder": denoiser}, entry
    ae_entry = None if name == PIXEL_AUTOENCODER else get_entry(name)
    autoencoder = PIXEL_AUTOENCODER if ae_entry is None else host.find_model_file(ae_entry.file)
    missing = ([entry] if denoiser is None else []) + ([ae_entry] if autoencoder is None else [])
    try:
        fetched = _download(missing, needed_by=entry.name if entry else "")
    except (WeightsUnavailableError, DownloadError) as exc:
        if denoiser is not None:  # the denoiser is there: say whose autoencoder is missing
            raise type(exc)(f"{os.path.basename(denoiser)} also needs its autoencoder {name}: {exc}") from exc
        raise
    if denoiser is None:
        denoiser = fetched.pop(0)
    return {"denoiser": denoiser, "autoencoder": fetched[0] if autoencoder is None else autoencoder}, entry


class LoadOneStepModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneStepSR_LoadModel",
            display_name="Load OneStep SR Model",
            category="image/upscaling/OneStep SR",
            description="Load a one-step x4 super-resolution model. The first choice, onestep_default (bundled), "
                        "is our small model: offline, no download, trained on openly licensed images. "
                        "Models marked (auto-download) are the official SinSR / ResShift weights, fetched into "
                        "models/onestep_sr on first use; their licences are non-commercial (SinSR: CC BY-NC-SA "
                        "4.0, ResShift: NTU S-Lab License 1.0). Files you put in models/onestep_sr (or an "
                        "extra_model_paths.yaml onestep_sr entry) are listed by name.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(),
                               tooltip="onestep_default (bundled): offline, our licence. (auto-download): official "
                                       "SinSR/ResShift weights, non-commercial licences, fetched on first use. "
                                       "Other names: checkpoint files in models/onestep_sr."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weights' dtype; auto = fp16 where ComfyUI finds it safe, else fp32. "
                                       "A NaN/Inf result in fp16/bf16 is recomputed in fp32."),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="auto = ComfyUI's device (offloaded when ComfyUI needs the memory)."),
            ],
            outputs=[ONESTEP_SR_MODEL.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto", device: str = "auto") -> io.NodeOutput:
        load_device, offload_device = host.devices(device)
        paths, entry = resolve_weights(model_name)
        sr = load_model(paths, device=offload_device, dtype=host.weights_dtype(dtype, load_device),
                        schedule=entry.resshift_schedule() if entry else None,
                        sampler=entry.sampler if entry else None)
        if entry:
            sr.name = entry.name
        return io.NodeOutput(OneStepModel(sr, load_device, offload_device))
