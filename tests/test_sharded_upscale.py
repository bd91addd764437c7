"""``upscale`` over several processes (onestep_sr/cli/shard.py) and resumable batches: two CPU
processes launched by ``torchrun`` and by ``accelerate launch`` write, together, exactly what one
process writes, bit for bit; outputs that exist are skipped (an interrupted run resumes) unless
``--overwrite``; only process 0 reports progress, counted over the whole job."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import image_folder
from onestep_sr.cli import main
from onestep_sr.cli.shard import JobProgress, Shard, load_when_available

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------------
# the pieces


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_the_shares_are_disjoint_and_cover_every_job(world):
    jobs = list(range(10))
    shares = [Shard(rank, world).mine(jobs) for rank in range(world)]
    assert sorted(j for share in shares for j in share) == jobs
    assert sum(len(share) for share in shares) == len(jobs)


def test_the_shard_comes_from_the_launchers_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="outside"):
        Shard.from_env()
    monkeypatch.setenv("RANK", "3")
    assert Shard.from_env() == Shard(3, 4, 1) and not Shard.from_env().main
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert Shard.from_env() == Shard(0, 1, 0)


def test_each_process_gets_its_own_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    shard = Shard(rank=5, world=8, local_rank=2)
    assert shard.device(None) == torch.device("cuda", 2) == shard.device(torch.device("cuda"))
    assert shard.device(torch.device("cuda:0")) == torch.device("cuda:0")  # an explicit index is kept
    assert shard.device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert shard.device(None) is None  # the CPU default


class NotYet(Exception):
    pass


def test_the_other_processes_wait_for_process_0s_download():
    calls = []

    def load(offline):
        calls.append(offline)
        if len(calls) < 3:
            raise NotYet("not there yet")
        return "model"

    assert load_when_available(load, Shard(1, 2), lambda e: isinstance(e, NotYet), poll_s=0) == "model"
    assert calls == [True, True, True]  # never downloads itself
    assert load_when_available(lambda offline: offline, Shard(0, 2), lambda e: False) is False
    with pytest.raises(KeyError):  # any other error is not waited out
        load_when_available(lambda offline: {}["x"], Shard(1, 2), lambda e: isinstance(e, NotYet), poll_s=0)


def test_job_progress_counts_the_outputs_of_every_process(tmp_path):
    files = [tmp_path / f"{i}.png" for i in range(4)]
    files[0].write_bytes(b"x")
    progress = JobProgress(files)
    assert progress.label() == "[1/4]"
    files[3].write_bytes(b"x")  # written by another process
    assert progress.label() == "[2/4]"


# ---------------------------------------------------------------------------------------------
# one process: skip, --overwrite, a single output file


def test_a_folder_batch_skips_existing_outputs_unless_overwrite(tmp_path, goldens, capsys):
    weights = ["--denoiser", str(goldens / "unet.safetensors"), "--autoencoder", str(goldens / "vq.safetensors")]
    image_folder(tmp_path / "in", count=3, size=(16, 16))
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "in"), "-o", str(out), *weights]) == 0
    written = outputs(out)
    (out / "1.png").write_bytes(b"kept")            # a complete output from an earlier run
    (out / "2.png").unlink()                        # not done yet
    capsys.readouterr()
    assert main(["upscale", str(tmp_path / "in"), "-o", str(out), *weights]) == 0
    stdout, stderr = capsys.readouterr()
    assert "2 of 3 outputs" in stderr and "skipped" in stderr
    assert [Path(line.split()[2]).name for line in stdout.splitlines()] == ["2.png"]  # only the missing one
    assert (out / "1.png").read_bytes() == b"kept" and (out / "2.png").read_bytes() == written["2.png"]
    assert main(["upscale", str(tmp_path / "in"), "-o", str(out), *weights, "--overwrite"]) == 0
    assert outputs(out) == written
    single = tmp_path / "single.png"
    single.write_bytes(b"old")
    assert main(["upscale", str(tmp_path / "in" / "0.png"), "-o", str(single), *weights]) == 0
    assert single.read_bytes() == written["0.png"]  # -o FILE is always written


# ---------------------------------------------------------------------------------------------
# two processes, the bundled model


def test_two_processes_write_what_one_writes_and_resume(tmp_path):
    inputs = image_folder(tmp_path / "in", count=5, size=(24, 32))
    one = launch("-m", "onestep_sr", "upscale", str(inputs), "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    reference = outputs(tmp_path / "one")
    assert len(reference) == 5

    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(tmp_path / "one" / "1.png", two / "1.png")   # done before an interruption
    os.utime(two / "1.png", (1_000_000, 1_000_000))
    run = launch("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                 "-m", "onestep_sr", "upscale", str(inputs), "-o", str(two))
    assert run.returncode == 0, run.stderr
    assert outputs(two) == reference                          # the union, bit for bit
    assert (two / "1.png").stat().st_mtime == 1_000_000       # skipped, not written again
    assert "5 image(s) over 2 processes; 1 of 5 outputs" in run.stderr
    lines = run.stdout.splitlines()                           # process 0 alone: jobs 0, 2, 4
    assert [line.split()[1] for line in lines] == [str(inputs / f"{i}.png") for i in (0, 2, 4)]
    assert all(line.startswith("[") and "/5] " in line for line in lines)

    for name in ("0.png", "3.png"):                           # interrupted again: accelerate resumes it
        (two / name).unlink()
    run = launch("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                 "-m", "onestep_sr", "upscale", str(inputs), "-o", str(two))
    assert run.returncode == 0, run.stderr
    assert outputs(two) == reference and (two / "1.png").stat().st_mtime == 1_000_000
    assert "3 of 5 outputs" in run.stderr and run.stdout.count(" -> ") == 1  # 0.png by process 0; 3.png by 1


def test_outputs_written_by_another_process_of_this_run_are_not_counted_as_skipped(tmp_path):
    """Process 0 counts the outputs that were there before the run; with several processes,
    another one can write its first output before process 0 looks (a race CI met once)."""
    from onestep_sr.cli.shard import STARTED, outputs_from_before

    jobs = [(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png") for i in range(3)]
    (tmp_path / "out").mkdir()
    for _, dst in jobs[:2]:
        dst.write_bytes(b"x")
    os.utime(jobs[0][1], (STARTED - 60, STARTED - 60))  # from an interrupted earlier run
    os.utime(jobs[1][1], (STARTED + 1, STARTED + 1))    # written during this run by another process
    assert outputs_from_before(jobs) == 1
