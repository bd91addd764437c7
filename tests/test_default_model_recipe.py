"""benchmarks/train_default_model.py end to end at toy size: teacher, student, the restoration end
and the adversarial variant are trained, measured and recorded (one resumable command, issue 28
item 6), and a second run of the same command resumes everything instead of training again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from PIL import Image

from helpers import REPO, image_folder


def test_the_recipe_trains_both_ends_and_the_adversarial_variant_and_records_them(tmp_path):
    train = image_folder(tmp_path / "train", count=2, size=(64, 64))
    val = image_folder(tmp_path / "val", count=1, size=(64, 48))
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_default_model.py"), "--out", str(out),
           "--train", str(train), "--val", str(val), "--teacher-steps", "2", "--student-steps", "2",
           "--restore-steps", "2", "--gan-steps", "2", "--batch-size", "2", "--student-batch-size", "2",
           "--gt-size", "32", "--dead-leaves", "2", "--dead-leaves-size", "64", "--photo-scales", "1,0.75,0.2",
           "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    for stage in ("teacher", "student", "restoration", "gan"):
        assert (out / stage / "model.safetensors").is_file(), stage
    record = json.loads((out / "record.json").read_text())
    assert record["teacher"]["arch"] == "compact"
    restoration = record["restoration"]
    # the data: each train photo as it is (a link) and at 3/4 size (48x48 PNG; 1/5 is too small for a 32 px crop), and the dead leaves
    photos = sorted((out / "data" / "photos").iterdir())
    assert [p.name for p in photos] == ["0_s075.png", "0_s100.png", "1_s075.png", "1_s100.png"]
    assert photos[1].is_symlink() and Image.open(photos[0]).size == (48, 48)
    assert restoration["data"]["photo_scales"] == [1.0, 0.75, 0.2] and len(restoration["data"]["files"]) == 6
    assert "0.png at scale 0.2 would be 13x13, below the 16 px a 32 px crop needs: skipped" in first.stdout
    assert set(restoration["results"]["kinds"]) == {"clean", "jpeg75", "noise8_jpeg90", "realesrgan"}
    adversarial = restoration["adversarial"]
    assert adversarial["steps"] == 2 and adversarial["gan_weight"] > 0
    assert set(adversarial["results"]["kinds"]["clean"]["rows"]) == {"0.0", "0.25", "0.5", "0.75", "1.0", "auto"}
    assert "adversarial variant" in first.stdout
    stamp = (out / "gan" / "checkpoints" / "step-2" / "model.safetensors").stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "gan" / "checkpoints" / "step-2" / "model.safetensors").stat().st_mtime_ns == stamp  # resumed


def test_ctrl_c_ends_the_recipe_with_one_line_and_exit_130_keeping_its_checkpoints(tmp_path):
    train = image_folder(tmp_path / "train", count=2, size=(64, 64))
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_default_model.py"), "--out", str(out),
           "--train", str(train), "--val", str(train), "--teacher-steps", "100000", "--batch-size", "2",
           "--gt-size", "32", "--photo-scales", "1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONESTEP_SR_DEBUG": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        checkpoints = out / "teacher" / "checkpoints"
        while not (checkpoints.is_dir() and list(checkpoints.glob("step-*"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the teacher saved no checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("train_default_model.py: interrupted; every finished stage and the last "
                                           "checkpoint are kept: run the same command again to resume")
    assert list((out / "teacher" / "checkpoints").glob("step-*")) and (out / "data" / "photos").is_dir()


def test_a_missing_train_folder_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_default_model.py"), "--out",
                          str(tmp_path / "run"), "--train", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"train_default_model.py: error: not a folder: {tmp_path / 'nope'}"
