"""The A1111 / Forge extension (scripts/, preload.py, install.py, extensions/a1111) in a fake of the
webui's ``modules`` contract (tests/a1111_fake, loaded by tests/webui_fake.py as the webui loads
extensions): upscaler discovery, entries, exact scale handling, settings, errors, interruption.
tests/test_a1111_real.py runs it in a real webui (opt-in)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import webui_fake
from onestep_sr import load_model
from helpers import spy_strengths

ROOT = webui_fake.ROOT
TINY, TEACHER, SINSR = webui_fake.TINY, webui_fake.TEACHER, webui_fake.SINSR


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The small models of ``webui_fake.tiny_models``, made once."""
    folder = tmp_path_factory.mktemp("tiny")
    webui_fake.tiny_models(folder)
    return folder


@pytest.fixture()
def webui(tmp_path, tiny, monkeypatch):
    """The fake webui started with the extension; models in <models>/OneStepSR; offline."""
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    models = tmp_path / "models"
    shutil.copytree(tiny, models / "OneStepSR")
    shared = webui_fake.load_extension(models)
    yield shared
    webui_fake.unload()


def _image(w: int = 20, h: int = 12, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).squeeze(), mode)


def _engine(folder: Path, name: str = "tiny_sinsr.safetensors"):
    """The engine's model for a file of the tiny folder (its own info, or the official defaults)."""
    return load_model({"denoiser": folder / name, "autoencoder": folder / "autoencoder_vq_f4.pth"}, device="cpu",
                      dtype="fp32")


# --- loading and discovery -------------------------------------------------------------------------


def test_the_upscaler_is_discovered_with_one_entry_per_model(webui):
    names = [u.name for u in webui.sd_upscalers]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    ours = [n for n in names if n.startswith("OneStepSR")]
    assert ours[0] == "OneStepSR 4x default"  # the bundled model, offline
    assert set(ours) == {"OneStepSR 4x default", SINSR, "OneStepSR 4x SinSR v2", "OneStepSR 4x ResShift v1 (15 steps)",
                         "OneStepSR 4x ResShift v2 (15 steps)", "OneStepSR 4x ResShift v3 (4 steps)",
                         "OneStepSR 4x ResShift bicubic (4 steps)", TINY, TEACHER}
    data = webui_fake.upscaler(webui, TINY)
    assert type(data.scaler).__name__ == "UpscalerOneStepSR" and type(data.scaler).__bases__[0].__name__ == "Upscaler"
    assert data.scale == 4 and data.data_path.endswith("tiny_sinsr.safetensors")
    assert webui_fake.upscaler(webui, SINSR).data_path == "registry:sinsr_v1"
    # the engine came in under the unique package name (the subprocess test below runs it with the
    # checkout off sys.path and the plain `onestep_sr` package unimportable)
    assert "onestep_sr_webui.onestep_sr.model" in sys.modules
    assert type(data.scaler).__module__ == "onestep_sr_webui.extensions.a1111.upscaler"


def test_the_committed_bundled_model_is_the_first_entry_and_runs_offline(webui, monkeypatch):
    """The real weights/onestep_default_x4.safetensors, with no models folder content and no
    network: listed first as `OneStepSR 4x default`, exact x4 (and x2) sizes, equal to the engine."""
    from modules import modelloader
    from onestep_sr_webui.onestep_sr import model as engine_model

    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    assert engine_model.BUNDLED_MODELS["onestep_default"].is_file()
    modelloader.load_upscalers()
    ours = [u for u in webui.sd_upscalers if u.name.startswith("OneStepSR")]
    assert ours[0].name == "OneStepSR 4x default"
    out = webui_fake.extras(webui, _image(), "OneStepSR 4x default", 4)
    expected = engine_model.load_model("onestep_default", device="cpu").upscale(_image(), seed=12345)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert webui_fake.extras(webui, _image(), "OneStepSR 4x default", 2).size == (_image().width * 2,
                                                                                  _image().height * 2)


def test_a_1x1_image_upscales_with_the_bundled_model(webui):
    """Was an HTTP 500 (GroupNorm over a 1x1 map): 1x1 gives the 4x4 (and 2x2) of its colour."""
    pixel = Image.new("RGB", (1, 1), (100, 150, 200))
    out = webui_fake.extras(webui, pixel, "OneStepSR 4x default", 4)
    assert out.size == (4, 4) and np.abs(np.asarray(out).astype(int) - (100, 150, 200)).max() <= 6
    assert webui_fake.extras(webui, pixel, "OneStepSR 4x default", 2).size == (2, 2)


def test_a_bundled_model_is_the_first_entry_and_runs(webui, tiny):
    """When weights/ holds a bundled model it is listed first as `OneStepSR 4x default` and runs
    offline (its model info names its autoencoder, found in the models folder)."""
    from modules import modelloader
    from onestep_sr_webui.onestep_sr import model as engine_model

    bundled, restoration = dict(engine_model.BUNDLED_MODELS), dict(engine_model.BUNDLED_RESTORATION)
    engine_model.BUNDLED_MODELS["onestep_default"] = tiny / "tiny_teacher.safetensors"
    del engine_model.BUNDLED_RESTORATION["onestep_default"]  # a stand-in of another network: no restoration end
    try:
        modelloader.load_upscalers()
        ours = [u for u in webui.sd_upscalers if u.name.startswith("OneStepSR")]
        assert ours[0].name == "OneStepSR 4x default" and ours[0].data_path == "bundled:onestep_default"
        out = webui_fake.extras(webui, _image(), "OneStepSR 4x default", 4)
        expected = _engine(tiny, "tiny_teacher.safetensors").upscale(_image(), seed=12345)
        assert np.array_equal(np.asarray(out), np.asarray(expected))
    finally:
        engine_model.BUNDLED_MODELS.clear()
        engine_model.BUNDLED_MODELS.update(bundled)
        engine_model.BUNDLED_RESTORATION.update(restoration)


def test_the_models_path_option_and_setting_are_searched_first(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    option_dir, setting_dir = tmp_path / "from_option", tmp_path / "from_setting"
    option_dir.mkdir(), setting_dir.mkdir()
    shutil.copy(tiny / "tiny_sinsr.safetensors", option_dir / "mine.safetensors")
    shutil.copy(tiny / "tiny_sinsr.safetensors", setting_dir / "theirs.safetensors")
    try:
        shared = webui_fake.load_extension(tmp_path / "models", ["--onestepsr-models-path", str(option_dir)],
                                           settings={"onestepsr_models_path": str(setting_dir)})
        scaler = webui_fake.upscaler(shared, "OneStepSR 4x mine").scaler
        assert scaler.user_path == str(option_dir)
        assert scaler.folders() == [str(setting_dir), str(option_dir), str(tmp_path / "models" / "OneStepSR")]
        assert "OneStepSR 4x theirs" in [u.name for u in shared.sd_upscalers]
    finally:
        webui_fake.unload()


def test_a_reload_keeps_one_class_and_readds_the_settings(webui, tmp_path):
    from modules import modelloader, script_callbacks

    script_callbacks.clear_callbacks()                       # what Reload UI does before re-running scripts
    webui_fake._exec_file(ROOT / "scripts" / "onestep_sr_upscalers.py", "onestep_sr_upscalers.py")
    modelloader.load_upscalers()
    script_callbacks.ui_settings_callback()
    assert [u.name for u in webui.sd_upscalers].count(TINY) == 1
    assert "onestepsr_tile" in webui.opts.data_labels


# --- upscaling ------------------------------------------------------------------------------------


def test_extras_x4_equals_the_engine(webui, tiny):
    image = _image()
    out = webui_fake.extras(webui, image, TINY, 4)
    expected = _engine(tiny).upscale(image, steps=1, seed=12345)
    assert out.size == (80, 48) and np.array_equal(np.asarray(out), np.asarray(expected))


def test_a_registry_model_placed_by_hand_runs_offline_with_its_schedule(webui, tiny):
    image = _image(seed=1)
    out = webui_fake.extras(webui, image, SINSR, 4)
    expected = _engine(tiny, "SinSR_v1.pth").upscale(image, steps=1, seed=12345)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("scale, size, passes", [(2.5, (40, 30), 1), (4, (64, 48), 1), (1, (16, 12), 1),
                                                 (3.3, (53, 40), 1), (8, (128, 96), 2)])
def test_any_scale_gives_exactly_scale_times_the_size(webui, scale, size, passes, monkeypatch):
    """16x12 at 2.5 is 40x30 (the webui's own upscale would give 40x24: each side floored to 8);
    x4 passes until the size is reached (at least one), then one Lanczos resize."""
    data = webui_fake.upscaler(webui, TINY)
    calls = []
    real = data.scaler.one_pass
    monkeypatch.setattr(data.scaler, "one_pass",
                        lambda img, model, strength=None: calls.append(img.size) or real(img, model, strength))
    image = _image(16, 12)
    out = webui_fake.extras(webui, image, TINY, scale)
    assert out.size == size and len(calls) == passes
    x4 = data.scaler.do_upscale(image, data.data_path)
    if passes == 1:
        assert np.array_equal(np.asarray(out), np.asarray(x4.resize(size, Image.Resampling.LANCZOS) if size != x4.size else x4))
    from modules.upscaler import Upscaler
    if scale == 2.5:
        assert Upscaler.upscale(data.scaler, image, scale, data.data_path).size == (40, 24)  # the distortion avoided


def test_alpha_and_grey_images_keep_their_mode(webui):
    for mode in ("RGBA", "L"):
        out = webui_fake.extras(webui, _image(mode=mode), TINY, 4)
        assert out.mode == mode and out.size == (80, 48)


def test_settings_reach_the_engine(webui, tiny):
    image = _image(24, 16, seed=3)
    webui.opts.onestepsr_color_fix = "wavelet"
    webui.opts.onestepsr_seed = 7
    webui.opts.onestepsr_tile = 64
    webui.opts.onestepsr_tile_overlap = 16
    out = webui_fake.extras(webui, image, TINY, 4)
    expected = _engine(tiny).upscale(image, steps=1, seed=7, color_fix="wavelet", tile=64, overlap=16)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(_engine(tiny).upscale(image, steps=1, seed=12345)))


def test_the_resshift_setting_picks_all_steps_or_one(webui, tiny):
    image = _image(seed=4)
    model = _engine(tiny, "tiny_teacher.safetensors")
    assert model.sampler == "stochastic" and model.schedule.steps == 4
    for choice, steps, stochastic in [("all steps, stochastic (the paper's sampler)", 4, True),
                                      ("all steps, deterministic (seeded DDIM-like)", 4, False),
                                      ("one step (x0 of the first step: fast, softer)", 1, None)]:
        webui.opts.onestepsr_resshift_mode = choice
        out = webui_fake.extras(webui, image, TEACHER, 4)
        expected = model.upscale(image, steps=steps, stochastic=stochastic, seed=12345)
        assert np.array_equal(np.asarray(out), np.asarray(expected)), choice


def test_settings_are_registered_in_the_upscaling_section(webui):
    labels = {k: v for k, v in webui.opts.data_labels.items() if k.startswith("onestepsr_")}
    assert set(labels) == {"onestepsr_models_path", "onestepsr_tile", "onestepsr_tile_overlap", "onestepsr_color_fix",
                           "onestepsr_dtype", "onestepsr_resshift_mode", "onestepsr_strength", "onestepsr_seed",
                           "onestepsr_keep_loaded"}
    assert all(v.section == ("upscaling", "Upscaling") and v.label.startswith("OneStepSR") for v in labels.values())
    assert webui.opts.onestepsr_dtype == "auto" and webui.opts.onestepsr_seed == 12345
    assert webui.opts.onestepsr_strength == "auto"


def test_the_model_is_kept_or_dropped_as_the_setting_says(webui):
    from onestep_sr_webui.extensions.a1111 import upscaler

    webui_fake.extras(webui, _image(), TINY, 4)
    first = upscaler._cache["model"]
    webui_fake.extras(webui, _image(), TINY, 4)
    assert upscaler._cache["model"] is first
    webui.opts.onestepsr_keep_loaded = False
    webui_fake.extras(webui, _image(), TINY, 4)
    assert upscaler._cache == {}
    assert first.dtype == torch.float32 and first.device.type == "cpu"   # auto on a CPU: fp32


# --- errors never become a resize -----------------------------------------------------------------


def test_errors_raise_with_the_entry_and_the_cause(webui, tiny):
    image = _image()
    with pytest.raises(RuntimeError, match=r"OneStepSR upscaler 'OneStepSR 4x SinSR v2' failed: .*SinSR_v2\.pth.*offline"):
        webui_fake.extras(webui, image, "OneStepSR 4x SinSR v2", 4)
    data = webui_fake.upscaler(webui, TINY)
    Path(data.data_path).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"'OneStepSR 4x tiny_sinsr' failed: .*tiny_sinsr\.safetensors"):
        webui_fake.extras(webui, image, TINY, 4)
    Path(data.data_path).unlink()
    with pytest.raises(RuntimeError, match=r"tiny_sinsr\.safetensors is gone"):
        webui_fake.extras(webui, image, TINY, 4)
    with pytest.raises(RuntimeError, match="no OneStepSR model selected"):
        data.scaler.upscale(image, 4, None)
    webui.opts.onestepsr_seed = -5
    with pytest.raises(RuntimeError, match=r"noise seed.*-5"):
        webui_fake.extras(webui, image, SINSR, 4)


def test_error_types_read_onestep_sr_name_in_the_webui(webui, tiny):
    """The webui prints tracebacks (module.qualname) and the API answers type(e).__name__: the
    adapter's and the engine's errors read onestep_sr.<Name>, not onestep_sr_webui.extensions...."""
    import pickle
    import traceback

    data = webui_fake.upscaler(webui, TINY)
    Path(data.data_path).write_bytes(b"")
    with pytest.raises(RuntimeError) as err:
        webui_fake.extras(webui, _image(), TINY, 4)
    shown = traceback.format_exception(err.value)
    assert shown[-1].startswith("onestep_sr.OneStepSRError: OneStepSR upscaler 'OneStepSR 4x tiny_sinsr' failed: ")
    assert "tiny_sinsr.safetensors: not a readable safetensors file" in shown[-1]
    assert any(line.startswith("onestep_sr.CheckpointError: ") for line in shown), shown
    assert type(err.value).__name__ == "OneStepSRError"
    assert type(pickle.loads(pickle.dumps(err.value))) is type(err.value)
    from onestep_sr_webui.extensions.a1111.upscaler import Interrupted
    assert f"{Interrupted.__module__}.{Interrupted.__qualname__}" == "onestep_sr.Interrupted"


@pytest.mark.parametrize("key, value, message", [
    ("onestepsr_tile", 100.5, r"'tile size' \(onestepsr_tile\): tile must be a whole number, got 100.5"),
    ("onestepsr_tile", "big", r"'tile size' \(onestepsr_tile\): tile must be a whole number, got 'big'"),
    ("onestepsr_tile", 100, r"'tile size' \(onestepsr_tile\): tile must be .* a multiple of 8 for this model, "
                            r"got 100; use 96 or 104"),     # was rounded down without a word
    ("onestepsr_tile", 32, r"'tile size' \(onestepsr_tile\): tile must be .* at least 64"),
    ("onestepsr_tile_overlap", 256, r"'tile overlap' \(onestepsr_tile_overlap\): overlap must be .* \(smaller "
                                    r"than the tile 256\), got 256"),
    ("onestepsr_seed", 2**64, r"'noise seed' \(onestepsr_seed\): seed must be -1 \(a random seed\) or a whole "
                              r"number from 0 to 18446744073709551615"),   # was torch's overflow
    ("onestepsr_seed", 2.5, r"'noise seed' \(onestepsr_seed\): seed must be a whole number, got 2.5"),
])
def test_settings_sent_through_the_api_follow_the_engine_rules(webui, key, value, message):
    """Issue 18 items 4 and 10: /sdapi/v1/options stores any value; the upscale refuses it with the
    setting's name and the rule instead of truncating, rounding or crashing in torch."""
    setattr(webui.opts, key, value)
    with pytest.raises(RuntimeError, match=rf"OneStepSR upscaler 'OneStepSR 4x tiny_sinsr' failed: OneStepSR setting "
                                           rf"{message}"):
        webui_fake.extras(webui, _image(), TINY, 4)


def test_whole_number_settings_stored_as_float_or_text_are_used_as_given(webui, tiny):
    image = _image(24, 16, seed=3)
    webui.opts.onestepsr_tile, webui.opts.onestepsr_tile_overlap, webui.opts.onestepsr_seed = 104.0, "8", "7"
    out = webui_fake.extras(webui, image, TINY, 4)
    expected = _engine(tiny).upscale(image, steps=1, seed=7, tile=104, overlap=8)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


# --- restoration strength (issue 28): the onestepsr_strength setting -------------------------------

DEFAULT = "OneStepSR 4x default"


def _noisy(w: int = 24, h: int = 16, seed: int = 2) -> Image.Image:
    """A smooth picture with sigma-12 noise: auto picks a strength well above 0."""
    y, x = np.mgrid[0:h, 0:w]
    clean = np.stack([x * 200 / w, y * 200 / h, (x + y) * 100 / (w + h)], -1) + 20
    noise = np.random.default_rng(seed).normal(0, 12, clean.shape)
    return Image.fromarray(np.clip(clean + noise, 0, 255).astype(np.uint8))


def _strengths_given(monkeypatch) -> list:
    """The ``strength`` each engine upscale call of the extension is given."""
    from onestep_sr_webui.onestep_sr.model import OneStepSR

    return spy_strengths(monkeypatch, OneStepSR)


def _bundled_engine():
    from onestep_sr_webui.onestep_sr.model import load_model as webui_load_model

    return webui_load_model("onestep_default", device="cpu")


def test_the_strength_setting_is_auto_by_default_and_the_console_line_reports_the_engines_choice(webui, monkeypatch,
                                                                                                 capsys):
    image = _noisy()
    seen = _strengths_given(monkeypatch)
    out = webui_fake.extras(webui, image, DEFAULT, 4)
    assert seen == ["auto"]
    engine = _bundled_engine()
    expected = engine.upscale(image, seed=12345, strength="auto")
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    (chosen,) = engine.last_strengths
    assert chosen > 0
    assert f"OneStepSR upscaler '{DEFAULT}': restoration strength {chosen:g} (auto)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("value, stored", [(0.0, 0), (1.0, "1"), (0.35, "0.35")])
def test_a_manual_strength_equals_the_engine_at_that_strength(webui, monkeypatch, capsys, value, stored):
    """The setting as /sdapi/v1/options stores it (a number) or the settings page does (text)."""
    image = _noisy()
    webui.opts.onestepsr_strength = stored
    seen = _strengths_given(monkeypatch)
    out = webui_fake.extras(webui, image, DEFAULT, 4)
    assert seen == [value]
    engine = _bundled_engine()
    expected = engine.upscale(image, seed=12345, strength=value)
    assert np.array_equal(np.asarray(out), np.asarray(expected)) and engine.last_strengths == [value]
    assert f"OneStepSR upscaler '{DEFAULT}': restoration strength {value:g}" in capsys.readouterr().out.splitlines()
    if value in (0.0, 1.0):
        assert not np.array_equal(np.asarray(out), np.asarray(engine.upscale(image, seed=12345, strength=1 - value)))


def test_passes_after_the_first_keep_its_strength(webui, monkeypatch):
    """x16 is two x4 passes: auto measures the input once, the second pass uses that number (as the
    engine does for scales above its native one), not a new measure of the smoother x4 result."""
    image = _noisy(8, 6)
    seen = _strengths_given(monkeypatch)
    out = webui_fake.extras(webui, image, DEFAULT, 16)
    given = list(seen)
    engine = _bundled_engine()
    first = engine.upscale(image, seed=12345)
    (chosen,) = engine.last_strengths
    assert given == ["auto", chosen]
    expected = engine.upscale(first, seed=12345, strength=chosen)
    assert out.size == (128, 96) and np.array_equal(np.asarray(out), np.asarray(expected))


def test_a_bad_strength_setting_is_refused_naming_it_and_other_models_ignore_the_setting(webui, tiny, capsys):
    webui.opts.onestepsr_strength = "strong"
    with pytest.raises(RuntimeError, match=r"OneStepSR upscaler 'OneStepSR 4x default' failed: OneStepSR setting "
                                           r"'restoration strength' \(onestepsr_strength\): strength must be auto or "
                                           r"a number from 0 to 1, got 'strong'"):
        webui_fake.extras(webui, _image(), DEFAULT, 4)
    webui.opts.onestepsr_strength = 0.5  # a model with one weight set: the setting does not apply to it
    image = _image(seed=6)
    out = webui_fake.extras(webui, image, TINY, 4)
    assert np.array_equal(np.asarray(out), np.asarray(_engine(tiny).upscale(image, steps=1, seed=12345)))
    assert "restoration strength" not in capsys.readouterr().out


def test_interrupt_stops_between_tiles(webui):
    webui.opts.onestepsr_tile = 64
    image = _image(160, 70)                               # 3 x 2 denoiser tiles
    calls = []
    data = webui_fake.upscaler(webui, TINY)

    def interrupt_after_first(done, total):
        calls.append(done)
        webui.state.interrupted = True

    import onestep_sr_webui.extensions.a1111.webui as host
    real = host.progress_bar
    host.progress_bar = lambda total, label: type("Bar", (), {"n": 0, "update": lambda self, n: interrupt_after_first(n, total),
                                                             "close": lambda self: None})()
    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            data.scaler.upscale(image, 4, data.data_path)
    finally:
        host.progress_bar = real
        webui.state.interrupted = False
    assert len(calls) == 1


def test_use_cpu_and_no_half_are_honoured(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    shutil.copytree(tiny, tmp_path / "models" / "OneStepSR")
    try:
        shared = webui_fake.load_extension(tmp_path / "models", ["--use-cpu", "onestepsr", "--no-half"])
        from modules import devices
        from onestep_sr_webui.extensions.a1111 import settings, webui as host
        devices.device = torch.device("cuda")               # a GPU webui: the task still goes to the CPU
        assert host.device() == torch.device("cpu") and not host.half_allowed()
        assert settings.dtype("cuda") == "fp32"                # --no-half
        shared.opts.onestepsr_dtype = "bf16"
        assert settings.dtype("cpu") == "bf16"
    finally:
        webui_fake.unload()


# --- install.py and preload.py --------------------------------------------------------------------


def test_install_py_installs_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(webui_fake.FAKE), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 0 and done.stdout == "" and "FAKE-PIP" not in done.stdout, (done.stdout, done.stderr)
    source = (ROOT / "install.py").read_text()
    assert "run_pip" not in source and "pip install" not in source


def test_the_webui_path_needs_neither_gradio_diffusers_nor_torchvision(tmp_path, tiny):
    """The extension loads and upscales in a fresh interpreter (started elsewhere) where gradio,
    diffusers, peft, transformers, torchvision and the installed `onestep_sr` package cannot be
    imported, and the checkout is on sys.path only while the script loads, as in A1111."""
    code = f"""
import sys
for name in ("gradio", "diffusers", "peft", "transformers", "torchvision", "onestep_sr"):
    sys.modules[name] = None
sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
sys.path.insert(0, {str(ROOT / 'tests')!r})
import shutil, os
os.environ["ONESTEP_SR_OFFLINE"] = "1"
from pathlib import Path
import webui_fake
from PIL import Image
models = Path({str(tmp_path)!r}) / "models"
shutil.copytree({str(tiny)!r}, models / "OneStepSR")
shared = webui_fake.load_extension(models)
assert {str(ROOT)!r} not in sys.path
out = webui_fake.extras(shared, Image.new("RGB", (16, 12), (90, 120, 200)), {TINY!r}, 4)
print(out.size)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("(64, 48)")
