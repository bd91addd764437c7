"""The downloader against a loopback HTTP server (127.0.0.1) serving small checkpoints the tests
make. Nothing here reaches beyond loopback; every server answers within seconds and refuses
more than a few dozen requests."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from onestep_sr import registry
from onestep_sr import download
from onestep_sr.download import (DownloadError, HashMismatchError, SizeMismatchError, WeightsUnavailableError,
                                 ensure_weights, probe_path)
from onestep_sr.registry import RegistryEntry, UnknownModelError, get_entry, list_entries

from loopback import Server

OFFICIAL_PREFIXES = ("https://github.com/wyf0912/SinSR/releases/download/v1.0/",
                     "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/")


def checkpoint_bytes(tmp_path: Path, suffix: str = ".pth") -> bytes:
    src = tmp_path / f"src{suffix}"
    tensors = {"w": torch.arange(20000, dtype=torch.float32)}
    if suffix == ".safetensors":
        save_file(tensors, str(src))
    else:
        torch.save(tensors, src)
    return src.read_bytes()


def entry(server: Server, file: str = "model.pth", sha256: str | None = None,
          path: str | None = None, **sizes) -> RegistryEntry:
    return RegistryEntry(name="tiny", file=file, url=server.url + (path or file), kind="denoiser",
                         licence="test", sha256=sha256, **sizes)


def fetch(e, folder, **kw):
    kw.setdefault("offline", False)
    return ensure_weights(e, folder, backoff=0.0, timeout=5.0, **kw)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("file", ["model.pth", "model.safetensors"])
def test_download_pins_the_hash_and_is_not_repeated(tmp_path, server, file):
    data = checkpoint_bytes(tmp_path, Path(file).suffix)
    server.files[file] = data
    folder = tmp_path / "models"
    seen = []
    path = fetch(entry(server, file), folder, progress=lambda d, t: seen.append((d, t)))
    assert path == folder / file and path.read_bytes() == data
    assert (folder / f"{file}.sha256").read_text() == f"{sha(data)}  {file}\n"
    assert seen[-1] == (len(data), len(data))
    assert sorted(p.name for p in folder.iterdir()) == [file, f"{file}.sha256"]
    assert server.requests[0]["agent"].startswith("onestep-sr")
    assert fetch(entry(server, file), folder, offline=True) == path  # on disk: no request
    assert len(server.requests) == 1


def test_models_dir_from_the_environment(tmp_path, server, monkeypatch):
    server.files["model.pth"] = checkpoint_bytes(tmp_path)
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(tmp_path / "env"))
    assert fetch(entry(server), None) == tmp_path / "env" / "model.pth"


@pytest.mark.parametrize("mode", ["normal", "ignore_range", "range_from_zero"])
def test_resume_from_part_file(tmp_path, server, mode):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    server.mode = mode
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.part").write_bytes(data[: len(data) // 3])
    path = fetch(entry(server, sha256=sha(data)), folder)
    assert path.read_bytes() == data
    assert server.requests[0]["range"] == f"bytes={len(data) // 3}-"
    assert len(server.requests) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["model.pth"]  # registry hash: no pin


def test_resume_follows_redirects_with_the_range(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.part").write_bytes(data[:1000])
    assert fetch(entry(server, path="redir/model.pth"), folder).read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=1000-", "bytes=1000-"]


def test_range_not_satisfiable_restarts_a_stale_part(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.part").write_bytes(b"x" * (len(data) + 10))
    assert fetch(entry(server), folder).read_bytes() == data
    assert [r["range"] for r in server.requests] == [f"bytes={len(data) + 10}-", None]


def test_complete_part_is_finished_without_downloading_again(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.part").write_bytes(data)
    assert fetch(entry(server), folder).read_bytes() == data
    assert len(server.requests) == 1  # answered 416 with the same total: nothing re-sent


def test_truncated_transfer_keeps_part_then_resumes(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    server.mode = "truncate"
    folder = tmp_path / "models"
    with pytest.raises(DownloadError, match="partial data kept") as err:
        fetch(entry(server), folder, retries=1)
    assert server.url + "model.pth" in str(err.value)
    assert not (folder / "model.pth").exists() and not (folder / "model.pth.sha256").exists()
    kept = (folder / "model.pth.part").stat().st_size
    assert 0 < kept < len(data)
    server.mode = "normal"
    assert fetch(entry(server), folder).read_bytes() == data
    assert server.requests[-1]["range"] == f"bytes={kept}-"
    assert (folder / "model.pth.sha256").read_text().split()[0] == sha(data)


def test_transient_error_is_retried(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    server.mode = "fail_once"
    assert fetch(entry(server), tmp_path / "models").read_bytes() == data
    assert len(server.requests) == 2


def test_missing_file_is_not_retried_and_names_the_url(tmp_path, server):
    with pytest.raises(DownloadError, match="404") as err:
        fetch(entry(server, file="missing.pth"), tmp_path / "models", retries=3)
    assert server.url + "missing.pth" in str(err.value)
    assert len(server.requests) == 1


def test_a_network_failure_says_what_to_download_by_hand_and_where(tmp_path, server):
    """Not only offline mode: an unreachable or failing server names the URL, the file name and the
    folder to save it in."""
    folder = tmp_path / "models"
    with pytest.raises(DownloadError) as err:
        fetch(entry(server, file="missing.pth"), folder, retries=1)
    message = str(err.value)
    assert f"download {server.url}missing.pth and save it as {folder / 'missing.pth'}" in message
    assert "file name missing.pth" in message and f"folder {folder}" in message
    closed = entry(server, file="model.pth")
    closed = dataclasses.replace(closed, url="http://127.0.0.1:9/model.pth")  # nothing listens on port 9
    with pytest.raises(DownloadError, match=r"download http://127.0.0.1:9/model.pth and save it as"):
        fetch(closed, folder, retries=1)


def test_wrong_hash_leaves_nothing(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    with pytest.raises(HashMismatchError, match="expected 0{64}") as err:
        fetch(entry(server, sha256="0" * 64), folder)
    assert sha(data) in str(err.value) and "model.pth" in str(err.value)
    assert list(folder.iterdir()) == []


def test_pinned_hash_guards_a_later_download_and_names_the_pin_to_delete(tmp_path, server):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth.sha256").write_text("a" * 64 + "  model.pth\n")
    server.files["model.pth"] = checkpoint_bytes(tmp_path)
    with pytest.raises(HashMismatchError, match="expected a{64}") as err:
        fetch(entry(server), folder)
    assert f"pinned in {folder / 'model.pth.sha256'}" in str(err.value)
    assert f"delete {folder / 'model.pth.sha256'} and run again" in str(err.value)
    assert sorted(p.name for p in folder.iterdir()) == ["model.pth.sha256"]


def test_a_file_far_from_the_expected_size_is_refused_naming_both_sizes(tmp_path, server):
    """No published size: the expected fp32 payload +-1% (a different valid checkpoint of 1/100 the
    size, as a wrong mirror file, is refused and not pinned); a published size: exactly that."""
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    with pytest.raises(SizeMismatchError) as err:
        fetch(entry(server, expected_payload_bytes=100 * len(data)), folder)
    assert f"is {len(data):,} bytes" in str(err.value) and f"about {100 * len(data):,} bytes" in str(err.value)
    assert "model.pth" in str(err.value) and list(folder.iterdir()) == []
    with pytest.raises(SizeMismatchError, match=f"is {len(data):,} bytes .*exactly {len(data) + 1:,} bytes"):
        fetch(entry(server, size_bytes=len(data) + 1), folder)
    assert list(folder.iterdir()) == []
    near = int(len(data) / 1.009)  # the file is 0.9% larger than this payload: within the tolerance
    assert fetch(entry(server, expected_payload_bytes=near), folder).read_bytes() == data
    (folder / "model.pth").unlink()
    assert fetch(entry(server, size_bytes=len(data), expected_payload_bytes=10), folder).read_bytes() == data


def test_a_mirror_folder_with_another_vq_f4_is_refused_and_nothing_is_pinned(tmp_path, monkeypatch):
    """The reported case: a valid but different autoencoder_vq_f4.pth of a few MiB in the mirror."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "autoencoder_vq_f4.pth").write_bytes(checkpoint_bytes(tmp_path))
    monkeypatch.setenv("ONESTEP_SR_MIRROR", str(mirror))
    folder = tmp_path / "models"
    with pytest.raises(SizeMismatchError) as err:
        ensure_weights("vq_f4", folder, offline=False, retries=1)
    size = (mirror / "autoencoder_vq_f4.pth").stat().st_size
    assert f"is {size:,} bytes" in str(err.value)
    assert f"{get_entry('vq_f4').expected_payload_bytes:,} bytes" in str(err.value)
    assert list(folder.iterdir()) == []


def test_a_complete_download_left_as_the_verify_file_is_used_without_fetching(tmp_path, server):
    """An interruption between the checks and the final rename leaves the whole file only as the
    hidden .model.pth.verify.pth: the next run checks it and finishes, with no request (also offline)."""
    data = checkpoint_bytes(tmp_path)
    folder = tmp_path / "models"
    folder.mkdir()
    probe_path(folder / "model.pth").write_bytes(data)
    (folder / "model.pth.part").write_bytes(data[:100])  # a later attempt that did not finish
    assert fetch(entry(server), folder, offline=True).read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["model.pth", "model.pth.sha256"]
    assert (folder / "model.pth.sha256").read_text().split()[0] == sha(data)
    assert server.requests == []


def test_an_interrupted_final_rename_is_finished_by_the_next_run(tmp_path, server, monkeypatch):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    real_replace = download.os.replace

    def interrupted(src, dst):
        if Path(dst) == folder / "model.pth":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(entry(server), folder)
    monkeypatch.setattr(download.os, "replace", real_replace)
    assert sorted(p.name for p in folder.iterdir()) == [".model.pth.verify.pth", "model.pth.sha256"]
    assert fetch(entry(server), folder, offline=True).read_bytes() == data
    assert len(server.requests) == 1 and not probe_path(folder / "model.pth").exists()


def test_a_bad_verify_file_is_deleted_and_the_file_downloaded_again(tmp_path, server):
    data = checkpoint_bytes(tmp_path)
    server.files["model.pth"] = data
    folder = tmp_path / "models"
    folder.mkdir()
    probe_path(folder / "model.pth").write_bytes(b"half a file")
    assert fetch(entry(server), folder).read_bytes() == data
    assert len(server.requests) == 1 and not probe_path(folder / "model.pth").exists()


@pytest.mark.parametrize("file", ["model.pth", "model.safetensors"])
def test_not_a_checkpoint_leaves_nothing(tmp_path, server, file):
    server.files[file] = b"<html>rate limited</html>"
    folder = tmp_path / "models"
    with pytest.raises(DownloadError, match="not a usable checkpoint") as err:
        fetch(entry(server, file), folder)
    assert file in str(err.value)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("how", ["argument", "ONESTEP_SR_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_names_the_url_and_target_without_any_request(tmp_path, server, monkeypatch, how):
    kw = {"offline": True} if how == "argument" else {"offline": None}
    if how != "argument":
        monkeypatch.setenv(how, "1")
    e = entry(server)
    with pytest.raises(WeightsUnavailableError) as err:
        fetch(e, tmp_path / "models", **kw)
    assert e.url in str(err.value) and str(tmp_path / "models" / "model.pth") in str(err.value)
    assert server.requests == []
    assert not (tmp_path / "models").exists()


def test_local_file_with_mismatching_pin_is_an_error(tmp_path, server):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.pth").write_bytes(b"user's file")
    (folder / "model.pth.sha256").write_text("f" * 64 + "  model.pth\n")
    with pytest.raises(HashMismatchError, match="move it away") as err:
        fetch(entry(server), folder)
    assert str(folder / "model.pth") in str(err.value)
    assert f"delete {folder / 'model.pth.sha256'} (the pinned hash)" in str(err.value)
    assert "f" * 64 in str(err.value) and sha(b"user's file") in str(err.value)
    assert (folder / "model.pth").read_bytes() == b"user's file"
    assert server.requests == []


def test_default_progress_bar_on_a_terminal(tmp_path, server, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    server.files["model.pth"] = checkpoint_bytes(tmp_path)
    monkeypatch.setattr(sys, "stderr", Tty())
    fetch(entry(server), tmp_path / "models")
    text = sys.stderr.getvalue()
    assert text.startswith("\r[") and "MiB" in text and text.endswith("\n")


def test_unknown_model_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownModelError) as err:
        ensure_weights("sinsr_v9", tmp_path, offline=True)
    assert "sinsr_v9" in str(err.value)
    assert all(e.name in str(err.value) for e in list_entries())


def test_registry_is_sane_and_every_entry_says_where_to_get_it(tmp_path):
    entries = list_entries()
    assert {e.name for e in entries} == {"sinsr_v1", "sinsr_v2", "resshift_v1", "resshift_v2",
                                         "resshift_v3", "resshift_bicsr_x4", "vq_f4"}
    for e in entries:
        assert e.url.startswith(OFFICIAL_PREFIXES) and e.url.endswith("/" + e.file)
        assert e.kind in ("denoiser", "autoencoder") and e.architecture == "official"
        assert e.sha256 is None or len(e.sha256) == 64
        if e.kind == "denoiser":
            assert get_entry(e.autoencoder).kind == "autoencoder"
            assert e.sampler in ("one_step", "stochastic")
        with pytest.raises(WeightsUnavailableError) as err:
            ensure_weights(e.name, tmp_path, offline=True)
        assert e.url in str(err.value) and str(tmp_path / e.file) in str(err.value)


def test_a_mirror_url_or_folder_serves_the_registry_files(tmp_path, server, monkeypatch):
    """ONESTEP_SR_MIRROR: the registry's file names fetched from a mirror server or a local folder,
    checked and pinned as from the official URL (which is unreachable here)."""
    data = checkpoint_bytes(tmp_path)
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": {"tiny": {
        "file": "tiny.pth", "url": "http://127.0.0.1:9/official/tiny.pth", "kind": "denoiser", "licence": "test"}}}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    server.files["tiny.pth"] = data
    monkeypatch.setenv("ONESTEP_SR_MIRROR", server.url)
    assert fetch("tiny", tmp_path / "a").read_bytes() == data
    assert [r["path"] for r in server.requests] == ["/tiny.pth"]

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "tiny.pth").write_bytes(data)
    monkeypatch.setenv("ONESTEP_SR_MIRROR", str(mirror))
    assert fetch("tiny", tmp_path / "b").read_bytes() == data
    assert (tmp_path / "b" / "tiny.pth.sha256").read_text() == f"{sha(data)}  tiny.pth\n"
    assert len(server.requests) == 1

    monkeypatch.setenv("ONESTEP_SR_MIRROR", str(tmp_path / "empty"))  # the file is not in that folder
    with pytest.raises(DownloadError) as err:
        fetch("tiny", tmp_path / "c", retries=1)
    assert (tmp_path / "empty" / "tiny.pth").as_uri() in str(err.value)
    assert str(tmp_path / "c" / "tiny.pth") in str(err.value) and not (tmp_path / "c" / "tiny.pth").exists()
