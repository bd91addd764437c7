"""The extension's options (Settings -> Upscaling): one table, read through ``webui.option``.

The upscaler reads them at every call, so a change applies to the next upscale; the models
folder is read when the webui lists upscalers (start-up, Reload UI)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ...onestep_sr.colorfix import COLOR_FIXES
from ...onestep_sr.model import DEFAULT_SEED
from ...onestep_sr.options import OptionError, check_seed, whole_from_host
from ...onestep_sr.pipeline import Tiling
from ...onestep_sr.strength import AUTO, Strength, check_strength
from . import webui

DTYPES = ["auto", "fp32", "fp16", "bf16"]
RESSHIFT_MODES = {   # choice -> (all the schedule's steps?, stochastic)
    "all steps, stochastic (the paper's sampler)": (True, True),
    "all steps, deterministic (seeded DDIM-like)": (True, False),
    "one step (x0 of the first step: fast, softer)": (False, None),
}
RANDOM_SEED = -1


@dataclass(frozen=True)
class Option:
    key: str
    default: Any
    label: str
    kind: str                 # "text", "slider", "radio", "checkbox", "number"
    args: dict | None = None


OPTIONS = [
    Option("onestepsr_models_path", "", "OneStepSR: extra models folder, searched first and used for downloads "
           "(empty: --onestepsr-models-path, else models/OneStepSR; Reload UI to list its files). "
           "'OneStepSR 4x default' is bundled (offline, our licence); the SinSR / ResShift entries are the "
           "official weights, downloaded on first use, under non-commercial licences (SinSR: CC BY-NC-SA 4.0, "
           "ResShift: NTU S-Lab License 1.0)", "text"),
    Option("onestepsr_tile", Tiling.tile, "OneStepSR: tile size in input pixels (at least 64, a multiple of 64 for "
           "the official models; out of memory halves it)", "slider", {"minimum": 64, "maximum": 2048, "step": 64}),
    Option("onestepsr_tile_overlap", Tiling.overlap, "OneStepSR: tile overlap in input pixels", "slider",
           {"minimum": 0, "maximum": 256, "step": 8}),
    Option("onestepsr_color_fix", "none", "OneStepSR: colour fix towards the input's colours", "radio",
           {"choices": list(COLOR_FIXES)}),
    Option("onestepsr_dtype", "auto", "OneStepSR: weights' precision (auto: fp16 on a GPU unless --no-half, "
           "else fp32; NaN results are recomputed in fp32)", "radio", {"choices": DTYPES}),
    Option("onestepsr_resshift_mode", next(iter(RESSHIFT_MODES)), "OneStepSR: steps of the ResShift entries "
           "(their schedule's 15 or 4 steps, or one step)", "radio", {"choices": list(RESSHIFT_MODES)}),
    Option("onestepsr_strength", AUTO, "OneStepSR: restoration strength of 'OneStepSR 4x default': auto (measured "
           "per image: noise and JPEG blocking) or a number from 0 (faithful to the input, keeps grain; best on clean "
           "images) to 1 (full real-world restoration: removes noise and JPEG artefacts, smooths fine texture). The "
           "other models have one weight set and ignore it", "text"),
    Option("onestepsr_seed", DEFAULT_SEED, "OneStepSR: noise seed (-1: random each time; 12345 is the official "
           "scripts' seed)", "number"),
    Option("onestepsr_keep_loaded", True, "OneStepSR: keep the model in memory between upscales", "checkbox"),
]
BY_KEY = {o.key: o for o in OPTIONS}


def get(key: str) -> Any:
    return webui.option(key, BY_KEY[key].default)


def register() -> None:
    """Add the options (called by the webui's on_ui_settings callback)."""
    gr = webui.gradio()
    components = {"slider": "Slider", "radio": "Radio", "checkbox": "Checkbox", "number": "Number",
                  "text": "Textbox"}
    for option in OPTIONS:
        component = getattr(gr, components[option.kind], None) if gr is not None else None
        webui.add_option(option.key, option.default, option.label, component,
                         dict(option.args) if option.args and component is not None else None)


# the numeric settings: the engine's option each one feeds (its rule: onestep_sr.options) and its name
ENGINE_OPTIONS = {"onestepsr_tile": ("tile", "tile size"), "onestepsr_tile_overlap": ("overlap", "tile overlap"),
                  "onestepsr_seed": ("seed", "noise seed"), "onestepsr_strength": ("strength", "restoration strength")}


def named(exc: OptionError) -> OptionError:
    """An engine refusal of an option, naming the setting the value came from."""
    key = next((k for k, (option, _) in ENGINE_OPTIONS.items() if option == exc.option), None)
    if key is None:
        return exc
    return OptionError(exc.option, exc.value, exc.rule,
                       message=f"OneStepSR setting '{ENGINE_OPTIONS[key][1]}' ({key}): {exc}")


def whole(key: str) -> int:
    """A whole-number setting (a slider may store 256.0, the API may send "256"); never truncated."""
    try:
        return whole_from_host(ENGINE_OPTIONS[key][0], get(key))
    except OptionError as exc:
        raise named(exc) from None


def seed() -> int | None:
    """The seed for the next upscale: a random one for -1, else the number, checked."""
    value = whole("onestepsr_seed")
    try:
        value = check_seed(value, random=RANDOM_SEED)
    except OptionError as exc:
        raise named(exc) from None
    return random.randrange(2**63) if value is None else value


def strength() -> Strength:
    """The restoration strength for a model with two weight sets: ``"auto"`` or a number in [0, 1]
    (text from the settings page, a number from /sdapi/v1/options), checked by the engine's rule."""
    try:
        return check_strength(get("onestepsr_strength"))
    except OptionError as exc:
        raise named(exc) from None


def dtype(device_type: str) -> str:
    choice = get("onestepsr_dtype")
    if choice not in DTYPES:
        raise ValueError(f"OneStepSR setting 'precision' is {choice!r}; use one of {', '.join(DTYPES)}")
    if choice == "auto":
        return "fp16" if device_type == "cuda" and webui.half_allowed() else "fp32"
    return choice


def resshift_mode() -> tuple[bool, bool | None]:
    choice = get("onestepsr_resshift_mode")
    if choice not in RESSHIFT_MODES:
        raise ValueError(f"OneStepSR setting 'steps of the ResShift entries' is {choice!r}; use one of "
                         f"{', '.join(RESSHIFT_MODES)}")
    return RESSHIFT_MODES[choice]
