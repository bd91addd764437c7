"""Ctrl-C is never mistaken for a corrupt file (issue 18, item 6).

safetensors reads in Rust; a KeyboardInterrupt raised in one of its Python callbacks comes out as an
unrelated error. The fake reader below does what that binding does: it swallows the interrupt and
raises a TypeError with the message seen in the field."""
from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import safetensors
import torch
from safetensors.torch import save_file

from onestep_sr import download
from onestep_sr.checkpoint import read_checkpoint
from onestep_sr.cli import main as cli_main
from onestep_sr.registry import get_entry

RUST_MESSAGE = "could not determine the shape of object type 'torch.storage.UntypedStorage'"


@pytest.fixture()
def ctrl_c_inside_the_reader(monkeypatch):
    """safe_open whose get_tensor receives a SIGINT mid-read, as a Rust binding would handle it."""
    real = safetensors.safe_open

    class Reader:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def metadata(self):
            return self.f.metadata()

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                tensor = self.f.get_tensor(key)
            except KeyboardInterrupt:
                raise TypeError(RUST_MESSAGE) from None
            return tensor

    monkeypatch.setattr(safetensors, "safe_open", Reader)


def _file(path):
    save_file({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}, str(path))
    return path


def test_an_interrupted_read_raises_keyboard_interrupt_not_a_corrupt_file_error(tmp_path, ctrl_c_inside_the_reader):
    path = _file(tmp_path / "model.safetensors")
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        read_checkpoint(path)
    assert path.read_bytes() == before
    # without an interrupt the same reader works, and SIGINT is Python's own again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_download_verifier_keeps_a_complete_download_on_ctrl_c(tmp_path, ctrl_c_inside_the_reader):
    entry = dataclasses.replace(get_entry("sinsr_v1"), file="SinSR_v1.safetensors", expected_payload_bytes=None)
    part = tmp_path / (entry.file + ".part")
    save_file({"w": torch.ones(3)}, str(part))
    data = part.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        download._install(entry, part, tmp_path / entry.file, None, None, "downloaded")
    assert part.read_bytes() == data  # kept for the next try, not deleted as "not a usable checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == [part.name]  # no pin, no final file


def test_onestep_sr_download_ends_on_ctrl_c_with_one_line_and_keeps_the_part(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"

    def interrupted(entry, models_dir=None, **_):
        target = download.target_path(entry, models_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name(target.name + ".part").write_bytes(b"first megabytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "ensure_weights", interrupted)
    code = cli_main(["download", "sinsr_v1", "--models-dir", str(models)])
    err = capsys.readouterr().err
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("onestep-sr: downloading")]
    assert lines == [f"onestep-sr: download of sinsr_v1 interrupted; the partial download "
                     f"{models / 'SinSR_v1.pth.part'} is kept and the same command resumes it"]
    assert "Traceback" not in err and (models / "SinSR_v1.pth.part").read_bytes() == b"first megabytes"
