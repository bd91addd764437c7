"""``onestep-sr upscale``: outputs equal the engine's, batches over files/folders/globs, one clear
line and the documented exit code for every bad input, and never a partial file or a touched input.

The tiny random golden models (``--denoiser/--autoencoder``) keep every upscale well under a second.
"""
from __future__ import annotations

import io
import os
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import main
from onestep_sr.model import OneStepSR, OutOfMemoryError
from onestep_sr.pipeline import model_to_uint8, super_resolve, uint8_to_model
from onestep_sr.registry import get_entry
from onestep_sr.schedule import SCHEDULE_T15


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models gain nothing from a second thread, and on a shared, busy machine two
    threads per process run about twice slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def weights(goldens):
    return ["--denoiser", str(goldens / "unet.safetensors"), "--autoencoder", str(goldens / "vq.safetensors")]


@pytest.fixture()
def cli(capsys):
    """Run the CLI: (exit code, stdout, stderr)."""
    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(array: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


# ---------------------------------------------------------------------------------------------
# results


def test_upscale_writes_the_engine_output(tmp_path, goldens, weights, cli, golden_denoiser, golden_autoencoder):
    out = tmp_path / "sub" / "sr.png"
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", out, "--seed", "3", *weights)
    assert code == 0 and stderr == ""  # not a TTY: no progress bar
    lr = np.asarray(Image.open(goldens / "pipeline_lr.png").convert("RGB"))
    with torch.no_grad():
        sr = super_resolve(uint8_to_model(lr), golden_denoiser, golden_autoencoder, SCHEDULE_T15,
                           torch.Generator().manual_seed(3))
    written = np.asarray(Image.open(out))
    assert written.shape == (160, 224, 3)
    assert np.array_equal(written, model_to_uint8(sr))
    assert [p.name for p in out.parent.iterdir()] == ["sr.png"]
    assert stdout.startswith(f"{goldens / 'pipeline_lr.png'} -> {out} (224x160, ")
    assert stdout.rstrip().endswith(" s)") and stdout.count("\n") == 1


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the CLI draws its progress bar."""

    def isatty(self) -> bool:
        return True


def test_image_larger_than_one_tile(tmp_path, weights, cli, monkeypatch):
    src = save(noise(150, 80), tmp_path / "tall.png")
    out = tmp_path / "tall_x4.png"
    monkeypatch.setattr(sys, "stderr", Terminal())
    code, stdout, _ = cli("upscale", src, "-o", out, "--tile", "64", "--vq-tile", "32", *weights)
    assert code == 0 and "(320x600, " in stdout
    counts = [(int(d), int(t)) for d, t in re.findall(r"\] (\d+)/(\d+) tiles", sys.stderr.getvalue())]
    total = counts[-1][1]
    assert total > 3 and counts[-1] == (total, total)  # more network calls than one tile's three
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)  # the bar only moves forward
    with Image.open(out) as im:
        assert im.size == (320, 600) and im.mode == "RGB"
        pixels = np.asarray(im)
    assert pixels.std() > 1.0  # a real image, not a blank buffer


def test_folder_batch_keeps_modes_drops_duplicates_and_skips_non_images(tmp_path, weights, cli):
    folder = tmp_path / "in"
    rgba = noise(20, 12, 4, seed=1)
    rgba[..., 3] = 128  # constant alpha stays constant through the bicubic x4
    save(noise(12, 20, seed=0), folder / "a_rgb.png")
    save(rgba, folder / "b_rgba.png")
    save(noise(16, 16, 1, seed=2), folder / "c_grey.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk that would fail if it were read")
    out = tmp_path / "out"
    # the folder, plus two of its files again under other spellings: each image once, folder order
    code, stdout, stderr = cli("upscale", folder, folder / "b_rgba.png", tmp_path / "in" / ".." / "in" / "a_rgb.png",
                               "-o", out, *weights)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == [str(folder / n) for n in ("a_rgb.png", "b_rgba.png", "c_grey.png")]
    assert sorted(p.name for p in out.iterdir()) == ["a_rgb.png", "b_rgba.png", "c_grey.png"]
    expected = {"a_rgb.png": ("RGB", (80, 48)), "b_rgba.png": ("RGBA", (48, 80)), "c_grey.png": ("L", (64, 64))}
    for name, (mode, size) in expected.items():
        with Image.open(out / name) as im:
            assert (im.mode, im.size) == (mode, size), name
    assert np.all(np.asarray(Image.open(out / "b_rgba.png"))[..., 3] == 128)


def test_scale_and_format(tmp_path, weights, cli):
    src = save(noise(16, 24), tmp_path / "small.png")
    code, stdout, _ = cli("upscale", src, "-o", tmp_path / "out", "--scale", "2", "--format", "webp", *weights)
    assert code == 0 and "(48x32, " in stdout
    with Image.open(tmp_path / "out" / "small.webp") as im:
        assert im.format == "WEBP" and im.size == (48, 32)


def test_progress_bar_on_a_terminal(tmp_path, weights, cli, monkeypatch):
    src = save(noise(16, 16), tmp_path / "small.png")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, stdout, _ = cli("upscale", src, "-o", tmp_path / "small_x4.png", *weights)
    assert code == 0 and "small.png -> " in stdout
    bar = terminal.getvalue()
    # one-step on one tile: VQ encode, denoiser, VQ decode
    assert "\r[1/1] small.png  [" + "#" * 8 + "." * 16 + "] 1/3 tiles" in bar
    assert "\r[1/1] small.png  [" + "#" * 24 + "] 3/3 tiles" in bar
    assert bar.endswith("\r")  # the bar is erased before the result line


# ---------------------------------------------------------------------------------------------
# batches with failures, collisions, the input never overwritten


def test_batch_with_a_corrupt_input_writes_the_others(tmp_path, weights, cli):
    folder = tmp_path / "in"
    save(noise(16, 16, seed=0), folder / "a.png")
    good = save(noise(16, 16, seed=1), folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(good[: len(good) // 2])
    save(noise(16, 16, seed=2), folder / "c.png")
    out = tmp_path / "out"
    code, stdout, stderr = cli("upscale", str(folder / "*.png"), "-o", out, *weights)  # glob expanded by us
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    assert f"{folder / 'b.png'}: truncated or corrupt image" in stderr
    assert "1 of 3 images failed" in stderr
    assert len(stdout.splitlines()) == 2 and partial_files(tmp_path) == []


def test_out_of_memory_on_one_image_is_reported_and_the_batch_goes_on(tmp_path, weights, cli, monkeypatch):
    big = save(noise(24, 24, seed=0), tmp_path / "in" / "big.png")
    save(noise(16, 16, seed=1), tmp_path / "in" / "small.png")
    real_upscale = OneStepSR.upscale

    def upscale_without_memory_for_big_images(self, image, **options):
        if image is not None and image.size == (24, 24):
            raise OutOfMemoryError("out of memory upscaling a 24x24 image on cpu even with the smallest tiles")
        return real_upscale(self, image, **options)

    monkeypatch.setattr(OneStepSR, "upscale", upscale_without_memory_for_big_images)
    out = tmp_path / "out"
    code, stdout, stderr = cli("upscale", tmp_path / "in", "-o", out, *weights)
    assert code == 1
    assert f"onestep-sr: error: {big}: out of memory upscaling a 24x24 image" in stderr
    assert [p.name for p in out.iterdir()] == ["small.png"] and "small.png -> " in stdout


def test_output_name_collision_stops_before_any_work(tmp_path, cli):
    save(noise(8, 8), tmp_path / "in" / "a.png")
    save(noise(8, 8), tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    # the denoiser does not exist either: the collision is found before the model is looked at
    code, _, stderr = cli("upscale", tmp_path / "in", "-o", out, "--denoiser", tmp_path / "missing.safetensors")
    assert code == 2
    assert "a.jpg" in stderr and "a.png" in stderr and "would both be written to" in stderr
    assert not out.exists()


def test_image_file_name_with_several_inputs_is_refused(tmp_path, weights, cli):
    a, b = save(noise(8, 8), tmp_path / "a.png"), save(noise(8, 8), tmp_path / "b.png")
    code, _, stderr = cli("upscale", a, b, "-o", tmp_path / "out.png", *weights)
    assert code == 2 and "names one image file but there are 2 inputs" in stderr
    assert not (tmp_path / "out.png").exists()


def test_never_overwrites_the_input(tmp_path, goldens, weights, cli):
    src = tmp_path / "in.png"
    src.write_bytes((goldens / "pipeline_lr.png").read_bytes())
    code, _, stderr = cli("upscale", src, "-o", src, *weights)
    assert code == 2 and "refusing to overwrite the input" in stderr
    # the same through a folder: in.png -> <folder>/in.png is the input itself
    code, _, stderr = cli("upscale", tmp_path, "-o", tmp_path, *weights)
    assert code == 2 and "refusing to overwrite the input" in stderr
    assert src.read_bytes() == (goldens / "pipeline_lr.png").read_bytes()
    assert list(tmp_path.iterdir()) == [src]


def test_interrupt_leaves_no_partial_file(tmp_path, weights, cli, monkeypatch):
    src = save(noise(16, 16), tmp_path / "in.png")
    out = tmp_path / "out.png"

    def interrupted_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    code, _, stderr = cli("upscale", src, "-o", out, *weights)
    assert code == 130 and "interrupted" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


# ---------------------------------------------------------------------------------------------
# the bad-input corpus: documented exit code and message, nothing written


def _png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(32, 32, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(32, 32)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(name: str, data: bytes):
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _empty_folder(d: Path) -> Path:
    (d / "empty").mkdir()
    (d / "empty" / "readme.txt").write_text("no images here")
    return d / "empty"


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope.png", "input not found: "),
    (_empty_folder, "no image files in folder"),
    (lambda d: str(d / "*.webp"), "no image files match"),
    (_write("text.png", b"hello, I am text"), "not an image (unrecognised image format)"),
    (_write("empty.png", b""), "not an image (the file is empty)"),
    (_write("half.png", _png_bytes()[: len(_png_bytes()) // 2]), "truncated or corrupt image"),
    (_write("half.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2]), "truncated or corrupt image"),
], ids=["missing", "empty-folder", "glob-nothing", "text-as-png", "empty-file", "truncated-png", "truncated-jpeg"])
def test_bad_inputs(tmp_path, weights, cli, no_model, make, message):
    src = make(tmp_path)
    out = tmp_path / "out.png"
    code, stdout, stderr = cli("upscale", src, "-o", out, *weights)
    assert code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("onestep-sr: error: ")
    assert message in stderr and str(Path(str(src)).name) in stderr
    assert not out.exists() and partial_files(tmp_path) == []


class _CodePayload:
    """Unpickling this runs ``_mark``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_mark, (self.marker,))


def _mark(path: str) -> None:
    Path(path).write_text("the payload ran")


def test_bad_checkpoints(tmp_path, goldens, cli):
    src, vq, out = goldens / "pipeline_lr.png", goldens / "vq.safetensors", tmp_path / "out"
    junk = tmp_path / "bad.safetensors"
    junk.write_bytes(b"junk")
    code, _, stderr = cli("upscale", src, "-o", out, "--denoiser", junk, "--autoencoder", vq)
    assert code == 2 and "bad.safetensors: not a readable safetensors file" in stderr

    marker, pickled = tmp_path / "payload_ran", tmp_path / "needs_code.pth"
    torch.save({"weight": torch.zeros(2), "extra": _CodePayload(marker)}, pickled)
    with zipfile.ZipFile(pickled) as archive:  # the pickle calls _mark: reading it means running code
        assert any(b"_mark" in archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
    code, _, stderr = cli("upscale", src, "-o", out, "--denoiser", pickled, "--autoencoder", vq)
    assert code == 2 and "needs_code.pth: refused to load" in stderr
    assert not marker.exists()

    code, _, stderr = cli("upscale", src, "-o", out, "--denoiser", tmp_path / "missing.safetensors")
    assert code == 2 and "checkpoint not found" in stderr and "missing.safetensors" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors", "needs_code.pth"]


def test_unknown_model_and_offline_without_weights(tmp_path, goldens, cli):
    src, out = goldens / "pipeline_lr.png", tmp_path / "out"
    code, _, stderr = cli("upscale", src, "-o", out, "--model", "no_such_model")
    assert code == 2 and "unknown model 'no_such_model'" in stderr and "sinsr_v1" in stderr

    models = tmp_path / "models"
    models.mkdir()
    code, _, stderr = cli("upscale", src, "-o", out, "--model", "sinsr_v1", "--offline", "--models-dir", models)
    entry = get_entry("sinsr_v1")
    assert code == 2 and len(stderr.splitlines()) == 1
    assert entry.url in stderr and str(models / entry.file) in stderr
    assert list(models.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--steps", "7"], "steps must be 1 (one-step) or 15"),
    (["--stochastic"], "needs steps=15"),
    (["--scale", "0"], "scale must be a number"),
])
def test_invalid_sampling_options_stop_before_any_image(tmp_path, goldens, weights, cli, option, message):
    out = tmp_path / "out"
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", goldens / "pipeline_lr.png",
                               "-o", out, *option, *weights)
    assert code == 2 and stdout == "" and message in stderr
    assert not out.exists()


@pytest.mark.parametrize("option, message", [
    (["--seed", str(2**64)], "--seed: seed must be a whole number from 0 to 18446744073709551615"),
    (["--seed", "-1"], "--seed: seed must be a whole number from 0 to 18446744073709551615 (2**64 - 1), got -1"),
    (["--vq-tile", "1"], "--vq-tile: vq_tile must be a whole number of input pixels, at least 16, got 1"),
    (["--tile", "32"], "--tile: tile must be a whole number of input pixels, at least 64"),
    (["--tile", "128", "--overlap", "128"], "--overlap: overlap must be a whole number of pixels from 0 to 127"),
    (["--scale", "nan"], "--scale: scale must be a number in (0, 64]"),
])
def test_option_rules_stop_before_the_model_loads(tmp_path, goldens, cli, option, message):
    """Issue 18 items 4 and 10: the rules that hold for every model are checked before a registry
    model would be looked for (here: not downloaded, offline), with the flag and the rule."""
    out = tmp_path / "o.png"
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", out, *option,
                               "--model", "sinsr_v1", "--offline", "--models-dir", tmp_path / "none")
    assert code == 2 and stdout == "" and message in stderr and len(stderr.splitlines()) == 1
    assert "SinSR_v1.pth" not in stderr and list(tmp_path.iterdir()) == []


def test_a_tile_is_refused_not_rounded_and_used_as_given(tmp_path, goldens, weights, cli):
    """A tile off the model's 64-pixel block was rounded down without a word; now it is refused with
    the rule, and a model without windows (the bundled one) uses the value as given."""
    out = tmp_path / "o.png"
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", out, "--tile", "100", *weights)
    assert code == 2 and stdout == "" and not out.exists()
    assert "--tile: tile must be a whole number of input pixels, at least 64 and a multiple of 64 for this " \
           "model, got 100; use 64 or 128" in stderr
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", out, "--tile", "100", "--vq-tile", "16")
    assert code == 0 and out.exists(), stderr


def test_argparse_choices(tmp_path, goldens, weights, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(goldens / "pipeline_lr.png"), "-o", str(tmp_path / "o.png"),
              "--color-fix", "bogus", *weights])
    assert exit_info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_alpha_cannot_go_to_jpeg(tmp_path, weights, cli):
    src = save(noise(16, 16, 4), tmp_path / "rgba.png")
    out = tmp_path / "rgba.jpg"
    code, stdout, stderr = cli("upscale", src, "-o", out, *weights)
    assert code == 2 and stdout == ""
    assert "JPEG cannot store the alpha channel" in stderr and "rgba.png" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgba.png"]


@pytest.mark.parametrize("options, message", [
    (["--model", "sinsr_v1", "--denoiser", "x.safetensors"], "use either --model NAME or --denoiser PATH"),
    (["--model", "sinsr_v1", "--schedule", "T4"], "--schedule is for --denoiser checkpoint files"),
    (["--format", "jpg"], "--format jpg contradicts the output file name"),
    pytest.param(["--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_usage_conflicts_stop_before_loading(tmp_path, goldens, cli, options, message):
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", tmp_path / "o.png", *options)
    assert code == 2 and stdout == "" and message in stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_device_is_an_argparse_error(tmp_path, goldens, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(goldens / "pipeline_lr.png"), "-o", str(tmp_path / "o.png"), "--device", "toaster"])
    assert exit_info.value.code == 2 and "invalid device 'toaster'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# fail before the expensive part: inputs and output places are checked before any weights


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: what is checked here must stop before any weights."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the files were checked")

    monkeypatch.setattr("onestep_sr.cli.upscale.load_model", refuse)


def _locked_folder(d: Path, monkeypatch) -> Path:
    """A folder nobody may create files in (root ignores permissions: os.access is told so too)."""
    locked = d / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked and mode & os.W_OK
                        else real_access(p, mode, **kw))
    return locked


@pytest.mark.parametrize("case", ["under-a-file", "unwritable-folder", "rgba-to-jpeg", "existing-folder",
                                  "over-max-pixels"])
def test_a_bad_output_place_or_input_fails_before_any_weights(tmp_path, weights, cli, no_model, monkeypatch, case):
    src = save(noise(16, 16, 4 if case == "rgba-to-jpeg" else 3), tmp_path / "in.png")
    extra = []
    if case == "under-a-file":
        blocker = tmp_path / "notes.txt"
        blocker.write_text("a file, not a folder")
        out, reason = blocker / "sub" / "out.png", f"{blocker} is a file, not a folder"
    elif case == "unwritable-folder":
        locked = _locked_folder(tmp_path, monkeypatch)
        out, reason = locked / "out.png", f"no permission to create files in {locked}"
    elif case == "rgba-to-jpeg":
        out, reason = tmp_path / "out.jpg", "JPEG cannot store the alpha channel of this RGBA image"
    elif case == "existing-folder":  # -o names a folder; the output file's name is taken by a folder
        (tmp_path / "results" / "in.png").mkdir(parents=True)
        out, reason = tmp_path / "results", "it is an existing folder"
    else:
        out, reason, extra = tmp_path / "out.png", "256 pixels, over the limit of 100 (--max-pixels)", \
            ["--max-pixels", "100"]
    before = sorted(tmp_path.rglob("*"))
    code, stdout, stderr = cli("upscale", src, "-o", out, *extra, *weights)
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1, stderr
    written = out / "in.png" if case == "existing-folder" else out
    assert stderr.startswith(f"onestep-sr: error: {src}: ") and reason in stderr
    if case != "over-max-pixels":
        assert f"cannot write {written}: " in stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, nothing left


def test_an_output_folder_under_a_file_stops_the_batch_before_any_weights(tmp_path, weights, cli, no_model):
    a, b = save(noise(8, 8), tmp_path / "a.png"), save(noise(8, 8, seed=1), tmp_path / "b.png")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    code, stdout, stderr = cli("upscale", a, b, "-o", blocker / "out", *weights)
    assert code == 2 and stdout == ""
    assert stderr == (f"onestep-sr: error: cannot write into the output folder {blocker / 'out'}: "
                      f"{blocker} is a file, not a folder\n")


def test_a_batch_whose_every_output_is_refused_loads_no_model(tmp_path, weights, cli, no_model):
    folder = tmp_path / "in"
    save(noise(8, 8, 4), folder / "a.png")
    save(noise(8, 8, 2), folder / "b.png")  # grey + alpha
    code, stdout, stderr = cli("upscale", folder, "-o", tmp_path / "out", "--format", "jpg", *weights)
    assert code == 1 and stdout == ""
    assert stderr.count("JPEG cannot store the alpha channel") == 2
    assert "2 of 2 images failed; the other 0 were written" in stderr
    assert not (tmp_path / "out").exists()


def test_a_batch_drops_the_refused_job_and_writes_the_others(tmp_path, weights, cli):
    folder = tmp_path / "in"
    save(noise(8, 8), folder / "a.png")
    save(noise(8, 8, seed=1), folder / "b.png")
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    code, stdout, stderr = cli("upscale", folder, "-o", out, *weights)
    assert code == 1
    assert f"onestep-sr: error: {folder / 'a.png'}: cannot write {out / 'a.png'}: it is an existing folder" in stderr
    assert "1 of 2 images failed; the other 1 were written" in stderr
    assert stdout.startswith(f"{folder / 'b.png'} -> {out / 'b.png'} ") and (out / "b.png").is_file()


def test_a_write_failing_late_names_the_output_and_the_reason(tmp_path, weights, cli, monkeypatch):
    src, out = save(noise(8, 8), tmp_path / "in.png"), tmp_path / "out.png"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("onestep_sr.imageio.os.replace", refuse)
    code, _, stderr = cli("upscale", src, "-o", out, *weights)
    assert code == 2 and f"{src}: cannot write {out} (Permission denied)" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


@pytest.mark.parametrize("value", ["-5", "0", "1.5", "many"])
def test_a_max_pixels_that_is_no_limit_is_refused_not_blamed_on_the_image(tmp_path, capsys, value):
    src = save(noise(9, 13), tmp_path / "in.png")
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--max-pixels", value])
    stdout, stderr = capsys.readouterr()
    assert exit_.value.code == 2 and stdout == "" and "--max-pixels" in stderr and repr(value) in stderr
    assert "a whole number, at least 1" in stderr and "over the limit" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_the_engine_refuses_a_pixel_limit_below_one_naming_it(tmp_path):
    from onestep_sr import OptionError
    from onestep_sr.imageio import read_image

    src = save(noise(9, 13), tmp_path / "in.png")
    for limit in (-5, 0, 2.5, True):
        with pytest.raises(OptionError, match=r"max_pixels must be a whole number, at least 1 .*got"):
            read_image(src, max_pixels=limit)
    assert read_image(src, max_pixels=117).size == (13, 9)


def test_max_pixels_default_is_the_web_apps():
    """One limit for both hosts that read files: onestep_sr.imagefile.DEFAULT_MAX_PIXELS."""
    import argparse

    from onestep_sr.app import add_arguments
    from onestep_sr.cli import build_parser
    from onestep_sr.imagefile import DEFAULT_MAX_PIXELS

    upscale_args = build_parser().parse_args(["upscale", "x.png", "-o", "y.png"])
    app_parser = argparse.ArgumentParser()
    add_arguments(app_parser)
    assert upscale_args.max_pixels == app_parser.parse_args([]).max_pixels == DEFAULT_MAX_PIXELS


# ---------------------------------------------------------------------------------------------
# the newcomer's path


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "onestep-sr upscale photo.jpg -o photo_x4.png" in out and "onestep-sr upscale --help" in out
    assert "ONESTEP_SR_MIRROR=" in out and "ONESTEP_SR_OFFLINE=1" in out
    for command in ["--help", "upscale --help", "models --help", "download --help", "convert --help"]:
        with pytest.raises(SystemExit):
            main(command.split())
        text = capsys.readouterr().out
        assert not re.search(r"``|:func:|:mod:|:class:|register\(", text), (command, text)


def test_auto_download_says_what_how_big_and_where_without_a_terminal(tmp_path, goldens, cli, server, monkeypatch):
    """``--model NAME`` of a registry model not on disk: one line on stderr before the transfer,
    also when stderr is a file or a pipe (here: captured), with the file, its size and the folder."""
    import json

    from onestep_sr import registry
    from onestep_sr.download import human_size

    for name in ("unet", "vq"):
        server.files[f"{name}.safetensors"] = (goldens / f"{name}.safetensors").read_bytes()
    size = len(server.files["unet.safetensors"])
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": {
        "den": {"file": "unet.safetensors", "url": server.url + "unet.safetensors", "kind": "denoiser",
                "licence": "test licence", "expected_payload_bytes": size, "autoencoder": "ae"},
        "ae": {"file": "vq.safetensors", "url": server.url + "vq.safetensors", "kind": "autoencoder",
               "licence": "test licence"}}}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", path)
    models, out = tmp_path / "models", tmp_path / "out.png"
    code, stdout, stderr = cli("upscale", goldens / "pipeline_lr.png", "-o", out, "--model", "den",
                               "--models-dir", models)
    assert code == 0 and out.is_file(), stderr
    lines = stderr.splitlines()
    assert lines[0] == (f"onestep-sr: downloading den: unet.safetensors, about {human_size(size)}, from "
                        f"{server.url}unet.safetensors into {models} (licence: test licence)")
    assert lines[1].startswith("onestep-sr: downloading ae: vq.safetensors, size unknown, from ")
