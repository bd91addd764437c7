"""How a model of native scale s serves a requested scale r, and which step counts it runs.

Passes: SR while the result does not exceed the request, then one Lanczos resize of what is left
(a factor below s, or a downscale when r < s): a x2 model runs 2x in one pass and 4x in two passes
without any Lanczos; a x4 model runs 8x as one pass plus Lanczos x2 (as before) and 16x in two
passes."""
from __future__ import annotations

import math
from typing import Sequence

from .options import OptionError


def passes_for(native: int, requested: float) -> int:
    """Network passes for ``requested`` (> 0) with a model of ``native`` scale: at least 1."""
    if requested <= native:
        return 1
    return max(1, int(math.floor(math.log(requested) / math.log(native) + 1e-9)))


def supported_steps(schedule_steps: int, levels: Sequence[int] | None) -> list[int]:
    """The step counts a model runs: its own grid's length for a progressively distilled model,
    else 1 (one step) and the schedule's T."""
    if levels:
        return [len(levels)]
    return sorted({1, schedule_steps})


def check_steps(steps: int, schedule_steps: int, levels: Sequence[int] | None) -> None:
    allowed = supported_steps(schedule_steps, levels)
    if steps not in allowed:
        if levels:
            rule = f"{len(levels)} (this model was distilled for {len(levels)} step(s), levels {list(levels)})"
        else:
            rule = f"1 (one-step) or {schedule_steps} (the schedule's steps)"
        raise OptionError("steps", steps, rule)
