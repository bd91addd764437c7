"""Fetching registry weights: resumable, hash-checked, atomic, with a clear offline message.

A download goes to ``<file>.part`` (resumed with an HTTP Range request when one exists), is
checked (complete length, loads as a checkpoint, sha256 equal to the known one), then renamed
into place. When the authors publish no hash, the first verified download pins it in
``<file>.sha256`` beside the weights; later runs check the file against it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import CheckpointError, read_checkpoint
from .registry import RegistryEntry, get_entry, models_dir

OFFLINE_ENVS = ("ONESTEP_SR_OFFLINE", "HF_HUB_OFFLINE")
CHUNK = 1 << 20
USER_AGENT = "onestep-sr (weights downloader)"
Progress = Callable[[int, Optional[int]], None]


class DownloadError(RuntimeError):
    """A transfer failed or gave a file that is not the expected one."""


class WeightsUnavailableError(RuntimeError):
    """The weights are not on disk and may not be downloaded (offline)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def known_hash(entry: RegistryEntry, target: Path) -> Optional[str]:
    """The registry's hash, else the one pinned beside the file, else None."""
    if entry.sha256:
        return entry.sha256.lower()
    pin = _sidecar(target)
    return pin.read_text().split()[0].lower() if pin.is_file() else None


def is_offline(offline: Optional[bool]) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in OFFLINE_ENVS)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _terminal_progress(done: int, total: Optional[int]) -> None:
    if total:
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done / 2**20:8.1f}/{total / 2**20:.1f} MiB")
    else:
        sys.stderr.write(f"\r{done / 2**20:8.1f} MiB")
    sys.stderr.flush()


def _fetch_to_part(url: str, part: Path, progress: Optional[Progress], timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size. Raises DownloadError when the
    body is shorter than announced (the .part is kept for the next try)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # our .part is not a prefix of what the server has
            part.unlink()
            return _fetch_to_part(url, part, progress, timeout)
        raise
    with response:
        resumed = offset and response.status == 206
        if not resumed:
            offset = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        with open(part, "ab" if resumed else "wb") as f:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    raise DownloadError(f"{url}: transfer broke off after {done} bytes ({exc})") from exc
                if not block:
                    break
                f.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done != total:
        raise DownloadError(f"{url}: transfer ended after {done} of {total} bytes; run again to resume")


def _verify(entry: RegistryEntry, part: Path, expected: Optional[str]) -> str:
    actual = sha256_of(part)
    if expected and actual != expected:
        part.unlink()
        raise DownloadError(
            f"{entry.file} from {entry.url} has sha256 {actual}, expected {expected}; the file was deleted"
        )
    probe = part.with_name(f".{entry.file}.verify{Path(entry.file).suffix}")
    os.replace(part, probe)
    try:
        read_checkpoint(probe)
    except CheckpointError as exc:
        probe.unlink()
        raise DownloadError(f"{entry.file} from {entry.url} is not a usable checkpoint: {exc}") from exc
    os.replace(probe, part)
    return actual


def ensure_weights(name_or_entry: str | RegistryEntry, folder: str | os.PathLike | None = None,
                   offline: Optional[bool] = None, progress: Optional[Progress] = None,
                   retries: int = 3, backoff: float = 1.0, timeout: float = 30.0) -> Path:
    """Path of the entry's weights in the models folder, downloading them first if needed."""
    entry = get_entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    target = models_dir(folder) / entry.file
    expected = known_hash(entry, target)
    if target.is_file():
        if expected:
            actual = sha256_of(target)
            if actual != expected:
                raise DownloadError(
                    f"{target} has sha256 {actual} but {expected} is expected (pinned in "
                    f"{_sidecar(target).name} or the registry); move it away to download it again"
                )
        return target
    if is_offline(offline):
        raise WeightsUnavailableError(
            f"{entry.name} is not available offline: download {entry.url} and save it as {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if progress is None and sys.stderr.isatty():
        progress = _terminal_progress
    for attempt in range(1, retries + 1):
        try:
            _fetch_to_part(entry.url, part, progress, timeout)
            break
        except (DownloadError, urllib.error.URLError, OSError) as exc:
            if attempt == retries:
                raise DownloadError(f"could not download {entry.url} to {target}: {exc}") from exc
            time.sleep(backoff * attempt)
    actual = _verify(entry, part, expected)
    os.replace(part, target)
    if not expected:
        _atomic_write_text(_sidecar(target), f"{actual}  {entry.file}\n")
    return target
