"""The downloader against a loopback HTTP server serving small checkpoints the tests make."""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from onestep_sr.download import DownloadError, WeightsUnavailableError, ensure_weights
from onestep_sr.registry import RegistryEntry


class Server:
    """Serves ``files`` (name -> bytes) with Range support; ``mode`` changes behaviour:
    'normal', 'ignore_range' (always 200), 'truncate' (announces the full length, sends half)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.mode != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                self.wfile.write(chunk[: len(chunk) // 2] if server.mode == "truncate" else chunk)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


def checkpoint_bytes(tmp_path: Path) -> bytes:
    src = tmp_path / "src.pth"
    torch.save({"w": torch.arange(20000, dtype=torch.float32)}, src)
    return src.read_bytes()


def entry(server: Server, file: str = "model.pth", sha256: str | None = None) -> RegistryEntry:
    return RegistryEntry(name="tiny", file=file, url=server.url + file, kind="denoiser",
                         licence="test", sha256=sha256)


def fetch(e, folder, **kw):
    return ensure_weights(e, folder, offline=False, backoff=0.0, timeout=5.0, **kw)


def test_download_pins_the_hash_and_is_not_repeated(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    seen = []
    path = fetch(entry(server), tmp_path / "models", progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "models" / "model.pth.sha256").read_text().split()[0] == digest
    assert seen[-1] == (len(data), len(data))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pth", "model.pth.sha256"]
    fetch(entry(server), tmp_path / "models")
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", ["normal", "ignore_range"])
def test_resume_from_part_file(tmp_path, server, mode):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    server.mode = mode
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.part").write_bytes(data[: len(data) // 3])
    path = fetch(entry(server, sha256=hashlib.sha256(data).hexdigest()), folder)
    assert path.read_bytes() == data
    assert server.requests[0]["range"] == f"bytes={len(data) // 3}-"
    assert not (folder / "model.pth.part").exists()


def test_truncated_transfer_keeps_part_then_resumes(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    server.mode = "truncate"
    folder = tmp_path / "models"
    with pytest.raises(DownloadError, match="could not download"):
        fetch(entry(server), folder, retries=1)
    assert not (folder / "model.pth").exists()
    assert 0 < (folder / "model.pth.part").stat().st_size < len(data)
    server.mode = "normal"
    assert fetch(entry(server), folder).read_bytes() == data


def test_wrong_hash_leaves_nothing(tmp_path, server):
    server.files["model.pth"] = checkpoint_bytes(tmp_path)
    folder = tmp_path / "models"
    with pytest.raises(DownloadError, match="expected 0{64}") as err:
        fetch(entry(server, sha256="0" * 64), folder)
    assert hashlib.sha256(server.files["model.pth"]).hexdigest() in str(err.value)
    assert list(folder.iterdir()) == []


def test_not_a_checkpoint_leaves_nothing(tmp_path, server):
    server.files["model.pth"] = b"<html>rate limited</html>"
    folder = tmp_path / "models"
    with pytest.raises(DownloadError, match="not a usable checkpoint"):
        fetch(entry(server), folder)
    assert list(folder.iterdir()) == []


def test_offline_names_the_url_and_target_without_any_request(tmp_path, server, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    e = entry(server)
    with pytest.raises(WeightsUnavailableError) as err:
        ensure_weights(e, tmp_path / "models")
    assert e.url in str(err.value) and str(tmp_path / "models" / "model.pth") in str(err.value)
    assert server.requests == []


def test_local_file_with_mismatching_pin_is_an_error(tmp_path, server):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth").write_bytes(b"user's file")
    (folder / "model.pth.sha256").write_text("f" * 64 + "  model.pth\n")
    with pytest.raises(DownloadError, match="move it away"):
        fetch(entry(server), folder)
    assert (folder / "model.pth").read_bytes() == b"user's file"


def test_http_error_is_reported_with_url(tmp_path, server):
    with pytest.raises(DownloadError, match="404") as err:
        fetch(entry(server, file="missing.pth"), tmp_path / "models", retries=2)
    assert server.url + "missing.pth" in str(err.value)
    assert len(server.requests) == 2
