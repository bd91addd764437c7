"""The training CLI with a recorder: ``torchrun --nproc_per_node 2 tests/dist_worker.py SPEC.json``.

SPEC is ``{"capture": folder, "runs": {name: [training CLI arguments]}}``; each run is the real
``python -m training`` command (``training.cli.main``) with two things recorded per process into
``capture/<name>-rank<R>.pt``: the ground-truth crops of every micro-batch this process trained on
(in order), and the gradients of the first optimiser step after backward (after DDP's all-reduce),
by parameter name (``module.`` prefixes of DDP dropped). ``record(argv)`` does the same in the
calling process (the one-process reference)."""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tensors(batch) -> list[torch.Tensor]:
    return [b for b in batch if isinstance(b, torch.Tensor)]


@contextmanager
def recording():
    """Patch the trainers' micro-step functions and accelerate's backward; yields the record."""
    from accelerate import Accelerator

    from training.resshift.trainer import Run
    from training.sd.guided import GuidedRun
    from training.sd.osediff import OSEDiffRun

    record = {"crops": [], "grads": None}
    patched = [(Run, "losses"), (OSEDiffRun, "micro_step"), (GuidedRun, "micro_step"), (Accelerator, "backward")]
    originals = {(cls, name): getattr(cls, name) for cls, name in patched}

    def step_recorder(original):
        def wrapped(self, batch, micro):
            record["crops"].append(_tensors(batch)[-1].detach().clone())  # the GT crops
            return original(self, batch, micro)
        return wrapped

    def backward(self, loss, **kwargs):
        originals[(Accelerator, "backward")](self, loss, **kwargs)
        if record["grads"] is None:
            record["grads"] = {f"{i}.{name.removeprefix('module.')}": p.grad.detach().clone()
                               for i, model in enumerate(self._models)
                               for name, p in model.named_parameters() if p.grad is not None}

    for cls, name in patched[:3]:
        setattr(cls, name, step_recorder(originals[(cls, name)]))
    Accelerator.backward = backward
    try:
        yield record
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)


def record(argv: list[str]) -> dict:
    """Run ``python -m training ARGV`` here; returns {"code", "crops", "grads"}."""
    from training.cli import main

    with recording() as rec:
        code = main(list(argv))
    return {"code": code, **rec}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ.get("RANK", "0"))
    capture = Path(spec["capture"])
    capture.mkdir(parents=True, exist_ok=True)
    worst = 0
    for name, argv in spec["runs"].items():
        result = record(argv)
        torch.save(result, capture / f"{name}-rank{rank}.pt")
        worst = max(worst, result["code"])
    return worst


if __name__ == "__main__":
    sys.exit(main())
