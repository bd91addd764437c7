"""Pieces every trainer here shares: checkpoint folders with rotation, the warmed-up EMA and the
CSV log. Used by ``trainer.Run`` (ResShift / SinSR) and ``osediff.OSEDiffRun``."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import write_safetensors_atomic


def checkpoint_dirs(out: Path) -> list[Path]:
    """The complete ``out/checkpoints/step-N/`` folders (with ``state.json``), oldest first."""
    folder = Path(out) / "checkpoints"
    found = [p for p in folder.glob("step-*") if (p / "state.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def staging_dir(out: Path, step: int) -> tuple[Path, Path]:
    """(a fresh temporary folder, the final ``checkpoints/step-N``) for :func:`commit_checkpoint`."""
    final = Path(out) / "checkpoints" / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp, final


def commit_checkpoint(tmp: Path, final: Path, out: Path, keep: int) -> Path:
    """Rename the written ``tmp`` folder to ``final`` and delete all but the newest ``keep``."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoint_dirs(out)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_run_state(tmp: Path, step: int, ema: dict[str, torch.Tensor], optimizer, scheduler,
                   config: dict[str, Any]) -> None:
    """What a run needs beyond its weights to continue exactly: ``ema.safetensors``,
    ``optimizer.pt`` and ``state.json`` (step, scheduler, config) in the staging folder ``tmp``."""
    write_safetensors_atomic({k: v.cpu().contiguous() for k, v in ema.items()}, {}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict(), "config": config}))


def restore_run_state(folder: Path, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], int]:
    """Load the optimiser and scheduler of checkpoint ``folder`` (``save_run_state``); returns
    (EMA weights, step)."""
    state = json.loads((folder / "state.json").read_text())
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(state["scheduler"])
    return load_file(folder / "ema.safetensors"), int(state["step"])


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
    """Rows appended to ``log.csv`` (the header written once, by the first row of a new file)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.new = not self.path.exists()
        self.file = None
        self.writer = None

    def __enter__(self) -> "CsvLog":
        self.file = open(self.path, "a", newline="")
        return self

    def write(self, row: dict) -> None:
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if self.new:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def __exit__(self, *exc) -> None:
        self.file.close()


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
