"""Fetching registry weights: resumable, hash-checked, atomic, with a clear offline message.

A download goes to ``<file>.part`` (resumed with an HTTP Range request when one exists), is
checked (complete length, loads as a checkpoint, sha256 equal to the known one), then renamed
into place. When the authors publish no hash, the first verified download pins it in
``<file>.sha256`` beside the weights; later runs check the file against it. A file already on
disk is never downloaded over: if it does not match its known hash, that is an error.

Only the standard library is used; nothing touches the network at import time.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import CheckpointError, atomic_write_text, read_checkpoint
from .registry import RegistryEntry, get_entry
from .registry import models_dir as resolve_models_dir
from .errors import public_error

OFFLINE_ENVS = ("ONESTEP_SR_OFFLINE", "HF_HUB_OFFLINE")
TRUE_WORDS = ("1", "true", "yes", "on")
CHUNK = 1 << 20
USER_AGENT = "onestep-sr/0.1 (weights downloader; Python urllib)"
TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
Progress = Callable[[int, Optional[int]], None]

log = logging.getLogger("onestep_sr")


@public_error
class DownloadError(RuntimeError):
    """A transfer failed or gave a file that is not the expected one."""


@public_error
class HashMismatchError(DownloadError):
    """A file's sha256 differs from the one in the registry or pinned beside it."""


@public_error
class WeightsUnavailableError(RuntimeError):
    """The weights are not on disk and may not be downloaded (offline)."""


class _RangeNotSatisfiable(Exception):
    """HTTP 416 for our Range request; ``total`` is the size the server reports, if any."""

    def __init__(self, total: Optional[int]):
        super().__init__(total)
        self.total = total


# ---------------------------------------------------------------------------------------------
# hashes and pins


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(target: Path) -> Path:
    """Where the pinned hash of ``target`` lives: ``<file>.sha256`` beside it."""
    return target.with_name(target.name + ".sha256")


def _read_pin(pin: Path) -> str:
    words = pin.read_text().split()
    value = words[0].lower() if words else ""
    if not SHA256_RE.match(value):
        raise DownloadError(f"{pin} does not hold a sha256 (found {value[:80]!r}); fix or delete it")
    return value


def known_hash(entry: RegistryEntry, target: Path) -> Optional[str]:
    """The registry's hash, else the one pinned beside the file, else None."""
    if entry.sha256:
        return entry.sha256.lower()
    pin = sidecar_path(target)
    return _read_pin(pin) if pin.is_file() else None


def _check_local(target: Path, expected: Optional[str]) -> None:
    if not expected:
        return
    actual = sha256_of(target)
    if actual != expected:
        raise HashMismatchError(
            f"{target} has sha256 {actual}, expected {expected} (from the registry or "
            f"{sidecar_path(target).name}); it was left untouched: move it away to download it again"
        )


# ---------------------------------------------------------------------------------------------
# small file-system helpers


def is_offline(offline: Optional[bool]) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(name, "").strip().lower() in TRUE_WORDS for name in OFFLINE_ENVS)


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort; not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def human_size(n: int) -> str:
    """``512 B``, ``3.0 KiB``, ``455.6 MiB``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _terminal_progress(done: int, total: Optional[int]) -> None:
    if total:
        width = 30
        filled = min(width, int(width * done / total))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] {done / 2**20:8.1f}/{total / 2**20:.1f} MiB"
    else:
        bar = f"{done / 2**20:8.1f} MiB"
    sys.stderr.write("\r" + bar)
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# one HTTP transfer


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _content_range(exc.headers.get("Content-Range"))[2]
            exc.close()
            raise _RangeNotSatisfiable(total) from exc
        raise


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """``bytes a-b/N`` or ``bytes */N`` -> (a, b, N); unknown parts are None."""
    match = re.match(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None, None
    start, end, total = (int(g) if g and g != "*" else None for g in match.groups())
    return start, end, total


def _resume_offset(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body starts in the file: ``offset`` for a matching 206, else 0 (whole file)."""
    if offset and response.status == 206:
        start = _content_range(response.headers.get("Content-Range"))[0]
        if start == offset:
            return offset
    return 0


def _stream(response: http.client.HTTPResponse, part: Path, offset: int, url: str,
            progress: Optional[Progress]) -> None:
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    done = offset
    with open(part, "ab" if offset else "wb") as f:
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise DownloadError(f"{url}: transfer broke off after {done} bytes ({exc!r})") from exc
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


def fetch_to_part(url: str, part: Path, progress: Optional[Progress] = None,
                  timeout: float = 30.0) -> None:
    """Stream ``url`` into ``part``, resuming from its current size when the server allows it
    (a 200 answer restarts from zero, a 416 restarts unless ``part`` is already complete).
    A body shorter than announced raises DownloadError and keeps ``part`` for the next try."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable as exc:
        if exc.total == offset:
            return  # the .part already holds the whole file
        part.unlink()
        offset = 0
        response = _open(url, offset, timeout)
    with response:
        _stream(response, part, _resume_offset(response, offset), url, progress)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code in TRANSIENT_HTTP
    return isinstance(exc, (DownloadError, urllib.error.URLError, OSError, http.client.HTTPException))


def _fetch_with_retries(url: str, part: Path, progress: Optional[Progress], retries: int,
                        backoff: float, timeout: float) -> None:
    for attempt in range(1, max(1, retries) + 1):
        try:
            fetch_to_part(url, part, progress, timeout)
            return
        except Exception as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # its body is not needed; free the connection now
            if not _is_transient(exc) or attempt >= retries:
                kept = f" (partial data kept in {part} for resume)" if part.exists() else ""
                raise DownloadError(f"could not download {url}{kept}: {exc}") from exc
            time.sleep(backoff * attempt)


# ---------------------------------------------------------------------------------------------
# verification and the public entry point


def _verify_part(entry: RegistryEntry, part: Path, expected: Optional[str]) -> str:
    """sha256 of the complete ``part``, checked against ``expected`` and loaded as a checkpoint
    under its real suffix. On failure ``part`` is deleted and DownloadError raised."""
    actual = sha256_of(part)
    if expected and actual != expected:
        part.unlink()
        raise HashMismatchError(
            f"{entry.file} downloaded from {entry.url} has sha256 {actual}, expected {expected}; "
            "the download was deleted"
        )
    probe = part.with_name(f".{entry.file}.verify{Path(entry.file).suffix}")
    os.replace(part, probe)
    try:
        read_checkpoint(probe)
    except CheckpointError as exc:
        probe.unlink()
        raise DownloadError(f"{entry.file} downloaded from {entry.url} is not a usable checkpoint "
                            f"and was deleted: {exc}") from exc
    except BaseException:
        os.replace(probe, part)  # interrupted or unexpected: keep the download for a later check
        raise
    os.replace(probe, part)
    return actual


def target_path(name_or_entry: str | RegistryEntry, models_dir: str | os.PathLike | None = None) -> Path:
    """Where ``ensure_weights`` keeps (or expects) the entry's file."""
    entry = get_entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    return resolve_models_dir(models_dir) / entry.file


def ensure_weights(name_or_entry: str | RegistryEntry, models_dir: str | os.PathLike | None = None,
                   offline: Optional[bool] = None, progress: Optional[Progress] = None,
                   retries: int = 3, backoff: float = 1.0, timeout: float = 30.0) -> Path:
    """Path of the entry's weights in the models folder, downloading them first if needed.

    ``models_dir``: explicit folder, else ``ONESTEP_SR_MODELS``, else ``~/.cache/onestep_sr/models``.
    ``offline``: forbid downloads (default: ``ONESTEP_SR_OFFLINE`` / ``HF_HUB_OFFLINE`` set to 1).
    ``progress(done_bytes, total_bytes_or_None)``: default is a text bar when stderr is a TTY.
    ``retries``/``backoff``/``timeout``: tries for transient errors, seconds between them
    (times the try number), socket timeout in seconds.
    """
    entry = get_entry(name_or_entry) if isinstance(name_or_entry, str) else name_or_entry
    target = target_path(entry, models_dir)
    expected = known_hash(entry, target)
    if target.is_file():
        _check_local(target, expected)
        return target
    if is_offline(offline):
        raise WeightsUnavailableError(
            f"{entry.name} ({entry.file}) is not in {target.parent} and downloads are off "
            f"(offline mode): download {entry.url} and save it as {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    size = f"about {human_size(entry.expected_payload_bytes)}" if entry.expected_payload_bytes else "size unknown"
    log.info("downloading %s: %s, %s, from %s into %s (licence: %s)", entry.name, entry.file, size, entry.url,
             target.parent, entry.licence)  # hosts show INFO lines; the CLI prints them on stderr
    part = target.with_name(target.name + ".part")
    bar = progress is None and sys.stderr.isatty()
    try:
        _fetch_with_retries(entry.url, part, _terminal_progress if bar else progress,
                            retries, backoff, timeout)
    except DownloadError as exc:  # network failure: say how to do it by hand, as offline mode does
        raise DownloadError(f"{exc}. To install it by hand, download {entry.url} and save it as {target} "
                            f"(file name {entry.file}, folder {target.parent})") from exc
    finally:
        if bar:
            sys.stderr.write("\n")
    actual = _verify_part(entry, part, expected)
    if not expected:  # pin first, so the final file never exists without its hash
        atomic_write_text(sidecar_path(target), f"{actual}  {entry.file}\n")
    os.replace(part, target)
    _fsync_dir(target.parent)
    return target
