"""Checks of the options every trainer's config shares (``TrainConfig``, ``SDRunOptions`` and their
subclasses), made when the config is created: a bad value is one sentence naming its --option,
before any data is read or model built. Options a config lacks are skipped."""
from __future__ import annotations

import math

from .data import AUGMENTS, DEGRADATIONS

MIXED_PRECISIONS = ("no", "fp16", "bf16")
AT_LEAST_ONE = ("steps", "batch_size", "grad_accum", "gt_size", "log_every", "save_every", "keep")
POSITIVE = ("lr", "lr_regulariser")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_common(config) -> None:
    """ValueError naming the first shared option of ``config`` with a value no run can use."""
    for name in AT_LEAST_ONE:
        value = getattr(config, name, 1)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{flag(name)} must be a whole number of at least 1, got {value}")
    for name in POSITIVE:
        value = getattr(config, name, 1.0)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag(name)} must be a number above 0, got {value}")
    if not getattr(config, "warmup", 0) >= 0:
        raise ValueError(f"--warmup must be 0 or more steps, got {config.warmup}")
    if not getattr(config, "seed", 0) >= 0:
        raise ValueError(f"--seed must be 0 or more, got {config.seed}")
    if not 0 <= getattr(config, "ema", 0.0) <= 1:
        raise ValueError(f"--ema is a decay in [0, 1], got {config.ema}")
    if getattr(config, "mixed_precision", "no") not in MIXED_PRECISIONS:
        raise ValueError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, got {config.mixed_precision!r}")
    if getattr(config, "augment", AUGMENTS[0]) not in AUGMENTS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}, got {config.augment!r}")
    if getattr(config, "degradation", DEGRADATIONS[0]) not in DEGRADATIONS:
        raise ValueError(f"--degradation must be one of {', '.join(DEGRADATIONS)}, got {config.degradation!r}")
