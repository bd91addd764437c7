"""Regenerate the pictures of the README and docs/ (PNG files under docs/images/).

    python docs/make_pictures.py before-after [--sinsr] [--original PATH]
    python docs/make_pictures.py app
    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python python docs/make_pictures.py comfyui
    A1111_DIR=~/webui A1111_PYTHON=~/webui/venv/bin/python python docs/make_pictures.py a1111
    python docs/make_pictures.py all                  # before-after, app, comfyui (+ a1111 with A1111_DIR)

* ``before-after``: crops of ``examples/chelsea_lr.png`` (the README's main job) upscaled x4 with
  bicubic and the bundled default model, beside the original photo it was made from
  (``../shared/images/val/chelsea.png`` where it exists, or ``--original``). With ``--sinsr`` a SinSR
  v1 column is added when its weights are already in the models folder (nothing is downloaded).
* ``app``: the web app (``onestep-sr app``) in headless Chromium after upscaling that photo with the
  bundled model, the before/after view open. Needs gradio (the ``app`` extra), Python playwright
  and a Chromium binary (Debian's ``chromium``, or ``ONESTEP_SR_CHROMIUM``); no browser download.
* ``comfyui``: ``example_workflows/onestep_upscale.json`` in ComfyUI's own frontend (the
  ``comfyui-frontend-package`` the server ships) after a run with the bundled model. Starts the
  ComfyUI of ``COMFYUI_DIR`` headless on loopback with ``COMFYUI_PYTHON``, a throw-away base
  directory holding this checkout under ``custom_nodes/``; the checkout itself is not modified.
* ``a1111``: the Extras tab of AUTOMATIC1111's webui (UI mode, CPU, no SD checkpoint) with
  ``OneStepSR 4x default`` chosen, after a run; this checkout is the extension of a throw-away
  ``--data-dir``.

Screenshots are reduced to a 256-colour palette when that keeps them under the size limit
(``MAX_BYTES``); every picture is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES = ROOT / "docs" / "images"
LR_PHOTO = ROOT / "examples" / "chelsea_lr.png"
ORIGINAL = ROOT.parent / "shared" / "images" / "val" / "chelsea.png"
WORKFLOW = ROOT / "example_workflows" / "onestep_upscale.json"
MAX_BYTES = 300_000
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
# crops of the x4 result (x, y, width, height in output pixels): an eye and the nose with whiskers
CROPS = [(118, 62, 128, 96), (196, 186, 128, 96)]
ZOOM = 2
TIMEOUT_MS = 300_000


def save_png(image, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Write ``image`` (PIL) as an optimised PNG; if it is over ``max_bytes``, as a 256-colour
    palette PNG instead. Returns the size written."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", optimize=True)
    if tmp.stat().st_size > max_bytes:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                      dither=Image.Dither.FLOYDSTEINBERG).save(tmp, format="PNG", optimize=True)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)}: {image.width}x{image.height}, {size / 1000:.0f} KB")
    if size > max_bytes:
        print(f"warning: {path.name} is over {max_bytes / 1000:.0f} KB", file=sys.stderr)
    return size


# --- before / after ------------------------------------------------------------------------------


def _label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def before_after(args: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from onestep_sr import load_model

    lr = Image.open(LR_PHOTO).convert("RGB")
    size = (lr.width * 4, lr.height * 4)
    columns = [("bicubic x4", lr.resize(size, Image.Resampling.BICUBIC))]
    started = time.perf_counter()
    columns.append(("OneStep SR, bundled default x4", Image.fromarray(load_model(device="cpu").upscale(np.asarray(lr)))))
    print(f"bundled model: {lr.width}x{lr.height} -> {size[0]}x{size[1]} in {time.perf_counter() - started:.1f} s")
    if args.sinsr:
        try:
            sinsr = load_model("sinsr_v1", device="cpu", offline=True)
        except Exception as exc:  # not downloaded here: the picture goes without it
            print(f"SinSR v1 left out: {exc}", file=sys.stderr)
        else:
            columns.append(("SinSR v1 x4 (CC BY-NC-SA)", Image.fromarray(sinsr.upscale(np.asarray(lr)))))
    original = Path(args.original) if args.original else ORIGINAL
    if original.is_file():
        # the LR was made from this photo by an antialiased bicubic x1/4 (451x300 -> 112x75): shown
        # at exactly 4x the LR size so that the crops line up
        columns.append(("original photo", Image.open(original).convert("RGB").resize(size, Image.Resampling.LANCZOS)))
    else:
        print(f"original left out: {original} not found", file=sys.stderr)

    font = _label_font(15)
    pad, label_h = 6, 24
    cw, ch = CROPS[0][2] * ZOOM, CROPS[0][3] * ZOOM
    sheet = Image.new("RGB", (pad + len(columns) * (cw + pad), label_h + len(CROPS) * (ch + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (title, image) in enumerate(columns):
        x0 = pad + c * (cw + pad)
        draw.text((x0 + 2, 4), title, fill="black", font=font)
        for r, (x, y, w, h) in enumerate(CROPS):
            crop = image.crop((x, y, x + w, y + h)).resize((cw, ch), Image.Resampling.NEAREST)
            sheet.paste(crop, (x0, label_h + r * (ch + pad)))
    save_png(sheet, IMAGES / "before_after.png")


# --- browsers and servers ------------------------------------------------------------------------


def _chromium() -> str:
    path = os.environ.get("ONESTEP_SR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise SystemExit("no Chromium: apt install chromium, or set ONESTEP_SR_CHROMIUM")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


class _Browser:
    def __init__(self, viewport: tuple[int, int]):
        from playwright.sync_api import sync_playwright

        self.profile = tempfile.mkdtemp(prefix="onestep_sr_pictures_")
        self.playwright = sync_playwright().start()
        self.context = self.playwright.chromium.launch_persistent_context(
            self.profile, executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": viewport[0], "height": viewport[1]})

    def close(self) -> None:
        self.context.close()
        self.playwright.stop()
        shutil.rmtree(self.profile, ignore_errors=True)


def _screenshot(page, path: Path, clip: dict | None = None) -> None:
    from PIL import Image

    raw = Path(tempfile.mkdtemp(prefix="onestep_sr_shot_")) / "shot.png"
    page.screenshot(path=str(raw), clip=clip)
    save_png(Image.open(raw).convert("RGB"), path)
    shutil.rmtree(raw.parent, ignore_errors=True)


# --- the web app ---------------------------------------------------------------------------------


def app(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="onestep_sr_app_"))
    port = _free_port()
    (work / "models").mkdir()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", ONESTEP_SR_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = work / "app.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "onestep_sr.app", "--port", str(port), "--models-dir",
                                   str(work / "models"), "--output-dir", str(work / "out")], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, server, 240, log)
        browser = _Browser((1280, 1000))
        page = browser.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#run")
        page.set_input_files("#uploads input[type=file]", [str(LR_PHOTO)])
        page.wait_for_selector(f"#uploads td.filename[aria-label='{LR_PHOTO.name}']")
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('#results img').length == 1 && "
                               "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth)")
        page.wait_for_selector("#log >> text=448x300")
        page.wait_for_timeout(1500)  # the before/after slider loads its two images
        page.evaluate("window.scrollTo(0, 0)")
        _screenshot(page, IMAGES / "web_app.png", clip={"x": 0, "y": 0, "width": 1280, "height": 800})
    finally:
        if browser is not None:
            browser.close()
        _stop(server)
        shutil.rmtree(work, ignore_errors=True)


# --- ComfyUI -------------------------------------------------------------------------------------


def comfyui(args: argparse.Namespace) -> None:
    checkout = Path(os.environ.get("COMFYUI_DIR", "")).expanduser()
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    if not (checkout / "main.py").is_file():
        raise SystemExit("set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its interpreter)")
    base = Path(tempfile.mkdtemp(prefix="onestep_sr_comfyui_"))
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-onestep-sr").symlink_to(ROOT, target_is_directory=True)
    for name in ("input", "output", "temp", "models", "user/default"):
        (base / name).mkdir(parents=True, exist_ok=True)
    workflow = json.loads(WORKFLOW.read_text())
    [load_image] = [n for n in workflow["nodes"] if n["type"] == "LoadImage"]
    shutil.copyfile(LR_PHOTO, base / "input" / load_image["widgets_values"][0])
    # a first visit without the new-user dialogs
    # a first visit without the new-user dialogs; no minimap, canvas statistics or tab bar in the picture
    (base / "user" / "default" / "comfy.settings.json").write_text(json.dumps({
        "Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
        "Comfy.Workflow.WorkflowTabsPosition": "Sidebar"}))
    port = _free_port()
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:", "--base-directory", str(base), "--disable-api-nodes"]
    env = {k: v for k, v in os.environ.items() if k not in ("ONESTEP_SR_MODELS",)}
    env.update(ONESTEP_SR_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    log = base / "comfyui.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/system_stats", server, 300, log)
        browser = _Browser((1320, 640))
        page = browser.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas")
        page.wait_for_timeout(2000)
        page.keyboard.press("Escape")
        page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'onestep_upscale'); }", workflow)
        page.evaluate("() => { const ds = window.app.canvas.ds; ds.scale = 1; ds.offset = [10, 10];"
                      " window.app.canvas.setDirty(true, true); }")
        page.wait_for_timeout(1000)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        # the run is done when SaveImage shows its result in the graph
        page.wait_for_function("(() => { const n = window.app.graph._nodes.find(n => n.type === 'SaveImage');"
                               " return n && n.imgs && n.imgs.length && n.imgs[0].complete; })()")
        page.wait_for_timeout(1500)
        page.mouse.move(5, 600)
        _screenshot(page, IMAGES / "comfyui_workflow.png")
    finally:
        if browser is not None:
            browser.close()
        _stop(server)
        if os.environ.get("ONESTEP_SR_KEEP_LOG"):
            print(log.read_text()[-4000:])
        shutil.rmtree(base, ignore_errors=True)


# --- AUTOMATIC1111 --------------------------------------------------------------------------------


def a1111(args: argparse.Namespace) -> None:
    """The Extras tab of a real A1111 webui (``A1111_DIR``, ``A1111_PYTHON``) with this checkout as
    an extension in a throw-away ``--data-dir``, after upscaling the photo with ``OneStepSR 4x
    default``. The UI is started without an SD checkpoint (none is needed for Extras)."""
    checkout = Path(os.environ.get("A1111_DIR", "")).expanduser()
    python = os.environ.get("A1111_PYTHON") or sys.executable
    if not (checkout / "launch.py").is_file():
        raise SystemExit("set A1111_DIR to a webui checkout (and A1111_PYTHON to its interpreter)")
    data = Path(tempfile.mkdtemp(prefix="onestep_sr_a1111_"))
    (data / "extensions").mkdir()
    (data / "extensions" / "onestep-sr").symlink_to(ROOT, target_is_directory=True)
    (data / "models" / "OneStepSR").mkdir(parents=True)
    port = _free_port()
    command = [python, "launch.py", "--api", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-download-sd-model",
               "--skip-prepare-environment", "--skip-install", "--no-half", "--skip-load-model-at-start",
               "--server-name", "127.0.0.1", "--port", str(port), "--data-dir", str(data)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(ONESTEP_SR_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    log = data / "webui.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/sdapi/v1/upscalers", server, 600, log)
        browser = _Browser((1280, 900))
        page = browser.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#tabs button:has-text('Extras')")
        page.click("#tabs button:has-text('Extras')")
        page.set_input_files("#extras_image input[type=file]", [str(LR_PHOTO)])
        page.click("#extras_upscaler_1 input")
        page.click("ul.options li:has-text('OneStepSR 4x default')")
        page.wait_for_timeout(500)
        page.click("#extras_generate")
        page.wait_for_function("[...document.querySelectorAll('#extras_gallery img')].some("
                               "i => i.complete && i.naturalWidth >= 448)")
        page.wait_for_timeout(1500)
        page.evaluate("window.scrollTo(0, 0)")
        _screenshot(page, IMAGES / "a1111_extras.png", clip={"x": 0, "y": 0, "width": 1280, "height": 800})
    finally:
        if browser is not None:
            browser.close()
        _stop(server)
        if os.environ.get("ONESTEP_SR_KEEP_LOG"):
            print(log.read_text(errors="replace")[-4000:])
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("picture", choices=["before-after", "app", "comfyui", "a1111", "all"])
    parser.add_argument("--sinsr", action="store_true", help="add SinSR v1 if its weights are already here")
    parser.add_argument("--original", default=None, help=f"the HR photo (default {ORIGINAL})")
    args = parser.parse_args(argv)
    todo = ["before-after", "app", "comfyui"] + (["a1111"] if os.environ.get("A1111_DIR") else []) \
        if args.picture == "all" else [args.picture]
    for name in todo:
        {"before-after": before_after, "app": app, "comfyui": comfyui, "a1111": a1111}[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
