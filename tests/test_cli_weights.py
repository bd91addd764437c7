"""``onestep-sr models``, ``download`` and ``convert`` through ``onestep_sr.cli.main``.

Downloads go to the loopback HTTP server of ``loopback`` (127.0.0.1 only, bounded in
requests and time); the CLI is pointed at a test registry by patching
``onestep_sr.registry.REGISTRY_FILE``, which the commands read at call time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import socket
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from onestep_sr import download, registry
from onestep_sr.checkpoint import load_autoencoder, load_denoiser, read_checkpoint
from onestep_sr.cli import main
from onestep_sr.cli import weights as cli_weights

NC = "Test Licence (non-commercial)"


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture()
def no_hashing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sha256 computed")

    monkeypatch.setattr(hashlib, "sha256", refuse)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_checkpoint(tmp_path: Path, name: str, fill: float) -> bytes:
    path = tmp_path / f"{name}.pth"
    torch.save({"w": torch.full((3000,), fill)}, path)
    return path.read_bytes()


def use_registry(monkeypatch, tmp_path: Path, models: dict) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": models}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    return path


def model(file: str, url: str = "http://127.0.0.1:9/unused", kind: str = "denoiser", **extra) -> dict:
    return {"file": file, "url": url, "kind": kind, "licence": NC, **extra}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def rows(out: str) -> dict[str, str]:
    """name -> its line in the ``models`` table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NAME"))
    table = lines[start + 1:lines.index("", start)]
    return {line.split()[0]: line for line in table}


# ---------------------------------------------------------------------------------------------
# models


def test_models_with_the_real_registry_and_an_empty_folder(tmp_path, capsys, no_network, no_hashing):
    folder = tmp_path / "models"
    assert main(["models", "--models-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"Models folder: {folder} (does not exist yet)" in out
    assert "--models-dir" in out and "ONESTEP_SR_MODELS" in out
    table = rows(out)
    assert set(table) == {e.name for e in registry.list_entries()}
    for entry in registry.list_entries():
        line = table[entry.name]
        assert line.split()[1:4] == [entry.kind, entry.file, "missing"]
        assert line.endswith(entry.licence)
    assert f"Other checkpoint files in {folder}: none" in out
    assert not folder.exists()  # listing creates nothing


def test_models_statuses_and_other_files(tmp_path, capsys, monkeypatch, no_network, no_hashing):
    use_registry(monkeypatch, tmp_path, {
        "reg": model("reg.pth", sha256="ab" * 32),
        "pinned": model("pinned.safetensors"),
        "nopin": model("nopin.pth"),
        "part": model("part.pth", expected_payload_bytes=4 * 2**20),
        "absent": model("absent.pth", kind="autoencoder"),
        "left": model("left.pth"),
    })
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "reg.pth").write_bytes(b"x" * 1536)
    (folder / "pinned.safetensors").write_bytes(b"x" * 3 * 2**20)
    (folder / "pinned.safetensors.sha256").write_text("cd" * 32 + "  pinned.safetensors\n")
    (folder / "nopin.pth").write_bytes(b"x" * 10)
    (folder / "part.pth.part").write_bytes(b"x" * 2**20)
    for name, size in [("mine.safetensors", 2048), ("old.ckpt", 5), ("b.pt", 1), ("c.pth", 1)]:
        (folder / name).write_bytes(b"y" * size)
    (folder / "notes.txt").write_text("not a checkpoint")
    (folder / ".reg.pth.verify.pth").write_bytes(b"hidden")
    (folder / ".left.pth.verify.pth").write_bytes(b"x" * 2048)  # an interrupted download's complete file
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(folder))  # the folder from the environment

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"Models folder: {folder}\n" in out
    table = rows(out)
    assert "ready (1.5 KiB, registry hash)" in table["reg"]
    assert "ready (3.0 MiB, sha256 pinned)" in table["pinned"]
    assert "ready (10 B, not verified: no hash pinned)" in table["nopin"]
    assert "partial download (1.0 MiB of about 4.0 MiB)" in table["part"]
    assert table["absent"].split()[1:4] == ["autoencoder", "absent.pth", "missing"]
    assert "downloaded, not yet checked (2.0 KiB as .left.pth.verify.pth" in table["left"]
    others = out.split(f"Other checkpoint files in {folder}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert others == ["  b.pt  1 B", "  c.pth  1 B", "  mine.safetensors  2.0 KiB", "  old.ckpt  5 B"]
    assert "non-commercial" in out


def test_models_verify_reports_every_file_and_fails_on_a_mismatch(tmp_path, capsys, monkeypatch):
    good, bad = b"good weights", b"tampered weights"
    use_registry(monkeypatch, tmp_path, {
        "good": model("good.pth", sha256=sha(good)),
        "bad": model("bad.pth"),
        "nopin": model("nopin.pth"),
    })
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "good.pth").write_bytes(good)
    (folder / "bad.pth").write_bytes(bad)
    (folder / "bad.pth.sha256").write_text(f"{sha(b'original')}  bad.pth\n")
    (folder / "nopin.pth").write_bytes(b"z")

    assert main(["models", "--models-dir", str(folder), "--verify"]) == 1
    out = capsys.readouterr().out
    table = rows(out)
    assert "verified (12 B, registry hash)" in table["good"]
    assert "HASH MISMATCH (16 B, sha256 pinned)" in table["bad"]
    assert "not verified: no hash pinned" in table["nopin"]
    assert (f"HASH MISMATCH: {folder / 'bad.pth'} has sha256 {sha(bad)}, expected {sha(b'original')} "
            "(from bad.pth.sha256)") in out
    assert "Other checkpoint files" in out  # everything printed before failing

    (folder / "bad.pth").write_bytes(b"original")
    assert main(["models", "--models-dir", str(folder), "--verify"]) == 0
    assert "verified (8 B, sha256 pinned)" in rows(capsys.readouterr().out)["bad"]


# ---------------------------------------------------------------------------------------------
# download


@pytest.fixture()
def served(tmp_path, server, monkeypatch):
    """A registry of a denoiser 'tiny' (with autoencoder 'tiny_vq') and 'other', all on the server."""
    data = {name: small_checkpoint(tmp_path, name, fill)
            for name, fill in [("tiny", 1.0), ("tiny_vq", 2.0), ("other", 3.0)]}
    for name, body in data.items():
        server.files[f"{name}.pth"] = body
    use_registry(monkeypatch, tmp_path, {
        "tiny": model("tiny.pth", server.url + "tiny.pth", autoencoder="tiny_vq"),
        "tiny_vq": model("tiny_vq.pth", server.url + "tiny_vq.pth", kind="autoencoder"),
        "other": {**model("other.pth", server.url + "other.pth"), "licence": "MIT"},
    })
    return data


def test_download_fetches_the_denoiser_and_its_autoencoder(tmp_path, capsys, server, served):
    folder = tmp_path / "models"
    assert main(["download", "tiny", "--models-dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert listing(folder) == ["tiny.pth", "tiny.pth.sha256", "tiny_vq.pth", "tiny_vq.pth.sha256"]
    assert (folder / "tiny.pth").read_bytes() == served["tiny"]
    assert (folder / "tiny_vq.pth").read_bytes() == served["tiny_vq"]
    assert [r["path"] for r in server.requests] == ["/tiny.pth", "/tiny_vq.pth"]
    assert captured.out.splitlines() == [
        f"tiny: {folder / 'tiny.pth'} (downloaded; licence: {NC})",
        f"tiny_vq: {folder / 'tiny_vq.pth'} (downloaded; licence: {NC})",
        cli_weights.NON_COMMERCIAL_NOTE,
    ]
    # not a terminal: one line per file at the start (what, how big, from where, into which folder) and
    # at the end, for logs
    err = captured.err.splitlines()
    assert len(err) == 4
    assert err[0] == f"onestep-sr: downloading tiny: tiny.pth, size unknown, from {server.url}tiny.pth into {folder} " \
                     f"(licence: {NC})"
    assert err[1].startswith("onestep-sr: tiny done:") and err[1].endswith(str(folder / "tiny.pth"))
    assert err[2].startswith("onestep-sr: downloading tiny_vq")

    # a second run finds both files (checking them against their pins) and asks for nothing
    assert main(["download", "tiny", "tiny_vq", "--models-dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "tiny: " in captured.out and "(already there; licence" in captured.out
    assert captured.err == ""
    assert len(server.requests) == 2


def test_download_from_a_mirror_instead_of_the_official_urls(tmp_path, capsys, server, monkeypatch):
    """ONESTEP_SR_MIRROR=URL: the registry's official URLs (unreachable here) are not asked; the
    same file names come from the mirror, and ``models`` says where downloads come from."""
    body = small_checkpoint(tmp_path, "w", 1.0)
    server.files["w.pth"] = body
    use_registry(monkeypatch, tmp_path, {"w": model("w.pth", "http://127.0.0.1:9/official/w.pth")})
    monkeypatch.setenv("ONESTEP_SR_MIRROR", server.url)
    folder = tmp_path / "models"
    assert main(["download", "w", "--models-dir", str(folder)]) == 0
    err = capsys.readouterr().err
    assert f"from {server.url}w.pth into {folder}" in err
    assert (folder / "w.pth").read_bytes() == body and [r["path"] for r in server.requests] == ["/w.pth"]
    assert main(["models", "--models-dir", str(folder)]) == 0
    assert f"Downloads come from the mirror {server.url} (the ONESTEP_SR_MIRROR environment variable)" in \
        capsys.readouterr().out


def test_download_skips_an_autoencoder_already_there(tmp_path, capsys, server, served, monkeypatch):
    folder = tmp_path / "env-models"
    folder.mkdir()
    (folder / "tiny_vq.pth").write_bytes(b"present")
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(folder))
    assert main(["download", "tiny"]) == 0
    out = capsys.readouterr().out
    assert [r["path"] for r in server.requests] == ["/tiny.pth"]
    assert f"tiny_vq: {folder / 'tiny_vq.pth'} (already there" in out
    assert (folder / "tiny_vq.pth").read_bytes() == b"present"


def test_download_all_and_the_licence_note(tmp_path, capsys, server, served):
    folder = tmp_path / "models"
    assert main(["download", "--all", "--models-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert {r["path"] for r in server.requests} == {"/tiny.pth", "/tiny_vq.pth", "/other.pth"}
    assert len(server.requests) == 3
    assert out.count(cli_weights.NON_COMMERCIAL_NOTE) == 1
    assert "other: " in out and "licence: MIT)" in out

    capsys.readouterr()
    assert main(["download", "other", "--models-dir", str(folder)]) == 0
    assert "non-commercial" not in capsys.readouterr().out  # MIT only: no note


@pytest.mark.parametrize("argv, message", [
    (["download", "tiny", "nope"], "unknown model 'nope'; known models: tiny, tiny_vq, other"),
    (["download"], "known models: tiny, tiny_vq, other"),
    (["download", "tiny", "--all"], "not both"),
])
def test_download_usage_errors_request_nothing(tmp_path, capsys, server, served, argv, message):
    folder = tmp_path / "models"
    assert main(argv + ["--models-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onestep-sr: error: ") and message in err and err.count("\n") == 1
    assert server.requests == [] and not folder.exists()


def test_download_offline_says_what_to_save_where(tmp_path, capsys, server, served, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    folder = tmp_path / "models"
    assert main(["download", "tiny", "--models-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onestep-sr: error: ") and err.count("\n") == 1
    assert server.url + "tiny.pth" in err and str(folder / "tiny.pth") in err
    assert server.url + "tiny_vq.pth" in err and str(folder / "tiny_vq.pth") in err  # both at once
    assert f"The folder {folder} does not exist yet: create it first" in err
    assert server.requests == [] and listing(folder) == []
    folder.mkdir()
    (folder / "tiny.pth").write_bytes(served["tiny"])
    assert main(["download", "tiny", "--models-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "tiny also needs its autoencoder tiny_vq: tiny_vq (tiny_vq.pth) is not in" in err
    assert "tiny.pth and save" not in err and "create it" not in err
    (folder / "tiny_vq.pth").write_bytes(served["tiny_vq"])
    assert main(["download", "tiny", "--models-dir", str(folder)]) == 0
    assert "tiny_vq: " + str(folder / "tiny_vq.pth") + " (already there" in capsys.readouterr().out


def test_download_missing_url_fails_with_one_line_and_nothing_left(tmp_path, capsys, server, served):
    del server.files["tiny_vq.pth"]
    folder = tmp_path / "models"
    assert main(["download", "tiny", "--models-dir", str(folder)]) == 1
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if "error" in line]
    assert len(error) == 1 and "404" in error[0] and server.url + "tiny_vq.pth" in error[0]
    assert listing(folder) == ["tiny.pth", "tiny.pth.sha256"]  # the first file stays, the second is absent
    assert f"tiny: {folder / 'tiny.pth'} (downloaded" in captured.out
    assert "tiny_vq:" not in captured.out


def test_download_hash_mismatch_leaves_nothing(tmp_path, capsys, server, monkeypatch):
    server.files["w.pth"] = small_checkpoint(tmp_path, "w", 1.0)
    use_registry(monkeypatch, tmp_path, {"w": model("w.pth", server.url + "w.pth", sha256="0" * 64)})
    folder = tmp_path / "models"
    assert main(["download", "w", "--models-dir", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1].startswith("onestep-sr: error: w.pth downloaded from")
    assert "expected " + "0" * 64 in captured.err
    assert listing(folder) == []
    assert "non-commercial" not in captured.out


def test_download_broken_transfer_keeps_only_the_part_file(tmp_path, capsys, server, served, monkeypatch):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    server.mode = "truncate"
    folder = tmp_path / "models"
    assert main(["download", "other", "--models-dir", str(folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("onestep-sr: error: could not download") and "partial data kept" in err[-1]
    assert listing(folder) == ["other.pth.part"]  # nothing renamed into place

    assert main(["models", "--models-dir", str(folder)]) == 0
    assert "partial download (" in rows(capsys.readouterr().out)["other"]


# ---------------------------------------------------------------------------------------------
# convert


def tensors_of(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_convert_denoiser_is_bit_identical_and_carries_its_config(tmp_path, capsys, goldens):
    out = tmp_path / "sub" / "unet.safetensors"
    assert main(["convert", str(goldens / "unet.safetensors"), str(out)]) == 0
    printed = capsys.readouterr().out
    reference = load_denoiser(goldens / "unet.safetensors")
    tensors, metadata = tensors_of(out)
    assert_identical(tensors, reference.state_dict())
    assert metadata == {"config": json.dumps(reference.config.to_dict()), "kind": "denoiser",
                        "source": "unet.safetensors", "format": "pt"}
    assert read_checkpoint(out)[1]["config"] == metadata["config"]
    assert_identical(load_denoiser(out).state_dict(), reference.state_dict())
    params = sum(p.numel() for p in reference.parameters())
    assert f"{len(tensors)} tensors, {params:,} parameters, {out.stat().st_size:,} bytes" in printed
    assert len(tensors) == 562
    assert listing(out.parent) == ["unet.safetensors"]  # no temp file left


def test_convert_wrapped_vq_pickle_with_auto_kind(tmp_path, capsys, goldens):
    out = tmp_path / "vq.safetensors"
    assert main(["convert", str(goldens / "vq_wrapped_module.pth"), str(out), "--kind", "auto"]) == 0
    assert "VQ autoencoder" in capsys.readouterr().out
    tensors, metadata = tensors_of(out)
    reference = load_autoencoder(goldens / "vq.safetensors")
    assert not any(k.startswith("module.") for k in tensors)
    assert_identical(tensors, reference.state_dict())
    assert metadata["kind"] == "autoencoder" and metadata["source"] == "vq_wrapped_module.pth"
    assert json.loads(metadata["config"]) == reference.config.to_dict()
    assert_identical(load_autoencoder(out).state_dict(), reference.state_dict())


def test_convert_stores_the_config_so_loading_needs_no_inference(tmp_path, capsys, goldens):
    # a source whose stored config differs from what the shapes say (dropout is invisible in them)
    tensors, metadata = tensors_of(goldens / "unet.safetensors")
    config = json.loads(metadata["config"])
    config["dropout"] = 0.25
    src = tmp_path / "custom.safetensors"
    save_file(tensors, str(src), metadata={"config": json.dumps(config)})
    assert load_denoiser(tensors).config.dropout == 0  # inferred from the shapes alone
    out = tmp_path / "custom_out.safetensors"
    assert main(["convert", str(src), str(out), "--kind", "denoiser"]) == 0
    stored = json.loads(read_checkpoint(out)[1]["config"])
    assert stored["dropout"] == 0.25
    assert load_denoiser(out).config.dropout == 0.25

    # a plain state-dict pickle (no metadata): OUT gets the inferred config, equal to the golden one
    pth = tmp_path / "plain.pth"
    torch.save({"state_dict": tensors}, pth)
    out2 = tmp_path / "plain.safetensors"
    assert main(["convert", str(pth), str(out2)]) == 0
    assert json.loads(read_checkpoint(out2)[1]["config"]) == load_denoiser(goldens / "unet.safetensors").config.to_dict()


@pytest.mark.parametrize("dtype, expected", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                             ("fp32", torch.float32)])
def test_convert_casts_only_floating_tensors(tmp_path, capsys, goldens, dtype, expected):
    out = tmp_path / f"unet_{dtype}.safetensors"
    assert main(["convert", str(goldens / "unet.safetensors"), str(out), "--dtype", dtype]) == 0
    tensors, _ = tensors_of(out)
    reference = load_denoiser(goldens / "unet.safetensors").state_dict()
    integer = [k for k, v in reference.items() if not v.is_floating_point()]
    assert integer and all(tensors[k].dtype == torch.int64 and torch.equal(tensors[k], reference[k])
                           for k in integer)
    for key, value in reference.items():
        if value.is_floating_point():
            assert tensors[key].dtype == expected and torch.equal(tensors[key], value.to(expected)), key
    assert load_denoiser(out).config == load_denoiser(goldens / "unet.safetensors").config


def test_convert_keep_preserves_a_half_precision_source(tmp_path, capsys, goldens):
    tensors, metadata = tensors_of(goldens / "vq.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    src = tmp_path / "vq16.safetensors"
    save_file(half, str(src), metadata=metadata)
    out = tmp_path / "vq16_out.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    assert "(float16)" in capsys.readouterr().out
    assert_identical(tensors_of(out)[0], half)


def test_convert_refusals_leave_files_alone(tmp_path, capsys, goldens):
    src = tmp_path / "unet.safetensors"
    shutil.copyfile(goldens / "unet.safetensors", src)
    original = src.read_bytes()

    def refused(argv, message):
        assert main(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("onestep-sr: error: ") and message in err and err.count("\n") == 1
        return err

    refused([str(src), str(tmp_path / "out.pth")], "must be a .safetensors file")
    refused([str(src), str(tmp_path / "." / "unet.safetensors"), "--force"], "refusing to overwrite the input")
    assert src.read_bytes() == original

    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"keep me")
    refused([str(src), str(existing)], "already exists; use --force")
    assert existing.read_bytes() == b"keep me"
    assert main(["convert", str(src), str(existing), "--force"]) == 0
    assert_identical(tensors_of(existing)[0], load_denoiser(src).state_dict())

    refused([str(tmp_path / "absent.pth"), str(tmp_path / "a.safetensors")], "checkpoint not found")
    refused([str(goldens / "vq.safetensors"), str(tmp_path / "b.safetensors"), "--kind", "denoiser"],
            "is not a complete Swin-UNet denoiser checkpoint")
    err = refused([str(goldens / "vq_cases.safetensors"), str(tmp_path / "c.safetensors")],
                  "is neither a denoiser nor a VQ autoencoder checkpoint (as a Swin-UNet denoiser: ")
    assert "key 'input_blocks.0.0.weight' is missing; as a VQ autoencoder: " in err

    code = tmp_path / "needs_code.pth"
    torch.save({"state_dict": load_denoiser(src).state_dict(), "args": argparse.Namespace(lr=1e-4)}, code)
    refused([str(code), str(tmp_path / "d.safetensors")], "refused to load")
    assert listing(tmp_path) == ["existing.safetensors", "needs_code.pth", "unet.safetensors"]


def test_convert_write_failure_leaves_no_file(tmp_path, capsys, goldens, monkeypatch):
    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    import onestep_sr.checkpoint as checkpoint_module  # where the atomic safetensors writer lives
    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    out = tmp_path / "out" / "vq.safetensors"
    assert main(["convert", str(goldens / "vq.safetensors"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert listing(out.parent) == []
