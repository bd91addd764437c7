"""ComfyUI's services as the nodes use them: the ``models/onestep_sr`` folder, progress bars
that are also interruption points, and ComfyUI's choice of device and dtype."""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths

FOLDER = "onestep_sr"


def register_model_folder() -> None:
    """Register ``models/onestep_sr`` with the checkpoint extensions. An ``onestep_sr:`` entry of
    ``extra_model_paths.yaml`` (read before custom nodes load) is kept and gets the extensions
    too: a folder created by that yaml alone has an empty set, which would list every file."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    extensions = set(folder_paths.supported_pt_extensions)
    if FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, default)
        folder_paths.folder_names_and_paths[FOLDER][1].update(extensions)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], extensions)


def model_files() -> list[str]:
    """Checkpoint files in every ``onestep_sr`` folder (names relative to their folder)."""
    return folder_paths.get_filename_list(FOLDER)


def find_model_file(name: str) -> str | None:
    return folder_paths.get_full_path(FOLDER, name)


def download_folder() -> str:
    """Where registry weights are downloaded: the first (default) ``onestep_sr`` folder."""
    return folder_paths.get_folder_paths(FOLDER)[0]


def devices(choice: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for the loader's ``device`` choice."""
    if choice == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    return mm.get_torch_device(), mm.unet_offload_device()


def weights_dtype(choice: str, device: torch.device) -> str:
    """The loader's ``dtype`` choice; ``auto`` asks ComfyUI whether fp16 suits the device."""
    if choice != "auto":
        return choice
    return "fp16" if mm.should_use_fp16(device) else "fp32"


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel."""
    mm.throw_exception_if_processing_interrupted()


def output_device() -> torch.device:
    return mm.intermediate_device()


class NodeProgress:
    """The engine's ``progress(done, total)`` (called after every network call on a tile, and with
    ``done`` unchanged from inside long network calls) as a ComfyUI progress bar, sent when ``done``
    changes; every call is also an interruption point, so Cancel stops within one network block."""

    def __init__(self) -> None:
        self.bar: comfy.utils.ProgressBar | None = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        check_interrupted()
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total)
        if done != self.done:
            self.done = done
            self.bar.update_absolute(done, total)


def managed(module: torch.nn.Module, load_device: torch.device, offload_device: torch.device):
    """``module`` wrapped in a ComfyUI ModelPatcher, so ComfyUI's memory manager can load it to
    ``load_device`` and move it back to ``offload_device`` when another model needs the memory."""
    from comfy.model_patcher import ModelPatcher

    return ModelPatcher(module, load_device=load_device, offload_device=offload_device)


def load_to_device(patcher) -> None:
    """Ask ComfyUI to put the patcher's weights on its device, freeing other models if needed.
    Fully: our plain torch layers cannot run partially offloaded (lowvram) like comfy.ops layers."""
    mm.load_models_gpu([patcher], force_full_load=True)


def model_folders() -> list[str]:
    return list(folder_paths.get_folder_paths(FOLDER))


# --- the user's own Stable Diffusion MODEL / VAE (OneStep SD Upscale) ------------------------------

LORA_FOLDER = "loras"


def load_models(patchers: list, memory_required: int = 0) -> None:
    """Load ComfyUI's own models (a MODEL, a VAE's patcher) the way its samplers do: their weight
    patches (LoRA) are applied by this call, and comfy.ops layers may run partially loaded."""
    mm.load_models_gpu(list(patchers), memory_required=memory_required)


def lora_files() -> list[str]:
    """Files in ComfyUI's ``loras`` folders (names relative to their folder)."""
    try:
        return folder_paths.get_filename_list(LORA_FOLDER)
    except KeyError:  # a host without that folder name
        return []


def read_lora(name: str) -> dict[str, torch.Tensor]:
    """The state dict of ``name`` from the ``loras`` folders (weights only, never pickled code)."""
    return comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise(LORA_FOLDER, name), safe_load=True)


def vae_with_patches(vae, lora: dict[str, torch.Tensor], key_map: dict[str, str], strength: float):
    """A shallow copy of ``vae`` whose ModelPatcher is a clone carrying ``lora``'s patches (ComfyUI
    applies them when that patcher is loaded, i.e. in encode/decode). ``vae`` and its patcher are
    left as they were. Returns (the copy, the model keys patched)."""
    import copy

    import comfy.lora

    patched = copy.copy(vae)
    patched.patcher = vae.patcher.clone()
    keys = patched.patcher.add_patches(comfy.lora.load_lora(lora, key_map), strength)
    return patched, keys


def unet_lora_key_map(model) -> dict[str, str]:
    """ComfyUI's own LoRA key map of a MODEL (what LoraLoader uses)."""
    import comfy.lora

    return comfy.lora.model_lora_keys_unet(model.model, {})


def model_weight(model, key: str) -> torch.Tensor:
    """The MODEL's weight ``key`` without any patch currently applied in place (ComfyUI keeps the
    originals of patched weights in the patcher's ``backup``)."""
    saved = getattr(model, "backup", {}).get(key)
    if saved is not None:
        return getattr(saved, "weight", saved)
    return comfy.utils.get_attr(model.model, key)


def model_with_patches(model, lora: dict[str, torch.Tensor], key_map: dict[str, str], strength: float = 1.0):
    """A clone of ``model`` with ``lora``'s patches (as LoraLoader makes them); ``model`` unchanged."""
    import comfy.lora

    patched = model.clone()
    patched.add_patches(comfy.lora.load_lora(lora, key_map), strength)
    return patched
