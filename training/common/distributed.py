"""Several processes (``torchrun --nproc_per_node N -m training ...`` or ``accelerate launch
--multi_gpu --num_processes N -m training ...``): what every trainer here shares.

* **The accelerator.** ``accelerate`` only starts its gloo (CPU) process group when told the run
  is on the CPU; :func:`make_accelerator` tells it so when there are several processes and no CUDA,
  so the same command works on a CPU box (CI) and on GPUs (NCCL, one GPU per process).
* **The samples.** ``--batch-size`` is per process. An optimiser step takes the global batch
  ``batch_size x processes x grad_accum`` of consecutive pair indices; accelerate's data loader
  gives micro-batch ``k`` of process ``p`` the pairs ``[(k N + p) b, (k N + p + 1) b)``, so no two
  processes ever see the same pair and the union over processes is exactly what ONE process with
  batch ``N b`` sees. A checkpoint records how many pairs were used (``samples`` in
  ``state.json``), so a resume with another process count continues at the next unused pair.
* **The random draws** (timesteps, noise, guidance) of a micro-batch are drawn for the whole global
  micro-batch on every process from the same (seed, micro-step) generator, and each process keeps
  its own rows (:func:`global_rows`): one process with batch ``N b`` draws the same numbers for the
  same pairs.
* **The gradient**: DDP averages the per-process gradients of per-process batch means, which is
  the gradient of the mean over the global batch, as one process with batch ``N b`` computes it.
* **The log**: the logged losses are the mean over processes (:func:`mean_over_processes`); only
  the main process writes ``config.json``, ``log.csv``, checkpoints and the export.
"""
from __future__ import annotations

import os

import torch


def world_size() -> int:
    """Processes of this job, from the launcher's environment (torchrun, accelerate, MPI)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return 1


def rank() -> int:
    """This process's index in the job (0: the main process)."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def is_main_process() -> bool:
    return rank() == 0


def make_accelerator(**kwargs):
    """``accelerate.Accelerator(**kwargs)`` that joins the launcher's process group on CPUs too:
    on a machine without CUDA several processes train with gloo (accelerate's MULTI_CPU) instead
    of each quietly training alone."""
    from accelerate import Accelerator

    if world_size() > 1 and not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)


def global_rows(accelerator, local: int) -> tuple[int, slice]:
    """(rows of the global micro-batch, this process's rows in it) for a per-process batch of
    ``local``: draw ``n`` rows on every process and keep ``[mine]``."""
    processes, index = accelerator.num_processes, accelerator.process_index
    return local * processes, slice(local * index, local * (index + 1))


def mean_over_processes(accelerator, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the processes (a collective: every process must call it with
    the same keys); the values themselves on one process."""
    if accelerator.num_processes == 1 or not values:
        return dict(values)
    keys = list(values)
    local = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(local, "mean").tolist()))


def samples_per_step(config, accelerator) -> int:
    """Pairs per optimiser step: the global batch (``--batch-size`` is per process)."""
    return config.batch_size * config.grad_accum * accelerator.num_processes


def batch_line(name: str, config, accelerator) -> str:
    """The start line that states the effective global batch."""
    processes = accelerator.num_processes
    device = str(accelerator.device) if processes == 1 else f"{accelerator.device.type}, {accelerator.distributed_type.value}"
    return (f"{name}: {processes} process(es) ({device}) x batch {config.batch_size} per process x grad-accum "
            f"{config.grad_accum} = global batch {samples_per_step(config, accelerator)} pairs per step")


def sample_loader(data, start: int, steps_left: int, config, accelerator) -> torch.utils.data.DataLoader:
    """The pairs ``start .. start + steps_left x global batch`` in order, per-process batches
    (accelerate shards the batches over the processes when the loader is prepared)."""
    count = max(0, steps_left) * samples_per_step(config, accelerator)
    subset = torch.utils.data.Subset(data, range(start, start + count))
    return torch.utils.data.DataLoader(subset, batch_size=config.batch_size, shuffle=False,
                                       num_workers=int(config.extra.get("workers", 0)))


def resumed_samples(state: dict | None, step: int, config) -> int:
    """Pairs used by a run resumed at ``step`` from a checkpoint's ``state.json``; checkpoints from
    before this was recorded were written by one process."""
    if state and isinstance(state.get("samples"), int):
        return state["samples"]
    return step * config.batch_size * config.grad_accum
