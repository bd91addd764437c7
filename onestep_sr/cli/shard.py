"""``upscale`` over several processes, and resumable batches.

    torchrun --nproc_per_node 4 -m onestep_sr upscale photos/ -o upscaled/
    accelerate launch --multi_gpu --num_processes 4 -m onestep_sr upscale photos/ -o upscaled/

Every process makes the same plan (the inputs in their sorted order, see ``upscale``) and takes
every N-th job from its rank on (``jobs[rank::N]``): the shares are disjoint and together the whole
plan, so every input is written exactly once, with no process group and no messages between the
processes (RANK / WORLD_SIZE / LOCAL_RANK from the launcher are enough). Each process runs on its
own device: ``cuda:LOCAL_RANK`` when CUDA is there (unless ``--device`` names an index), else the
CPU.

Resume: outputs are written atomically (a temporary file renamed into place), so a file at an
output path is a complete output. A batch into a folder skips the outputs that exist; an
interrupted run, started again with the same command (and any process count), does only what is
missing. ``--overwrite`` writes them all again. A single ``-o FILE`` is always written.

Progress: only process 0 prints, one line per image it finishes, numbered over the whole job
(``[outputs present / jobs]``: the count of planned outputs on disk, written by any process); the
others print only their failures. A registry model that must be downloaded is downloaded by
process 0; the others wait for the file.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Shard":
        world = max(1, _env_int(("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"), 1))
        rank = _env_int(("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"), 0)
        local = _env_int(("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"), rank)
        if not 0 <= rank < world:
            raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, jobs: list) -> list:
        """This process's share: every ``world``-th job from ``rank`` on."""
        return jobs[self.rank::self.world]

    def device(self, requested: torch.device | None) -> torch.device | None:
        """One device per process: ``cuda:LOCAL_RANK`` for ``--device cuda`` or the default when
        CUDA is available (an explicit ``cuda:N`` is kept); otherwise what was asked."""
        if self.world == 1 or not torch.cuda.is_available():
            return requested
        if requested is None or (requested.type == "cuda" and requested.index is None):
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return requested


def _process_start() -> float:
    """When this process was created (Linux: /proc), else now (this module's import). With several
    processes another one can write its first output before process 0 gets to count the outputs
    that were there already (CI saw it when process 0 was slower to import torch); such an output
    is newer than the process's creation, which the launcher made before either wrote anything."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return time.time()


STARTED = _process_start()


def outputs_from_before(jobs: list[tuple[Path, Path]]) -> int:
    """How many of the outputs of ``jobs`` existed before this run started (several processes
    write into one folder: an output another process wrote in this run does not count)."""
    count = 0
    for _, dst in jobs:
        try:
            count += dst.is_file() and dst.stat().st_mtime < STARTED
        except OSError:  # gone between the two looks
            pass
    return count


def skip_existing(jobs: list[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], int]:
    """(the jobs whose output file is not there yet, how many were skipped)."""
    todo = [(src, dst) for src, dst in jobs if not dst.is_file()]  # a folder there is no output
    return todo, len(jobs) - len(todo)


class JobProgress:
    """``[present/total]`` over the whole job: the planned outputs found on disk (any process)."""

    def __init__(self, outputs: list[Path]):
        self.total = len(outputs)
        self.pending = {p for p in outputs if not p.is_file()}

    def present(self) -> int:
        self.pending = {p for p in self.pending if not p.is_file()}
        return self.total - len(self.pending)

    def label(self) -> str:
        return f"[{self.present()}/{self.total}]"


def load_when_available(load: Callable[[bool], object], shard: Shard, unavailable: Callable[[BaseException], bool],
                        wait_s: float = 3600.0, poll_s: float = 2.0):
    """``load(offline)``; on processes other than 0 offline first, waiting (up to ``wait_s``) while
    process 0 downloads weights that are missing, instead of every process downloading them."""
    if shard.main:
        return load(False)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return load(True)
        except Exception as exc:  # noqa: BLE001 - the caller says which errors mean "not downloaded yet"
            if not unavailable(exc) or time.monotonic() > deadline:
                raise
        time.sleep(poll_s)


def start_line(shard: Shard, total: int, skipped: int, folder: Path | None) -> str | None:
    """What process 0 says before the work: the processes and the outputs skipped."""
    parts = []
    if shard.world > 1:
        parts.append(f"{total} image(s) over {shard.world} processes")
    if skipped:
        parts.append(f"{skipped} of {total} outputs in {folder} exist already and are skipped "
                     "(--overwrite writes them again)")
    return "onestep-sr: " + "; ".join(parts) if parts and shard.main else None


def say(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)
