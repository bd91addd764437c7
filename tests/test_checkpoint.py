"""Checkpoint IO: every layout the official trainers and converters produce, strict errors, and
refusal of pickles that would run code."""
from __future__ import annotations

import os
import pickle
import shlex
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onestep_sr import CheckpointError, load_autoencoder, load_denoiser


@pytest.fixture(scope="module")
def unet_state(goldens) -> dict[str, torch.Tensor]:
    return load_file(str(goldens / "unet.safetensors"))


@pytest.fixture(scope="module")
def vq_state(goldens) -> dict[str, torch.Tensor]:
    return load_file(str(goldens / "vq.safetensors"))


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    ours = model.state_dict()
    return all(torch.equal(ours[k], v) for k, v in state.items())


LAYOUTS = ["bare", "wrapped", "module.", "_orig_mod.", "module._orig_mod.", "wrapped+module.", "no_buffers"]


@pytest.mark.parametrize("layout, suffix", [(layout, suffix) for suffix in (".pth", ".ckpt", ".safetensors")
                                            for layout in LAYOUTS
                                            if not (suffix == ".safetensors" and "wrapped" in layout)])
def test_denoiser_layouts_load_bit_exactly(tmp_path, unet_state, layout, suffix):
    state = dict(unet_state)
    if layout == "no_buffers":
        state = {k: v for k, v in state.items() if not k.endswith(("attn_mask", "relative_position_index"))}
    prefix = layout.replace("wrapped", "").replace("+", "")
    if prefix not in ("", "bare", "no_buffers"):
        state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / f"unet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"iters_start": 7, "state_dict": state} if "wrapped" in layout else state, path)
    model = load_denoiser(path)
    assert same_weights(model, unet_state)


def test_official_ddp_trainer_file_loads(goldens, vq_state):
    """vq_wrapped_module.pth: {'iters_start', 'state_dict': {'module.' + key}} as the reference saved it."""
    assert same_weights(load_autoencoder(goldens / "vq_wrapped_module.pth"), vq_state)


def test_architecture_comes_from_metadata_or_shapes(tmp_path, unet_state):
    path = tmp_path / "plain.safetensors"
    save_file(unet_state, str(path))  # no config metadata: inferred from shapes
    assert load_denoiser(path).config.model_channels == 32


def test_fp16_file_loads_into_fp32_model(tmp_path, vq_state):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in vq_state.items()}, str(path))
    model = load_autoencoder(path)
    assert model.dtype == torch.float32
    assert torch.equal(model.state_dict()["quant_conv.weight"], vq_state["quant_conv.weight"].half().float())


def test_missing_and_extra_keys_are_listed_with_the_architecture(tmp_path, unet_state):
    from onestep_sr.models.config_inference import infer_denoiser_config

    config = infer_denoiser_config(unet_state)
    state = dict(unet_state)
    del state["out.2.bias"]
    state["surprise.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_denoiser(state, config=config)
    text = str(err.value)
    assert "out.2.bias" in text and "surprise.weight" in text and "model_channels=32" in text


def test_misshaped_key_is_named_with_both_shapes(unet_state):
    from onestep_sr.models.config_inference import infer_denoiser_config

    state = dict(unet_state)
    state["out.2.weight"] = torch.zeros(3, 32, 1, 1)
    with pytest.raises(CheckpointError, match=r"out\.2\.weight \[3, 32, 1, 1\] \(expected \[3, 32, 3, 3\]\)"):
        load_denoiser(state, config=infer_denoiser_config(unet_state))


def test_full_size_architecture_error_lists_first_keys(unet_state):
    from onestep_sr.models import OFFICIAL_DENOISER

    with pytest.raises(CheckpointError, match=r"wrong shape: .*\(\+\d+ more\)"):
        load_denoiser(unet_state, config=OFFICIAL_DENOISER)


def test_wrong_model_kind_is_explained(goldens):
    with pytest.raises(CheckpointError, match="not a ResShift/SinSR Swin-UNet denoiser state dict"):
        load_denoiser(goldens / "vq.safetensors")
    with pytest.raises(CheckpointError, match="not a VQ-f4 autoencoder state dict"):
        load_autoencoder(goldens / "unet.safetensors")


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_needing_code_execution_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Exploit(marker)}}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refused to load.*needs to run code.*getattr, pathlib\.Path"):
        load_denoiser(path)
    assert not marker.exists()


class _Shell:
    """A pickle payload as found in the wild: ``os.system`` with a command."""

    def __init__(self, marker: Path):
        self.command = f"echo ran > {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2", "pickle default protocol", "pickle protocol 0"])
def test_an_os_system_pickle_gets_our_sentence_never_torchs_advice(tmp_path, writer):
    """torch 2.13 words the refusal of os.system ("unsupported GLOBAL posix.system whose module posix
    is blocked", "Unsupported operand 149" for protocol 4) differently from other globals and ends
    with "Re-running torch.load with weights_only set to False will likely succeed"."""
    marker, path = tmp_path / "code_ran", tmp_path / "evil.pth"
    payload = {"state_dict": {"input_blocks.0.0.weight": torch.zeros(2), "x": _Shell(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        protocol = {"pickle protocol 2": 2, "pickle default protocol": None, "pickle protocol 0": 0}[writer]
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=protocol)
    for load in (load_denoiser, load_autoencoder):
        with pytest.raises(CheckpointError) as err:
            load(path)
        text = str(err.value)
        assert text.startswith(f"{path}: refused to load. The file is a pickle that needs to run code"), text
        assert "system" in text and "convert it to .safetensors" in text
        shown = "".join(traceback.format_exception(err.value))  # what a host's log prints, causes included
        assert "Re-running" not in shown and "will likely succeed" not in shown and "weights_only` set to" not in shown
    assert not marker.exists()


def test_an_os_system_osediff_pickle_is_refused_with_the_same_sentence(tmp_path):
    from onestep_sr.sd.lora import LoraFormatError, read_osediff

    marker, path = tmp_path / "code_ran", tmp_path / "osediff.pkl"
    torch.save({"rank_unet": 4, "x": _Shell(marker)}, path)
    with pytest.raises(LoraFormatError, match=r"osediff\.pkl: refused to load\. The file is a pickle that needs to run code") as err:
        read_osediff(path)
    assert "Re-running" not in "".join(traceback.format_exception(err.value))
    assert not marker.exists()


def test_weights_with_nan_or_inf_are_refused_at_load_naming_the_file_and_a_tensor(tmp_path, unet_state):
    state = dict(unet_state)
    state["out.2.weight"] = state["out.2.weight"].clone()
    state["out.2.weight"][0, 0, 1, 1] = float("nan")
    path = tmp_path / "diverged.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        load_denoiser(path)
    text = str(err.value)
    assert text.startswith(f"{path}: the weights have NaN/Inf values") and "out.2.weight has 1 NaN" in text, text
    from onestep_sr.checkpoint import read_checkpoint
    with pytest.raises(CheckpointError, match=r"diverged\.safetensors: the weights have NaN/Inf values"):
        read_checkpoint(path)
    state["out.2.weight"] = unet_state["out.2.weight"]
    state["out.2.bias"] = torch.full_like(unet_state["out.2.bias"], float("inf"))
    with pytest.raises(CheckpointError, match=r"state dict: the weights have NaN/Inf values: out\.2\.bias has 0 NaN and 3 Inf"):
        load_denoiser(state)


def test_a_folder_given_as_a_checkpoint_says_it_is_a_folder(tmp_path):
    folder = tmp_path / "models.pth"
    folder.mkdir()
    (folder / "inside.safetensors").write_bytes(b"")
    for load in (load_denoiser, load_autoencoder):
        with pytest.raises(CheckpointError) as err:
            load(folder)
        assert str(err.value).startswith(f"{folder} is a folder, not a checkpoint file"), err.value
        assert "inside.safetensors" in str(err.value)


@pytest.mark.parametrize("name, content, says", [
    ("empty.pth", b"", "the file is empty (0 bytes)"),
    ("notes.pth", b"nothing to see here\n", "it is a text file of 20 bytes starting 'nothing to see here'"),
    ("empty.safetensors", b"", "the file is empty (0 bytes)"),
    ("pointer.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n", "Git LFS pointer"),
])
def test_an_empty_or_text_file_says_what_it_is(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_denoiser(path)
    text = str(err.value)
    assert text.startswith(f"{path}: not a readable ") and says in text, text
    assert "()" not in text and "Unsupported operand" not in text


def test_a_wrong_shape_without_metadata_names_the_key_not_a_groupnorm_rule(tmp_path, unet_state, vq_state):
    for load, state, key in ((load_denoiser, unet_state, "input_blocks.0.0.weight"),
                             (load_denoiser, unet_state, "input_blocks.4.0.out_layers.3.weight"),
                             (load_autoencoder, vq_state, "encoder.conv_in.weight")):
        damaged = dict(state)
        damaged[key] = state[key][:-1].clone()
        path = tmp_path / "damaged.safetensors"
        save_file(damaged, path)
        with pytest.raises(CheckpointError) as err:
            load(path)
        text = str(err.value)
        assert text.startswith(f"{path}: key '{key}' has the shape {list(damaged[key].shape)}"), text
        assert "GroupNorm" not in text and "num_groups" not in text


def test_a_key_mismatch_names_the_key_before_the_architecture(tmp_path, unet_state):
    state = dict(unet_state)
    state["out.2.weight"] = torch.zeros(3, 32, 1, 1)
    path = tmp_path / "odd.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        load_denoiser(path)
    text = str(err.value)
    assert text.startswith(f"{path}: 1 key(s) with the wrong shape: out.2.weight [3, 32, 1, 1] (expected [3, 32, 3, 3])")
    assert "inferred from the tensor shapes" in text and text.index("DenoiserConfig(") > text.index("out.2.weight")


@pytest.mark.parametrize("name, content, message", [
    ("missing.pth", None, "checkpoint not found"),
    ("garbage.pth", b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken", "not a readable safetensors file"),
    ("weights.onnx", b"whatever", "unsupported checkpoint type"),
])
def test_unreadable_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_denoiser(path)
    assert name in str(err.value)


def test_non_tensor_entries_are_reported(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"input_blocks.0.0.weight": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match="'input_blocks.0.0.weight' is a list"):
        load_denoiser(path)


def test_written_model_files_get_the_usual_permissions(tmp_path):
    """safetensors writes its temporary file private (0600); the finished file must be readable as
    any other file the user writes (0666 minus the umask), and a rewrite keeps the old file's mode."""
    import os

    from onestep_sr.checkpoint import atomic_write_text, write_safetensors_atomic

    umask = os.umask(0o022)
    try:
        path, text = tmp_path / "model.safetensors", tmp_path / "model.json"
        write_safetensors_atomic({"w": torch.zeros(2)}, {"format": "pt"}, path)
        atomic_write_text(text, "{}")
        assert path.stat().st_mode & 0o777 == 0o644 and text.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_safetensors_atomic({"w": torch.ones(2)}, {"format": "pt"}, path)
        assert path.stat().st_mode & 0o777 == 0o640 and torch.equal(load_file(path)["w"], torch.ones(2))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    finally:
        os.umask(umask)


def test_pickles_load_when_a_host_has_replaced_torch_load(tmp_path, unet_state, monkeypatch):
    """A1111 replaces torch.load with a checker that returns None for files written by current
    torch; the engine reads pickles through torch's own weights-only loader, so they still load
    (and a pickle that needs code is still refused)."""
    path = tmp_path / "denoiser.pth"
    torch.save(unet_state, path)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)
    model = load_denoiser(path)
    assert all(torch.equal(v, unet_state[k]) for k, v in model.state_dict().items() if k in unet_state)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "bad.pth"
    with open(bad, "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_denoiser(bad)
