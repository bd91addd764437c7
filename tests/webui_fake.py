"""Load the repository as an A1111/Forge extension the way the webui does, against the fake
``modules`` package in ``a1111_fake/``: ``preload.py``'s ``preload(parser)`` before the command
line is parsed; every ``scripts/*.py`` executed under its file name (not put in sys.modules) with
the extension folder on ``sys.path`` only while it loads; then ``load_upscalers()`` and the
settings callbacks. ``extras`` calls an upscaler the way Extras / the API do."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FAKE = Path(__file__).resolve().parent / "a1111_fake"
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "onestep_sr_webui"
TINY = "OneStepSR 4x tiny_sinsr"                      # entries of the models tiny_models writes
TEACHER = "OneStepSR 4x tiny_teacher (4 steps)"
SINSR = "OneStepSR 4x SinSR v1"


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("modules", "launch", PACKAGE):
            del sys.modules[name]


def _exec_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_extension(models_path: Path, argv: list[str] = (), settings: dict | None = None) -> ModuleType:
    """Start the fake webui with the extension; returns ``modules.shared`` (sd_upscalers, opts, ...).
    ``settings``: values saved in the webui's config (present before the extension loads)."""
    unload()
    sys.path.insert(0, str(FAKE))
    from modules import modelloader, script_callbacks, scripts, shared

    parser = argparse.ArgumentParser()
    parser.add_argument("--no-half", action="store_true")
    parser.add_argument("--use-cpu", nargs="+", default=[])
    _exec_file(ROOT / "preload.py", "preload").preload(parser)
    shared.cmd_opts = parser.parse_args(list(argv))
    shared.models_path = str(models_path)
    shared.opts.data.update(settings or {})
    for script in sorted((ROOT / "scripts").glob("*.py")):
        sys.path.insert(0, str(ROOT))
        scripts.current_basedir = str(ROOT)
        try:
            _exec_file(script, script.name)
        finally:
            sys.path.remove(str(ROOT))
            scripts.current_basedir = None
    modelloader.load_upscalers()
    script_callbacks.ui_settings_callback()
    return shared


def unload() -> None:
    while str(FAKE) in sys.path:
        sys.path.remove(str(FAKE))
    _purge()


def upscaler(shared: ModuleType, name: str):
    """The ``UpscalerData`` named ``name`` (the API's ``upscaler_1``)."""
    found = [u for u in shared.sd_upscalers if u.name == name]
    assert found, f"could not find upscaler named {name}"
    return found[0]


def extras(shared: ModuleType, image, name: str, scale: float):
    """Extras / ``/sdapi/v1/extra-single-image`` with resize mode 0: ``scaler.upscale(image, scale,
    data_path)``."""
    data = upscaler(shared, name)
    return data.scaler.upscale(image, scale, data.data_path)


def tiny_models(folder: Path) -> None:
    """Small random models, seeded: an official-layout denoiser (``tiny_sinsr.safetensors``, and
    the same weights under the registry's SinSR v1 file name) with its VQ-f4 autoencoder, and a
    4-step ResShift-style model exported as training/ does (``tiny_teacher.safetensors``)."""
    from dataclasses import asdict

    import torch
    from safetensors.torch import save_file

    from onestep_sr.model_info import ModelInfo, save_model
    from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser
    from onestep_sr.schedule import SCHEDULE_T4

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=(1,),
                            attention_resolutions=(), swin_embed_dim=32, num_head_channels=16)
    denoiser = build_denoiser(config)
    save_file(denoiser.state_dict(), folder / "tiny_sinsr.safetensors")
    torch.save(denoiser.state_dict(), folder / "SinSR_v1.pth")
    torch.save(build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64)).state_dict(),
               folder / "autoencoder_vq_f4.pth")
    save_model(folder / "tiny_teacher.safetensors", build_denoiser(config),
               ModelInfo(autoencoder="vq_f4", schedule=asdict(SCHEDULE_T4), sampler="stochastic"))
