"""benchmarks/bench_realworld.py --draws (issue 28): the Real-ESRGAN kind over several draws per
image. The summary lines are checked against figures worked out by hand, and the draws are
checked to start at the goal's fixed draw and to differ after it."""
from __future__ import annotations

import subprocess
import sys

from helpers import REPO, benchmark_module, image_folder


def _bench():
    return benchmark_module("bench_realworld")


def test_report_draws_means_counts_and_extremes_by_hand():
    bench = _bench()
    # 2 draws x 3 images: per image means (0.1 + 0.3) / 2 = 0.2, (-0.4 + 0.0) / 2 = -0.2,
    # (1.0 + 0.5) / 2 = 0.75; mean of all six 1.5 / 6 = 0.25; one gain below 0 (-0.4; 0.0 is not below)
    lines = bench.report_draws(["a.png", "b.png", "c.png"], {"1.0": [[0.1, -0.4, 1.0], [0.3, 0.0, 0.5]]})
    assert "over 2 draws per image" in lines[0]
    cells = lines[2].split()
    assert cells == ["1.0", "+0.20", "-0.20", "+0.75", "+0.25", "1/6", "-0.40", "+1.00"]


def test_the_first_draw_is_the_goals_fixed_draw_and_the_second_differs(tmp_path):
    bench = _bench()
    image_folder(tmp_path, count=1, size=(64, 80))
    fixed = bench.run("onestep_default", None, str(tmp_path), 12345)
    draws = bench.run_draws("onestep_default", None, str(tmp_path), 12345, 2)
    assert list(draws) == [str(s) for s in bench.DRAW_STRENGTHS]
    assert all(len(per_draw) == 2 and all(len(row) == 1 for row in per_draw) for per_draw in draws.values())
    for strength in ("0.0", "1.0", "auto"):
        assert draws[strength][0] == bench.gains(fixed["kinds"]["realesrgan"]["rows"][strength])
    assert draws["1.0"][1] != draws["1.0"][0]


def test_draws_below_one_is_refused_by_name():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_realworld.py"), "--draws", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--draws must be at least 1, got 0" in result.stderr
