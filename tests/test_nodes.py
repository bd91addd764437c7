"""The ComfyUI node pack against a small fake of ComfyUI (tests/comfy_fake): registration as
ComfyUI does it, the loader's folders, node outputs equal to the engine's, progress,
interruption, offloading and errors. tests/test_comfyui_real.py runs the pack in a real ComfyUI."""
from __future__ import annotations

import ast
import asyncio
import json
import shutil
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import comfy_pack
from comfy_pack import ROOT, ValidationError, refused, run_node
from onestep_sr import load_model
from onestep_sr.colorfix import color_fix_towards
from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser
from helpers import spy_strengths

DENOISER_FILE = "tiny_sinsr.safetensors"
ALL_NODES = {"OneStepSR_LoadModel", "OneStepSR_Upscale", "OneStepSR_Encode", "OneStepSR_ResShiftSampler",
             "OneStepSR_Decode", "OneStepSR_ColorFix", "OneStepSR_SDUpscale", "OneStepSR_AsUpscaleModel"}
USER_FILE_WIDGETS = {"model_name", "vae_lora"}  # file names that are the user's, not the schema's


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """A small but real denoiser (latent multiple 8) and VQ-f4 pair in the official layouts: the
    nodes' maths is the engine's (tested against the goldens); here speed matters."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    denoiser = build_denoiser(DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=(1,),
                                             attention_resolutions=(), swin_embed_dim=32, num_head_channels=16))
    autoencoder = build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64))
    save_file(denoiser.state_dict(), folder / DENOISER_FILE)
    torch.save(autoencoder.state_dict(), folder / "autoencoder_vq_f4.pth")
    return folder / DENOISER_FILE, folder / "autoencoder_vq_f4.pth"


@pytest.fixture()
def comfy(tmp_path, tiny_files, monkeypatch):
    """The pack loaded by the fake ComfyUI, with a small official-layout model in models/onestep_sr."""
    folder = tmp_path / "models" / "onestep_sr"
    folder.mkdir(parents=True)
    for path in tiny_files:
        shutil.copy(path, folder / path.name)
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    module, nodes = comfy_pack.load_pack(tmp_path)
    import comfy.model_management as mm
    import comfy.utils
    mm.current_loaded_models.clear(), mm.load_calls.clear()
    ticks = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: ticks.append((value, total)))
    yield type("Comfy", (), dict(module=module, nodes=nodes, mm=mm, ticks=ticks, folder=folder, base=tmp_path))
    mm.interrupt_current_processing(False)
    comfy_pack.unload_pack()


@pytest.fixture()
def engine(tiny_files):
    return load_model(tiny_files, device="cpu")


def _images(batch: int, h: int, w: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE: B x H x W x C float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((batch, h, w, channels), dtype=np.float32))


def _load(comfy, name: str = DENOISER_FILE, **options):
    (model,) = run_node(comfy.nodes["OneStepSR_LoadModel"], model_name=name, **options)
    return model


# --- registration -------------------------------------------------------------------------------


def test_root_init_is_a_v3_entry_without_node_class_mappings(comfy):
    assert callable(comfy.module.comfy_entrypoint)
    assert not hasattr(comfy.module, "NODE_CLASS_MAPPINGS")  # would make ComfyUI ignore comfy_entrypoint
    for path in [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]:
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        assert "NODE_CLASS_MAPPINGS" not in names, path
    from comfy_api.latest import ComfyExtension, io
    assert all(issubclass(node, io.ComfyNode) for node in comfy.nodes.values())
    assert isinstance(asyncio.run(comfy.module.comfy_entrypoint()), ComfyExtension)


def test_node_ids_are_prefixed_stable_and_complete(comfy):
    assert set(comfy.nodes) == ALL_NODES
    names = {n.GET_SCHEMA().display_name for n in comfy.nodes.values()}
    assert {"Load OneStep SR Model", "OneStep Upscale", "OneStep SR ResShift Sampler", "OneStep Color Fix",
            "OneStep SD Upscale"} <= names
    model_sockets = {n.GET_SCHEMA().node_id: i.io_type for n in comfy.nodes.values() for i in n.GET_SCHEMA().inputs
                     if i.id == "model"}
    assert set(model_sockets.values()) == {"ONESTEP_SR_MODEL", "MODEL"}
    assert [k for k, v in model_sockets.items() if v == "MODEL"] == ["OneStepSR_SDUpscale"]  # the user's SD MODEL


def test_every_node_title_and_input_follows_one_convention(comfy):
    """Every title carries the pack's prefix, every input has a tooltip, one spelling of color."""
    for node in comfy.nodes.values():
        schema = node.GET_SCHEMA()
        assert schema.display_name.startswith(("OneStep ", "Load OneStep")), schema.display_name
        missing = [i.id for i in schema.inputs if not getattr(i, "tooltip", None)]
        assert not missing, f"{schema.node_id}: inputs without a tooltip: {missing}"
        assert "colour" not in schema.display_name.lower()
        assert not any("colour" in i.id for i in schema.inputs)


def test_pinned_api_version_with_fallback_to_latest(tmp_path):
    try:
        comfy_pack.load_pack(tmp_path)
        assert sys.modules["onestep_sr_pack.nodes.api"].io is sys.modules["comfy_api.v0_0_2"].io
        _, nodes = comfy_pack.load_pack(tmp_path, missing=("comfy_api.v0_0_2",))  # a ComfyUI without it
        assert sys.modules["onestep_sr_pack.nodes.api"].ComfyExtension is sys.modules["comfy_api.latest"].ComfyExtension
        assert set(nodes) == ALL_NODES
    finally:
        comfy_pack.unload_pack()


def test_models_folder_is_registered_with_checkpoint_extensions(comfy):
    import folder_paths
    paths, extensions = folder_paths.folder_names_and_paths["onestep_sr"]
    assert paths == [str(comfy.folder)] and ".safetensors" in extensions and ".pth" in extensions


def test_an_extra_model_paths_entry_is_kept_and_listed(tmp_path, tiny_files):
    """extra_model_paths.yaml is applied before custom nodes load and creates the folder name with
    an empty extension set (= every file): the pack keeps that path and adds its extensions."""
    extra = tmp_path / "elsewhere"
    (extra / "sub").mkdir(parents=True)
    shutil.copy(tiny_files[0], extra / "sub" / "mine.safetensors")
    (extra / "notes.txt").write_text("not a model")
    try:
        _, nodes = comfy_pack.load_pack(tmp_path, extra_model_paths={"onestep_sr": [str(extra)]})
        import folder_paths
        paths, extensions = folder_paths.folder_names_and_paths["onestep_sr"]
        assert paths == [str(extra), str(tmp_path / "models" / "onestep_sr")] and ".pth" in extensions
        options = _model_options(nodes)
        assert "sub/mine.safetensors" in options and "notes.txt" not in options
    finally:
        comfy_pack.unload_pack()


def _model_options(nodes) -> list[str]:
    (spec,) = [i for i in nodes["OneStepSR_LoadModel"].GET_SCHEMA().inputs if i.id == "model_name"]
    return spec.options


def test_model_choices_list_registry_models_then_local_files(comfy):
    (comfy.folder / "SinSR_v2.pth").write_bytes(b"")  # a registry file placed by hand is listed by name
    options = _model_options(comfy.nodes)
    registry = [o for o in options if o.endswith(" (auto-download)")]
    assert registry[:2] == ["sinsr_v1 (auto-download)", "sinsr_v2 (auto-download)"]
    assert "resshift_v3 (auto-download)" in options
    assert DENOISER_FILE in options and "SinSR_v2.pth" in options
    assert "autoencoder_vq_f4.pth" not in options  # an autoencoder alone is not a model


# --- loading ------------------------------------------------------------------------------------


def test_loader_loads_a_local_file_with_the_registry_autoencoder(comfy, engine):
    model = _load(comfy)
    assert asdict(model.sr.schedule) == asdict(engine.schedule) and model.sr.sampler == "one_step"
    assert model.sr.dtype == torch.float32  # auto on a CPU
    for mine, reference in zip(model.sr.denoiser.state_dict().values(), engine.denoiser.state_dict().values()):
        assert torch.equal(mine, reference)
    assert model.patcher.model.denoiser is model.sr.denoiser  # ComfyUI moves the engine's own networks


def test_a_registry_file_placed_by_hand_keeps_its_schedule(comfy, tiny_files):
    torch.save(load_file(tiny_files[0]), comfy.folder / _registry_file("resshift_v3"))
    model = _load(comfy, _registry_file("resshift_v3"))
    assert model.sr.schedule.steps == 4 and model.sr.sampler == "stochastic" and model.sr.name == "resshift_v3"


def _registry_file(name: str) -> str:
    from onestep_sr.registry import get_entry
    return get_entry(name).file


def test_loader_errors_name_the_missing_file(comfy):
    (comfy.folder / "autoencoder_vq_f4.pth").unlink()
    with pytest.raises(Exception, match=rf"{DENOISER_FILE} also needs its autoencoder vq_f4: "
                                        r"vq_f4 \(autoencoder_vq_f4.pth\) is not in .*onestep_sr.*offline"):
        _load(comfy)
    with pytest.raises(Exception) as err:  # offline: both files named at once, not one per run
        _load(comfy, "sinsr_v1 (auto-download)")
    assert comfy_pack.shown_type(err.value) == "onestep_sr.WeightsUnavailableError"
    for file in ("SinSR_v1.pth", "autoencoder_vq_f4.pth"):
        assert f"/{file} and save it as {comfy.folder / file}" in str(err.value)
    with pytest.raises(ValidationError, match="value_not_in_list"):
        _load(comfy, "gone.safetensors")
    loader = sys.modules["onestep_sr_pack.nodes.loader"]
    with pytest.raises(FileNotFoundError, match="'gone.safetensors' is not in any onestep_sr model folder") as err:
        loader.resolve_weights("gone.safetensors")  # listed, then deleted before the run
    assert comfy_pack.shown_type(err.value) == "onestep_sr.ModelNotFoundError"


def test_an_engine_error_type_reads_onestep_sr_name_in_comfyui(comfy):
    """ComfyUI shows ``exception_type`` as module + qualname (execution.full_type_name); the pack is
    imported as a package named after its folder, so without care this reads
    ``<folder>.onestep_sr.checkpoint.CheckpointError``."""
    import pickle

    (comfy.folder / "broken.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(Exception) as err:
        _load(comfy, "broken.safetensors")
    cls = type(err.value)
    assert f"{cls.__module__}.{cls.__qualname__}" == "onestep_sr.CheckpointError"
    assert "broken.safetensors: not a readable safetensors file" in str(err.value)
    assert cls.__qualname__ == "CheckpointError" and cls is not __import__("onestep_sr").CheckpointError
    assert type(pickle.loads(pickle.dumps(err.value))) is cls  # the pack's own class, not a namesake


def test_loader_dtype_and_device_choices(comfy):
    model = _load(comfy, dtype="bf16", device="cpu")
    assert model.sr.dtype == torch.bfloat16 and model.patcher.load_device == torch.device("cpu")
    comfy.mm.FP16_OK = True
    try:
        assert _load(comfy, dtype="auto", device="cpu").sr.dtype == torch.float32  # never fp16 on a CPU
    finally:
        comfy.mm.FP16_OK = False


# --- OneStep Upscale ------------------------------------------------------------------------------


def test_upscale_node_equals_the_engine(comfy, engine):
    model = _load(comfy)
    images = _images(2, 30, 70)
    options = dict(steps=1, seed=99, tile=64, overlap=16, color_fix="wavelet", scale=4.0)
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, **options)
    expected = engine.upscale(images.permute(0, 3, 1, 2), **options).permute(0, 2, 3, 1)
    assert out.shape == (2, 120, 280, 3) and out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_upscale_node_keeps_alpha_and_resizes_to_the_scale(comfy, engine):
    model = _load(comfy)
    images = _images(1, 20, 24, channels=4, seed=1)
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, scale=2.0, color_fix="none")
    expected = engine.upscale(images.permute(0, 3, 1, 2), scale=2.0, seed=12345).permute(0, 2, 3, 1)
    assert out.shape == (1, 40, 48, 4) and torch.equal(out, expected)


def test_multi_step_upscale_is_deterministic_resshift(comfy, engine):
    model = _load(comfy)
    images = _images(1, 16, 16, seed=2)
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, steps=15, color_fix="none")
    expected = engine.upscale(images.permute(0, 3, 1, 2), steps=15, stochastic=False).permute(0, 2, 3, 1)
    assert torch.equal(out, expected)
    with refused(r"steps must be 1 \(one-step\) or 15"):
        run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, steps=7)
    with pytest.raises(ValidationError, match="value_smaller_than_min"):
        run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, tile=32)


def test_progress_bar_advances_per_tile_and_cancel_stops_within_one_tile(comfy, engine, monkeypatch):
    model = _load(comfy)
    images = _images(1, 30, 70)
    options = dict(model=model, image=images, tile=64, overlap=16)
    run_node(comfy.nodes["OneStepSR_Upscale"], **options)
    total = comfy.ticks[-1][1]
    assert [v for v, _ in comfy.ticks] == list(range(1, total + 1)) and total >= 2 + 2  # VQ tiles + 2 denoiser tiles

    calls = []
    forward = model.sr.denoiser.forward

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            comfy.mm.interrupt_current_processing()  # the user presses Cancel during the first tile
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.sr.denoiser, "forward", counting)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run_node(comfy.nodes["OneStepSR_Upscale"], **options)
    assert len(calls) == 1  # stopped right after the tile it was in


def test_a_cancel_before_the_node_starts_runs_nothing(comfy):
    model = _load(comfy)
    comfy.mm.interrupt_current_processing()
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=_images(1, 8, 8))
    assert comfy.ticks == []


def test_the_model_is_loaded_through_comfyui_and_offloaded_when_it_frees_memory(comfy):
    model = _load(comfy)
    assert comfy.mm.load_calls == []  # loading the file moves nothing to the device yet
    run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=_images(1, 8, 8))
    (models, kwargs), = comfy.mm.load_calls
    assert models == [model.patcher] and kwargs["force_full_load"] is True
    assert comfy.mm.current_loaded_models == [model.patcher] and model.patcher.loaded_size() > 0
    comfy.mm.free_memory(1e30, comfy.mm.get_torch_device())  # another model needs the memory
    assert comfy.mm.current_loaded_models == [] and model.patcher.loaded_size() == 0
    assert model.patcher.current_loaded_device() == model.patcher.offload_device
    run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=_images(1, 8, 8))
    assert len(comfy.mm.load_calls) == 2 and comfy.mm.current_loaded_models == [model.patcher]


def test_out_of_memory_halves_tiles_then_fails_readably(comfy, engine, monkeypatch, caplog):
    model = _load(comfy)
    images = _images(1, 30, 70)
    forward = model.sr.denoiser.forward

    def small_tiles_only(x, *args, **kwargs):
        if x.shape[-1] > 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model.sr.denoiser, "forward", small_tiles_only)
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, tile=128)
    halved = dict(tile=64, overlap=16, vq_tile=64, color_fix="wavelet")  # every tile halved once
    reference = engine.upscale(images.permute(0, 3, 1, 2), **halved).permute(0, 2, 3, 1)
    assert torch.equal(out, reference) and "retrying with 64 / 64" in caplog.text

    def always(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")

    monkeypatch.setattr(model.sr.autoencoder, "encode", always)
    with pytest.raises(Exception, match="out of memory upscaling a 70x30 image .* even with the smallest tiles"):
        run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images)


def test_api_values_the_widgets_would_not_give_are_refused_with_the_rule(comfy):
    """Issue 18 item 4: ComfyUI's API checks min/max but not the widget's step, so a tile of 100 reached
    the engine and was rounded down without a word; now the node refuses it with the rule, and an
    accepted value is used as given."""
    model = _load(comfy)
    images = _images(1, 12, 20)
    upscale, sampler = comfy.nodes["OneStepSR_Upscale"], comfy.nodes["OneStepSR_ResShiftSampler"]
    rule = "tile must be a whole number of input pixels, at least 64 and a multiple of 8 for this model, got 100; " \
           "use 96 or 104"
    (latent,) = run_node(comfy.nodes["OneStepSR_Encode"], model=model, image=images)
    loads = len(comfy.mm.load_calls)
    with refused(rule):
        run_node(upscale, model=model, image=images, tile=100)
    with refused(rule):
        run_node(sampler, model=model, latent=latent, steps=1, tile=100)
    with refused(r"overlap must be .* \(smaller than the tile 64\), got 64"):
        run_node(upscale, model=model, image=images, tile=64, overlap=64)
    assert len(comfy.mm.load_calls) == loads  # refused before any weights moved
    out, _ = run_node(upscale, model=model, image=images, tile=104, overlap=8, seed=2**64 - 1, color_fix="none")
    expected = model.sr.upscale(images.permute(0, 3, 1, 2), tile=104, overlap=8, seed=2**64 - 1)
    assert torch.equal(out, expected.permute(0, 2, 3, 1))


# --- Encode -> ResShift Sampler -> Decode ---------------------------------------------------------


def test_latent_nodes_compose_to_the_upscale_node(comfy):
    model = _load(comfy)
    images = _images(2, 30, 70, channels=4, seed=3)  # alpha is dropped on the latent path
    tiles = dict(seed=5, tile=64, overlap=16)
    (latent,) = run_node(comfy.nodes["OneStepSR_Encode"], model=model, image=images)
    assert latent["samples"].shape == (2, 3, 32, 72) and latent["onestep_size"] == (30, 70)  # padded to x8
    (sampled,) = run_node(comfy.nodes["OneStepSR_ResShiftSampler"], model=model, latent=latent,
                          sampler="deterministic", steps=1, **tiles)
    (decoded,) = run_node(comfy.nodes["OneStepSR_Decode"], model=model, latent=sampled)
    direct, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images[..., :3], color_fix="none",
                         **tiles)
    assert decoded.shape == (2, 120, 280, 3) and torch.equal(decoded, direct)


def test_sampler_choices_and_latent_errors(comfy):
    model = _load(comfy)
    (latent,) = run_node(comfy.nodes["OneStepSR_Encode"], model=model, image=_images(1, 8, 8))
    sampler = comfy.nodes["OneStepSR_ResShiftSampler"]
    with refused("stochastic sampler runs the model's full schedule: set steps to 15"):
        run_node(sampler, model=model, latent=latent, sampler="stochastic", steps=1)
    with refused("not made by OneStep SR Encode"):
        run_node(sampler, model=model, latent={"samples": torch.zeros(1, 4, 8, 8)})
    with refused("Stable Diffusion"):
        run_node(sampler, model=model, latent={**latent, "samples": torch.zeros(1, 4, 64, 64)})
    (a,) = run_node(sampler, model=model, latent=latent, sampler="stochastic", steps=15, seed=1)
    (b,) = run_node(sampler, model=model, latent=latent, sampler="stochastic", steps=15, seed=2)
    assert a["samples"].shape == latent["samples"].shape and not torch.equal(a["samples"], b["samples"])


# --- OneStep Colour Fix ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_colour_fix_node_equals_the_engine_with_any_reference_size(comfy, method):
    images, reference = _images(2, 64, 48, seed=4), _images(1, 16, 12, seed=5)
    (out,) = run_node(comfy.nodes["OneStepSR_ColorFix"], image=images, reference=reference, method=method)
    expected = color_fix_towards(images.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2), method)
    assert torch.equal(out, expected.permute(0, 2, 3, 1))
    rgba = torch.cat([images, _images(2, 64, 48, channels=1, seed=6)], dim=-1)
    (out4,) = run_node(comfy.nodes["OneStepSR_ColorFix"], image=rgba, reference=reference, method=method)
    assert torch.equal(out4[..., :3], out) and torch.equal(out4[..., 3], rgba[..., 3])
    with refused("reference batch has 3 images; give 1 or 2"):
        run_node(comfy.nodes["OneStepSR_ColorFix"], image=images, reference=_images(3, 8, 8), method=method)


# --- packaging ------------------------------------------------------------------------------------


def test_pyproject_has_the_comfy_registry_fields():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"].startswith(">=")
    assert project["project"]["urls"]["Repository"]


def test_example_workflows_use_the_nodes_as_their_schemas_define_them(comfy):
    """Every example is UI-format JSON (what ComfyUI's template browser loads); each of our
    nodes in it has the widget values its schema asks for (seeds carry a control value)."""
    files = sorted((ROOT / "example_workflows").glob("*.json"))
    assert len(files) >= 3
    for path in files:
        workflow = json.loads(path.read_text())
        ours = [n for n in workflow["nodes"] if n["type"].startswith("OneStepSR_")]
        types = {n["type"] for n in ours}
        assert {"OneStepSR_Upscale", "OneStepSR_LoadModel"} <= types or "OneStepSR_SDUpscale" in types, path.name
        for node in ours:
            schema = comfy.nodes[node["type"]].GET_SCHEMA()
            widgets = [i for i in schema.inputs if i.io_type in ("INT", "FLOAT", "BOOLEAN", "COMBO")]
            expected = len(widgets) + sum(bool(getattr(i, "control_after_generate", None)) for i in widgets)
            assert len(node["widgets_values"]) == expected, (path.name, node["type"])
            values = iter(node["widgets_values"])
            for spec in widgets:
                value = next(values)
                if spec.id not in USER_FILE_WIDGETS:
                    comfy_pack._check(schema.node_id, spec, value)
                if getattr(spec, "control_after_generate", None):
                    assert next(values) in ("fixed", "increment", "decrement", "randomize")


def _imports(nodes) -> set[str]:
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    return imported


def test_the_comfyui_code_path_imports_only_what_comfyui_ships():
    """ComfyUI's own modules only in host.py (comfy_api only in api.py); no diffusers, peft,
    torchvision or transformers anywhere on the pack's path (host environments break on pins).
    The one exception: the standalone SD engine's loaders (onestep_sr/sd/checkpoint.py, prompt.py)
    import diffusers / transformers inside the functions that build diffusers modules, which the
    ComfyUI path never calls (tests/test_nodes_sd.py runs OneStep SD Upscale in a fresh interpreter
    and checks that none of them was imported); never at module level."""
    allowed = {"host.py": {"comfy", "folder_paths"}, "api.py": {"comfy_api"}}
    forbidden = {"diffusers", "peft", "torchvision", "transformers", "accelerate"}
    for path in [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py")), *sorted((ROOT / "onestep_sr").rglob("*.py"))]:
        tree = ast.parse(path.read_text())
        imported = _imports(ast.walk(tree))
        if path.parent == ROOT / "onestep_sr" / "sd":
            assert not _imports(tree.body) & forbidden, path  # module level
        else:
            assert not imported & forbidden, path
        host_modules = imported & {"comfy", "folder_paths", "comfy_api"}
        assert host_modules <= (allowed.get(path.name, set()) if path.parent.name == "nodes" else set()), path


def _pixel_model(path: Path) -> Path:
    from onestep_sr.model_info import ModelInfo, save_model
    torch.manual_seed(0)
    net = build_denoiser(DenoiserConfig(image_size=8, in_channels=51, out_channels=48, model_channels=32,
                                        channel_mult=(1,), num_res_blocks=(1,), attention_resolutions=()))
    return save_model(path, net, ModelInfo())[0]


def test_an_exported_pixel_space_model_needs_no_autoencoder_file(comfy):
    (comfy.folder / "autoencoder_vq_f4.pth").unlink()  # offline and no VQ: a pixel model does not ask for it
    _pixel_model(comfy.folder / "trained.safetensors")
    model = _load(comfy, "trained.safetensors")
    assert model.sr.sampler == "one_step" and type(model.sr.autoencoder).__name__ == "PixelSpaceAutoencoder"
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=_images(1, 8, 12))
    assert out.shape == (1, 32, 48, 3)


def test_the_committed_bundled_model_is_the_loaders_default_and_runs_offline(comfy):
    """The real weights/onestep_default_x4.safetensors: the first option (ComfyUI's default for a
    combo), loaded with no autoencoder file and no download, equal to the engine's result."""
    bundled = sys.modules["onestep_sr_pack.onestep_sr.model"].BUNDLED_MODELS["onestep_default"]
    assert bundled.is_file()
    assert _model_options(comfy.nodes)[0] == "onestep_default (bundled)"
    (comfy.folder / "autoencoder_vq_f4.pth").unlink()
    model = _load(comfy, "onestep_default (bundled)")
    image = _images(1, 10, 14)
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=image, color_fix="none")
    expected = load_model("onestep_default", device="cpu").upscale(image.permute(0, 3, 1, 2))
    assert out.shape == (1, 40, 56, 3)
    assert torch.allclose(out, expected.permute(0, 2, 3, 1), atol=1e-5)


def test_a_1x1_image_upscales_with_the_bundled_model(comfy):
    """Was 'Expected more than 1 value per channel' (GroupNorm over a 1x1 map)."""
    model = _load(comfy, "onestep_default (bundled)")
    image = torch.tensor([100, 150, 200], dtype=torch.float32).reshape(1, 1, 1, 3) / 255
    out, _ = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=image.expand(2, 1, 1, 3))
    assert out.shape == (2, 4, 4, 3) and (out - image).abs().max() <= 6 / 255


def test_the_bundled_default_model_comes_first(comfy, tmp_path, monkeypatch):
    bundled = sys.modules["onestep_sr_pack.onestep_sr.model"].BUNDLED_MODELS
    monkeypatch.setitem(bundled, "onestep_default", _pixel_model(tmp_path / "bundled.safetensors"))
    # a stand-in of another network: without the real restoration end (it would not match its keys)
    monkeypatch.delitem(sys.modules["onestep_sr_pack.onestep_sr.model"].BUNDLED_RESTORATION, "onestep_default")
    assert _model_options(comfy.nodes)[0] == "onestep_default (bundled)"
    model = _load(comfy, "onestep_default (bundled)")
    assert model.sr.name == "onestep_default"
    monkeypatch.setitem(bundled, "onestep_default", tmp_path / "absent.safetensors")
    assert "onestep_default (bundled)" not in _model_options(comfy.nodes)


# --- restoration strength (issue 28): auto_strength + strength on OneStep Upscale ------------------


def _clean_and_noisy(h: int = 24, w: int = 32) -> torch.Tensor:
    """A smooth picture (auto picks 0) and the same with sigma-12 noise (auto picks a high strength)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    clean = np.stack([x, y, (x + y) / 2], -1) * 0.8 + 0.1
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 12 / 255, clean.shape), 0, 1)
    return torch.from_numpy(np.stack([clean, noisy]).astype(np.float32))


def _requested_strengths(monkeypatch) -> list:
    """The ``strength`` each engine upscale call of the pack is given."""
    return spy_strengths(monkeypatch, sys.modules["onestep_sr_pack.onestep_sr.model"].OneStepSR)


def test_the_strength_widgets_are_optional_with_auto_as_default(comfy):
    specs = {i.id: i for i in comfy.nodes["OneStepSR_Upscale"].GET_SCHEMA().inputs}
    auto, strength = specs["auto_strength"], specs["strength"]
    # appended (then issue 29's noise): saved widget values keep their order
    assert [s.id for s in specs.values()][-3:] == ["auto_strength", "strength", "noise"]
    assert auto.io_type == "BOOLEAN" and auto.optional and auto.default is True
    assert strength.io_type == "FLOAT" and strength.optional and (strength.min, strength.max) == (0.0, 1.0)
    assert strength.step == 0.05 and 0.0 <= strength.default <= 1.0
    outputs = comfy.nodes["OneStepSR_Upscale"].GET_SCHEMA().outputs
    assert [o.io_type for o in outputs] == ["IMAGE", "STRING"]  # the report comes after IMAGE: old links keep slot 0


def test_the_default_is_auto_per_image_and_the_report_is_the_engines_choice(comfy, monkeypatch):
    model = _load(comfy, "onestep_default (bundled)")
    assert model.sr.knob is not None
    images = _clean_and_noisy()
    seen = _requested_strengths(monkeypatch)
    output = comfy.nodes["OneStepSR_Upscale"].execute(**comfy_pack.widget_values(
        comfy.nodes["OneStepSR_Upscale"], model=model, image=images, color_fix="none"))
    out, report = output.args
    assert seen == ["auto"]  # the node's default reaches the engine as auto
    engine = load_model("onestep_default", device="cpu")
    expected = engine.upscale(images.permute(0, 3, 1, 2), strength="auto").permute(0, 2, 3, 1)
    assert torch.equal(out, expected)
    chosen = engine.last_strengths
    assert model.sr.last_strengths == chosen and chosen[0] < chosen[1]  # measured per image
    assert report == f"restoration strength {chosen[0]:g}, {chosen[1]:g} (auto)"
    assert output.ui == {"text": [report]}  # the node's UI text (/history outputs) says the same


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_a_manual_strength_equals_the_engine_at_that_strength(comfy, monkeypatch, value):
    model = _load(comfy, "onestep_default (bundled)")
    images = _clean_and_noisy()
    seen = _requested_strengths(monkeypatch)
    out, report = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, color_fix="none",
                           auto_strength=False, strength=value)
    assert seen == [value]
    engine = load_model("onestep_default", device="cpu")
    expected = engine.upscale(images.permute(0, 3, 1, 2), strength=value).permute(0, 2, 3, 1)
    assert torch.equal(out, expected)
    assert model.sr.last_strengths == engine.last_strengths == [value, value]
    assert report == f"restoration strength {value:g}"
    other = engine.upscale(images.permute(0, 3, 1, 2), strength=1.0 - value).permute(0, 2, 3, 1)
    assert not torch.equal(out, other)  # the two ends differ


def test_a_model_with_one_weight_set_runs_auto_and_refuses_a_manual_strength(comfy, engine):
    model = _load(comfy)
    assert model.sr.knob is None
    images = _images(1, 12, 20)
    out, report = run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, color_fix="none")
    assert torch.equal(out, engine.upscale(images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))  # auto: a no-op
    assert report.startswith("restoration strength: none (tiny_sinsr.safetensors has one weight set")
    loads = len(comfy.mm.load_calls)
    with refused(r"OneStep Upscale: strength 0.3 \(auto_strength off\) needs a model with a restoration-strength "
                 r"knob .* tiny_sinsr.safetensors has one weight set: turn auto_strength on") as err:
        run_node(comfy.nodes["OneStepSR_Upscale"], model=model, image=images, auto_strength=False, strength=0.3)
    assert comfy_pack.shown_type(err.value) == "onestep_sr.OptionError"
    assert len(comfy.mm.load_calls) == loads  # refused before any weights moved
    with refused(r"strength must be auto or a number from 0 to 1, got nan"):  # the API bypasses the widget
        run_node(comfy.nodes["OneStepSR_Upscale"], model=_load(comfy, "onestep_default (bundled)"), image=images,
                 auto_strength=False, strength=float("nan"))
