"""``UpscalerOneStepSR``: the OneStep SR models as webui upscalers (Extras upscaler 1/2, hires fix,
img2img upscale, SD upscale scripts, ``/sdapi/v1/upscalers`` and ``/sdapi/v1/extra-single-image``).

A direct subclass of the webui's ``Upscaler`` (the webui instantiates only direct subclasses, with
one argument: the ``--onestepsr-models-path`` value). Its ``upscale`` is replaced because the
webui's floors each side to a multiple of 8 (2.5 x 16x12 would give 40x24, not 40x30): here the
output is exactly ``round(scale * size)`` per side: x4 passes of the model while the image is
smaller than that (at least one, at most three, as the webui), then one Lanczos resize to the
exact size. ``do_upscale`` is one x4 pass and never hands back its input: a failure raises with a
sentence naming the entry (the webui would otherwise answer with a Lanczos resize).

Restoration strength (setting ``onestepsr_strength``: auto or 0..1) applies to models with two
weight sets (the bundled ``OneStepSR 4x default``); the first pass picks it (auto: measured on the
input) and later passes keep it, as the engine does for scales above its native one. The strength
used is printed on the console once per upscale (the extension writes no generation info)."""
from __future__ import annotations

import logging
import os
from typing import Any

from modules.upscaler import Upscaler, UpscalerData
from PIL import Image

from ...onestep_sr.errors import public_error
from ...onestep_sr.model import OneStepSR, load_model
from ...onestep_sr.options import OptionError
from ...onestep_sr.strength import AUTO, describe
from . import entries, settings, webui

log = logging.getLogger(__name__)
MAX_PASSES = 3


@public_error
class OneStepSRError(RuntimeError):
    """An upscale that could not be done; the message says what and why."""


@public_error
class Interrupted(OneStepSRError):
    """The user pressed Interrupt/Skip during an upscale."""


_cache: dict[str, Any] = {}   # one model kept between calls: {"key": ..., "model": OneStepSR}


def exact_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


class UpscalerOneStepSR(Upscaler):
    def __init__(self, dirname: str | None = None):
        self.name = "OneStepSR"        # before the base class: it makes model_path <models>/OneStepSR
        self.model_path = None
        self.user_path = dirname
        super().__init__()
        self.scalers = [UpscalerData(e.name, e.data_path, self, e.scale) for e in self.entries()]

    # --- folders and entries -------------------------------------------------------------------

    def folders(self) -> list[str]:
        """Models folders in search order: the setting's, --onestepsr-models-path, models/OneStepSR.
        Downloads go into the first one."""
        found = []
        for folder in (settings.get("onestepsr_models_path"), self.user_path, self.model_path):
            if folder and os.path.abspath(str(folder)) not in found:
                found.append(os.path.abspath(str(folder)))
        return found

    def entries(self) -> list[entries.Entry]:
        try:
            return entries.discover(self.folders())
        except Exception as exc:  # noqa: BLE001 - the webui calls this at every start: never raise here
            log.error("OneStepSR: listing the models folders failed (%s); only the registry models are listed", exc)
            return entries.discover([])

    # --- the webui's entry points ----------------------------------------------------------------

    def upscale(self, img: Image.Image, scale: float, selected_model: str | None = None) -> Image.Image:
        self.scale = scale
        target = exact_size(img.width, img.height, scale)
        strength = report = None
        for _ in range(MAX_PASSES):
            img, used = self.one_pass(img, selected_model, strength)
            if strength is None and used is not None:  # the first pass's strength holds for the next ones
                strength, report = used
            if img.width >= target[0] and img.height >= target[1]:
                break
        if img.size != target:
            img = img.resize(target, resample=Image.Resampling.LANCZOS)
        if report:
            print(f"OneStepSR upscaler '{self.label_of(selected_model)}': {report}", flush=True)
        return img

    def do_upscale(self, img: Image.Image, selected_model: str | None) -> Image.Image:
        return self.one_pass(img, selected_model)[0]

    def one_pass(self, img: Image.Image, selected_model: str | None,
                 strength: float | None = None) -> tuple[Image.Image, tuple[float, str] | None]:
        """One native pass; and for a model with two weight sets (strength used, report line).
        ``strength``: a number that overrides the setting (the first pass's choice)."""
        label = self.label_of(selected_model)
        try:
            model = self.load_model(selected_model)
            options = self.options_for(model, selected_model)
            if strength is not None and "strength" in options:
                options["strength"] = strength
            out = self.run(model, img, options, label)
            used = model.last_strengths[0] if model.last_strengths else None
            if used is None:
                return out, None
            return out, (used, describe(model.last_strengths, options["strength"] == AUTO))
        except Interrupted:
            raise
        except Exception as exc:
            raise OneStepSRError(f"OneStepSR upscaler '{label}' failed: {exc}") from exc
        finally:
            if not settings.get("onestepsr_keep_loaded"):
                _cache.clear()
            webui.free_memory()

    def load_model(self, path: str | None) -> OneStepSR:
        """The entry's model, loaded once and kept (one at a time) while the setting says so."""
        if not path:
            raise ValueError("no OneStepSR model selected")
        device = webui.device()
        dtype = settings.dtype(device.type)
        folders = self.folders()
        key = repr((path, str(device), dtype, folders[0]))
        if _cache.get("key") == key:
            return _cache["model"]
        _cache.clear()
        weights = entries.weights_for(path, folders)
        entry = weights.entry
        model = load_model(weights.spec, device=device, dtype=dtype, models_dir=folders[0],
                           schedule=entry.resshift_schedule() if entry else None,
                           sampler=entry.sampler if entry else None)
        _cache.update(key=key, model=model)
        return model

    # --- helpers ---------------------------------------------------------------------------------

    def label_of(self, data_path: str | None) -> str:
        return next((s.name for s in self.scalers if s.data_path == data_path), str(data_path))

    def options_for(self, model: OneStepSR, data_path: str) -> dict[str, Any]:
        """The engine's upscale options from the settings; multi-step models follow the ResShift
        setting (all their schedule's steps, stochastic or deterministic, or one step)."""
        options = dict(seed=settings.seed(), tile=settings.whole("onestepsr_tile"),
                       overlap=settings.whole("onestepsr_tile_overlap"), color_fix=settings.get("onestepsr_color_fix"))
        if model.levels:  # a progressively distilled model runs its own step count only
            options.update(steps=len(model.levels), stochastic=False)
        elif model.sampler != "one_step":
            all_steps, stochastic = settings.resshift_mode()
            options.update(steps=model.schedule.steps if all_steps else 1, stochastic=stochastic)
        else:
            options.update(steps=1)
        if model.knob is not None:  # the bundled default: the strength setting applies (the others ignore it)
            options["strength"] = settings.strength()
        try:
            model.check_options(**options)    # the engine's rules (onestep_sr.options), before any compute
        except OptionError as exc:
            raise settings.named(exc) from None
        return options

    def run(self, model: OneStepSR, img: Image.Image, options: dict[str, Any], label: str) -> Image.Image:
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if webui.interrupted():
                raise Interrupted(f"OneStepSR upscaler '{label}': interrupted")
            if bar is None:
                bar = webui.progress_bar(total, label)
            if bar is not None:
                bar.update(done - bar.n)

        try:
            return model.upscale(img, scale=model.scale, progress=progress, **options)  # one native pass
        finally:
            if bar is not None:
                bar.close()
