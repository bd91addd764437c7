"""Progressive distillation of a ResShift teacher (training/resshift/progressive.py, losses.py):
the two-step target, zero loss for a perfect student, the round grids, the rounds end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.model_info import read_model_info
from onestep_sr.schedule import SCHEDULE_T15
from training.cli import main as train_main
from training.resshift.losses import call, progressive_loss, progressive_target, q_sample
from training.resshift.progressive import round_plan

T15_LEVELS = list(range(14, -1, -1))


class Affine(torch.nn.Module):
    """A teacher whose x0 prediction depends on x, t and lq: a_t x + b lq."""

    def forward(self, x, t, lq):
        return (0.4 + 0.03 * t.float().view(-1, 1, 1, 1)) * x + 0.2 * lq


def _state(seed: int = 0, batch: int = 4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 3, 4, 4, generator=g) for _ in range(4))


def _teacher_two_steps(teacher, levels, x_t, y, lq, t: int, s: int):
    """The teacher's own steps from t until s on its grid, one sample at a time, by hand."""
    after = {a: (levels[i + 1] if i + 1 < len(levels) else -1) for i, a in enumerate(levels)}
    x, level = x_t, t
    while level != s:
        x0 = call(teacher, SCHEDULE_T15, x, level, lq)
        nxt = after[level]
        k, m, j = SCHEDULE_T15.step_coefficients(level, nxt)
        x, level = k * x0 + m * x + j * y, nxt
    return x


@pytest.mark.parametrize("teacher_levels,t,s", [
    (T15_LEVELS, 14, 12), (T15_LEVELS, 0, -1), ([14, 12, 10, 8, 6, 4, 2, 0], 2, -1),
    ([14, 10, 6, 2], 14, 6), ([14, 10, 6, 2], 6, -1), ([14, 6], 14, -1)])
def test_one_student_step_on_the_target_lands_on_the_teachers_two_steps(teacher_levels, t, s):
    x0, y, lq, noise = _state()
    teacher = Affine()
    tt, ss = torch.full((4,), t), torch.full((4,), s)
    x_t = q_sample(SCHEDULE_T15, x0, y, tt, noise)
    target = progressive_target(teacher, SCHEDULE_T15, teacher_levels, x_t, y, lq, tt, ss)
    k, m, j = SCHEDULE_T15.step_coefficients(t, s)
    landed = k * target + m * x_t + j * y
    expected = _teacher_two_steps(teacher, teacher_levels, x_t, y, lq, t, s)
    assert torch.allclose(landed, expected, atol=1e-5)
    if s == -1:  # the clean end: the target is the teacher's last x0 prediction
        assert torch.allclose(target, expected, atol=1e-6)


def test_a_student_equal_to_the_two_step_teacher_has_zero_loss_and_others_do_not():
    x0, y, lq, noise = _state(1)
    teacher = Affine()
    student_levels = [14, 10, 6, 2]
    teacher_levels = [14, 12, 10, 8, 6, 4, 2, 0]

    class Perfect(torch.nn.Module):
        """x0 = the two-step target of its own state (the state is x_t / divisor; undo it)."""

        def forward(self, x, t, lq_):
            after = {14: 10, 10: 6, 6: 2, 2: -1}
            s = torch.tensor([after[int(v)] for v in t])
            x_t = x * SCHEDULE_T15.input_divisor[t].float().view(-1, 1, 1, 1)
            return progressive_target(teacher, SCHEDULE_T15, teacher_levels, x_t, y, lq_, t, s)

    index = torch.tensor([0, 1, 2, 3])
    loss = progressive_loss(Perfect(), teacher, SCHEDULE_T15, teacher_levels, student_levels, x0, y, lq, index, noise)
    assert torch.allclose(loss, torch.zeros(4), atol=1e-10)
    other = progressive_loss(Affine(), teacher, SCHEDULE_T15, teacher_levels, student_levels, x0, y, lq, index, noise)
    assert bool((other > 1e-4).all())


def test_the_round_grids():
    assert round_plan(T15_LEVELS) == [[14, 12, 10, 8, 6, 4, 2, 0], [14, 10, 6, 2], [14, 6], [14]]
    assert round_plan([3, 2, 1, 0]) == [[3, 1], [3]]
    assert round_plan(T15_LEVELS, rounds=2) == [[14, 12, 10, 8, 6, 4, 2, 0], [14, 10, 6, 2]]
    assert round_plan([14]) == []


def test_a_target_from_a_grid_that_does_not_reach_s_is_refused():
    x0, y, lq, noise = _state(2)
    with pytest.raises(ValueError, match="every other level"):
        progressive_target(Affine(), SCHEDULE_T15, [14, 12, 10], x0, y, lq, torch.full((4,), 14), torch.full((4,), 6))


def _images(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return str(folder)


def test_rounds_from_a_t4_teacher_export_each_round_with_its_levels_and_resume(tmp_path, capsys):
    data = _images(tmp_path / "hr")
    common = ["--data", data, "--gt-size", "32", "--batch-size", "2", "--arch", "compact", "--degradation", "bicubic",
              "--no-progress"]
    assert train_main(["resshift", "--schedule", "T4", "--steps", "2", "--out", str(tmp_path / "teacher"), *common]) == 0
    teacher = str(tmp_path / "teacher" / "model.safetensors")
    assert train_main(["progressive", "--teacher", teacher, "--steps", "2", "--rounds", "1",
                       "--out", str(tmp_path / "pd"), *common]) == 0
    first = read_model_info(tmp_path / "pd" / "round-1" / "model.safetensors")
    assert first.levels == [3, 1] and first.sampler == "deterministic"
    before = (tmp_path / "pd" / "round-1" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert train_main(["progressive", "--teacher", teacher, "--steps", "2", "--out", str(tmp_path / "pd"), *common]) == 0
    assert "round 1/" not in capsys.readouterr().out  # the finished round is reused, not retrained
    assert (tmp_path / "pd" / "round-1" / "model.safetensors").stat().st_mtime_ns == before
    last = read_model_info(tmp_path / "pd" / "round-2" / "model.safetensors")
    assert last.levels == [3] and last.sampler == "one_step"
    assert train_main(["progressive", "--teacher", str(tmp_path / "pd" / "round-2" / "model.safetensors"),
                       "--steps", "2", "--out", str(tmp_path / "pd2"), *common]) == 2
    assert "already runs in one step" in capsys.readouterr().err
