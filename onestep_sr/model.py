"""``load_model`` and :class:`OneStepSR`: upscale a PIL image, numpy array or torch tensor and get
the same kind back, at any size, in bounded memory.

    model = load_model("sinsr_v1")                 # registry name: weights fetched on first use
    model = load_model(("my_unet.safetensors", "vq_f4"))
    big = model.upscale(Image.open("photo.jpg"), color_fix="wavelet")

Memory: the SR image is written straight into an output buffer of the result's dtype (uint8 for
8-bit inputs) band by band; the float work happens on tiles (see ``pipeline``), so peak memory is
the model, one tile's activations and the output buffer.
"""
from __future__ import annotations

import copy
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar, Union

import numpy as np
import torch

from .checkpoint import CHECKPOINT_SUFFIXES, load_autoencoder, load_denoiser
from .colorfix import COLOR_FIXES, color_fix_buffer
from .download import DownloadError, WeightsUnavailableError, ensure_all
from .errors import ModelNotFoundError, public_error
from .imageio import Prepared, from_unit_float, prepare, resize_array, to_unit_float
from .models import PIXEL_AUTOENCODER, PixelSpaceAutoencoder, PixelSpaceConfig, SwinUNetDenoiser, VQAutoencoder
from .models.cancel import cancel_scope
from .pipeline import (SCALE, NonFiniteError, Sampler, Tiling, model_to_unit, network_calls, super_resolve_rows,
                       tile_counts, unit_to_model)
from . import options
from .options import DEFAULT_SEED
from .latent_stages import CallCounter, LatentStages, Progress, SRLatent  # noqa: F401 (SRLatent: public here)
from .model_info import read_model_info
from .onefile import INCLUDED
from .native_scale import check_steps, passes_for, supported_steps
from .registry import REGISTRY_FILE, RegistryEntry, UnknownModelError, get_entry
from .samplers import prior_noise
from .schedule import SCHEDULE_T4, SCHEDULE_T15, ResShiftSchedule
from .strength import AUTO, Strength, StrengthKnob, check_strength, resolve_strengths
from .tiling import bicubic_crop, upscale_alpha

log = logging.getLogger("onestep_sr")

# Small models trained with training/ and committed in weights/ (offline, our licence; how it was
# made: weights/README.md and onestep_default_x4.training.json). The bundled model is the default everywhere; the official
# SinSR/ResShift weights (non-commercial licences) are one choice away.
BUNDLED_MODELS = {"onestep_default": REGISTRY_FILE.parent / "onestep_default_x4.safetensors"}
# the restoration end of a bundled model's strength knob (onestep_sr.strength), beside it
BUNDLED_RESTORATION = {"onestep_default": REGISTRY_FILE.parent / "onestep_default_x4_realworld.safetensors"}
DEFAULT_MODEL = "onestep_default"
DEFAULT_AUTOENCODER = "vq_f4"
SCHEDULES = {"T15": SCHEDULE_T15, "T4": SCHEDULE_T4}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BAND_ROWS = 256
_T = TypeVar("_T")
WeightsSpec = Union[str, os.PathLike]


@public_error
class OutOfMemoryError(RuntimeError):
    """Out of memory even with the smallest tiles."""


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise options.OptionError("dtype", dtype, "one of fp32, fp16, bf16 (or a torch dtype)")
    return DTYPES[dtype]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text
                                              or "can't allocate memory" in text)


# ---------------------------------------------------------------------------------------------
# loading


def _weights_path(spec: WeightsSpec, kind: str, models_dir, offline, progress,
                  companion: WeightsSpec | None = None) -> tuple[Path, RegistryEntry | None]:
    """A checkpoint path, a bundled model's name, or a registry name fetched into the models folder
    together with its registry autoencoder (``companion``, else its own): offline, one error names both."""
    if not isinstance(spec, (str, os.PathLike)):
        raise options.OptionError("name_or_paths" if kind == "denoiser" else "autoencoder", spec,
                                  "a model name or a checkpoint path (str or os.PathLike), or a pair / "
                                  "{'denoiser': ..., 'autoencoder': ...} of them")
    if kind == "denoiser" and str(spec) in BUNDLED_MODELS:
        path = BUNDLED_MODELS[str(spec)]
        if not path.is_file():
            raise ModelNotFoundError(f"the bundled model {spec!r} is missing from this copy of OneStep SR ({path}); "
                                     "reinstall the package, or name another model")
        return path, None
    path = Path(spec)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or path.exists():
        return path, None
    try:
        entry = get_entry(str(spec))
    except UnknownModelError as exc:
        bundled = ", ".join(BUNDLED_MODELS) if kind == "denoiser" else ""
        raise UnknownModelError(f"{exc}" + (f"; bundled: {bundled}" if bundled else "")) from None
    if entry.kind != kind:
        raise options.OptionError(kind, spec, f"a {kind}", message=f"{entry.name} is an {entry.kind}, not a {kind}")
    entries, wanted = [entry], companion or entry.autoencoder
    if kind == "denoiser" and isinstance(wanted, str):  # a registry autoencoder (not a path, not "pixel")
        from .registry import list_entries
        entries += [e for e in list_entries() if e.kind == "autoencoder" and e.name == wanted]
    return ensure_all(entries, models_dir, offline, progress, needed_by=entry.name)[0], entry


def autoencoder_for(denoiser_path: str | os.PathLike) -> str:
    """The autoencoder a denoiser checkpoint goes with: what its model info names (``"pixel"`` or
    a registry name), else ``vq_f4`` (official checkpoints)."""
    info = read_model_info(denoiser_path)
    return info.autoencoder if info else DEFAULT_AUTOENCODER


def load_model(name_or_paths: WeightsSpec | Sequence[WeightsSpec] | Mapping[str, WeightsSpec] = DEFAULT_MODEL,
               device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, *,
               schedule: str | ResShiftSchedule | None = None, sampler: Sampler | None = None,
               models_dir: str | os.PathLike | None = None, offline: bool | None = None,
               download_progress: Callable[[int, int | None], None] | None = None,
               strength: Strength = AUTO, restoration: str | os.PathLike | None = None) -> "OneStepSR":
    """A ready-to-use x4 model.

    ``name_or_paths``: the bundled model (default ``onestep_default``: offline, no download), a
    registry name (``sinsr_v1``, ``resshift_v3``, ...: downloaded on first use; its
    autoencoder, schedule and sampler come from the registry; non-commercial licences), a
    denoiser checkpoint path (a model exported by training/
    names its own autoencoder, schedule and sampler; an official one gets ``vq_f4``), or a pair /
    ``{"denoiser": ..., "autoencoder": ...}`` of names or paths (autoencoder ``"pixel"``: the
    identity autoencoder of pixel-space models).
    Registry weights are downloaded on first use (see :func:`onestep_sr.download.ensure_weights`).
    ``device``: default CUDA when available, else CPU. ``dtype``: weights' dtype, default fp16
    on CUDA and fp32 on CPU (norms and attention always run in fp32).
    ``schedule``/``sampler``: for checkpoint files, default ``T15`` and ``one_step`` (SinSR).
    ``strength``: the default restoration strength of ``upscale`` (``auto`` or 0..1) for a model
    with two weight sets: the bundled default, or any model given its ``restoration`` end (a
    checkpoint of the same network fine-tuned from it; see :mod:`onestep_sr.strength`).
    """
    strength = check_strength(strength)
    if isinstance(name_or_paths, Mapping):
        unknown = set(name_or_paths) - {"denoiser", "autoencoder"}
        if unknown or "denoiser" not in name_or_paths:
            raise ValueError(f"expected keys 'denoiser' and optionally 'autoencoder', got {sorted(name_or_paths)}")
        den_spec, ae_spec = name_or_paths["denoiser"], name_or_paths.get("autoencoder")
    elif isinstance(name_or_paths, (list, tuple)):
        if len(name_or_paths) != 2:
            raise ValueError(f"expected (denoiser, autoencoder), got {len(name_or_paths)} items")
        den_spec, ae_spec = name_or_paths
    else:
        den_spec, ae_spec = name_or_paths, None
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    fetch = dict(models_dir=models_dir, offline=offline, progress=download_progress)
    den_path, entry = _weights_path(den_spec, "denoiser", companion=ae_spec, **fetch)
    info = None if entry else read_model_info(den_path)  # a model we trained names what it needs
    ae_spec = ae_spec or (info.autoencoder if info else None) or (
        entry.autoencoder if entry and entry.autoencoder else DEFAULT_AUTOENCODER)
    ae_spec = den_path if str(ae_spec) == INCLUDED else ae_spec  # a bundle (onefile): both in one file
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        schedule = SCHEDULES[schedule]
    schedule = schedule or (entry.resshift_schedule() if entry else info.resshift_schedule() if info else SCHEDULE_T15)
    sampler = sampler or (entry.sampler if entry and entry.sampler else info.sampler if info else "one_step")
    denoiser = load_denoiser(den_path, device=device, dtype=dtype)
    if str(ae_spec) == PIXEL_AUTOENCODER:
        autoencoder = PixelSpaceAutoencoder(PixelSpaceConfig(scale=SCALE)).to(device)
    else:
        try:
            ae_path, _ = _weights_path(ae_spec, "autoencoder", **fetch)
        except (WeightsUnavailableError, DownloadError) as exc:  # say whose autoencoder it is
            raise type(exc)(f"{den_path.name} also needs its autoencoder {ae_spec}: {exc}") from exc
        autoencoder = load_autoencoder(ae_path, device=device, dtype=dtype)
    name = entry.name if entry else next((k for k, v in BUNDLED_MODELS.items() if v == den_path), den_path.name)
    restoration = restoration or (BUNDLED_RESTORATION.get(name) if name in BUNDLED_MODELS else None)
    knob = None
    if restoration is not None:
        if not Path(restoration).is_file():
            raise ModelNotFoundError(f"the restoration weights {restoration} are missing (the second weight set of "
                                    f"{name}'s strength knob); reinstall the package or name another file")
        knob = StrengthKnob(load_denoiser(den_path).state_dict(), load_denoiser(restoration).state_dict())
    return OneStepSR(denoiser, autoencoder, schedule, sampler, name=name, scale=info.scale if info else SCALE,
                     levels=info.levels if info else None, knob=knob, strength=strength)


# ---------------------------------------------------------------------------------------------
# the model object


@dataclass
class _Job:
    """What one ``upscale`` call asks for, resolved and checked."""

    sampler: Sampler
    seed: int | None
    scale: float
    tiling: Tiling
    color_fix: str
    dtype: torch.dtype
    levels: list[int] | None = None  # a progressive model's own grid
    noise: str = "official"  # samplers.NOISES


class OneStepSR(LatentStages):
    """Denoiser + VQ autoencoder + schedule + default sampler; :meth:`upscale` does the rest."""

    def __init__(self, denoiser: SwinUNetDenoiser, autoencoder: VQAutoencoder,
                 schedule: ResShiftSchedule = SCHEDULE_T15, sampler: Sampler = "one_step", name: str = "",
                 scale: int = SCALE, levels: Sequence[int] | None = None, knob: StrengthKnob | None = None,
                 strength: Strength = AUTO):
        if denoiser.config.lq_mode == "lq3" and scale != SCALE:
            raise ValueError(f"a x{scale} model needs the scale-agnostic LR condition (lq_mode unshuffle48); "
                             f"this one takes the LR image itself, which fits x{SCALE} only")
        self.denoiser, self.autoencoder = denoiser, autoencoder
        denoiser.eval(), autoencoder.eval()
        self.schedule, self.sampler, self.name = schedule, sampler, name
        self.scale, self.levels = int(scale), (list(levels) if levels else None)
        self.knob, self.strength = knob, check_strength(strength)
        self.last_strengths: list[float | None] = []  # what the last upscale used, per image (auto's choice)

    @property
    def supported_steps(self) -> list[int]:
        """The ``steps`` values :meth:`upscale` accepts (see ``native_scale``)."""
        return supported_steps(self.schedule.steps, self.levels)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "OneStepSR":
        """Move (and optionally cast) both networks, e.g. to the CPU when a host frees GPU memory."""
        dtype = resolve_dtype(dtype)
        self.denoiser.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return (f"OneStepSR({self.name or 'custom'}, x{self.scale}, sampler={self.sampler}, steps={self.supported_steps}, "
                f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')})")

    def upscale(self, image: Any, *, steps: int | None = None, stochastic: bool | None = None,
                seed: int | None = DEFAULT_SEED, scale: float | None = None, tile: int | None = None,
                overlap: int | None = None, vq_tile: int | None = None, color_fix: str = "none",
                dtype: str | torch.dtype | None = None, progress: Progress | None = None,
                strength: Strength | None = None, noise: str = "official") -> Any:
        """Super-resolve ``image`` (PIL image, numpy array H x W[ x C], torch tensor [B x ]C x H x W)
        and return the same kind, mode/dtype/layout preserved, ``scale`` times larger.

        ``steps``: 1 = one-step (SinSR), the schedule's T = full ResShift sampling (deterministic,
        or the original stochastic sampler with ``stochastic=True``; default: the model's own).
        ``seed``: the prior noise (and the stochastic sampler's); None draws a random seed.
        ``scale``: default the model's native scale (``model.scale``: 4, or 2/8 for YONOS models),
        one pass; larger requests run more passes while the result does not exceed the request, and
        what is left is one Lanczos resize (``native_scale.passes_for``).
        ``tile``/``overlap``: denoiser tiles in LR pixels (at least 64, a multiple of the model's
        block: 64 for the official models); ``vq_tile``: autoencoder tiles in LR pixels (at least
        16). Out of memory halves the tiles and retries. Rules: ``onestep_sr.options``.
        ``color_fix``: ``none``, ``adain`` or ``wavelet`` (towards the bicubic-upsampled input).
        ``dtype``: compute dtype for this call (default: the weights'); a result with NaN/Inf in
        fp16/bf16 is recomputed in fp32 automatically.
        ``strength``: restoration strength (``auto`` or 0..1; default the model's ``strength``) of a
        model with two weight sets; ``auto`` measures each image; ``last_strengths`` tells the choice.
        ``noise``: ``official`` (the official scripts' draw for the whole image) or ``tileable`` (a field
        repeating every 32 LR pixels: crops cut at multiples of 32 get the whole image's noise; see
        ``samplers.TileableNoise``).
        ``progress(done, total)``: called after every network call on a tile; raise to cancel. It is
        also called inside long network calls (``done`` unchanged, at most every 0.25 s), so a
        cancel stops within one network block, not one tile.
        """
        job = self.plan(steps=steps, stochastic=stochastic, seed=seed, scale=scale, tile=tile, overlap=overlap,
                        vq_tile=vq_tile, color_fix=color_fix, dtype=dtype, noise=noise)
        items, restore = prepare(image)
        strengths = resolve_strengths(self.knob, strength, self.strength, [item.rgb for item in items])
        counter = CallCounter(progress, sum(self._calls(item, job) for item in items))
        results = []
        for item, value in zip(items, strengths):
            if value is not None:
                self.knob.apply(self.denoiser, value)
            results.append(self._upscale_one(item, job, counter))
        self.last_strengths = strengths
        if strengths and strengths[0] is not None:
            log.info("%s: restoration strength %s", self.name, ", ".join(f"{v:g}" for v in strengths))
        return restore(results)

    # --- checks ---------------------------------------------------------------------------

    def check_options(self, strength: Strength | None = None, **options: Any) -> None:
        """Raise ValueError for ``upscale`` options it would refuse, before any image is touched."""
        resolve_strengths(self.knob, strength, self.strength, [])
        self.plan(**options)

    def plan(self, *, steps: int | None = None, stochastic: bool | None = None, seed: int | None = DEFAULT_SEED,
             scale: float | None = None, tile: int | None = None, overlap: int | None = None,
             vq_tile: int | None = None, color_fix: str = "none", dtype: str | torch.dtype | None = None,
             noise: str = "official") -> _Job:
        """The resolved sampler, tiling and dtype of an ``upscale`` call (ValueError if invalid)."""
        multiple = self.denoiser.config.latent_multiple
        scale = self.scale if scale is None else scale
        checked = options.check_upscale(steps=steps, stochastic=stochastic, seed=seed, scale=scale, tile=tile,
                                        overlap=overlap, vq_tile=vq_tile, multiple=multiple)
        steps, stochastic, t = checked["steps"], checked["stochastic"], self.schedule.steps
        if steps is None:
            sampler = self.sampler if stochastic is None else ("stochastic" if stochastic else "deterministic")
            if stochastic is not None and self.sampler == "one_step":
                raise options.OptionError("stochastic", stochastic, f"used with steps={t}", message=(
                    f"stochastic={stochastic} needs steps={t}; this model samples in one step"))
        elif self.levels:
            check_steps(steps, t, self.levels)
            sampler = "one_step" if steps == 1 else "deterministic"
        elif steps == 1:
            sampler = "one_step"
        elif steps == t:
            default = self.sampler if self.sampler != "one_step" else "deterministic"
            sampler = default if stochastic is None else ("stochastic" if stochastic else "deterministic")
        else:
            check_steps(steps, t, None)  # not 1 or T: raises with the rule of native_scale
        if color_fix not in COLOR_FIXES:
            raise options.OptionError("color_fix", color_fix, f"one of {', '.join(COLOR_FIXES)}")
        base = Tiling()
        tile = checked["tile"] or base.tile
        overlap = min(base.overlap, tile // 4) if checked["overlap"] is None else checked["overlap"]
        vq = checked["vq_tile"] or base.vq_tile
        tiling = Tiling(tile=tile, overlap=overlap, vq_tile=vq, vq_overlap=min(base.vq_overlap, vq // 4))
        if stochastic and self.levels:
            raise options.OptionError("stochastic", stochastic, "False for a progressively distilled model "
                                      "(it samples deterministically on its own levels)")
        levels = self.levels if sampler != "stochastic" else None
        return _Job(sampler, checked["seed"], checked["scale"], tiling, color_fix, resolve_dtype(dtype) or self.dtype,
                    levels, options.check_noise(noise))

    def _calls(self, item: Prepared, job: _Job) -> int:
        """Network calls on tiles of all passes for ``item``."""
        h, w = item.rgb.shape[-2:]
        total = 0
        for k in range(passes_for(self.scale, job.scale)):
            size = (h * self.scale ** k, w * self.scale ** k)
            vq, den = tile_counts(size, job.tiling, self.denoiser.config.latent_multiple, self.scale)
            total += 2 * vq + network_calls(job.sampler, self.schedule, job.levels) * den
        return total

    # --- one image ----------------------------------------------------------------------------

    def _upscale_one(self, item: Prepared, job: _Job, counter: "CallCounter") -> tuple[np.ndarray, np.ndarray | None]:
        h, w = item.rgb.shape[-2:]
        passes, source, rgb = passes_for(self.scale, job.scale), item, None
        for _ in range(passes):
            if rgb is not None:  # the next pass starts from the previous one's result
                source = Prepared(to_unit_float(torch.from_numpy(rgb)).permute(2, 0, 1)[None].float(), None,
                                  item.out_dtype)
            sh, sw = source.rgb.shape[-2:]
            rgb = self._robust(lambda tiling: self._sr(source, job, tiling, counter), job, counter,
                               f"a {sw}x{sh} image")
            color_fix_buffer(rgb, lambda r0, r1: bicubic_crop(source.rgb, self.scale, r0, r1, 0,
                                                              rgb.shape[1]).clamp(0, 1), job.color_fix, band_rows=BAND_ROWS)
        native = self.scale ** passes
        alpha = None if item.alpha is None else upscale_alpha(item.alpha, item.out_dtype, native, BAND_ROWS)
        if job.scale != native:
            size = (max(1, round(w * job.scale)), max(1, round(h * job.scale)))
            rgb = resize_array(rgb, size)
            alpha = None if alpha is None else resize_array(alpha, size)
        return rgb, alpha

    def _robust(self, run: Callable[[Tiling], _T], job: _Job, counter: "CallCounter", what: str) -> _T:
        """``run(tiling)`` in the job's dtype, recomputed in fp32 if it gives NaN/Inf and with
        halved tiles when out of memory."""
        options.warn_slow_precision(job.dtype, self.device, once_for=self)
        try:
            with self._computing_in(job.dtype), cancel_scope(counter.check):
                return self._with_tile_fallback(run, job.tiling, counter, what)
        except NonFiniteError:
            if job.dtype == torch.float32:
                raise
        log.warning("the %s result has NaN/Inf values; recomputing in fp32", str(job.dtype).replace("torch.", ""))
        counter.restart()
        with self._computing_in(torch.float32), cancel_scope(counter.check):
            return self._with_tile_fallback(run, job.tiling, counter, what)

    def _with_tile_fallback(self, run: Callable[[Tiling], _T], tiling: Tiling, counter: "CallCounter", what: str) -> _T:
        while True:
            failure = None
            try:
                return run(tiling)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            # outside the except block, so the failed attempt's tensors are freed before retrying
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            smaller = tiling.halved(options.tile_floor(self.denoiser.config.latent_multiple), options.VQ_TILE_FLOOR)
            if smaller is None:
                raise OutOfMemoryError(
                    f"out of memory upscaling {what} on {self.device} even with the smallest tiles "
                    f"(tile {tiling.tile}, VQ tile {tiling.vq_tile}) in {str(self.dtype).replace('torch.', '')}: "
                    f"{failure}. Free memory (close other programs/models), use fp16, or run on another device."
                )
            log.warning("out of memory with tile %d / VQ tile %d; retrying with %d / %d",
                        tiling.tile, tiling.vq_tile, smaller.tile, smaller.vq_tile)
            tiling = smaller
            counter.restart()

    def _sr(self, item: Prepared, job: _Job, tiling: Tiling, counter: "CallCounter") -> np.ndarray:
        h, w = item.rgb.shape[-2:]
        out = np.empty((self.scale * h, self.scale * w, 3), dtype=item.out_dtype)

        def emit(row0: int, rows: torch.Tensor) -> None:
            out[row0:row0 + rows.shape[1]] = from_unit_float(model_to_unit(rows).permute(1, 2, 0).cpu(), item.out_dtype)

        # a random seed must not come from torch.seed(): that would reseed the host's global RNG
        generator = torch.Generator().manual_seed(job.seed if job.seed is not None else secrets.randbits(63))
        lq = unit_to_model(item.rgb).to(self.device)
        with torch.inference_mode():
            super_resolve_rows(lq, self.denoiser, self.autoencoder, self.schedule,
                               prior_noise(job.noise, generator, self.scale), emit,
                               sampler=job.sampler, tiling=tiling, on_tile=counter.tick, scale=self.scale,
                               levels=job.levels)
        return out

    @contextmanager
    def _computing_in(self, dtype: torch.dtype) -> Iterator[None]:
        """Run with weights in ``dtype``: in place when the round trip is exact (to fp32), else on
        temporary copies, so the stored weights never lose precision. Each network gets its own
        dtype back afterwards."""
        kept = (self.denoiser, self.autoencoder)
        dtypes = [next(m.parameters(), torch.empty(0, dtype=dtype)).dtype for m in kept]  # parameterless: any
        if all(d == dtype for d in dtypes):
            yield
            return
        if dtype == torch.float32:
            for module in kept:
                module.to(dtype)
        else:
            self.denoiser, self.autoencoder = (copy.deepcopy(m).to(dtype) for m in kept)
        try:
            yield
        finally:
            self.denoiser, self.autoencoder = (m.to(d) for m, d in zip(kept, dtypes))
