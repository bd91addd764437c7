"""``onestep-sr train``'s one error boundary: every failure is one line on stderr naming the file or
option (exit 2 for a user error, 1 for a bug, 130 for Ctrl-C), no traceback unless --debug; data,
output places and options are checked before any model is built; a damaged or half-written
checkpoint never blocks a resume, and a resume leaves log.csv without duplicate rows."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import image_folder
from training.cli import main as train_main
from training.common.data import PairDataset, mirror_pad
from training.common.runs import CsvLog
from training.errors import DEBUG_ENV
from training.resshift import trainer

FAST = ["--gt-size", "64", "--batch-size", "1", "--degradation", "bicubic", "--arch", "tiny", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.fixture()
def cli(capsys):
    """Run ``python -m training``: (exit code, stdout, stderr)."""
    def run(*args) -> tuple[int, str, str]:
        code = train_main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def no_model(monkeypatch):
    """Building a model (the autoencoder comes first) fails the test: errors must come before."""
    def built(*args, **kwargs):
        raise AssertionError("a model was built before the error was found")

    monkeypatch.setattr(trainer, "build_autoencoder", built)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def save(folder: Path, name: str, h: int, w: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def log_steps(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


# --- data -----------------------------------------------------------------------------------------


def test_every_unusable_file_is_named_in_one_line_before_any_model(tmp_path, cli, no_model):
    hr = image_folder(tmp_path / "hr", count=2, size=(40, 40))
    (hr / "empty.jpg").write_bytes(b"")
    (hr / "notes.jpg").write_text("not a photo")  # PIL: UnidentifiedImageError
    for name, (h, w) in {"eight.png": (8, 8), "dot.png": (1, 1), "sliver.png": (3, 5)}.items():
        save(hr, name, h, w)
    code, out, err = cli("resshift", "--data", hr, "--out", tmp_path / "run", *FAST)
    line = one_line(err)
    assert code == 2 and out == "" and line.startswith("python -m training: error: 5 of the 7 image files")
    for name in ("empty.jpg", "the file is empty", "notes.jpg", "unrecognised image format",
                 "eight.png (8x8)", "dot.png (1x1)", "sliver.png (5x3)", "half the --gt-size 64"):
        assert name in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "no images in"),
    (lambda d: (d / "notes.txt").write_text("x") and d, "no images in"),
    (lambda d: d / "missing", "not a folder"),
], ids=["empty", "non-images", "missing"])
def test_a_folder_without_images_stops_before_any_model(tmp_path, cli, no_model, make, message):
    folder = tmp_path / "data"
    folder.mkdir()
    code, _, err = cli("resshift", "--data", make(folder), "--out", tmp_path / "run", *FAST)
    assert code == 2 and message in one_line(err)


def test_images_down_to_half_the_crop_are_mirrored_out_to_it(tmp_path, cli):
    image = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    padded = mirror_pad(image, 9)
    assert padded.shape == (2, 9, 9)
    reflect = torch.nn.functional.pad(image[None], (0, 2, 0, 3), mode="reflect")[0]  # torch's own, where it works
    assert torch.equal(padded[:, :8, :9], reflect)
    assert torch.equal(padded[:, 8, :7], image[:, 0])  # rows 0..4, 3..1 (torch), then mirrored again: row 0
    hr = tmp_path / "hr"
    save(hr, "square.png", 32, 32)  # exactly half the crop: torch's reflect padding refuses it
    save(hr, "wide.png", 40, 80)
    pairs = PairDataset(hr, gt_size=64, degradation="bicubic")
    assert all(pairs[i][1].shape == (3, 64, 64) and pairs[i][0].shape == (3, 16, 16) for i in range(8))
    code, out, _ = cli("resshift", "--data", hr, "--out", tmp_path / "run", "--steps", "1", *FAST)
    assert code == 0 and "exported" in out


# --- output places and options, before any compute -------------------------------------------------


def test_output_places_are_checked_before_anything_is_read(tmp_path, cli, no_model, monkeypatch):
    import onestep_sr
    from training.common import evaluate

    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    code, _, err = cli("resshift", "--data", hr, "--out", blocker / "run", *FAST)
    assert code == 2 and f"--out {blocker / 'run'}" in one_line(err) and "is a file, not a folder" in err
    code, _, err = cli("resshift", "--data", hr, "--out", blocker, *FAST)
    assert code == 2 and f"--out {blocker}" in one_line(err)
    code, _, err = cli("bake-guidance", "--checkpoint", tmp_path / "sd.safetensors", "--guided", tmp_path / "g",
                       "--w", "2", "--out", blocker / "x.safetensors")
    assert code == 2 and f"--out {blocker / 'x.safetensors'}" in one_line(err)

    def never(*args, **kwargs):
        raise AssertionError("evaluated before the --json place was checked")

    monkeypatch.setattr(onestep_sr, "load_model", never)
    monkeypatch.setattr(evaluate, "evaluate_folder", never)
    code, _, err = cli("eval", "--model", tmp_path / "m.safetensors", "--data", hr, "--json", blocker / "r.json")
    assert code == 2 and f"--json {blocker / 'r.json'}" in one_line(err)


@pytest.mark.parametrize("options, message", [
    (["--log-every", "0"], "--log-every must be a whole number of at least 1, got 0"),
    (["--save-every", "0"], "--save-every"),
    (["--gt-size", "0"], "--gt-size"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--lr=-1e-4"], "--lr must be a number above 0"),
    (["--ema", "2"], "--ema is a decay in [0, 1]"),
    (["--degradation", "jpeg"], "--degradation must be one of"),
    (["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
    (["--arch", "huge"], "--arch huge: neither one of tiny"),
])
def test_bad_option_values_are_one_sentence_before_any_model(tmp_path, cli, no_model, options, message):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    code, _, err = cli("resshift", "--data", hr, "--out", tmp_path / "run", *FAST, *options)
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("command", ["sinsr", "yonos", "progressive"])
def test_a_teacher_that_is_missing_or_no_checkpoint_is_one_sentence(tmp_path, cli, no_model, command):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    code, _, err = cli(command, "--teacher", tmp_path / "nope.safetensors", "--data", hr, "--out", tmp_path / "r", *FAST)
    assert code == 2 and f"--teacher {tmp_path / 'nope.safetensors'}: no such file" in one_line(err)


def test_sd_trainers_refuse_a_missing_checkpoint_and_bad_options_in_one_sentence(tmp_path, cli):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    for command in ("osediff", "guided"):
        code, _, err = cli(command, "--checkpoint", tmp_path / "sd.safetensors", "--data", hr, "--out", tmp_path / "r")
        assert code == 2 and "SD checkpoint not found" in one_line(err)
    (tmp_path / "sd.safetensors").write_bytes(b"\0" * 64)  # exists: the option is refused before it is read
    code, _, err = cli("osediff", "--checkpoint", tmp_path / "sd.safetensors", "--data", hr, "--out", tmp_path / "r",
                       "--log-every", "0")
    assert code == 2 and "--log-every must be" in one_line(err)


# --- checkpoints and resume ---------------------------------------------------------------------------


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "state.json"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, cli, damaged):
    hr = image_folder(tmp_path / "hr", count=2, size=(40, 40))
    run = tmp_path / "run"
    options = ["--data", hr, "--out", run, "--save-every", "2", "--log-every", "1", *FAST]
    assert cli("resshift", "--steps", "4", *options)[0] == 0
    _cut(run / "checkpoints" / "step-4" / damaged)
    code, _, err = cli("resshift", "--steps", "5", *options)
    line = one_line(err)
    assert code == 0 and line.startswith(f"warning: checkpoint {run / 'checkpoints' / 'step-4'} is damaged ({damaged}:")
    assert "resuming from step-2" in line
    assert (run / "checkpoints" / "step-4.damaged" / damaged).is_file()  # set aside, not deleted
    assert log_steps(run) == [1, 2, 3, 4, 5]  # steps 3 and 4 were done again, and logged once
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-4", "step-4.damaged", "step-5"]


def test_every_checkpoint_damaged_is_refused_naming_them(tmp_path, cli):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    run = tmp_path / "run"
    options = ["--data", hr, "--out", run, "--save-every", "1", *FAST]
    assert cli("resshift", "--steps", "2", *options)[0] == 0
    for step in (1, 2):
        _cut(run / "checkpoints" / f"step-{step}" / "model.safetensors")
    code, _, err = cli("resshift", "--steps", "3", *options)
    line = one_line(err)
    assert code == 2 and "every checkpoint in" in line and "step-2: model.safetensors" in line and "step-1:" in line
    assert (run / "checkpoints" / "step-2").is_dir()  # nothing renamed or deleted


def test_a_checkpoint_of_other_options_is_refused_not_called_damaged(tmp_path, cli):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    options = ["--data", hr, "--out", tmp_path / "run", "--gt-size", "64", "--batch-size", "1", "--no-progress"]
    assert cli("resshift", "--steps", "1", "--arch", "tiny", *options)[0] == 0
    code, _, err = cli("resshift", "--steps", "2", "--arch", "compact", *options)
    assert code == 2 and "does not fit this run" in one_line(err) and "step-1" in err


def test_a_leftover_staging_folder_never_blocks_a_resume(tmp_path, cli):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    run = tmp_path / "run"
    options = ["--data", hr, "--out", run, "--save-every", "2", *FAST]
    assert cli("resshift", "--steps", "2", *options)[0] == 0
    leftover = run / "checkpoints" / "step-6.tmp"
    leftover.mkdir()
    (leftover / "state.json").write_text(json.dumps({"step": 6}))
    code, out, err = cli("resshift", "--steps", "3", *options)
    assert code == 0 and "exported" in out and err == ""


def test_ctrl_c_is_one_line_and_the_resume_logs_each_step_once(tmp_path, cli, monkeypatch):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    run = tmp_path / "run"
    options = ["--data", hr, "--out", run, "--steps", "6", "--save-every", "3", "--log-every", "1", *FAST]
    original = trainer.Run._update_ema

    def interrupted_at_step_5(self):
        if self.step == 5:
            raise KeyboardInterrupt
        original(self)

    with monkeypatch.context() as patch:
        patch.setattr(trainer.Run, "_update_ema", interrupted_at_step_5)
        code, _, err = cli("resshift", *options)
    assert code == 130 and "interrupted" in one_line(err) and "run the same command again to resume" in err
    assert log_steps(run) == [1, 2, 3, 4]
    code, _, err = cli("resshift", *options)
    assert code == 0 and err == ""
    assert log_steps(run) == [1, 2, 3, 4, 5, 6]


def test_the_log_drops_rows_past_the_resumed_step_and_a_cut_row(tmp_path):
    log = tmp_path / "log.csv"
    log.write_bytes(b"step,loss\r\n1,0.5\r\n2,0.4\r\n3,0.3\r\n4,0.")
    with CsvLog(log, resume_step=2) as writer:
        writer.write({"step": 3, "loss": 0.25})
    assert log.read_bytes() == b"step,loss\r\n1,0.5\r\n2,0.4\r\n3,0.25\r\n"
    log.write_bytes(b"")  # created, then interrupted before the first row: the header still comes
    with CsvLog(log, resume_step=0) as writer:
        writer.write({"step": 1, "loss": 0.5})
    assert log_steps(tmp_path) == [1]


# --- eval ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "notes.txt"),
    (lambda d: save(d, "photo.png", 8, 8), "photo.png"),
    (lambda d: d / "missing.safetensors", "checkpoint not found"),
], ids=["text", "png", "missing"])
def test_eval_of_a_model_that_is_no_checkpoint_is_one_sentence(tmp_path, cli, make, message):
    val = image_folder(tmp_path / "val", count=1, size=(32, 32))
    code, _, err = cli("eval", "--model", make(tmp_path), "--data", val)
    assert code == 2 and message in one_line(err)


def test_eval_of_an_empty_folder_is_one_sentence(tmp_path, cli):
    (tmp_path / "val").mkdir()
    code, _, err = cli("eval", "--model", "nothing.safetensors", "--data", tmp_path / "val")
    assert code == 2 and f"--data {tmp_path / 'val'}: no images" in one_line(err)


def test_eval_makes_the_lr_at_the_models_own_scale(tmp_path, cli):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))
    code, _, _ = cli("resshift", "--scale", "2", "--steps", "1", "--data", hr, "--out", tmp_path / "x2", *FAST)
    assert code == 0
    val = image_folder(tmp_path / "val", count=1, size=(24, 24))
    code, out, err = cli("eval", "--model", tmp_path / "x2" / "model.safetensors", "--data", val, "--steps", "1",
                         "--json", tmp_path / "r.json")
    assert code == 0 and err == ""
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["size"] == [24, 24]


# --- the boundary itself --------------------------------------------------------------------------------


def test_a_bug_is_one_line_with_a_hint_and_debug_shows_the_traceback(tmp_path, cli, monkeypatch):
    hr = image_folder(tmp_path / "hr", count=1, size=(40, 40))

    def broken(self, progress=True):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(trainer.Run, "train", broken)
    args = ["resshift", "--data", hr, "--out", tmp_path / "run", "--steps", "1", *FAST]
    code, _, err = cli(*args)
    line = one_line(err)
    assert code == 1 and "unexpected ZeroDivisionError: division by zero" in line and "--debug" in line
    with pytest.raises(ZeroDivisionError):
        cli(*args, "--debug")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):
        cli(*args)


def test_onestep_sr_train_reports_through_the_same_boundary(tmp_path, capsys):
    from onestep_sr.cli import main

    (tmp_path / "val").mkdir()
    code = main(["train", "eval", "--model", "m.safetensors", "--data", str(tmp_path / "val")])
    err = capsys.readouterr().err
    assert code == 2 and one_line(err).startswith("onestep-sr train: error: --data ")
