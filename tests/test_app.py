"""The web app (onestep_sr.app): the gradio-free service (model picker, downloads from a loopback
server, batches with bad uploads, cancel, seeds, sizes), and the gradio page served on loopback and
driven over HTTP with gradio_client. tests/test_app_browser.py drives it in a real browser."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import webui_fake
from onestep_sr import model as engine_model
from onestep_sr import options, registry
from onestep_sr.app.service import AppService, Cancelled, Settings
from onestep_sr.model import load_model
from onestep_sr.model_info import ModelInfo, save_model
from onestep_sr.models import DenoiserConfig, build_denoiser
from helpers import spy_strengths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    webui_fake.tiny_models(folder)
    return folder


def bundled_stand_in(path: Path) -> Path:
    """A small pixel-space one-step model saved as training/ saves the bundled default."""
    torch.manual_seed(3)
    config = DenoiserConfig(image_size=8, in_channels=48 + 3, out_channels=48, model_channels=32, channel_mult=(1,),
                            num_res_blocks=(1,), attention_resolutions=(), swin_embed_dim=32, num_head_channels=16)
    save_model(path, build_denoiser(config), ModelInfo(autoencoder="pixel", sampler="one_step"))
    return path


@pytest.fixture()
def bundled(tmp_path, monkeypatch) -> Path:
    path = bundled_stand_in(tmp_path / "weights" / "onestep_default_x4.safetensors")
    monkeypatch.setitem(engine_model.BUNDLED_MODELS, "onestep_default", path)
    monkeypatch.delitem(engine_model.BUNDLED_RESTORATION, "onestep_default")  # another network: no restoration end
    return path


@pytest.fixture()
def service(tmp_path, tiny, monkeypatch) -> AppService:
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    models = tmp_path / "models"
    shutil.copytree(tiny, models)
    return AppService(folders=[models], output_dir=tmp_path / "out", device="cpu", dtype="fp32")


def write_image(path: Path, size=(20, 12), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze(), mode).save(path)
    return path


def bad_uploads(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.png"
    text.write_text("not a picture")
    good = write_image(folder / "whole.png", (40, 30))
    truncated = folder / "half.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    huge = write_image(folder / "huge.png", (300, 200))
    return {"text": text, "truncated": truncated, "huge": huge}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- the model picker ---------------------------------------------------------------------------


def test_picker_lists_bundled_registry_and_local_models_and_prefers_the_bundled_one(service, bundled):
    choices = service.choices()
    labels = [label for label, _ in choices]
    assert labels[0] == "default (bundled)" and choices[0][1] == "bundled:onestep_default"
    assert "SinSR v1" in labels and "ResShift v1 - 15 steps" in labels and "ResShift v3 - 4 steps" in labels
    assert "tiny_sinsr" in labels and "tiny_teacher - 4 steps" in labels
    assert service.default_source() == "bundled:onestep_default"
    assert service.status("bundled:onestep_default") == "ready (bundled, offline)"


def test_the_committed_bundled_model_is_the_default_and_needs_no_download(tmp_path):
    (tmp_path / "models").mkdir()
    service = AppService(folders=[tmp_path / "models"])
    assert engine_model.BUNDLED_MODELS["onestep_default"].is_file()
    assert service.default_source() == "bundled:onestep_default"
    assert service.status("bundled:onestep_default") == "ready (bundled, offline)"


def test_without_a_bundled_model_the_default_is_one_that_needs_no_download(tmp_path, tiny, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny / "tiny_sinsr.safetensors", models / "mine.safetensors")
    monkeypatch.setitem(engine_model.BUNDLED_MODELS, "onestep_default", tmp_path / "deleted.safetensors")
    service = AppService(folders=[models])
    # mine.safetensors needs the VQ-f4 autoencoder, which is not there either: nothing is ready
    assert service.default_source() == "registry:sinsr_v1"
    shutil.copy(tiny / "autoencoder_vq_f4.pth", models / "autoencoder_vq_f4.pth")
    assert service.default_source() == str(models / "mine.safetensors")


def test_status_says_what_a_download_would_fetch(service):
    assert service.status("registry:sinsr_v1") == "ready (downloaded)"   # SinSR_v1.pth placed by hand
    status = service.status("registry:sinsr_v2")
    assert status.startswith(f"not downloaded: SinSR_v2.pth (478 MB) into {service.folders[0]}")
    assert "CC BY-NC-SA 4.0" in status
    assert [e.name for e in service.missing("registry:sinsr_v2")] == ["sinsr_v2"]
    assert service.missing(str(service.folders[0] / "tiny_teacher.safetensors")) == []


def test_step_choices_follow_the_model(service):
    assert service.step_choices("registry:sinsr_v1") == [("1 (one step)", "1")]
    teacher = str(service.folders[0] / "tiny_teacher.safetensors")
    assert [value for _, value in service.step_choices(teacher)] == ["4/stochastic", "4/deterministic", "1"]


def test_download_button_fetches_the_denoiser_and_its_autoencoder_from_the_server(tmp_path, server, monkeypatch, tiny):
    server.files["den.pth"] = (tiny / "SinSR_v1.pth").read_bytes()
    server.files["ae.pth"] = (tiny / "autoencoder_vq_f4.pth").read_bytes()
    path = tmp_path / "registry.json"
    entry = {"file": "den.pth", "url": server.url + "den.pth", "kind": "denoiser", "licence": "test licence",
             "autoencoder": "ae", "sampler": "one_step", "schedule": {}}
    path.write_text(json.dumps({"models": {"den": entry, "ae": {"file": "ae.pth", "url": server.url + "ae.pth",
                                                                 "kind": "autoencoder", "licence": "test licence"}}}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    service = AppService(folders=[tmp_path / "models"], output_dir=tmp_path / "out", device="cpu")
    assert service.status("registry:den").startswith("not downloaded: den.pth, ae.pth")
    seen = []
    assert service.download("registry:den", lambda fraction, what: seen.append((fraction, what))) == "ready (downloaded)"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["ae.pth", "ae.pth.sha256", "den.pth",
                                                                         "den.pth.sha256"]
    assert seen[-1][0] == 1.0 and any(what.startswith("downloading ae.pth (2/2)") for _, what in seen)
    image = write_image(tmp_path / "in.png")
    [result] = service.upscale_files([image], "registry:den", Settings(seed=1))
    assert result.error is None and result.size == (80, 48)


def test_download_offline_or_broken_says_why_and_leaves_no_file(tmp_path, server, monkeypatch):
    server.files["den.pth"] = b"short"
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": {"den": {
        "file": "den.pth", "url": server.url + "den.pth", "kind": "denoiser", "licence": "x",
        "expected_payload_bytes": 10_000, "autoencoder": None}}}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    service = AppService(folders=[tmp_path / "models"], offline=True)
    with pytest.raises(Exception, match=r"den \(den.pth\) is not in .* downloads are off"):
        service.download("registry:den")
    service.offline = False
    with pytest.raises(Exception, match="den"):
        service.download("registry:den")
    assert files_under(tmp_path / "models") == []


# --- upscaling -----------------------------------------------------------------------------------


def test_a_batch_gives_the_engine_result_and_reports_bad_files_without_stopping(service, tmp_path, tiny):
    service.max_pixels = 50_000
    bad = bad_uploads(tmp_path / "uploads")
    good = write_image(tmp_path / "uploads" / "photo.png", (20, 12))
    paths = [bad["text"], good, bad["truncated"], bad["huge"]]
    results = list(service.upscale_files(paths, "registry:sinsr_v1", Settings(seed=7)))
    assert [r.name for r in results] == ["notes.png", "photo.png", "half.png", "huge.png"]
    assert results[0].error == "not an image (unrecognised image format)"
    assert results[2].error.startswith("truncated or corrupt image")
    assert results[3].error == "300x200 is 60,000 pixels, over the limit of 50,000 (--max-pixels)"
    photo = results[1]
    assert photo.error is None and photo.size == (80, 48) and photo.seed == 7
    engine = load_model({"denoiser": tiny / "SinSR_v1.pth", "autoencoder": tiny / "autoencoder_vq_f4.pth"},
                        device="cpu", dtype="fp32")
    expected = engine.upscale(Image.open(good), seed=7)
    assert np.array_equal(np.asarray(Image.open(photo.output)), np.asarray(expected))
    assert Image.open(photo.before).size == (80, 48)
    assert files_under(service.output_dir) == sorted(str(p.relative_to(service.output_dir))
                                                     for p in (photo.output, photo.before))  # nothing for the others


def test_scale_seed_steps_and_alpha(service, tmp_path):
    image = write_image(tmp_path / "rgba.png", (16, 12), mode="RGBA", seed=2)
    teacher = str(service.folders[0] / "tiny_teacher.safetensors")
    [first] = service.upscale_files([image], teacher, Settings(steps="4/deterministic", seed=-1, scale=2.5))
    assert first.size == (40, 30) and Image.open(first.output).mode == "RGBA"
    assert 0 <= first.seed < 2**31
    [again] = service.upscale_files([image], teacher, Settings(steps="4/deterministic", seed=first.seed, scale=2.5))
    assert np.array_equal(np.asarray(Image.open(again.output)), np.asarray(Image.open(first.output)))
    [one] = service.upscale_files([image], teacher, Settings(steps="1", seed=first.seed, scale=2.5))
    assert not np.array_equal(np.asarray(Image.open(one.output)), np.asarray(Image.open(first.output)))


def test_large_results_get_a_thumbnail_and_a_centre_comparison(service, tmp_path):
    """The page never loads a huge result: the gallery gets a thumbnail, the before/after view the
    result's centre at full resolution over the same region of the bicubic input."""
    service.preview_side, service.compare_side = 50, 40
    image = write_image(tmp_path / "wide.png", (20, 12), seed=4)
    [result] = service.upscale_files([image], "registry:sinsr_v1", Settings(seed=1))
    full = Image.open(result.output)
    assert full.size == (80, 48) and Image.open(result.preview).size == (50, 30)
    after, before = Image.open(result.after), Image.open(result.before)
    assert after.size == before.size == (40, 40) and result.cropped
    assert np.array_equal(np.asarray(after), np.asarray(full.crop((20, 4, 60, 44))))
    bicubic = Image.open(image).resize((80, 48), Image.Resampling.BICUBIC).crop((20, 4, 60, 44))
    assert np.abs(np.asarray(before, dtype=int) - np.asarray(bicubic, dtype=int)).mean() < 3
    assert result.line().endswith("(seed 1); the comparison shows its centre")


def test_bad_options_and_models_raise_before_any_image(service, tmp_path):
    image = write_image(tmp_path / "in.png")
    with pytest.raises(ValueError, match="steps must be 1"):
        list(service.upscale_files([image], "registry:sinsr_v1", Settings(steps="4/stochastic")))
    broken = service.folders[0] / "broken.safetensors"
    broken.write_bytes(b"\0" * 64)
    with pytest.raises(Exception, match="broken.safetensors"):
        list(service.upscale_files([image], str(broken), Settings()))
    with pytest.raises(ValueError, match="not available"):
        service.entry(str(service.folders[0] / "gone.safetensors"))
    assert files_under(service.output_dir) == []


@pytest.mark.parametrize("settings, message", [
    (Settings(seed=2**64), r"seed must be -1 \(a random seed\) or a whole number from 0 to 18446744073709551615 "
                           r"\(2\*\*64 - 1\), got 18446744073709551616"),     # was torch's overflow
    (Settings(seed=-5), r"seed must be -1 \(a random seed\) or .*got -5"),     # was silently a random seed
    (Settings(seed="text"), "seed must be a whole number, got 'text'"),          # was int()'s error
    (Settings(seed=2.5), "seed must be a whole number, got 2.5"),                # was truncated to 2
    (Settings(tile=100.5), "tile must be a whole number, got 100.5"),
    (Settings(tile=32), "tile must be a whole number of input pixels, at least 64, got 32"),
    (Settings(scale=True), "scale must be a number, got True"),
    (Settings(scale=0), r"scale must be a number in \(0, 64\] .*got 0"),
    (Settings(scale="x"), "scale must be a number, got 'x'"),
    (Settings(steps="4/bogus"), "steps must be one of the model's step choices"),
])
def test_option_values_from_the_page_or_its_api_follow_the_engine_rules(service, tmp_path, settings, message):
    """Issue 18 items 4 and 10: refused with the rule before the model is loaded, never rounded."""
    image = write_image(tmp_path / "in.png")
    with pytest.raises(options.OptionError, match=message):
        list(service.upscale_files([image], "registry:sinsr_v2", settings))   # (not downloaded: never reached)
    assert files_under(service.output_dir) == []


def test_whole_numbers_given_as_floats_are_used_as_given(service, tmp_path):
    image = write_image(tmp_path / "in.png")
    [result] = service.upscale_files([image], "registry:sinsr_v1", Settings(seed=7.0, tile=64.0, scale=2))
    [same] = service.upscale_files([image], "registry:sinsr_v1", Settings(seed=7, tile=64, scale=2.0))
    assert result.seed == 7 and result.size == (40, 24)
    assert np.array_equal(np.asarray(Image.open(result.output)), np.asarray(Image.open(same.output)))


# --- restoration strength (issue 28) ------------------------------------------------------------------

BUNDLED = "bundled:onestep_default"


def write_noisy(path: Path, size=(24, 16), seed=2) -> Path:
    """A smooth picture with sigma-12 noise: auto picks a strength well above 0."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    clean = np.stack([x * 200 / w, y * 200 / h, (x + y) * 100 / (w + h)], -1) + 20
    noisy = np.clip(clean + np.random.default_rng(seed).normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noisy).save(path)
    return path


def strengths_given(monkeypatch) -> list:
    from onestep_sr.model import OneStepSR

    return spy_strengths(monkeypatch, OneStepSR)


def test_only_the_bundled_model_has_the_strength_knob(service):
    assert service.has_strength(BUNDLED)
    assert not service.has_strength("registry:sinsr_v1")
    assert not service.has_strength(str(service.folders[0] / "tiny_teacher.safetensors"))
    assert Settings().strength == "auto"


def test_the_strength_is_auto_by_default_and_each_line_says_the_engines_choice(service, tmp_path, monkeypatch):
    image = write_noisy(tmp_path / "noisy.png")
    seen = strengths_given(monkeypatch)
    [result] = service.upscale_files([image], BUNDLED, Settings(seed=3))
    assert seen == ["auto"]
    engine = load_model("onestep_default", device="cpu", dtype="fp32")
    expected = engine.upscale(Image.open(image), seed=3, strength="auto")
    assert np.array_equal(np.asarray(Image.open(result.output)), np.asarray(expected))
    (chosen,) = engine.last_strengths
    assert chosen > 0 and result.strength == f"restoration strength {chosen:g} (auto)"
    assert result.line().endswith(f"(seed 3), restoration strength {chosen:g} (auto)")


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_a_manual_strength_equals_the_engine_at_that_strength(service, tmp_path, value):
    image = write_noisy(tmp_path / "noisy.png")
    [result] = service.upscale_files([image], BUNDLED, Settings(seed=3, strength=value))
    engine = load_model("onestep_default", device="cpu", dtype="fp32")
    expected = engine.upscale(Image.open(image), seed=3, strength=value)
    assert np.array_equal(np.asarray(Image.open(result.output)), np.asarray(expected))
    assert engine.last_strengths == [value] and result.line().endswith(f", restoration strength {value:g}")
    other = engine.upscale(Image.open(image), seed=3, strength=1 - value)
    assert not np.array_equal(np.asarray(Image.open(result.output)), np.asarray(other))


def test_a_model_with_one_weight_set_takes_auto_only(service, tmp_path):
    image = write_image(tmp_path / "in.png")
    [result] = service.upscale_files([image], "registry:sinsr_v1", Settings(seed=1))
    assert result.strength is None and result.line().endswith("(seed 1)")   # nothing to report
    with pytest.raises(options.OptionError, match="strength=0.5 needs a model with a restoration-strength knob"):
        list(service.upscale_files([image], "registry:sinsr_v1", Settings(strength=0.5)))
    with pytest.raises(options.OptionError, match="strength must be auto or a number from 0 to 1, got 'strong'"):
        list(service.upscale_files([image], BUNDLED, Settings(strength="strong")))
    assert len(files_under(service.output_dir)) == 2  # the first run's result and comparison only


def test_an_unwritable_output_folder_or_only_bad_uploads_load_no_model(service, tmp_path, monkeypatch):
    """Fail before the expensive part: the output folder and every upload's header are checked
    before the model is loaded (the model would be downloaded or loaded, then nothing written)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the files were checked")

    monkeypatch.setattr(service, "model", refuse)
    image = write_image(tmp_path / "in.png")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    service.output_dir = blocker / "results"
    with pytest.raises(OSError, match=f"cannot write results into {blocker / 'results'}: {blocker} is a file"):
        list(service.upscale_files([image], "registry:sinsr_v1", Settings()))
    service.output_dir = tmp_path / "out"
    service.max_pixels = 100
    bad = bad_uploads(tmp_path / "uploads")
    results = list(service.upscale_files([bad["text"], image], "registry:sinsr_v1", Settings()))
    assert [r.error for r in results] == ["not an image (unrecognised image format)",
                                          "20x12 is 240 pixels, over the limit of 100 (--max-pixels)"]
    assert files_under(tmp_path / "out") == []


def test_cancel_stops_after_the_current_network_call_and_keeps_finished_results(service, tmp_path):
    images = [write_image(tmp_path / f"{i}.png", (20, 12), seed=i) for i in range(3)]
    calls = []

    def progress(fraction, what):
        calls.append(what)
        if what.startswith("1.png"):      # the second image has begun: press Cancel
            service.cancel("me")

    results = []
    with pytest.raises(Cancelled, match="cancelled during 1.png"):
        for result in service.upscale_files(images, "registry:sinsr_v1", Settings(), "me", progress):
            results.append(result)
    assert [r.name for r in results] == ["0.png"]
    assert len(files_under(service.output_dir)) == 2  # the first result and its comparison image only
    # a run still waiting when Cancel is pressed computes nothing; the next request starts afresh
    with pytest.raises(Cancelled, match="cancelled before 0.png"):
        next(service.upscale_files(images, "registry:sinsr_v1", Settings(), "me", progress))
    assert len(list(service.upscale_files(images[:1], "registry:sinsr_v1", Settings(), "other"))) == 1
    service.arm("me")
    assert len(list(service.upscale_files(images[:1], "registry:sinsr_v1", Settings(), "me"))) == 1
    assert len(files_under(service.output_dir)) == 6


def test_one_model_is_kept_loaded(service, tmp_path):
    image = write_image(tmp_path / "in.png")
    list(service.upscale_files([image], "registry:sinsr_v1", Settings()))
    first = service.model("registry:sinsr_v1")
    assert service.model("registry:sinsr_v1") is first
    service.model(str(service.folders[0] / "tiny_teacher.safetensors"))
    assert service.model("registry:sinsr_v1") is not first


# --- the gradio page over HTTP --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(models: Path, out: Path, **extra):
    from onestep_sr.app import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--models-dir", str(models), "--output-dir", str(out), "--port", str(_free_port()), "--device", "cpu"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


@pytest.fixture()
def served_app(tmp_path, tiny, bundled, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    from onestep_sr.app import launch

    models = tmp_path / "models"
    shutil.copytree(tiny, models)
    demo, url = launch(_args(models, tmp_path / "out", max_pixels=50_000), block=False)
    yield url, models
    demo.close()


def test_the_page_upscales_uploads_and_reports_bad_ones_over_http(served_app, tmp_path):
    from gradio_client import Client, handle_file

    url, models = served_app
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False)
    bad = bad_uploads(tmp_path / "uploads")
    good = write_image(tmp_path / "uploads" / "photo.png", (20, 12))
    gallery, downloads, compare, log = client.predict(
        [handle_file(str(p)) for p in (bad["text"], good, bad["truncated"], bad["huge"])],
        "bundled:onestep_default", "1", 5, 64, "none", 4, api_name="/on_run")
    assert [Image.open(item["image"]).size for item in gallery] == [(80, 48)]
    assert gallery[0]["caption"] == "photo.png -> 80x48"
    assert len(downloads) == 1 and Image.open(downloads[0]).size == (80, 48)
    assert [Image.open(p).size for p in compare] == [(80, 48), (80, 48)]
    lines = log.splitlines()
    assert lines[0] == "- **failed:** notes.png: not an image (unrecognised image format)"
    assert lines[1].startswith("- photo.png: 80x48 in ") and lines[1].endswith("(seed 5)")
    assert lines[2].startswith("- **failed:** half.png: truncated or corrupt image")
    assert lines[3] == "- **failed:** huge.png: 300x200 is 60,000 pixels, over the limit of 50,000 (--max-pixels)"
    # the server goes on serving: a model change and another run
    status, steps = client.predict(str(models / "tiny_teacher.safetensors"), api_name="/on_model")
    assert status == "ready (local file)" and steps["value"] == "4/stochastic"
    assert [value for _, value in steps["choices"]] == ["4/stochastic", "4/deterministic", "1"]
    gallery, *_ = client.predict([handle_file(str(good))], str(models / "tiny_teacher.safetensors"), "1", 1, 64,
                                 "wavelet", 2, api_name="/on_run")
    assert Image.open(gallery[0]["image"]).size == (40, 24)


def test_the_page_reports_a_model_that_cannot_run_and_keeps_serving(served_app, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, models = served_app
    client = Client(url, verbose=False)
    good = write_image(tmp_path / "photo.png")
    with pytest.raises(AppError, match=r"sinsr_v2 \(SinSR_v2.pth\) is not in .* downloads are off"):
        client.predict([handle_file(str(good))], "registry:sinsr_v2", "1", 1, 64, "none", 4, api_name="/on_run")
    with pytest.raises(AppError, match="downloads are off"):
        client.predict("registry:sinsr_v2", api_name="/on_download")
    with pytest.raises(AppError, match="upload one or more images"):
        client.predict([], "registry:sinsr_v1", "1", 1, 64, "none", 4, api_name="/on_run")
    with pytest.raises(AppError, match=r"seed must be -1 \(a random seed\) or a whole number from 0 to"):
        client.predict([handle_file(str(good))], "registry:sinsr_v1", "1", 2**64, 64, "none", 4, api_name="/on_run")
    with pytest.raises(AppError, match="seed must be a whole number, got 2.5"):
        client.predict([handle_file(str(good))], "registry:sinsr_v1", "1", 2.5, 64, "none", 4, api_name="/on_run")
    gallery, *_ = client.predict([handle_file(str(good))], "registry:sinsr_v1", "1", 1, 64, "none", 4,
                                 api_name="/on_run")
    assert Image.open(gallery[0]["image"]).size == (80, 48)


def test_concurrent_users_share_one_queue_slot(served_app, tmp_path, monkeypatch):
    """Two browsers at once: both runs finish, never two model calls at the same time."""
    from gradio_client import Client, handle_file

    from onestep_sr.model import OneStepSR

    url, _ = served_app
    active, peak, lock = [0], [0], threading.Lock()
    original = OneStepSR.upscale

    def counting(self, *args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return original(self, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(OneStepSR, "upscale", counting)
    image = write_image(tmp_path / "photo.png", (24, 16))
    jobs = [Client(url, verbose=False).submit([handle_file(str(image))] * 2, "bundled:onestep_default", "1", i, 64,
                                              "none", 4, api_name="/on_run") for i in range(2)]
    outputs = [job.result(timeout=120) for job in jobs]
    assert [len(out[0]) for out in outputs] == [2, 2] and peak[0] == 1


def test_the_page_reports_the_strength_and_takes_a_manual_one_over_http(tmp_path, tiny, monkeypatch):
    """The committed bundled model (two weight sets) served: a call with the page's earlier seven
    inputs (an API client written before the strength controls) runs at auto and the log line says
    the choice; auto off with strength 0 gives the engine's strength-0 image; a model with one weight
    set ignores the hidden controls."""
    pytest.importorskip("gradio")
    from gradio_client import Client, handle_file

    from onestep_sr.app import launch

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    models = tmp_path / "models"
    shutil.copytree(tiny, models)
    demo, url = launch(_args(models, tmp_path / "out"), block=False)
    try:
        client = Client(url, verbose=False)
        image = write_noisy(tmp_path / "noisy.png")
        engine = load_model("onestep_default", device="cpu", dtype="fp32")
        engine.upscale(Image.open(image), seed=5)
        (chosen,) = engine.last_strengths
        gallery, _, _, log = client.predict([handle_file(str(image))], BUNDLED, "1", 5, 64, "none", 4,
                                            api_name="/on_run")
        assert log.endswith(f"(seed 5), restoration strength {chosen:g} (auto)"), log
        gallery, _, _, log = client.predict([handle_file(str(image))], BUNDLED, "1", 5, 64, "none", 4, False, 0.0,
                                            api_name="/on_run")
        expected = engine.upscale(Image.open(image), seed=5, strength=0.0)
        assert np.array_equal(np.asarray(Image.open(gallery[0]["image"]).convert("RGB")), np.asarray(expected))
        assert log.endswith("(seed 5), restoration strength 0"), log
        _, _, _, log = client.predict([handle_file(str(image))], "registry:sinsr_v1", "1", 5, 64, "none", 4, False,
                                      0.3, api_name="/on_run")
        assert log.endswith("(seed 5)"), log
    finally:
        demo.close()


def test_a_port_in_use_is_a_clear_error(served_app, tmp_path):
    from onestep_sr.app import launch

    url, models = served_app
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    args = _args(models, tmp_path / "out2")
    args.port = port
    with pytest.raises(SystemExit, match=rf"cannot serve on 127.0.0.1:{port} .*pass another --port"):
        launch(args, block=False)


def test_gradio_is_imported_only_by_the_app():
    """The engine, the CLI's other commands and both hosts' code paths work without gradio."""
    code = ("import sys; sys.modules['gradio'] = None\n"
            "import onestep_sr, onestep_sr.cli, onestep_sr.app, onestep_sr.catalog\n"
            "from onestep_sr.cli import main\n"
            "try:\n    main(['app', '--port', '1'])\nexcept SystemExit as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    readme = (ROOT / "README.md").read_text()
    [install] = [line.split("#")[0].strip() for line in readme.splitlines() if '".[app]"' in line]
    assert install == 'python3 -m pip install -c constraints.txt -e ".[app]"'  # the README's form, also the hint's
    assert f"onestep-sr app needs gradio, the app extra: in the OneStep SR folder run {install} " in run.stdout, \
        run.stderr
    help_text = subprocess.run([sys.executable, "-m", "onestep_sr", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120).stdout
    assert install in " ".join(help_text.split())
    for folder in ("onestep_sr", "nodes", "extensions", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name != "app" or path.name != "ui.py":
                assert "import gradio" not in path.read_text(), path
