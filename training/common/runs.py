"""Pieces every trainer here shares: checkpoint folders with rotation and resume, the warmed-up
EMA and the CSV log. Used by ``trainer.Run`` (ResShift / SinSR) and ``run_base.SDRunState``
(osediff, guided).

A resume takes the newest checkpoint whose files all read back; a damaged newer one (a file cut
short by a full disk or a crash) is named in a one-line warning and set aside as
``step-N.damaged``, so nothing is deleted and the run goes on from the one before. ``log.csv``
loses the rows of the steps that are done again."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import describe_file, interrupts_deferred, write_safetensors_atomic

_STEP_DIR = re.compile(r"step-(\d+)")


class RunFolderError(ValueError):
    """A run folder whose checkpoints cannot be resumed: one sentence naming them."""


class DamagedCheckpoint(Exception):
    """A checkpoint file that does not read back (the message names the file and why)."""


def checkpoint_dirs(out: Path) -> list[Path]:
    """The complete ``out/checkpoints/step-N/`` folders (with ``state.json``), oldest first;
    anything else there (a ``step-N.tmp`` staging folder left by a crash) is ignored."""
    folder = Path(out) / "checkpoints"
    found = [p for p in folder.iterdir() if _STEP_DIR.fullmatch(p.name) and (p / "state.json").is_file()] \
        if folder.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP_DIR.fullmatch(p.name).group(1)))


def staging_dir(out: Path, step: int) -> tuple[Path, Path]:
    """(a fresh temporary folder, the final ``checkpoints/step-N``) for :func:`commit_checkpoint`."""
    final = Path(out) / "checkpoints" / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp, final


def commit_checkpoint(tmp: Path, final: Path, out: Path, keep: int) -> Path:
    """Rename the written ``tmp`` folder to ``final`` and delete all but the newest ``keep``
    (Ctrl-C waits for the rename: there is always a complete newest checkpoint)."""
    with interrupts_deferred():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    for old in checkpoint_dirs(out)[:-max(1, keep)]:
        (old / "state.json").unlink(missing_ok=True)  # first: a folder cut short by Ctrl-C is no checkpoint
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_run_state(tmp: Path, step: int, ema: dict[str, torch.Tensor], optimizer, scheduler,
                   config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """What a run needs beyond its weights to continue exactly: ``ema.safetensors``,
    ``optimizer.pt`` and ``state.json`` (step, scheduler, config, and ``extra``: e.g. the pairs
    used so far and the process count) in the staging folder ``tmp``."""
    write_safetensors_atomic({k: v.cpu().contiguous() for k, v in ema.items()}, {}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    state = {"step": step, "scheduler": scheduler.state_dict(), "config": config, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state))


def _read_state(path: Path) -> dict:
    state = json.loads(path.read_text())
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("scheduler"), dict)):
        raise ValueError("no step and scheduler state in it")
    return state


_READERS = {"state.json": _read_state, "ema.safetensors": load_file,
            "optimizer.pt": lambda path: torch.load(path, map_location="cpu", weights_only=True)}


def read_checkpoint(folder: Path, weights: str | None = None) -> dict[str, Any]:
    """Every file of checkpoint ``folder`` read into memory, by file name: ``state.json`` (a
    dict), ``ema.safetensors``, ``optimizer.pt`` and the trainer's ``weights`` file (tensors);
    :class:`DamagedCheckpoint` naming the first file that does not read back."""
    parts = {}
    names = ["state.json", "ema.safetensors", "optimizer.pt"]
    if weights:
        names.insert(1, weights)
    for name in names:
        path = Path(folder) / name
        try:
            parts[name] = _READERS.get(name, load_file)(path)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # safetensors, torch and json each raise their own types
            reason = describe_file(path) if path.is_file() else "missing"
            reason = reason or " ".join(str(exc).split())[:200] or type(exc).__name__
            raise DamagedCheckpoint(f"{name}: {reason}") from exc
    return parts


def resume_newest(out: Path, weights: str, load_weights: Callable[[dict[str, torch.Tensor]], None], optimizer,
                  scheduler) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]] | None:
    """Continue from the newest checkpoint of ``out`` whose files all read back: ``load_weights``
    gets its ``weights`` file, the optimiser and scheduler their states; returns (EMA weights,
    step, its ``state.json``), or None when ``out`` has no checkpoint. Damaged newer checkpoints are named in a warning
    and renamed ``step-N.damaged``; when every one is damaged, or one does not fit this run (other
    options), :class:`RunFolderError`."""
    damaged = []
    for folder in reversed(checkpoint_dirs(out)):
        try:
            parts = read_checkpoint(folder, weights)
        except DamagedCheckpoint as exc:
            damaged.append((folder, exc))
            continue
        try:
            load_weights(parts[weights])
            optimizer.load_state_dict(parts["optimizer.pt"])
            scheduler.load_state_dict(parts["state.json"]["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise RunFolderError(f"checkpoint {folder} does not fit this run ({' '.join(str(exc).split())[:300]}): "
                                 "it was saved with other options (--arch, --rank, ...); give the same options "
                                 "again, or another --out for a new run") from exc
        for bad, why in damaged:
            kept = _set_aside(bad)
            print(f"warning: checkpoint {bad} is damaged ({why}); resuming from {folder.name} instead"
                  + (f" (the damaged one is kept as {kept.name})" if kept else ""), file=sys.stderr, flush=True)
        return parts["ema.safetensors"], int(parts["state.json"]["step"]), parts["state.json"]
    if damaged:
        raise RunFolderError(f"every checkpoint in {Path(out) / 'checkpoints'} is damaged ("
                             + "; ".join(f"{bad.name}: {why}" for bad, why in damaged)
                             + "); move the checkpoints folder away to start the run again from step 0")
    return None


def _set_aside(folder: Path) -> Path | None:
    """Rename a damaged checkpoint out of the way of the rotation (None if that fails: it stays)."""
    for n in range(1, 100):
        target = folder.with_name(folder.name + (".damaged" if n == 1 else f".damaged-{n}"))
        if not target.exists():
            try:
                os.replace(folder, target)
                return target
            except OSError:
                return None
    return None


def ema_decay(decay: float, step: int) -> float:
    """``decay`` warmed up as ``(1 + step) / (10 + step)`` so that the average forgets the initial
    weights: a fixed 0.999 still holds 37 % of them after 1000 steps."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], named: Iterable[tuple[str, torch.Tensor]], decay: float,
               copy_only=lambda name, value: False) -> None:
    """``ema[k] = decay * ema[k] + (1 - decay) * v`` (float32, CPU) for every floating tensor;
    integer tensors and those ``copy_only(name, value)`` selects are copied."""
    for k, v in named:
        if v.is_floating_point() and not copy_only(k, v):
            ema[k].mul_(decay).add_(v.detach().float().cpu(), alpha=1 - decay)
        else:
            ema[k] = v.detach().cpu().clone()


class CsvLog:
    """Rows appended to ``log.csv`` (the header written once, by the first row of a new file).
    ``resume_step``: the step the run continues from; rows of later steps (written before an
    interruption, and done again now) and a row cut short are dropped first, atomically.
    ``enabled`` False (the other processes of a multi-process run): nothing is read or written."""

    def __init__(self, path: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.resume_step = resume_step
        self.enabled = enabled
        self.new = True
        self.file = None
        self.writer = None

    def __enter__(self) -> "CsvLog":
        if self.enabled:
            self.new = not trim_log(self.path, self.resume_step)
            self.file = open(self.path, "a", newline="")
        return self

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.writer is None:  # a resumed log keeps its own columns (a run from an older version)
            fields = list(row) if self.new else _header(self.path) or list(row)
            self.writer = csv.DictWriter(self.file, fieldnames=fields, restval="", extrasaction="ignore")
            if self.new:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f), [])


def trim_log(path: Path, last_step: int) -> bool:
    """Drop the rows of ``log.csv`` past ``last_step`` and rows cut short (the file is rewritten
    atomically, only when something goes); returns whether the file has its header."""
    path = Path(path)
    if not path.is_file():
        return False
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    header = next(csv.reader(lines[:1]), [])
    if "step" not in header:
        return False
    at = header.index("step")

    def keep(line: str) -> bool:
        row = next(csv.reader([line]), [])
        if not line.endswith("\n") or len(row) != len(header):
            return False
        try:
            return int(row[at]) <= last_step
        except ValueError:
            return False

    kept = lines[:1] + [line for line in lines[1:] if keep(line)]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes("".join(kept).encode("utf-8"))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return True


def stage_seconds(log: Path) -> float:
    """Training seconds of a run over all its invocations, from its log.csv (whose clock restarts
    at each resume); 0 without a log."""
    import csv

    if not Path(log).is_file():
        return 0.0
    total, last = 0.0, 0.0
    with open(log) as f:
        for row in csv.DictReader(f):
            seconds = float(row["seconds"])
            if seconds < last:
                total += last
            last = seconds
    return total + last
