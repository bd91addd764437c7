"""``onestep_sr.options``: the one place that states the numeric options' rules. Every bad value is
refused with a sentence naming the option, the value and the rule (never rounded or clamped), a
good value comes back unchanged, and fp16/bf16 on a CPU is warned about (issue 18, items 4 and 10)."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

from onestep_sr import options
from onestep_sr.options import OptionError


@pytest.mark.parametrize("check, value, words", [
    (options.check_seed, 2**64, ["seed", "18446744073709551616", "0 to 18446744073709551615"]),
    (options.check_seed, -1, ["seed", "-1", "0 to"]),
    (options.check_seed, -(2**63) - 1, ["seed", "0 to"]),
    (options.check_seed, "text", ["seed", "'text'", "whole number"]),
    (options.check_seed, 1.0, ["seed", "1.0", "whole number"]),
    (options.check_seed, True, ["seed", "True", "whole number"]),
    (options.check_scale, True, ["scale", "True", "a number in (0, 64]"]),
    (options.check_scale, 0, ["scale", "got 0", "more than 0"]),
    (options.check_scale, 65, ["scale", "65", "at most 64"]),
    (options.check_scale, float("nan"), ["scale", "nan"]),
    (options.check_scale, float("inf"), ["scale", "inf"]),
    (options.check_scale, "4", ["scale", "'4'"]),
    (options.check_steps, True, ["steps", "True", "whole number"]),
    (options.check_steps, 0, ["steps", "got 0"]),
    (options.check_steps, 15.0, ["steps", "15.0"]),
    (options.check_stochastic, "yes", ["stochastic", "'yes'", "True, False or None"]),
    (lambda v: options.check_tile(v, 64), 256.0, ["tile", "256.0", "whole number"]),
    (lambda v: options.check_tile(v, 64), True, ["tile", "True"]),
    (lambda v: options.check_tile(v, 64), 100, ["tile", "100", "multiple of 64", "use 64 or 128"]),
    (lambda v: options.check_tile(v, 64), 32, ["tile", "32", "at least 64"]),
    (lambda v: options.check_tile(v, 1), 63, ["tile", "63", "at least 64"]),
    (lambda v: options.check_overlap(v, 64), 64, ["overlap", "64", "smaller than the tile 64"]),
    (lambda v: options.check_overlap(v, 64), -1, ["overlap", "-1", "from 0 to 63"]),
    (options.check_vq_tile, 1, ["vq_tile", "got 1", "at least 16"]),
    (options.check_vq_tile, 15, ["vq_tile", "got 15", "at least 16"]),
    (options.check_sd_tile, 4, ["tile", "got 4", "at least 8"]),
    (options.check_vae_tile, 300, ["vae_tile", "300", "multiple of 8"]),
    (options.check_vae_tile, 128, ["vae_tile", "128", "at least 256"]),
    (lambda v: options.check_finite(v, "vae_lora_strength"), float("nan"), ["vae_lora_strength", "nan", "finite"]),
])
def test_bad_values_are_refused_with_the_option_the_value_and_the_rule(check, value, words):
    with pytest.raises(OptionError) as refused:
        check(value)
    message = str(refused.value)
    for word in words:
        assert word in message, (word, message)
    assert isinstance(refused.value, ValueError)   # hosts that catch ValueError show it as a message


@pytest.mark.parametrize("check, value, expected", [
    (options.check_seed, 0, 0),
    (options.check_seed, 2**64 - 1, 2**64 - 1),
    (options.check_seed, np.int64(7), 7),
    (options.check_seed, None, None),
    (options.check_scale, 2.5, 2.5),
    (options.check_scale, 64, 64.0),
    (options.check_scale, np.float32(0.5), 0.5),
    (lambda v: options.check_tile(v, 64), 128, 128),
    (lambda v: options.check_tile(v, 1), 100, 100),            # a model without windows: used as given
    (lambda v: options.check_overlap(v, 64), 0, 0),
    (options.check_vq_tile, 16, 16),
    (options.check_vae_tile, 264, 264),
])
def test_good_values_come_back_unchanged(check, value, expected):
    got = check(value)
    assert got == expected and type(got) is type(expected)


def test_host_numbers_are_converted_only_when_nothing_is_lost():
    assert options.whole_from_host("tile", 256.0) == 256 and options.whole_from_host("tile", " 256 ") == 256
    assert options.number_from_host("scale", "2.5") == 2.5
    for value in (100.5, "100.5", "abc", None, float("inf")):
        with pytest.raises(OptionError, match=r"tile must be a whole number, got"):
            options.whole_from_host("tile", value)
    with pytest.raises(OptionError, match="scale must be a number, got 'x'"):
        options.number_from_host("scale", "x")


def test_a_host_random_seed_value():
    assert options.check_seed(-1, random=-1) is None
    with pytest.raises(OptionError, match=r"seed must be -1 \(a random seed\) or a whole number from 0 to .*got -5"):
        options.check_seed(-5, random=-1)


def test_check_upscale_before_any_model():
    checked = options.check_upscale(seed=3, scale=2, tile=100, vq_tile=32, color_fix="wavelet")
    assert checked == dict(steps=None, stochastic=None, seed=3, scale=2.0, tile=100, overlap=None, vq_tile=32)
    with pytest.raises(OptionError, match=r"overlap must be .* \(smaller than the tile 256\), got 256"):
        options.check_upscale(overlap=256)   # the default tile


def test_whole_arg_for_argparse_flags():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=options.whole_arg(1, 65535))
    assert parser.parse_args(["--port", "8000"]).port == 8000
    parse = options.whole_arg(1, 65535)
    for text in ("0", "65536", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be a whole number from 1 to 65535, got '{text}'"):
            parse(text)


def test_fp16_and_bf16_on_a_cpu_are_warned_about_once_per_model(caplog):
    assert options.slow_precision(torch.float32, "cpu") is None
    assert options.slow_precision(torch.float16, "cuda") is None
    assert "fp16 on the CPU is much slower than fp32" in options.slow_precision(torch.float16, "cpu")
    assert "bf16 on the CPU" in options.slow_precision(torch.bfloat16, torch.device("cpu"))

    class Model:
        pass

    model = Model()
    with caplog.at_level(logging.WARNING, logger="onestep_sr"):
        for _ in range(3):
            options.warn_slow_precision(torch.float16, "cpu", once_for=model)
        options.warn_slow_precision(torch.bfloat16, "cpu", once_for=model)
    lines = [r.getMessage() for r in caplog.records if "slower than fp32" in r.getMessage()]
    assert len(lines) == 2 and "fp16" in lines[0] and "bf16" in lines[1]
