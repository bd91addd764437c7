"""The web app in a real browser: Debian's chromium, headless, driven by Python playwright (no
browser download). Skipped unless both are there: ``apt install chromium`` and
``pip install playwright`` (or set ONESTEP_SR_CHROMIUM to another Chromium binary).

It uploads images, runs the bundled default model and checks the result's size as the page shows
it, checks a bad upload's message, and saves screenshots to ``test-artifacts/`` (or
ONESTEP_SR_ARTIFACTS). The bundled entry is the committed weights/onestep_default_x4.safetensors."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import webui_fake
from onestep_sr import model as engine_model
from onestep_sr import registry
from test_app import _args, bad_uploads, bundled_stand_in, write_image, write_noisy

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 120_000


def _chromium() -> str:
    path = os.environ.get("ONESTEP_SR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium (apt install chromium, or set ONESTEP_SR_CHROMIUM)")
    return path


@pytest.fixture()
def artifacts() -> Path:
    folder = Path(os.environ.get("ONESTEP_SR_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def browser():
    executable = _chromium()
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="onestep_sr_chromium_")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    assert engine_model.BUNDLED_MODELS["onestep_default"].is_file()  # the page runs the real bundled model
    from onestep_sr.app import launch

    (tmp_path / "models").mkdir()
    demo, url = launch(_args(tmp_path / "models", tmp_path / "out", max_pixels=50_000), block=False)
    yield url
    demo.close()


def _wait_for_results(page, count: int) -> None:
    """Until the gallery holds ``count`` images, each loaded (its natural size known)."""
    page.wait_for_function(f"document.querySelectorAll('#results img').length == {count} && "
                           "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")


def _natural_sizes(page, selector: str) -> list[list[int]]:
    return page.eval_on_selector_all(selector, "els => els.map(e => [e.naturalWidth, e.naturalHeight])")


def test_upload_run_the_bundled_model_and_check_the_result_in_the_browser(app, browser, tmp_path, artifacts):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app)
    page.wait_for_selector("#run")
    assert page.input_value("#model input") == "default (bundled)"
    assert "ready (bundled, offline)" in page.inner_text("#model-status")

    # a model saved into the models folder while the app runs is listed at the next page load
    bundled_stand_in(tmp_path / "models" / "added_later.safetensors")
    page.reload()
    page.wait_for_selector("#run")
    page.click("#model input")
    page.wait_for_selector("[role=option] >> text=added_later")
    page.keyboard.press("Escape")
    assert page.input_value("#model input") == "default (bundled)"

    images = [write_image(tmp_path / "photo.png", (20, 12)), write_image(tmp_path / "wide.png", (33, 17), seed=1)]
    page.set_input_files("#uploads input[type=file]", [str(p) for p in images])
    page.wait_for_selector("#uploads td.filename[aria-label='wide.png']")
    page.click("#run")
    _wait_for_results(page, 2)
    page.wait_for_selector("#log >> text=wide.png")
    assert sorted(_natural_sizes(page, "#results img")) == [[80, 48], [132, 68]]
    log = page.inner_text("#log")
    assert "photo.png: 80x48" in log and "wide.png: 132x68" in log
    page.screenshot(path=str(artifacts / "app_result.png"), full_page=True)

    # a bad upload: a message in the page, and the app keeps serving the next run
    bad = bad_uploads(tmp_path / "bad")
    page.click("#uploads button[aria-label='Clear']")
    page.wait_for_selector("#uploads td.filename", state="detached")
    page.set_input_files("#uploads input[type=file]", [str(bad["text"]), str(bad["huge"]), str(images[0])])
    page.wait_for_selector("#uploads td.filename[aria-label='huge.png']")
    assert page.eval_on_selector_all("#uploads td.filename", "els => els.map(e => e.ariaLabel)") == [
        "notes.png", "huge.png", "photo.png"]
    page.click("#run")
    page.wait_for_selector("#log >> text=over the limit")
    page.wait_for_selector("#log >> text=photo.png")
    log = page.inner_text("#log")
    assert "failed: notes.png: not an image" in log
    assert "failed: huge.png: 300x200 is 60,000 pixels, over the limit of 50,000" in log
    _wait_for_results(page, 1)
    assert _natural_sizes(page, "#results img") == [[80, 48]]
    page.screenshot(path=str(artifacts / "app_bad_upload.png"), full_page=True)


def test_the_strength_controls_follow_the_model_and_the_log_says_the_strength(app, browser, tmp_path, artifacts):
    """The bundled model (two weight sets): auto checked, the slider locked, the line says auto's
    choice; auto off and the slider at 0: the line says 0. A model with one weight set hides both."""
    import re

    bundled_stand_in(tmp_path / "models" / "plain.safetensors")   # one weight set
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app)
    page.wait_for_selector("#run")
    checkbox, number = "#auto-strength input[type=checkbox]", "#strength input[type=number]"
    assert page.is_visible("#auto-strength") and page.is_checked(checkbox) and page.is_disabled(number)
    page.set_input_files("#uploads input[type=file]", [str(write_noisy(tmp_path / "noisy.png"))])
    page.wait_for_selector("#uploads td.filename[aria-label='noisy.png']")
    page.click("#run")
    page.wait_for_selector("#log >> text=restoration strength")
    assert re.search(r"noisy\.png: 96x64 .*, restoration strength [0-9.]+ \(auto\)$", page.inner_text("#log").strip())
    page.uncheck(checkbox)
    page.wait_for_function(f"!document.querySelector('{number}').disabled")
    page.fill(number, "0")
    page.press(number, "Enter")
    page.click("#run")
    page.wait_for_function("document.querySelector('#log').innerText.trim().endsWith('restoration strength 0')")
    page.screenshot(path=str(artifacts / "app_strength.png"), full_page=True)
    page.click("#model input")
    page.click("[role=option] >> text=plain")
    page.wait_for_selector("#auto-strength", state="hidden")
    assert not page.is_visible("#strength")


def test_download_button_fetches_a_registry_model_with_progress_then_runs_it(browser, server, tmp_path, monkeypatch,
                                                                          artifacts):
    """A registry whose model lives on a loopback server: the picker says what is missing, the
    button downloads it, and the model then runs."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    webui_fake.tiny_models(tmp_path / "tiny")
    server.files["den.pth"] = (tmp_path / "tiny" / "SinSR_v1.pth").read_bytes()
    server.files["ae.pth"] = (tmp_path / "tiny" / "autoencoder_vq_f4.pth").read_bytes()
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": {
        "served_x4": {"file": "den.pth", "url": server.url + "den.pth", "kind": "denoiser", "licence": "test licence",
                      "autoencoder": "served_ae", "sampler": "one_step", "schedule": {}},
        "served_ae": {"file": "ae.pth", "url": server.url + "ae.pth", "kind": "autoencoder", "licence": "test licence"}}}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    from onestep_sr.app import launch

    demo, url = launch(_args(tmp_path / "models", tmp_path / "out"), block=False)
    try:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#run")
        assert page.input_value("#model input") == "default (bundled)"  # the bundled model needs no download
        page.click("#model input")
        page.click("[role=option] >> text=served")
        assert page.input_value("#model input") == "served"
        page.wait_for_selector("#model-status >> text=not downloaded: den.pth, ae.pth")
        page.click("#download")
        page.wait_for_selector("#model-status >> text=ready (downloaded)")
        page.wait_for_selector("#download", state="hidden")
        assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.suffix == ".pth") == ["ae.pth", "den.pth"]
        page.set_input_files("#uploads input[type=file]", [str(write_image(tmp_path / "photo.png", (20, 12)))])
        page.wait_for_selector("#uploads td.filename[aria-label='photo.png']")
        page.click("#run")
        _wait_for_results(page, 1)
        assert _natural_sizes(page, "#results img") == [[80, 48]]
        page.screenshot(path=str(artifacts / "app_download.png"), full_page=True)
    finally:
        demo.close()


def test_cancel_stops_the_run_and_keeps_the_finished_results(app, browser, tmp_path, monkeypatch, artifacts):
    """Cancel during the second of four images: the server stops computing within a network call
    (no third image is started) and the first result stays on the page."""
    import threading
    import time

    from onestep_sr.model import OneStepSR

    original, started, finished, lock = OneStepSR.upscale, [], [], threading.Lock()

    def slow(self, image, **kwargs):                    # ten "network calls" of 0.3 s, then the real work
        with lock:
            started.append(time.monotonic())
        for done in range(10):
            time.sleep(0.3)
            kwargs["progress"](done, 10)
        result = original(self, image, **kwargs)
        finished.append(image.size)
        return result

    monkeypatch.setattr(OneStepSR, "upscale", slow)
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app)
    page.wait_for_selector("#run")
    images = [write_image(tmp_path / f"im{i}.png", (20, 12), seed=i) for i in range(4)]
    page.set_input_files("#uploads input[type=file]", [str(p) for p in images])
    page.wait_for_selector("#uploads td.filename[aria-label='im3.png']")
    page.click("#run")
    page.wait_for_selector("#log >> text=im0.png")
    deadline = time.monotonic() + 30
    while len(started) < 2 and time.monotonic() < deadline:   # the second image is being computed
        time.sleep(0.05)
    page.click("#cancel")
    time.sleep(4 * 0.3 * 10)                           # long enough for two more images, were it running
    assert len(started) == 2 and len(finished) == 1, (started, finished)   # stopped inside the second
    page.wait_for_selector("#log >> text=cancelled during im1.png")
    _wait_for_results(page, 1)
    assert _natural_sizes(page, "#results img") == [[80, 48]]
    assert page.locator("text=Error").count() == 0       # the run ended normally, no error badges
    page.screenshot(path=str(artifacts / "app_cancel.png"), full_page=True)
    # and the app runs the next batch
    monkeypatch.setattr(OneStepSR, "upscale", original)
    page.click("#run")
    _wait_for_results(page, 4)
