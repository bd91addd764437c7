"""The extension inside a real AUTOMATIC1111 webui (or Forge), API-only (opt-in): set ``A1111_DIR``
to a webui checkout and ``A1111_PYTHON`` to its environment's interpreter; ``A1111_FLAGS`` adds
launch flags (Forge on a CPU needs ``--always-cpu``).

    A1111_DIR=~/webui A1111_PYTHON=~/webui/venv/bin/python python -m pytest -s tests/test_a1111_real.py

A throw-away ``--data-dir`` holds the extension (a link to this checkout under ``extensions/``),
the small random models of ``webui_fake.tiny_models`` in ``models/OneStepSR`` and a config with
the Extras result cache off; the user's checkout is not modified. The webui starts on a free
loopback port without loading an SD model, downloads off (``ONESTEP_SR_OFFLINE``). Each entry
of ``/sdapi/v1/upscalers`` that is ours goes through ``/sdapi/v1/extra-single-image`` and is
compared with the engine run here; an entry whose weights are not there must fail with HTTP 500
and a message, never answer with a resize. Skipped without ``A1111_DIR``.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import webui_fake
from webui_real import WebUI, decode_image as _decode, png_base64 as _png, prepare_data_dir, start_webui

A1111_DIR = os.environ.get("A1111_DIR", "").strip()
A1111_PYTHON = os.environ.get("A1111_PYTHON", "").strip() or sys.executable
A1111_FLAGS = shlex.split(os.environ.get("A1111_FLAGS", ""))
ROOT = webui_fake.ROOT
LOCAL_ENTRIES = {webui_fake.TINY: "tiny_sinsr.safetensors", webui_fake.SINSR: "SinSR_v1.pth",
                 webui_fake.TEACHER: "tiny_teacher.safetensors"}

pytestmark = pytest.mark.skipif(not A1111_DIR, reason="real-webui tests are opt-in: set A1111_DIR to an "
                                "AUTOMATIC1111/Forge checkout (and A1111_PYTHON to its interpreter)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = prepare_data_dir(tmp_path_factory.mktemp("webui_data"))
    webui_fake.tiny_models(data / "models" / "OneStepSR")
    return data


@pytest.fixture(scope="module")
def webui(data_dir) -> WebUI:
    with start_webui(A1111_DIR, A1111_PYTHON, data_dir, A1111_FLAGS) as server:
        print(f"\n[real webui] {A1111_DIR} ready in {server.startup:.1f} s")
        yield server


def _test_image(w: int = 24, h: int = 16) -> Image.Image:
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _extras(webui: WebUI, image: Image.Image, name: str, scale: float) -> tuple[int, Any, float]:
    started = time.perf_counter()
    status, body = webui.call("/sdapi/v1/extra-single-image", {"image": _png(image), "upscaler_1": name,
                                                                "upscaling_resize": scale})
    return status, body, time.perf_counter() - started


def _engine(data_dir: Path, file: str, image: Image.Image) -> Image.Image:
    from onestep_sr import load_model

    folder = data_dir / "models" / "OneStepSR"
    model = load_model({"denoiser": folder / file, "autoencoder": folder / "autoencoder_vq_f4.pth"}, device="cpu",
                       dtype="fp32")
    return model.upscale(image, seed=12345)   # the extension's defaults: the model's own sampler, seed 12345


def test_upscalers_lists_every_entry(webui):
    status, upscalers = webui.call("/sdapi/v1/upscalers")
    assert status == 200
    ours = {u["name"]: u for u in upscalers if u["name"].startswith("OneStepSR")}
    print(f"\n[real webui] /sdapi/v1/upscalers: {sorted(ours)}")
    assert set(LOCAL_ENTRIES) <= set(ours), sorted(ours)
    assert {"OneStepSR 4x SinSR v2", "OneStepSR 4x ResShift v1 (15 steps)", "OneStepSR 4x ResShift v3 (4 steps)"} <= set(ours)
    assert all(u["scale"] == 4 for u in ours.values())
    assert ours[webui_fake.SINSR]["model_path"] == "registry:sinsr_v1"


@pytest.mark.parametrize("name", sorted(LOCAL_ENTRIES))
def test_each_local_entry_equals_the_engine(webui, data_dir, name):
    image = _test_image()
    status, body, seconds = _extras(webui, image, name, 4)
    assert status == 200, f"{status}: {body}\n{webui.log_tail()}"
    out = _decode(body["image"])
    expected = _engine(data_dir, LOCAL_ENTRIES[name], image)
    difference = np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max()
    print(f"\n[real webui] {name}: {image.size} -> {out.size} in {seconds:.2f} s, max difference to the engine "
          f"{difference}; html_info {body.get('html_info')!r}")
    assert out.size == (96, 64) and difference <= 1


def test_non_x4_scales_keep_the_aspect_ratio(webui, data_dir):
    image = _test_image(16, 12)
    status, body, _ = _extras(webui, image, webui_fake.TINY, 2.5)
    assert status == 200, body
    out = _decode(body["image"])
    print(f"\n[real webui] x2.5 of 16x12 -> {out.size} (the webui's own rounding would give 40x24)")
    assert out.size == (40, 30)
    expected = _engine(data_dir, "tiny_sinsr.safetensors", image).resize((40, 30), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_an_entry_without_weights_fails_with_a_message_not_a_resize(webui):
    status, body, _ = _extras(webui, _test_image(), "OneStepSR 4x SinSR v2", 4)
    print(f"\n[real webui] SinSR v2 without its weights: HTTP {status}: {str(body)[:300]}")
    assert status == 500
    text = json.dumps(body)
    assert "OneStepSR 4x SinSR v2" in text and "SinSR_v2.pth" in text and "offline" in text
    status, _, _ = _extras(webui, _test_image(), webui_fake.TINY, 4)
    assert status == 200                                   # and the webui keeps serving
