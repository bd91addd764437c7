import torch

from modules import shared

device = torch.device("cpu")
dtype = torch.float16
gc_calls = []


def get_device_for(task: str) -> torch.device:
    """CPU when the task (or "all") is in --use-cpu, else the main device."""
    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return torch.device("cpu")
    return device


def torch_gc() -> None:
    gc_calls.append(1)
