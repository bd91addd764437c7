"""One file, one model (onestep_sr.onefile): the header fields as a tensor for hosts that see only
tensors (spandrel), in every export and in the bundled default; ``onestep-sr convert --bundle``
packing a denoiser and its VQ autoencoder; our loaders reading both and ignoring the copy."""
from __future__ import annotations

from dataclasses import asdict
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from onestep_sr import load_model
from onestep_sr.checkpoint import CheckpointError, load_denoiser, normalise_state_dict, read_checkpoint
from onestep_sr.cli import main
from onestep_sr.model import BUNDLED_MODELS, BUNDLED_RESTORATION
from onestep_sr.model_info import ModelInfo, read_model_info, save_model
from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser
from onestep_sr.onefile import (HEADER_KEY, INCLUDED, header_from_state, header_of, is_bundle,
                                is_onestep_state_dict, model_from_state_dict)
from onestep_sr.schedule import SCHEDULE_T4, SCHEDULE_T15

BUNDLED = BUNDLED_MODELS["onestep_default"]


def image(h: int = 20, w: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, 3, h, w), dtype=np.float32))


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> dict[str, Path]:
    """A small official-layout denoiser under SinSR's and ResShift v3's registry file names, and a
    VQ-f4 autoencoder (torch.save'd state dicts, as the official releases)."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    denoiser = build_denoiser(DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=(1,),
                                             attention_resolutions=(), swin_embed_dim=32, num_head_channels=16))
    autoencoder = build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64))
    for name in ("SinSR_v1.pth", "resshift_realsrx4_s4_v3.pth"):
        torch.save(denoiser.state_dict(), folder / name)
    torch.save(autoencoder.state_dict(), folder / "autoencoder_vq_f4.pth")
    return {"sinsr": folder / "SinSR_v1.pth", "resshift": folder / "resshift_realsrx4_s4_v3.pth",
            "vq": folder / "autoencoder_vq_f4.pth"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """What training/ exports: x2 and x8 YONOS students and a 2-step progressive one (one optimiser
    step each: the files are what matters here)."""
    from training.cli import main as train_main

    root = tmp_path_factory.mktemp("exports")
    data = root / "hr"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(data / "a.png")
    common = ["--data", str(data), "--gt-size", "32", "--batch-size", "1", "--steps", "1", "--arch", "compact",
              "--degradation", "bicubic", "--no-progress"]
    assert train_main(["resshift", "--scale", "2", "--out", str(root / "x2"), *common]) == 0
    assert train_main(["yonos", "--teacher", str(root / "x2" / "model.safetensors"), "--out", str(root / "x4"),
                       *common]) == 0
    assert train_main(["yonos", "--teacher", str(root / "x4" / "model.safetensors"), "--out", str(root / "x8"),
                       *common]) == 0
    assert train_main(["resshift", "--schedule", "T4", "--out", str(root / "t4"), *common]) == 0
    assert train_main(["progressive", "--teacher", str(root / "t4" / "model.safetensors"), "--rounds", "1",
                       "--out", str(root / "pd"), *common]) == 0
    return {"x2": root / "x2" / "model.safetensors", "x8": root / "x8" / "model.safetensors",
            "pd": root / "pd" / "round-1" / "model.safetensors"}


@pytest.mark.parametrize("path, strength", [(BUNDLED, 0.0), (BUNDLED_RESTORATION["onestep_default"], 1.0)])
def test_both_bundled_files_carry_their_header_as_a_tensor(path, strength):
    """Each file of the bundled model alone is an x4 model: the clean end (strength 0) and the
    restoration end (strength 1) of its knob."""
    state = load_file(str(path))
    assert header_from_state(state) == header_of(header(path)) and is_onestep_state_dict(state)
    model = model_from_state_dict(state)  # the tensors alone, as spandrel hosts read a file
    assert model.scale == 4 and model.sampler == "one_step" and model.schedule == read_model_info(path).resshift_schedule()
    x = image()
    assert torch.equal(model.upscale(x), load_model(device="cpu").upscale(x, strength=strength))


@pytest.mark.parametrize("kind, scale, levels", [("x2", 2, None), ("x8", 8, None), ("pd", 4, [3, 1])])
def test_exports_of_training_are_one_file_models(exports, kind, scale, levels):
    path = exports[kind]
    state = load_file(str(path))
    assert is_onestep_state_dict(state) and header_from_state(state)["onestep_sr"] == header(path)["onestep_sr"]
    model = model_from_state_dict(state)
    assert (model.scale, model.levels) == (scale, levels)
    x = image(12, 16)
    assert torch.equal(model.upscale(x), load_model(path, device="cpu").upscale(x))
    assert HEADER_KEY not in read_checkpoint(path)[0]  # our loaders drop the copy (a strict load works)
    load_denoiser(path)


def test_save_model_writes_the_copy_and_normalise_drops_it(tmp_path):
    torch.manual_seed(0)
    net = build_denoiser(DenoiserConfig(image_size=8, in_channels=51, out_channels=48, model_channels=32,
                                        channel_mult=(1,), num_res_blocks=(1,), attention_resolutions=()))
    info = ModelInfo(schedule=asdict(SCHEDULE_T4), sampler="deterministic")
    path, _ = save_model(tmp_path / "m.safetensors", net, info)
    state = load_file(str(path))
    assert set(state) == set(net.state_dict()) | {HEADER_KEY} and state[HEADER_KEY].dtype == torch.uint8
    assert ModelInfo.from_json(header_from_state(state)["onestep_sr"]) == info
    assert set(normalise_state_dict(state)) == set(net.state_dict())
    assert model_from_state_dict(state).sampler == "deterministic"


def test_bundle_packs_a_denoiser_and_its_autoencoder_into_one_file(official, tmp_path, capsys):
    out = tmp_path / "sinsr_bundle.safetensors"
    assert main(["convert", "--bundle", str(official["sinsr"]), str(official["vq"]), str(out)]) == 0
    assert "one-file OneStep SR model sinsr_v1" in capsys.readouterr().out
    state, fields = load_file(str(out)), header(out)
    assert is_bundle(state) and is_onestep_state_dict(state) and header_from_state(state) == header_of(fields)
    assert {k.split(".")[0] for k in state if k != HEADER_KEY} == {"denoiser", "autoencoder"}
    info = ModelInfo.from_json(fields["onestep_sr"])
    assert info.autoencoder == INCLUDED and info.resshift_schedule() == SCHEDULE_T15 and info.sampler == "one_step"
    pair = load_model((official["sinsr"], official["vq"]), device="cpu")
    x = image(24, 40)
    expected = pair.upscale(x)
    assert torch.equal(load_model(out, device="cpu").upscale(x), expected)  # our loader, from the one file
    assert torch.equal(model_from_state_dict(state).upscale(x), expected)  # from its tensors alone
    # the registry's schedule of ResShift v3 (found by its file name), and --dtype
    out4 = tmp_path / "resshift_bundle.safetensors"
    assert main(["convert", "--bundle", str(official["resshift"]), str(official["vq"]), str(out4),
                 "--dtype", "fp16"]) == 0
    state4 = load_file(str(out4))
    assert state4["denoiser.out.2.weight"].dtype == torch.float16
    model = model_from_state_dict(state4)  # built in fp32, as spandrel's architectures are
    assert model.schedule == SCHEDULE_T4 and model.sampler == "stochastic" and model.dtype == torch.float32


def test_bundle_takes_registry_names_and_a_trained_vq_students_info(official, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for path in official.values():
        shutil.copy(path, models / path.name)
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(models))
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    out = tmp_path / "by_name.safetensors"
    assert main(["convert", "--bundle", "sinsr_v1", "vq_f4", str(out)]) == 0
    assert model_from_state_dict(load_file(str(out))).name == "sinsr_v1"
    student = tmp_path / "student.safetensors"  # a VQ-f4 student trained here: its own levels and sampler
    save_model(student, load_denoiser(official["sinsr"]), ModelInfo(autoencoder="vq_f4", levels=[14, 6],
                                                                    sampler="deterministic"))
    with pytest.raises(CheckpointError, match="--bundle"):  # alone it needs a second file
        model_from_state_dict(load_file(str(student)))
    assert main(["convert", "--bundle", str(student), "vq_f4", str(tmp_path / "student_bundle.safetensors")]) == 0
    model = model_from_state_dict(load_file(str(tmp_path / "student_bundle.safetensors")))
    assert model.levels == [14, 6] and model.sampler == "deterministic"


def test_bundle_refusals(official, tmp_path, capsys):
    out = str(tmp_path / "b.safetensors")
    assert main(["convert", "--bundle", str(BUNDLED), str(official["vq"]), out]) == 2
    assert "pixel-space model: it is one file already" in capsys.readouterr().err
    assert main(["convert", str(official["sinsr"]), out, "--bundle", str(official["sinsr"]), str(official["vq"]),
                 out]) == 2
    assert "give no other paths" in capsys.readouterr().err
    assert main(["convert", "--bundle", str(tmp_path / "missing.pth"), str(official["vq"]), out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", "--bundle", str(official["vq"]), str(official["sinsr"]), out]) != 0  # swapped
    assert main(["convert", str(official["sinsr"])]) == 2
    assert "INPUT and OUTPUT" in capsys.readouterr().err
    assert not Path(out).exists()


def test_plain_convert_keeps_a_trained_models_info_and_adds_the_copy(exports, official, tmp_path):
    out = tmp_path / "x2_converted.safetensors"
    assert main(["convert", str(exports["x2"]), str(out)]) == 0
    assert read_model_info(out) == read_model_info(exports["x2"]) and load_model(out, device="cpu").scale == 2
    assert is_onestep_state_dict(load_file(str(out)))
    official_out = tmp_path / "official.safetensors"  # no model info: written as before, no copy
    assert main(["convert", str(official["sinsr"]), str(official_out)]) == 0
    assert HEADER_KEY not in load_file(str(official_out)) and "onestep_sr" not in header(official_out)
