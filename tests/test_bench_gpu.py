"""benchmarks/bench_gpu.py: the full-size cases are the ones issue 31 names, and the CPU smoke
version writes the same JSON shape in seconds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu  # noqa: E402


def test_the_full_size_cases_are_the_released_architectures_at_the_named_sizes():
    from onestep_sr.models import build_official_autoencoder, build_official_denoiser

    assert {name: (4 * w, 4 * h) for name, (h, w) in bench_gpu.SIZES.items()} == \
        {"sinsr": (512, 512), "bundled": (4096, 3072), "sd": (2048, 2048)}
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert (count(build_official_denoiser("meta")), count(build_official_autoencoder("meta"))) == (118_593_583, 55_322_782)
    configs = bench_gpu.sd_configs(smoke=False)
    assert configs["unet"]["block_out_channels"] == [320, 640, 1280, 1280] and configs["unet"]["cross_attention_dim"] == 768


def test_the_cpu_smoke_run_writes_every_case(tmp_path):
    report = bench_gpu.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "gpu.json")])
    assert json.loads((tmp_path / "gpu.json").read_text()) == json.loads(json.dumps(report))
    assert report["smoke"] and not report["skipped"] and set(report["cases"]) == {"sinsr", "bundled", "sd"}
    expected = {"sinsr": {"fp32_1step", "fp32_15step", "fp16_1step", "fp16_15step"},
                "bundled": {"fp32", "fp16"}, "sd": {"fp32", "fp16"}}
    for name, case in report["cases"].items():
        assert set(case["variants"]) == expected[name]
        w, h = case["lr"]
        for key, variant in case["variants"].items():
            assert variant["seconds"] > 0 and variant["output"] == [4 * w, 4 * h]
            assert variant["peak_gpu_bytes"] is None  # no GPU here
            if key.startswith("fp16"):
                diff = variant["fp16_vs_fp32"]
                assert 0 <= diff["mean_abs"] <= diff["max_abs"] < 1 and diff["psnr_db"] > 10
