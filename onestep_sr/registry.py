"""The registry of official checkpoints (``weights/registry.json``) and where weights live locally.

The models folder is, in order: an explicit argument, the ``ONESTEP_SR_MODELS`` environment
variable, ``~/.cache/onestep_sr/models``. Reading the registry touches no network.

Downloads come from each entry's official URL, or from a mirror: with ``ONESTEP_SR_MIRROR`` set to a
URL (``https://host/path``) or a local folder, every entry's ``url`` is ``<mirror>/<file>`` (a
folder as a ``file://`` URL), read at call time. The registry (``REGISTRY_FILE``, also read at
call time) is the one source of URLs: everything that downloads or names a URL gets it from
:func:`get_entry` / :func:`list_entries`.
"""
from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from .schedule import ResShiftSchedule
from .errors import public_error

REGISTRY_FILE = Path(__file__).resolve().parents[1] / "weights" / "registry.json"
MODELS_ENV = "ONESTEP_SR_MODELS"
MIRROR_ENV = "ONESTEP_SR_MIRROR"
KINDS = ("denoiser", "autoencoder")
#: Where no exact official size is known, a file outside +-1% of the expected fp32 payload is refused
#: (a real checkpoint is its payload plus a little pickle overhead: +0.04% for these architectures).
PAYLOAD_TOLERANCE = 0.01


@public_error
class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0])


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    file: str
    url: str
    kind: str
    licence: str
    description: str = ""
    expected_payload_bytes: Optional[int] = None
    size_bytes: Optional[int] = None  # the official file's exact size, where a public source states it
    sha256: Optional[str] = None
    source: str = ""  # where size_bytes / sha256 come from, or why they are unknown
    architecture: str = "official"
    autoencoder: Optional[str] = None
    sampler: Optional[str] = None
    schedule: dict[str, Any] = field(default_factory=dict)

    def resshift_schedule(self) -> ResShiftSchedule:
        if self.kind != "denoiser":
            raise ValueError(f"{self.name} is an {self.kind}; only denoisers have a schedule")
        return ResShiftSchedule(**self.schedule)

    def size_problem(self, size: int) -> Optional[str]:
        """None when a file of ``size`` bytes can be this entry's, else what is wrong, naming both
        sizes: the exact official size when known, else +-PAYLOAD_TOLERANCE of the expected payload."""
        if self.size_bytes is not None:
            if size != self.size_bytes:
                return f"is {_bytes(size)}, but the official {self.file} is exactly {_bytes(self.size_bytes)}"
        elif self.expected_payload_bytes:
            low = self.expected_payload_bytes * (1 - PAYLOAD_TOLERANCE)
            if not low <= size <= self.expected_payload_bytes * (1 + PAYLOAD_TOLERANCE):
                return (f"is {_bytes(size)}, but the official {self.file} is about "
                        f"{_bytes(self.expected_payload_bytes)} (its fp32 weights; anything more than "
                        f"{PAYLOAD_TOLERANCE:.0%} away is another file)")
        return None


def _bytes(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, RegistryEntry]:
    data = json.loads(path.read_text())
    entries = {}
    for name, raw in data["models"].items():
        entry = RegistryEntry(name=name, **raw)
        if entry.kind not in KINDS:
            raise ValueError(f"{path}: model {name!r} has unknown kind {entry.kind!r}")
        entries[name] = entry
    return entries


def mirror() -> str | None:
    """The ``ONESTEP_SR_MIRROR`` setting (a URL or a folder), or None."""
    return os.environ.get(MIRROR_ENV, "").strip() or None


def mirror_url(base: str, file: str) -> str:
    """``<base>/<file>`` for a URL base (``scheme://...``), else the ``file://`` URL of the file in
    the folder ``base``."""
    if "://" in base:
        return base.rstrip("/") + "/" + urllib.parse.quote(file)
    return (Path(base).expanduser().resolve() / file).as_uri()


def _mirrored(entry: RegistryEntry) -> RegistryEntry:
    base = mirror()
    return replace(entry, url=mirror_url(base, entry.file)) if base else entry


def list_entries(path: Path | None = None) -> list[RegistryEntry]:
    """The registry's models (``path``: default ``REGISTRY_FILE``, looked up at call time), with
    the mirror's URLs when ``ONESTEP_SR_MIRROR`` is set."""
    return [_mirrored(e) for e in _load(path or REGISTRY_FILE).values()]


def get_entry(name: str, path: Path | None = None) -> RegistryEntry:
    entries = _load(path or REGISTRY_FILE)
    if name not in entries:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(entries)}")
    return _mirrored(entries[name])


def models_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "onestep_sr" / "models"
