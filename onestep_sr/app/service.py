"""What the web app does, without gradio: the model picker's entries and their download state,
downloads, one loaded model at a time, and batches of uploaded files upscaled one by one.

Every failure a user can cause (a file that is not an image, truncated, over the pixel limit; a
model that is missing offline or broken) becomes a message; nothing here ends the server.
Results are written atomically, so a failed or cancelled image leaves no file behind.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from ..catalog import BUNDLED, REGISTRY, CatalogEntry, discover, missing_downloads, weights_for
from ..download import ensure_weights
from ..imagefile import DEFAULT_MAX_PIXELS, folder_problem, open_image
from ..imageio import ImageInputError, read_image, write_image_atomic
from ..model import BUNDLED_RESTORATION, SCALE, OneStepSR, load_model
from ..options import OptionError, check_seed, check_upscale, number_from_host, whole_from_host
from ..strength import AUTO, Strength, check_strength, describe
from ..registry import models_dir as default_models_dir
from ..errors import public_error

PREVIEW_SIDE = 1024                     # gallery thumbnails: the result fitted into this square
COMPARE_SIDE = 1536                     # before/after view: the result's centre, at most this square
Progress = Callable[[float, str], None]  # (fraction done, what is happening)


@public_error
class Cancelled(Exception):
    """The user pressed Cancel."""


@dataclass(frozen=True)
class Settings:
    """An upscale's options as the UI gives them."""
    steps: str = "1"              # a value of ``AppService.step_choices``
    seed: int = -1                # -1: a random seed (reported with the result)
    tile: int = 256               # denoiser tile in input pixels
    color_fix: str = "none"
    scale: float = float(SCALE)
    strength: Strength = AUTO     # restoration strength: "auto" (measured per image) or 0..1 (models with two
                                  # weight sets, see ``AppService.has_strength``; the others take only auto)


@dataclass
class Result:
    """One uploaded file: the written result, or the reason there is none."""
    name: str
    output: Path | None = None       # the full result (PNG)
    preview: Path | None = None      # the gallery's thumbnail (the result itself when small)
    before: Path | None = None       # comparison view: the input, bicubic, over the region of ``after``
    after: Path | None = None        # comparison view: the result's centre at full resolution
    cropped: bool = False            # the comparison shows only the centre
    error: str | None = None
    seed: int | None = None
    seconds: float = 0.0
    size: tuple[int, int] | None = None
    strength: str | None = None      # "restoration strength 0.35 (auto)"; None for a model without the knob

    def line(self) -> str:
        if self.error:
            return f"{self.name}: {self.error}"
        crop = "; the comparison shows its centre" if self.cropped else ""
        strength = f", {self.strength}" if self.strength else ""
        return f"{self.name}: {self.size[0]}x{self.size[1]} in {self.seconds:.1f} s (seed {self.seed}){strength}{crop}"


@dataclass
class AppService:
    """``folders``: models folders in search order; downloads go into the first one."""
    folders: list[Path] = field(default_factory=lambda: [default_models_dir()])
    output_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "onestep_sr_app")
    max_pixels: int = DEFAULT_MAX_PIXELS
    preview_side: int = PREVIEW_SIDE
    compare_side: int = COMPARE_SIDE
    device: str | None = None
    dtype: str | None = None
    offline: bool | None = None

    def __post_init__(self) -> None:
        self.folders = [Path(f).resolve() for f in self.folders]
        self._lock = threading.Lock()          # one model load / upscale at a time in this process
        self._loaded: tuple[str, OneStepSR] | None = None
        self._cancel: dict[str, threading.Event] = {}

    # --- the model picker --------------------------------------------------------------------

    def entries(self) -> list[CatalogEntry]:
        return discover(self.folders)

    def entry(self, source: str) -> CatalogEntry:
        found = next((e for e in self.entries() if e.source == source), None)
        if found is None:
            raise ValueError(f"model {source!r} is not available (any more); refresh the model list")
        return found

    @staticmethod
    def label(entry: CatalogEntry) -> str:
        kind = " (bundled)" if entry.source.startswith(BUNDLED) else ""
        native = f" (x{entry.scale})" if entry.scale != 4 else ""
        return entry.title + kind + native + (f" - {entry.steps} steps" if entry.steps > 1 else "")

    def choices(self) -> list[tuple[str, str]]:
        return [(self.label(e), e.source) for e in self.entries()]

    def default_source(self) -> str | None:
        """The bundled model when there is one, else the first model that needs no download."""
        entries = self.entries()
        ready = [e for e in entries if not self.missing(e.source)]
        candidates = ready or entries
        return candidates[0].source if candidates else None

    def missing(self, source: str) -> list:
        return missing_downloads(source, self.folders)

    def status(self, source: str) -> str:
        """One line: whether the model can run now, or what a download would fetch."""
        try:
            missing = self.missing(source)
        except (ValueError, KeyError, OSError) as exc:
            return f"unavailable: {exc}"
        if not missing:
            kind = "bundled, offline" if source.startswith(BUNDLED) else "downloaded" if source.startswith(REGISTRY) \
                else "local file"
            return f"ready ({kind})"
        sizes = [f"{e.file} ({e.expected_payload_bytes / 1e6:.0f} MB)" if e.expected_payload_bytes else e.file
                 for e in missing]
        return (f"not downloaded: {', '.join(sizes)} into {self.folders[0]} "
                f"(licence: {'; '.join(sorted({e.licence for e in missing}))})")

    @staticmethod
    def has_strength(source: str) -> bool:
        """Whether the entry has the restoration-strength knob (two weight sets: the bundled default),
        known without loading it; the others take only ``strength="auto"`` (a no-op for them)."""
        name = source[len(BUNDLED):] if source.startswith(BUNDLED) else None
        return name in BUNDLED_RESTORATION and BUNDLED_RESTORATION[name].is_file()

    def step_choices(self, source: str) -> list[tuple[str, str]]:
        entry = self.entry(source)
        steps = entry.steps
        if steps == 1:
            return [("1 (one step)", "1")]
        if entry.distilled:  # progressively distilled: only its own step count
            return [(f"{steps} steps (distilled for them)", f"{steps}/deterministic")]
        return [(f"{steps} steps, stochastic (the paper's sampler)", f"{steps}/stochastic"),
                (f"{steps} steps, deterministic", f"{steps}/deterministic"), ("1 (one step)", "1")]

    # --- downloads and loading ---------------------------------------------------------------

    def download(self, source: str, progress: Progress | None = None) -> str:
        """Fetch what the entry still needs into the first models folder; the new status."""
        missing = self.missing(source)
        for index, entry in enumerate(missing, 1):
            def report(done: int, total: int | None, entry=entry, index=index) -> None:
                if progress:
                    fraction = done / total if total else 0.0
                    progress(fraction, f"downloading {entry.file} ({index}/{len(missing)}): {done / 1e6:.1f} MB")
            ensure_weights(entry, models_dir=self.folders[0], offline=self.offline, progress=report)
        return self.status(source)

    def model(self, source: str, progress: Progress | None = None) -> OneStepSR:
        """The entry's model, loaded once and kept until another entry is used."""
        key = repr((source, self.device, self.dtype))
        if self._loaded and self._loaded[0] == key:
            return self._loaded[1]
        self._loaded = None                      # free the old model before loading the next
        weights = weights_for(source, self.folders)
        entry = weights.entry

        def report(done: int, total: int | None) -> None:
            if progress:
                progress(done / total if total else 0.0, f"downloading weights: {done / 1e6:.1f} MB")

        model = load_model(weights.spec, device=self.device, dtype=self.dtype, models_dir=self.folders[0],
                           offline=self.offline, download_progress=report,
                           schedule=entry.resshift_schedule() if entry else None,
                           sampler=entry.sampler if entry else None)
        self._loaded = (key, model)
        return model

    # --- cancellation --------------------------------------------------------------------------
    # A session's Cancel flag is cleared when a run is requested (``arm``), not when it starts, so
    # Cancel also drops a run that is still waiting in the queue.

    def cancel_flag(self, session: str) -> threading.Event:
        return self._cancel.setdefault(session, threading.Event())

    def arm(self, session: str) -> None:
        self.cancel_flag(session).clear()

    def cancel(self, session: str) -> None:
        self.cancel_flag(session).set()

    # --- upscaling -----------------------------------------------------------------------------

    def upscale_files(self, paths: list[str | os.PathLike], source: str, settings: Settings,
                      session: str = "local", progress: Progress | None = None) -> Iterator[Result]:
        """Upscale the files one by one, yielding each one's result as soon as it is done. A bad
        file gives a result with an error and the batch goes on; ``cancel(session)`` (since the
        last ``arm(session)``) stops it after the current network call: :class:`Cancelled` is
        raised and the results already yielded stay. Before any weights are loaded: the output
        folder must be writable (OSError), and every file's header is checked (readable image,
        ``max_pixels``); when no file passes, no model is loaded at all."""
        cancelled = self.cancel_flag(session)
        options = self._options(settings)
        problem = folder_problem(self.output_dir)
        if problem:
            raise OSError(f"cannot write results into {self.output_dir}: {problem}")
        problems = [self._input_problem(Path(path)) for path in paths]
        model = None
        if any(p is None for p in problems):
            with self._lock:                 # never held across a yield: a dropped client cannot keep it
                model = self.model(source, progress)
                model.check_options(**options)
        run_dir = Path(self.output_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        for index, path in enumerate(paths):
            name = Path(path).name

            def tick(done: int, total: int, index=index, name=name) -> None:
                if cancelled.is_set():
                    raise Cancelled(f"cancelled during {name}")
                if progress:
                    progress((index + done / max(total, 1)) / len(paths), f"{name} ({index + 1}/{len(paths)})")

            if cancelled.is_set():
                raise Cancelled(f"cancelled before {name}")
            if problems[index] is not None:
                yield Result(name, error=problems[index])
                continue
            with self._lock:
                result = self._one(model, Path(path), run_dir / f"{index:03d}", options, tick)
            yield result

    def _options(self, settings: Settings) -> dict:
        """The engine's options from the page's values (or an API caller's): numbers are used as
        given or refused with the rule (``onestep_sr.options``), never rounded; -1 = a random seed."""
        steps, _, sampler = str(settings.steps).partition("/")
        if sampler not in ("", "stochastic", "deterministic"):
            raise OptionError("steps", settings.steps, "one of the model's step choices (e.g. '1', "
                              "'15/stochastic', '15/deterministic')")
        seed = check_seed(whole_from_host("seed", -1 if settings.seed is None else settings.seed), random=-1)
        options = dict(steps=whole_from_host("steps", steps), seed=secrets.randbelow(2**31) if seed is None else seed,
                       tile=whole_from_host("tile", settings.tile), color_fix=settings.color_fix,
                       scale=number_from_host("scale", settings.scale))
        if sampler:
            options["stochastic"] = sampler == "stochastic"
        check_upscale(**options)
        options["strength"] = check_strength(settings.strength)  # a model without the knob refuses a number
        return options

    def _input_problem(self, path: Path) -> str | None:
        """Why the file cannot be upscaled, from its header only (no pixel decoded), or None."""
        try:
            with open_image(path, self.max_pixels):
                return None
        except ImageInputError as exc:
            return str(exc).removeprefix(f"{path}: ")

    def _one(self, model: OneStepSR, path: Path, folder: Path, options: dict, tick) -> Result:
        name = path.name
        start = time.perf_counter()
        try:
            image = read_image(path, max_pixels=self.max_pixels)
        except ImageInputError as exc:
            return Result(name, error=str(exc).removeprefix(f"{path}: "))
        try:
            out = model.upscale(image, progress=tick, **options)
        except Cancelled:
            raise
        except MemoryError:
            return Result(name, error=f"out of memory at {image.width}x{image.height}; lower the tile size")
        except (RuntimeError, ValueError) as exc:
            return Result(name, error=f"upscaling failed: {exc}")
        strength = describe(model.last_strengths, options["strength"] == AUTO)
        try:
            result = self._write(Result(name, seed=options["seed"], size=out.size, strength=strength), image, out,
                                 folder, f"{Path(name).stem}_x{options['scale']:g}")
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return Result(name, error=f"cannot write the result into {folder}: {exc}")
        result.seconds = time.perf_counter() - start
        return result

    def _write(self, result: Result, image: Image.Image, out: Image.Image, folder: Path, stem: str) -> Result:
        """The result (full size), and the small images the page shows: a thumbnail when the result
        is larger than ``preview_side``, and the comparison pair over the result's centre when it is
        larger than ``compare_side`` (a browser cannot show a 16000 x 12000 image side by side)."""
        result.output = folder / f"{stem}.png"
        write_image_atomic(out, result.output)
        mode = "RGBA" if "A" in out.mode else "RGB"
        shown = out if out.mode == mode else out.convert(mode)
        result.preview = result.after = result.output
        if max(out.size) > self.preview_side:
            thumb = shown.copy()
            thumb.thumbnail((self.preview_side, self.preview_side), Image.Resampling.LANCZOS)
            result.preview = folder / f"{stem}_preview.png"
            write_image_atomic(thumb, result.preview)
        width, height = min(out.width, self.compare_side), min(out.height, self.compare_side)
        left, top = (out.width - width) // 2, (out.height - height) // 2
        result.cropped = (width, height) != out.size
        if result.cropped or shown is not out:
            result.after = folder / f"{stem}_after.png"
            write_image_atomic(shown.crop((left, top, left + width, top + height)), result.after)
        sx, sy = image.width / out.width, image.height / out.height
        before = image.convert(mode).resize((width, height), Image.Resampling.BICUBIC,
                                            box=(left * sx, top * sy, (left + width) * sx, (top + height) * sy))
        result.before = folder / f"{stem}_before.png"
        write_image_atomic(before, result.before)
        return result
