"""Progressive distillation rounds (guided_progressive.md 6.2): each round trains a student on every
other level of its teacher's grid (T15: 15 -> 8 -> 4 -> 2 -> 1 steps; T4: 4 -> 2 -> 1), starting
from the teacher, with a fresh optimiser and learning-rate schedule (the lr is reset per round, as
in Salimans & Ho). Round r is a normal run folder ``OUT/round-r`` (resumed inside the round; a
finished round is reused) whose export names its levels in the model info."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from onestep_sr.model_info import read_model_info

from ..common.distributed import is_main_process
from .trainer import Run, TrainConfig


def teacher_levels(path: str, schedule_steps: int | None = None) -> list[int]:
    info = read_model_info(path)
    if info and info.levels:
        return list(info.levels)
    steps = info.resshift_schedule().steps if info else (schedule_steps or 15)
    return list(range(steps - 1, -1, -1))


def round_plan(levels: list[int], rounds: int = 0) -> list[list[int]]:
    """The student grids of the rounds from a teacher on ``levels``: halve until one level
    (``rounds`` > 0: at most that many)."""
    plan = []
    while len(levels) > 1 and (rounds <= 0 or len(plan) < rounds):
        levels = levels[::2]
        plan.append(levels)
    return plan


def run_rounds(config: TrainConfig, rounds: int = 0, progress: bool = True) -> list[Path]:
    """Train every round of ``config`` (mode "progressive", ``teacher`` the starting teacher);
    returns the exports, one per round."""
    if config.mode != "progressive" or not config.teacher:
        raise ValueError("progressive rounds need mode 'progressive' and a --teacher")
    plan = round_plan(teacher_levels(config.teacher), rounds)
    if not plan:
        raise ValueError(f"{config.teacher} already runs in one step: nothing to halve")
    teacher, exports = config.teacher, []
    for number, levels in enumerate(plan, 1):
        out = Path(config.out) / f"round-{number}"
        path = out / "model.safetensors"
        if not (path.is_file() and (read_model_info(path) or None) and read_model_info(path).levels == levels):
            if is_main_process():
                print(f"progressive round {number}/{len(plan)}: {len(levels)} step(s) {levels} -> {out}", flush=True)
            path = Run(replace(config, teacher=str(teacher), out=str(out))).train(progress=progress)
        exports.append(path)
        teacher = path
    return exports
