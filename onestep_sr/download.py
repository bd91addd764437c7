"""Fetching registry weights: resumable, hash-checked, atomic, with a clear offline message.

A download goes to ``<file>.part`` (resumed with an HTTP Range request when one exists), is
checked (complete length; the registry's exact size, or within 1% of the expected payload; sha256
equal to the known one; loads as a checkpoint, as the hidden ``.<file>.verify<suffix>``), then
renamed into place. When the authors publish no hash, the first verified download pins it in
``<file>.sha256`` beside the weights; later runs check the file against it. A file already on
disk is never downloaded over: if it does not match its known hash, that is an error. A complete
download that an interruption left as the hidden verify file is checked and used by the next run
(no transfer, also offline).

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
from typing import Callable, Optional, Sequence

from .checkpoint import CheckpointError, atomic_write_text, read_checkpoint
from .registry import RegistryEntry, get_entry
from .registry import models_dir as resolve_models_dir
from .errors import public_error

OFFLINE_ENVS = ("ONESTEP_SR_OFFLINE", "HF_HUB_OFFLINE")
TRUE_WORDS = ("1", "true", "yes", "on")
CHUNK = 1 << 20
USER_AGENT = "onestep-sr/0.2 (weights downloader; Python urllib)"  # the version of pyproject.toml
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
class SizeMismatchError(DownloadError):
    """A file's size is not the official one (exact, or within 1% of the expected payload)."""


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


def probe_path(target: Path) -> Path:
    """The hidden name a complete download has while it is checked: ``.<file>.verify<suffix>``."""
    return target.with_name(f".{target.name}.verify{target.suffix}")


def known_hash(entry: RegistryEntry, target: Path) -> Optional[str]:
    """The registry's hash, else the one pinned beside the file, else None."""
    return _expected(entry, target)[0]


def _expected(entry: RegistryEntry, target: Path) -> tuple[Optional[str], Optional[Path]]:
    """(the known sha256 or None, the pin file it was read from; None for the registry's)."""
    if entry.sha256:
        return entry.sha256.lower(), None
    pin = sidecar_path(target)
    return (_read_pin(pin), pin) if pin.is_file() else (None, None)


def _origin(pin: Optional[Path]) -> str:
    return f"pinned in {pin} by its first verified download" if pin else "the registry's hash"


def _check_local(target: Path, expected: Optional[str], pin: Optional[Path]) -> None:
    if not expected:
        return
    actual = sha256_of(target)
    if actual != expected:
        fix = (f"if you replaced it on purpose, delete {pin} (the pinned hash) and run again; otherwise move "
               "it away to download it again") if pin else "move it away to download it again"
        raise HashMismatchError(f"{target} has sha256 {actual}, expected {expected} ({_origin(pin)}); "
                                f"it was left untouched: {fix}")


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


def _install(entry: RegistryEntry, src: Path, target: Path, expected: Optional[str], pin: Optional[Path],
             what: str) -> None:
    """Check the complete download ``src`` (the ``.part``, or the verify file an interrupted run
    left) and rename it to ``target``: its size, its sha256 against ``expected``, then that it loads
    as a checkpoint under its real suffix (as :func:`probe_path`); the hash is pinned (when none is
    known) before the rename, so ``target`` never exists without it. A file that fails is deleted
    (HashMismatchError / SizeMismatchError / DownloadError naming both values); an interruption
    keeps it for the next run."""
    problem = entry.size_problem(src.stat().st_size)
    if problem:
        src.unlink()
        raise SizeMismatchError(f"{entry.file} {what} {problem}: it is not the {entry.name} weights and was deleted")
    actual = sha256_of(src)
    if expected and actual != expected:
        src.unlink()
        fix = (f"; if the file changed on purpose (a new release, your own mirror), delete {pin} and run again"
               if pin else "")
        raise HashMismatchError(f"{entry.file} {what} has sha256 {actual}, expected {expected} ({_origin(pin)}); "
                                f"it was deleted{fix}")
    probe = probe_path(target)
    if src != probe:
        os.replace(src, probe)
    try:
        read_checkpoint(probe)
    except CheckpointError as exc:
        probe.unlink()
        raise DownloadError(f"{entry.file} {what} is not a usable checkpoint and was deleted: {exc}") from exc
    except BaseException:
        if src != probe:
            os.replace(probe, src)  # interrupted or unexpected: keep the download for a later check
        raise
    if not expected:
        atomic_write_text(sidecar_path(target), f"{actual}  {entry.file}\n")
    os.replace(probe, target)  # an interruption before this leaves the probe: the next run finishes it
    _fsync_dir(target.parent)


def _recover(entry: RegistryEntry, target: Path, expected: Optional[str], pin: Optional[Path]) -> bool:
    """Finish a complete download that an interruption left as the hidden verify file: True when it
    passed every check and is now ``target``; a file that fails is deleted (logged) and False."""
    probe = probe_path(target)
    if not probe.is_file():
        return False
    try:
        _install(entry, probe, target, expected, pin, f"left by an interrupted download as {probe}")
    except DownloadError as exc:
        log.warning("%s", exc)
        return False
    part = target.with_name(target.name + ".part")
    if part.exists():
        part.unlink()  # a later, unfinished attempt: the finished one was kept
    log.info("%s: finished the download an interruption left as %s", entry.name, probe)
    return True


def offline_message(entries: Sequence[RegistryEntry], folder: Path) -> str:
    """What to download and where, for every entry (all missing from ``folder``) at once."""
    names = [f"{e.name} ({e.file})" for e in entries]
    names = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(entries) == 1 else "are"
    steps = "; ".join(f"download {e.url} and save it as {folder / e.file}" for e in entries)
    create = "" if folder.is_dir() else f". The folder {folder} does not exist yet: create it first"
    return f"{names} {verb} not in {folder} and downloads are off (offline mode): {steps}{create}"


def ensure_all(entries: Sequence[RegistryEntry], models_dir: str | os.PathLike | None = None,
               offline: Optional[bool] = None, progress: Optional[Progress] = None,
               needed_by: str = "", **options) -> list[Path]:
    """:func:`ensure_weights` for each entry in turn (a denoiser, then its autoencoder). Offline,
    every missing file is named in one WeightsUnavailableError, not one per run. ``needed_by``
    (a denoiser's name): an error about a later entry says "<needed_by> also needs its ..."."""

    def whose(entry: RegistryEntry, message: str) -> str:
        late = needed_by and entry is not entries[0]
        return f"{needed_by} also needs its {entry.kind} {entry.name}: {message}" if late else message

    if is_offline(offline):
        found, missing = [], []
        for entry in entries:
            try:
                found.append(ensure_weights(entry, models_dir, offline=True))
            except WeightsUnavailableError:
                missing.append(entry)
        if missing:
            message = offline_message(missing, resolve_models_dir(models_dir))
            raise WeightsUnavailableError(whose(missing[0], message) if len(missing) == 1 else message)
        return found
    paths = []
    for entry in entries:
        try:
            paths.append(ensure_weights(entry, models_dir, offline=False, progress=progress, **options))
        except DownloadError as exc:
            if not (needed_by and entry is not entries[0]):
                raise
            raise type(exc)(whose(entry, str(exc))) from exc
    return paths


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
    expected, pin = _expected(entry, target)
    if target.is_file():
        _check_local(target, expected, pin)
        return target
    if _recover(entry, target, expected, pin):
        return target
    if is_offline(offline):
        raise WeightsUnavailableError(offline_message([entry], target.parent))
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
    _install(entry, part, target, expected, pin, f"downloaded from {entry.url}")
    return target
