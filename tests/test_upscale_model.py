"""OneStep models as spandrel models (onestep_sr.spandrel) and the ComfyUI side: our files in the
stock "Load Upscale Model", the "OneStep SR as Upscale Model" node, both run by the stock "Upscale
Image (using Model)". Against fakes of spandrel's registry contract and of ComfyUI's two stock
nodes (tests/comfy_fake/spandrel, comfy_extras); tests/test_comfyui_real_upscale_model.py runs the
real ones."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import comfy_pack
from comfy_pack import refused, run_node
from onestep_sr import load_model
from onestep_sr.cli import main
from onestep_sr.model import BUNDLED_MODELS
from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser
from onestep_sr.onefile import HEADER_KEY, header_tensor, is_onestep_state_dict

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).resolve().parent / "comfy_fake"
BUNDLED = BUNDLED_MODELS["onestep_default"]
TILEABLE = dict(auto_strength=False, strength=0.0, noise="tileable")  # OneStep Upscale at the descriptor's settings


def images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE (B x H x W x C in [0, 1])."""
    return torch.from_numpy(np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32))


# --- other architectures' key patterns (built here, small) ------------------------------------------


def rrdbnet_state() -> dict[str, torch.Tensor]:  # ESRGAN / Real-ESRGAN (new-arch keys)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from rrdbnet import RRDBNet
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return RRDBNet(features=8, blocks=1, growth=4).state_dict()


def compact_state() -> dict[str, torch.Tensor]:  # Real-ESRGAN's SRVGGNetCompact: body.N conv / PReLU
    layers = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.PReLU(8), torch.nn.Conv2d(8, 8, 3, padding=1),
              torch.nn.PReLU(8), torch.nn.Conv2d(8, 48, 3, padding=1)]
    return {f"body.{k}": v for k, v in torch.nn.Sequential(*layers).state_dict().items()}


def swinir_state() -> dict[str, torch.Tensor]:  # SwinIR: residual groups of Swin blocks
    block = "layers.0.residual_group.blocks.0."
    shapes = {"conv_first.weight": (8, 3, 3, 3), "conv_first.bias": (8,), "patch_embed.norm.weight": (8,),
              "patch_embed.norm.bias": (8,), block + "norm1.weight": (8,), block + "attn.qkv.weight": (24, 8),
              block + "attn.relative_position_bias_table": (225, 2), block + "mlp.fc1.weight": (16, 8),
              "layers.0.conv.weight": (8, 8, 3, 3), "norm.weight": (8,), "conv_after_body.weight": (8, 8, 3, 3),
              "conv_before_upsample.0.weight": (8, 8, 3, 3), "upsample.0.weight": (32, 8, 3, 3),
              "conv_last.weight": (3, 8, 3, 3)}
    return {k: torch.randn(s) for k, s in shapes.items()}


FOREIGN = {"ESRGAN": rrdbnet_state, "Compact": compact_state, "SwinIR": swinir_state}
STAND_IN_KEYS = {"ESRGAN": "body.0.rdb1.conv1.weight", "Compact": "body.0.weight",
                 "SwinIR": "layers.0.residual_group.blocks.0.norm1.weight"}


@pytest.fixture(scope="module")
def arch():
    """The fake spandrel and onestep_sr.spandrel (which registers on import) with it."""
    sys.path.insert(0, str(FAKE))
    try:
        sys.modules.pop("spandrel", None), sys.modules.pop("onestep_sr.spandrel", None)
        module = importlib.import_module("onestep_sr.spandrel")
        yield module
    finally:
        while str(FAKE) in sys.path:  # (the ComfyUI fixture's unload may have taken it already)
            sys.path.remove(str(FAKE))
        sys.modules.pop("spandrel", None), sys.modules.pop("onestep_sr.spandrel", None)


def test_detection_claims_only_files_with_our_header(arch):
    ours = load_file(str(BUNDLED))
    assert arch.ARCHITECTURE.detect(ours)
    for name, build in FOREIGN.items():
        assert not arch.ARCHITECTURE.detect(build()), name
    bare = {k: v for k, v in ours.items() if k != HEADER_KEY}  # unmarked OneStep weights: not loadable alone
    assert not is_onestep_state_dict(bare)
    for bad in (torch.zeros(3), torch.tensor([1, 2], dtype=torch.uint8), header_tensor({"config": "{}"})):
        assert not is_onestep_state_dict({**bare, HEADER_KEY: bad})


def test_detected_before_spandrels_own_architectures_which_keep_their_files(arch):
    import spandrel

    registry = spandrel.ArchRegistry()

    class StandIn(spandrel.Architecture):
        def load(self, state_dict):
            return self.id

    for name, key in STAND_IN_KEYS.items():
        registry.add(spandrel.ArchSupport.from_architecture(StandIn(id=name, detect=lambda sd, k=key: k in sd)))
    registry.add(spandrel.ArchSupport.from_architecture(StandIn(id="Greedy", detect=lambda sd: True)))
    arch.register(registry)
    arch.register(registry)  # a second import (another copy of the pack): nothing more
    assert [a.architecture.id for a in registry.architectures("detection")][0] == "OneStepSR"
    assert len(registry) == 5
    for name, build in FOREIGN.items():
        assert registry.load(build()) == name
    assert isinstance(registry.load(load_file(str(BUNDLED))), spandrel.ImageModelDescriptor)
    assert "OneStepSR" in spandrel.MAIN_REGISTRY  # the import registered it with every ModelLoader


def test_the_descriptor_is_the_engines_upscale_with_tileable_noise(arch):
    import spandrel

    descriptor = spandrel.ModelLoader().load_from_file(BUNDLED)
    assert isinstance(descriptor, spandrel.ImageModelDescriptor) and descriptor.architecture.id == "OneStepSR"
    assert (descriptor.purpose, descriptor.scale, descriptor.input_channels, descriptor.output_channels) == ("SR", 4, 3, 3)
    assert descriptor.supports_half and descriptor.supports_bfloat16 and descriptor.tiling == spandrel.ModelTiling.INTERNAL
    assert descriptor.size_requirements.none and descriptor.tags == ["x4", "one_step", "pixel"]
    x = images(2, 24, 30).movedim(-1, 1)
    out = descriptor(x)
    engine = load_model(device="cpu")
    expected = engine.upscale(x, noise="tileable", strength=0, color_fix="wavelet", seed=12345)
    assert out.shape == (2, 3, 96, 120) and torch.equal(out, expected.clamp(0, 1))
    assert torch.equal(descriptor(x), out)  # deterministic
    half = descriptor.half()(x.half())  # the weights cast, the input's dtype kept
    assert half.dtype == torch.float16 and float((half.float() - out).abs().max()) < 0.02


def test_no_size_requirement_the_engine_pads_as_our_node_does(arch, tmp_path):
    """A VQ-f4 model's block is 16 LR pixels here; the descriptor still takes any size and pads
    inside, so the colour fix sees the image unpadded and the result is the engine's (a caller's
    padding to the block would change the bottom rows)."""
    import spandrel

    torch.manual_seed(0)
    den = build_denoiser(DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                                        attention_resolutions=(), swin_embed_dim=32, num_head_channels=16))
    torch.save(den.state_dict(), tmp_path / "d.pth")
    torch.save(build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64)).state_dict(), tmp_path / "a.pth")
    assert main(["convert", "--bundle", str(tmp_path / "d.pth"), str(tmp_path / "a.pth"), str(tmp_path / "b.safetensors")]) == 0
    descriptor = spandrel.ModelLoader().load_from_file(tmp_path / "b.safetensors")
    assert descriptor.size_requirements.none and "vq_f4" in descriptor.tags
    assert descriptor.model.denoiser.config.latent_multiple > 1
    x = torch.rand(1, 3, 20, 36)
    engine = load_model((tmp_path / "d.pth", tmp_path / "a.pth"), device="cpu")
    expected = engine.upscale(x, noise="tileable", color_fix="wavelet")
    assert torch.equal(descriptor(x), expected.clamp(0, 1))


# --- in the (fake) ComfyUI ----------------------------------------------------------------------------


@pytest.fixture()
def comfy(tmp_path, monkeypatch):
    """The pack and ComfyUI's stock upscale-model nodes; the bundled default in models/upscale_models,
    a small official-layout SinSR + VQ-f4 under the registry's file names in models/onestep_sr."""
    upscale_models, onestep = tmp_path / "models" / "upscale_models", tmp_path / "models" / "onestep_sr"
    upscale_models.mkdir(parents=True), onestep.mkdir(parents=True)
    shutil.copy(BUNDLED, upscale_models / BUNDLED.name)
    torch.manual_seed(0)
    torch.save(build_denoiser(DenoiserConfig(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=(1,),
                                             attention_resolutions=(), swin_embed_dim=32, num_head_channels=16)
                              ).state_dict(), onestep / "SinSR_v1.pth")
    torch.save(build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64)).state_dict(),
               onestep / "autoencoder_vq_f4.pth")
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    _, nodes = comfy_pack.load_pack(tmp_path)
    from comfy_extras import nodes_upscale_model as stock
    import comfy.model_management as mm

    mm.current_loaded_models.clear(), mm.load_calls.clear()
    yield type("Comfy", (), dict(nodes=nodes, stock=stock, mm=mm, models=tmp_path / "models"))
    comfy_pack.unload_pack()


def _stock_upscale(comfy, upscale_model, image):
    (out,) = comfy.stock.ImageUpscaleWithModel.execute(upscale_model, image).args
    return out


def test_our_file_in_upscale_models_runs_in_the_stock_nodes_as_our_node_does(comfy):
    loader = comfy.stock.UpscaleModelLoader
    assert BUNDLED.name in loader.GET_SCHEMA().inputs[0].options
    (model,) = loader.execute(BUNDLED.name).args
    image = images(1, 40, 60)
    out = _stock_upscale(comfy, model, image)
    (ours,) = run_node(comfy.nodes["OneStepSR_LoadModel"], model_name="onestep_default (bundled)")
    (node_out, report) = run_node(comfy.nodes["OneStepSR_Upscale"], model=ours, image=image, **TILEABLE)
    assert out.shape == (1, 160, 240, 3) and torch.equal(out, node_out) and report == "restoration strength 0"
    wide = images(1, 36, 600, seed=1)  # two tiles of ComfyUI's 512
    assert _stock_upscale(comfy, model, wide).shape == (1, 144, 2400, 3)


def test_the_adapter_node_makes_any_loaded_model_an_upscale_model(comfy):
    adapter, load, upscale = (comfy.nodes[n] for n in ("OneStepSR_AsUpscaleModel", "OneStepSR_LoadModel",
                                                      "OneStepSR_Upscale"))
    (sinsr,) = run_node(load, model_name="sinsr_v1 (auto-download)")  # the official layout, local files
    (upscale_model,) = run_node(adapter, model=sinsr)
    assert upscale_model.model.denoiser is sinsr.sr.denoiser  # the loader's weights, not a copy
    image = images(1, 24, 40)
    comfy.mm.load_calls.clear()
    out = _stock_upscale(comfy, upscale_model, image)
    # to(ComfyUI's device) goes through its memory manager (here a CPU: both of the node's moves are loads)
    assert comfy.mm.load_calls and all(models == [sinsr.patcher] for models, _ in comfy.mm.load_calls)
    assert sinsr.patcher in comfy.mm.current_loaded_models
    upscale_model.to(torch.device("meta"))  # another device (on a GPU, the node's to("cpu") after its run):
    assert upscale_model.device == torch.device("cpu")  # left to ComfyUI, which offloads when it needs memory
    (node_out, _) = run_node(upscale, model=sinsr, image=image, noise="tileable")
    assert out.shape == (1, 96, 160, 3) and torch.allclose(out, node_out, atol=1e-6)
    comfy.mm.interrupt_current_processing(True)  # Cancel: stops inside the call, at its first check
    with pytest.raises(comfy.mm.InterruptProcessingException):
        upscale_model(image.movedim(-1, 1))
    with refused("strength 0.5 needs a model with a restoration-strength knob"):
        run_node(adapter, model=sinsr, strength=0.5)
    (bundled,) = run_node(load, model_name="onestep_default (bundled)")
    (half_way,) = run_node(adapter, model=bundled, strength=0.5)
    (node_out, report) = run_node(upscale, model=bundled, image=image, auto_strength=False, strength=0.5,
                                  noise="tileable")
    assert torch.equal(_stock_upscale(comfy, half_way, image), node_out) and report == "restoration strength 0.5"


def test_a_bundle_loads_in_both_loaders(comfy, tmp_path):
    onestep = comfy.models / "onestep_sr"
    bundle = comfy.models / "upscale_models" / "sinsr_onefile.safetensors"
    assert main(["convert", "--bundle", str(onestep / "SinSR_v1.pth"), str(onestep / "autoencoder_vq_f4.pth"),
                 str(bundle)]) == 0
    shutil.copy(bundle, onestep / bundle.name)
    image = images(1, 24, 40, seed=2)
    (stock_model,) = comfy.stock.UpscaleModelLoader.execute(bundle.name).args
    (ours,) = run_node(comfy.nodes["OneStepSR_LoadModel"], model_name=bundle.name)  # listed among our files
    (node_out, _) = run_node(comfy.nodes["OneStepSR_Upscale"], model=ours, image=image, noise="tileable")
    assert torch.allclose(_stock_upscale(comfy, stock_model, image), node_out, atol=1e-6)


def test_without_spandrel_the_pack_loads_and_the_adapter_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    _, nodes = comfy_pack.load_pack(tmp_path, missing=("spandrel",))
    try:
        assert "spandrel cannot be imported" in caplog.text
        (model,) = run_node(nodes["OneStepSR_LoadModel"], model_name="onestep_default (bundled)")
        with pytest.raises(RuntimeError, match="needs spandrel"):
            run_node(nodes["OneStepSR_AsUpscaleModel"], model=model)
    finally:
        comfy_pack.unload_pack()
