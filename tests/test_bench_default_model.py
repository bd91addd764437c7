"""benchmarks/bench_default_model.py ("still fast and small", issue 28 item 4): its RRDBNet is
Real-ESRGAN x4plus's architecture (parameter count worked out by hand, checkpoint layout, x4
output), and the bench's --smoke mode runs end to end in seconds."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import torch

from helpers import REPO as ROOT, benchmark_module


def _rrdbnet():
    return benchmark_module("rrdbnet")


def test_x4plus_parameter_count_by_hand():
    # a 3x3 conv cin -> cout has 9 * cin * cout weights + cout biases
    conv = {  # one residual dense block: 64 features, growth 32; conv k sees 64 + 32 (k - 1) channels
        "conv1": 9 * 64 * 32 + 32,    # 18,464
        "conv2": 9 * 96 * 32 + 32,    # 27,680
        "conv3": 9 * 128 * 32 + 32,   # 36,896
        "conv4": 9 * 160 * 32 + 32,   # 46,112
        "conv5": 9 * 192 * 64 + 64,   # 110,656
    }
    rdb = sum(conv.values())
    assert rdb == 239_808
    rrdb = 3 * rdb                    # 719,424
    body = 23 * rrdb                  # 16,546,752
    conv_first = 9 * 3 * 64 + 64      # 1,792
    conv_64 = 9 * 64 * 64 + 64        # 36,928: conv_body, conv_up1, conv_up2, conv_hr
    conv_last = 9 * 64 * 3 + 3        # 1,731
    total = conv_first + body + 4 * conv_64 + conv_last
    assert total == 16_697_987

    rrdbnet = _rrdbnet()
    net = rrdbnet.RRDBNet(**rrdbnet.X4PLUS)
    assert sum(p.numel() for p in net.parameters()) == total
    assert rrdbnet.parameter_count(**rrdbnet.X4PLUS) == total
    assert f"{total / 1e6:.2f} M" == "16.70 M"
    # the public checkpoint layout: names and shapes
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(shapes) == 2 * (2 + 23 * 3 * 5 + 4)
    assert shapes["conv_first.weight"] == (64, 3, 3, 3)
    assert shapes["body.0.rdb1.conv1.weight"] == (32, 64, 3, 3)
    assert shapes["body.22.rdb3.conv5.weight"] == (64, 192, 3, 3)
    assert shapes["conv_up2.weight"] == shapes["conv_hr.weight"] == (64, 64, 3, 3)
    assert shapes["conv_last.bias"] == (3,)


def test_small_rrdbnet_upscales_x4_and_matches_the_formula():
    rrdbnet = _rrdbnet()
    config = dict(in_channels=3, out_channels=3, features=8, blocks=2, growth=4)
    torch.manual_seed(0)
    net = rrdbnet.RRDBNet(**config).eval()
    assert sum(p.numel() for p in net.parameters()) == rrdbnet.parameter_count(**config)
    with torch.inference_mode():
        y = net(torch.rand(1, 3, 5, 7))
    assert y.shape == (1, 3, 20, 28) and torch.isfinite(y).all()
    # the x4plus MACs per LR pixel give the published 0.587 T(FL)OPs for 128x128 -> 512x512
    assert round(2 * rrdbnet.macs_per_input_pixel() * 128 * 128 / 1e12, 3) == 0.587


def test_bench_smoke_runs_in_seconds():
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_default_model.py"), "--smoke"],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "16,697,987 parameters (16.70 M, = the formula)" in out
    assert "Real-ESRGAN x4plus (RRDBNet)        16x16      64x64" in out
    assert "default at LR 32x24 vs RRDBNet's lowest s / out MP" in out
    assert "lowest ratio" in out and "goal >= 20x" in out
    assert "peak RSS of the default model, LR 32x24 -> 128x96" in out
    assert out.count(" peak RSS ") >= 1 and " MiB  (after load + input " in out
    assert seconds < 120, f"--smoke took {seconds:.0f} s"  # ~5 s of CPU; the rest is a loaded machine


def test_strength_variants_follow_the_knob():
    bench = benchmark_module("bench_default_model")

    class Model:
        knob = None

    assert bench.variants(Model()) == [("no knob", {})]
    Model.knob = object()
    assert bench.variants(Model()) == [("strength=0", {"strength": 0}), ("strength=auto", {"strength": "auto"})]
    assert bench.parse_size("1024x768") == (1024, 768) and bench.parse_size("64") == (64, 64)
