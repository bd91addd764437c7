"""The models a host offers in its model picker, and the weights behind each one.

Entries, in this order:

* each bundled model present in ``weights/`` (``default``; offline);
* each registry denoiser (``SinSR v1``, ``ResShift v1``), from the models folders, or downloaded
  into the first folder on first use;
* each other checkpoint file directly in the models folders (titled by its file name).

``source`` identifies an entry independently of download state: ``registry:<name>``,
``bundled:<name>`` or the file's path. ``steps`` is 1 for one-step models, else the schedule's T.
Hosts build their own labels from ``title`` and ``steps`` (A1111: ``OneStepSR 4x SinSR v1``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CHECKPOINT_SUFFIXES
from .model import BUNDLED_MODELS
from .model_info import read_model_info
from .models import PIXEL_AUTOENCODER
from .registry import RegistryEntry, get_entry, list_entries

REGISTRY, BUNDLED = "registry:", "bundled:"
_WORDS = {"sinsr": "SinSR", "resshift": "ResShift", "bicsr": "bicubic", "x4": "", "onestep": ""}


@dataclass(frozen=True)
class CatalogEntry:
    title: str                # "SinSR v1", "ResShift bicubic", "default", a file's stem
    source: str               # registry:<name>, bundled:<name> or a file path
    steps: int = 1            # 1 for one-step models, else the schedule's T (multi-step ResShift)
    scale: int = 4            # the model's native scale (2 / 8: YONOS models)
    distilled: bool = False   # progressively distilled: ``steps`` is the only step count it runs

    @property
    def registry_name(self) -> str | None:
        return self.source[len(REGISTRY):] if self.source.startswith(REGISTRY) else None


def pretty(name: str) -> str:
    """``sinsr_v1`` -> ``SinSR v1``, ``resshift_bicsr_x4`` -> ``ResShift bicubic``,
    ``onestep_default`` -> ``default``."""
    return " ".join(w for w in (_WORDS.get(word, word) for word in name.split("_")) if w)


def _registry_steps(entry: RegistryEntry) -> int:
    return 1 if entry.sampler == "one_step" else entry.resshift_schedule().steps


def model_files(folders: list[str | os.PathLike]) -> list[Path]:
    """Checkpoint files directly in the folders (first folder first, names sorted)."""
    found = []
    for folder in folders:
        if os.path.isdir(folder):
            found += sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    return found


def find_file(name: str, folders: list[str | os.PathLike]) -> Path | None:
    return next((p for p in model_files(folders) if p.name == name), None)


def discover(folders: list[str | os.PathLike]) -> list[CatalogEntry]:
    """Every entry for the models folders (a file whose model info cannot be read is still listed,
    as a one-step model: its error is reported when it is used, not when the picker is built)."""
    registry = list_entries()
    known_files = {e.file for e in registry}
    out = [CatalogEntry(pretty(name), BUNDLED + name) for name, path in BUNDLED_MODELS.items() if path.is_file()]
    out += [CatalogEntry(pretty(e.name), REGISTRY + e.name, _registry_steps(e)) for e in registry if e.kind == "denoiser"]
    seen = {(e.title, e.steps) for e in out}
    for path in model_files(folders):
        if path.name in known_files:      # a registry file placed by hand is that registry entry
            continue
        try:
            info = read_model_info(path)
        except Exception:  # noqa: BLE001 - see the docstring
            info = None
        steps = info.resshift_schedule().steps if info and info.sampler != "one_step" else 1
        if info and info.levels:
            steps = len(info.levels)
        title = path.stem if (path.stem, steps) not in seen else path.name
        if (title, steps) not in seen:
            seen.add((title, steps))
            out.append(CatalogEntry(title, str(path), steps, info.scale if info else 4, bool(info and info.levels)))
    return out


@dataclass
class Weights:
    """What ``onestep_sr.load_model`` needs for an entry."""
    spec: dict[str, str]               # {"denoiser": ..., "autoencoder": ...} names or paths
    entry: RegistryEntry | None        # the registry entry, for its schedule and sampler


def weights_for(source: str, folders: list[str | os.PathLike]) -> Weights:
    """The weights of an entry: local files in ``folders`` where present, else registry names
    (downloaded into the download folder by ``load_model``). Raises ValueError / FileNotFoundError
    with a readable message for an unknown entry or a missing file."""
    if source.startswith(BUNDLED):
        name = source[len(BUNDLED):]
        if name not in BUNDLED_MODELS or not BUNDLED_MODELS[name].is_file():
            raise FileNotFoundError(f"the bundled model {name!r} is not in this copy of OneStep SR "
                                    f"({BUNDLED_MODELS.get(name, 'unknown name')})")
        return Weights({"denoiser": str(BUNDLED_MODELS[name])}, None)
    if source.startswith(REGISTRY):
        entry = get_entry(source[len(REGISTRY):])
        local = find_file(entry.file, folders)
        spec = {"denoiser": str(local) if local else entry.name}
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} is gone (moved or deleted?); refresh the model list")
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


def missing_downloads(source: str, folders: list[str | os.PathLike]) -> list[RegistryEntry]:
    """The registry files an entry still needs (none for bundled and local files whose
    autoencoder is present): what a download button would fetch. ``weights_for`` names a registry
    entry only when its file is in none of the folders (a found file is its path)."""
    registry = {e.name: e for e in list_entries()}
    return [registry[v] for v in weights_for(source, folders).spec.values() if v in registry]
