"""The upscaler dropdown: one entry per usable model, and the weights behind each entry.

Entries (their ``name`` is what the Extras tab, hires fix and the API's ``upscaler_1`` use, so
it never depends on download state):

* ``OneStepSR 4x default`` for each bundled model present in ``weights/``;
* each registry model (``OneStepSR 4x SinSR v1``; ResShift models run their schedule's steps:
  ``OneStepSR 4x ResShift v1 (15 steps)``), from the models folders, or downloaded there into the
  first folder on first use, like the webui's own ESRGAN/SwinIR entries;
* each other checkpoint file in the models folders (``OneStepSR 4x <file name>``; a model
  exported by ``training/`` that samples in several steps says so too).

``data_path`` (handed back to ``do_upscale``) is ``registry:<name>``, ``bundled:<name>`` or the
file's path."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...onestep_sr.checkpoint import CHECKPOINT_SUFFIXES
from ...onestep_sr.model import BUNDLED_MODELS
from ...onestep_sr.model_info import read_model_info
from ...onestep_sr.models import PIXEL_AUTOENCODER
from ...onestep_sr.registry import RegistryEntry, get_entry, list_entries

PREFIX = "OneStepSR 4x"
REGISTRY, BUNDLED = "registry:", "bundled:"
_WORDS = {"sinsr": "SinSR", "resshift": "ResShift", "bicsr": "bicubic", "x4": "", "onestep": ""}  # prefix says it


@dataclass(frozen=True)
class Entry:
    name: str                 # the dropdown label
    data_path: str            # registry:<name>, bundled:<name> or a file path
    steps: int = 1            # 1 for one-step models, else the schedule's T (multi-step ResShift)


def pretty(name: str) -> str:
    """``sinsr_v1`` -> ``SinSR v1``, ``resshift_bicsr_x4`` -> ``ResShift bicubic``,
    ``onestep_default`` -> ``default``."""
    return " ".join(w for w in (_WORDS.get(word, word) for word in name.split("_")) if w)


def _label(title: str, steps: int) -> str:
    return f"{PREFIX} {title}" + (f" ({steps} steps)" if steps > 1 else "")


def _registry_steps(entry: RegistryEntry) -> int:
    return 1 if entry.sampler == "one_step" else entry.resshift_schedule().steps


def model_files(folders: list[str]) -> list[Path]:
    """Checkpoint files directly in the folders (first folder first, names sorted)."""
    found = []
    for folder in folders:
        if os.path.isdir(folder):
            found += sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    return found


def find_file(name: str, folders: list[str]) -> Path | None:
    return next((p for p in model_files(folders) if p.name == name), None)


def discover(folders: list[str]) -> list[Entry]:
    """Every entry for the models folders ``folders`` (unreadable files are left out)."""
    registry = list_entries()
    known_files = {e.file for e in registry}
    out = [Entry(_label(pretty(name), 1), BUNDLED + name) for name, path in BUNDLED_MODELS.items() if path.is_file()]
    out += [Entry(_label(pretty(e.name), _registry_steps(e)), REGISTRY + e.name, _registry_steps(e))
            for e in registry if e.kind == "denoiser"]
    seen = {e.name for e in out}
    for path in model_files(folders):
        if path.name in known_files:      # a registry file placed by hand is that registry entry
            continue
        try:
            info = read_model_info(path)
        except Exception:  # noqa: BLE001 - a broken file is reported when it is used, not at start-up
            info = None
        steps = info.resshift_schedule().steps if info and info.sampler != "one_step" else 1
        name = _label(path.stem, steps)
        if name in seen:
            name = _label(path.name, steps)
        if name not in seen:
            seen.add(name)
            out.append(Entry(name, str(path), steps))
    return out


@dataclass
class Weights:
    """What ``onestep_sr.load_model`` needs for an entry."""
    spec: dict[str, str]               # {"denoiser": ..., "autoencoder": ...} names or paths
    entry: RegistryEntry | None        # the registry entry, for its schedule and sampler


def weights_for(data_path: str, folders: list[str]) -> Weights:
    """The weights of an entry: local files in ``folders`` where present, else registry names
    (downloaded into the download folder by ``load_model``). Raises ValueError / FileNotFoundError
    with a readable message for an unknown entry or a missing file."""
    if data_path.startswith(BUNDLED):
        name = data_path[len(BUNDLED):]
        if name not in BUNDLED_MODELS or not BUNDLED_MODELS[name].is_file():
            raise FileNotFoundError(f"the bundled model {name!r} is not in this copy of the extension "
                                    f"({BUNDLED_MODELS.get(name, 'unknown name')})")
        return Weights({"denoiser": str(BUNDLED_MODELS[name])}, None)
    if data_path.startswith(REGISTRY):
        entry = get_entry(data_path[len(REGISTRY):])
        local = find_file(entry.file, folders)
        spec = {"denoiser": str(local) if local else entry.name}
    else:
        path = Path(data_path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} is gone (moved or deleted?); Reload UI to refresh the "
                                    f"OneStepSR entries")
        entry = next((e for e in list_entries() if e.kind == "denoiser" and e.file == path.name), None)
        spec = {"denoiser": str(path)}
    autoencoder = entry.autoencoder if entry and entry.autoencoder else None
    if autoencoder is not None:
        local = find_file(get_entry(autoencoder).file, folders)
        spec["autoencoder"] = str(local) if local else autoencoder
    elif entry is None:
        info = read_model_info(spec["denoiser"])
        name = info.autoencoder if info else "vq_f4"
        if name != PIXEL_AUTOENCODER:
            local = find_file(get_entry(name).file, folders)
            spec["autoencoder"] = str(local) if local else name
    return Weights(spec, entry)
