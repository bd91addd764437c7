"""The shift half of benchmarks/bench_simple_diffusion.py: its paired per-image difference and the
LoRA-header read-back (the training itself is the benchmark's, not a test's)."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from helpers import benchmark_module


def _bench():
    return benchmark_module("bench_simple_diffusion")


def test_paired_difference_matches_by_name():
    bench = _bench()
    a = [{"name": "x", "psnr_y": 20.0}, {"name": "y", "psnr_y": 22.0}, {"name": "z", "psnr_y": 25.0}]
    b = [{"name": "z", "psnr_y": 24.0}, {"name": "x", "psnr_y": 20.5}, {"name": "y", "psnr_y": 21.0}]
    mean, std = bench.paired_difference(a, b)
    d = [-0.5, 1.0, 1.0]  # x, y, z
    assert mean == pytest.approx(sum(d) / 3)
    assert std == pytest.approx(math.sqrt(sum((v - sum(d) / 3) ** 2 for v in d) / 2))
    assert math.isnan(bench.paired_difference(a[:1], b[1:2])[1])
    with pytest.raises(ValueError):
        bench.paired_difference(a, b[:2])


def test_lora_shift_reads_the_header(tmp_path):
    bench = _bench()
    path = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"schedule_shift": "2"})
    assert bench.lora_shift(path) == "2"
    save_file({"w": torch.zeros(1)}, str(path))
    assert bench.lora_shift(path) == "?"
