"""A real AUTOMATIC1111 / Forge webui started API-only on a free loopback port with a throw-away
``--data-dir`` holding this checkout as an extension (tests/test_a1111_real.py,
benchmarks/bench_a1111.py). Downloads are off (``ONESTEP_SR_OFFLINE``); nothing in the webui
checkout is modified."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 420
LAUNCH_FLAGS = ["--nowebui", "--api", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-download-sd-model",
                "--skip-prepare-environment", "--skip-install", "--no-half", "--api-server-stop",
                "--skip-load-model-at-start"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUI:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log
        self.startup = 0.0

    def call(self, path: str, payload: Any = None, timeout: float = 600) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, body.decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def prepare_data_dir(data: Path) -> Path:
    """``data/extensions/onestep-sr`` -> this checkout, the Extras result cache off (so every
    request runs the upscaler), ``data/models`` for the caller's models."""
    (data / "extensions").mkdir(parents=True, exist_ok=True)
    (data / "extensions" / "onestep-sr").symlink_to(ROOT, target_is_directory=True)
    (data / "models" / "OneStepSR").mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text(json.dumps({"upscaling_max_images_in_cache": 0}))
    return data


@contextlib.contextmanager
def start_webui(checkout: str, python: str, data_dir: Path, flags: list[str] = (),
                env: dict[str, str] | None = None) -> Iterator[WebUI]:
    """The webui in ``checkout`` run by ``python``, ready (``/sdapi/v1/upscalers`` answers); killed
    with ``/sdapi/v1/server-kill`` at the end. Its output goes to ``data_dir/webui.log``."""
    port = _free_port()
    log = data_dir / "webui.log"
    command = [python, "launch.py", *LAUNCH_FLAGS, "--server-name", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), *flags]
    environment = {**os.environ, "ONESTEP_SR_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    environment.pop("PYTHONPATH", None)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, env=environment)
    server = WebUI(f"http://127.0.0.1:{port}", process, log)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the webui exited with {process.returncode}:\n{server.log_tail()}")
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"the webui did not answer in {START_TIMEOUT} s:\n{server.log_tail()}")
            try:
                if server.call("/sdapi/v1/upscalers", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        server.startup = time.perf_counter() - started
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.call("/sdapi/v1/server-kill", {}, timeout=5)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_base64(image: Image.Image) -> str:
    """Base64 PNG with a 'parameters' text chunk (Forge reads pixel-hidden infotext, slowly,
    from PNGs without one)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "onestep-sr test image")
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_image(text: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(text.split(",", 1)[-1]))).convert("RGB")


