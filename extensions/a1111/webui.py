"""Every use of the webui's own modules (A1111 1.10 and Forge), so the rest of the extension reads
as plain Python: options, command line, interruption, devices, callbacks, the console progress bar.
Imported only inside a webui (or the tests' fake of its ``modules`` package)."""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from modules import devices, script_callbacks, shared

DEVICE_TASK = "onestepsr"   # --use-cpu onestepsr (or all) keeps the upscaler on the CPU


def option(key: str, default: Any) -> Any:
    """A setting's value; ``default`` until the webui knows the option (the upscaler is built
    before the settings callbacks run) or when it is unset."""
    try:
        value = getattr(shared.opts, key)
    except AttributeError:
        return default
    return default if value is None else value


def add_option(key: str, default: Any, label: str, component: Any = None, component_args: Any = None,
               section: tuple[str, str] = ("upscaling", "Upscaling")) -> None:
    shared.opts.add_option(key, shared.OptionInfo(default, label, component, component_args, section=section))


def gradio() -> Any | None:
    """The webui's own gradio module, already imported by it (this package never imports gradio:
    the webui pins its version); None outside a UI."""
    return sys.modules.get("gradio")


def on_ui_settings(callback: Callable[[], None]) -> None:
    script_callbacks.on_ui_settings(callback)


def interrupted() -> bool:
    state = getattr(shared, "state", None)
    return bool(getattr(state, "interrupted", False))


def device() -> torch.device:
    """The webui's device for this task (honours --use-cpu), else its main device."""
    get = getattr(devices, "get_device_for", None)
    found = get(DEVICE_TASK) if get is not None else getattr(shared, "device", None) or getattr(devices, "device", "cpu")
    return torch.device(found)


def half_allowed() -> bool:
    """False when the user started the webui with --no-half."""
    return not getattr(getattr(shared, "cmd_opts", None), "no_half", False)


def free_memory() -> None:
    collect = getattr(devices, "torch_gc", None)
    if collect is not None:
        collect()


def progress_bar(total: int, label: str) -> Any | None:
    """A tqdm console bar as the webui's own upscalers show (setting enable_upscale_progressbar)."""
    if not option("enable_upscale_progressbar", True):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit="tile")
