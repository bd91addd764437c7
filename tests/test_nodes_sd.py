"""OneStep SD Upscale (nodes/sd_upscale.py) against the fake ComfyUI (tests/comfy_fake), on tiny
seeded SD 1.x models (tests/sd_tiny.py): the node equals the diffusers engine
(onestep_sr.sd.SDOneStepSR), tiles blend like the engine's (and blending x0 equals blending eps),
padding, progress, cancel, LoRA patches through load_models_gpu, the VAE-encoder LoRA on a cloned
patcher, readable errors.

The fake MODEL is ComfyUI's contract (a ModelPatcher holding a BaseModel with model_sampling,
apply_model in sigma space, process_latent_in/out) around the engine's diffusers UNet; the fake VAE
is comfy.sd.VAE's contract around the engine's diffusers AutoencoderKL, its weights exposed under
their LDM (ComfyUI first_stage_model) names so VAE LoRA files map as in ComfyUI.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import comfy_pack  # noqa: E402
from comfy_pack import ROOT, ValidationError, refused, run_node  # noqa: E402
from onestep_sr.sd import formulas  # noqa: E402
from onestep_sr.sd.lora import merge_kohya_lora  # noqa: E402
from onestep_sr.sd.onestep import SDOneStepSR  # noqa: E402
from sd_tiny import make_tiny_sd, vae_to_ldm  # noqa: E402

NODE = "OneStepSR_SDUpscale"
ATOL = 1e-4   # node vs engine: same modules; ComfyUI's float32 sigma vs the engine's float64 abar


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> SDOneStepSR:
    config_dir, path, _ = make_tiny_sd(tmp_path_factory.mktemp("sd"), "sd1", seed=0)
    return SDOneStepSR.from_checkpoint(path, config_dir=config_dir)


# --- the fake MODEL / VAE / CLIP around the engine's modules ----------------------------------------


class UNetAsComfy(torch.nn.Module):
    """A diffusers UNet called the way ComfyUI calls its UNetModel."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        return self.unet(x, timesteps, encoder_hidden_states=context).sample


class LDMNamedVAE(torch.nn.Module):
    """A diffusers AutoencoderKL whose parameters are registered (shared, not copied) under the LDM
    names of ComfyUI's first_stage_model; encode gives the posterior mode, decode [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        object.__setattr__(self, "vae", vae)  # not a submodule: the state dict has LDM names only
        by_pointer = {p.data_ptr(): (name, p) for name, p in vae.named_parameters()}
        for key, value in vae_to_ldm(vae).items():
            _name, param = by_pointer[value.data_ptr()]
            *path, leaf = key.removeprefix("first_stage_model.").split(".")
            module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, torch.nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, param)

    def encode(self, x):
        return self.vae.encode(x).latent_dist.mode()

    def decode(self, z):
        return self.vae.decode(z).sample


class FakeCLIP:
    def __init__(self, engine):
        self.engine = engine

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return text

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):
        return [[self.engine.text_embedding(tokens), {"pooled_output": None}]]


def make_model(engine, model_type: str = "EPS", unet=None, context_dim: int = 32):
    from comfy.latent_formats import SD15
    from comfy.model_base import BaseModel, ModelConfig, ModelType
    from comfy.model_patcher import ModelPatcher

    config = ModelConfig(unet_config={"context_dim": context_dim}, latent_format=SD15(0.18215))
    base = BaseModel(config, ModelType[model_type], diffusion_model=UNetAsComfy(unet or copy.deepcopy(engine.model.unet)))
    return ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def make_vae(engine, vae=None):
    from comfy.sd import VAE
    return VAE(first_stage_model=LDMNamedVAE(vae or copy.deepcopy(engine.model.vae)))


def positive(engine, prompt: str = ""):
    return [[engine.text_embedding(prompt), {"pooled_output": None}]]


@pytest.fixture()
def comfy(tmp_path):
    module, nodes = comfy_pack.load_pack(tmp_path)
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    folder_paths.folder_names_and_paths["loras"] = ([str(loras)], folder_paths.supported_pt_extensions)
    mm.current_loaded_models.clear(), mm.load_calls.clear()
    ticks = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: ticks.append((value, total)))
    yield type("Comfy", (), dict(module=module, node=nodes[NODE], nodes=nodes, mm=mm, ticks=ticks, loras=loras))
    mm.interrupt_current_processing(False)
    comfy_pack.unload_pack()


def _images(batch, h, w, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, h, w, channels, generator=g)


def _engine_out(engine, images, **options):
    return engine.upscale_tensor(images[..., :3].permute(0, 3, 1, 2), **options).permute(0, 2, 3, 1)


# --- the node equals the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("size,scale,tile,overlap,color_fix,cond", [
    ((13, 19), 4.0, 96, 32, "adain", "positive"),      # odd size, one tile, OSEDiff defaults
    ((40, 36), 4.0, 16, 8, "wavelet", "positive"),     # latent 20 x 18: several Gaussian-blended tiles
    ((21, 30), 2.5, 16, 8, "none", "clip"),            # any scale; the empty prompt through CLIP
])
def test_node_equals_the_engine(comfy, engine, size, scale, tile, overlap, color_fix, cond):
    images = _images(2, *size)
    model, vae = make_model(engine), make_vae(engine)
    extra = dict(positive=positive(engine)) if cond == "positive" else dict(clip=FakeCLIP(engine))
    (out,) = run_node(comfy.node, model=model, vae=vae, image=images, scale=scale, tile=tile, overlap=overlap,
                      color_fix=color_fix, **extra)
    expected = _engine_out(engine, images, scale=scale, tile=tile, overlap=overlap, color_fix=color_fix)
    assert out.shape == (2, round(size[0] * scale), round(size[1] * scale), 3) and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=ATOL, rtol=0), (out - expected).abs().max()
    latent = [c for c in vae.calls if c[0] == "encode"][0][1]
    assert latent[1] % 8 == 0 and latent[2] % 8 == 0  # padded before ComfyUI's crop-to-8 could cut pixels
    boxes = formulas.latent_tile_boxes(latent[1] // 8, latent[2] // 8, tile, overlap)
    assert len(model.model.calls) == len(boxes)  # one apply_model call per latent tile
    sigma = model.model.calls[0][1]
    assert abs(sigma - 14.6146) < 1e-3  # ComfyUI's sigma of t = 999 for SD 1.x


def test_default_widgets_and_a_prompt(comfy, engine):
    images = _images(1, 9, 11, seed=3)
    (out,) = run_node(comfy.node, model=make_model(engine), vae=make_vae(engine), image=images,
                      positive=positive(engine, "a photo"))
    expected = _engine_out(engine, images, prompt="a photo")  # scale 4, 96 / 32, adain: OSEDiff's defaults
    assert torch.allclose(out, expected, atol=ATOL, rtol=0)


def test_one_tile_covering_the_latent_equals_untiled(comfy, engine):
    images = _images(1, 24, 20, seed=2)                # x4: 96 x 80, latent 12 x 10
    model, vae = make_model(engine), make_vae(engine)
    run = lambda **o: run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine), **o)[0]
    whole = run(tile=96)
    assert torch.equal(run(tile=16, overlap=8), whole)  # 16 >= 12 x 10: one call
    assert len(model.model.calls) == 2


@pytest.mark.parametrize("model_type", ["EPS", "V_PREDICTION"])
def test_blending_x0_equals_blending_the_network_output(comfy, engine, model_type):
    """OSEDiff blends eps over tiles; the node blends ComfyUI's x0. For one sigma, x0 is an affine
    function of eps (or v) pixel by pixel and the Gaussian weights are normalised, so both agree."""
    model = make_model(engine, model_type)
    base = model.model
    sigma = base.model_sampling.sigma(torch.tensor([999.0]))
    latent = torch.randn(1, 4, 20, 18, generator=torch.Generator().manual_seed(5))
    x = latent * torch.sqrt(1 + sigma ** 2)
    context = engine.text_embedding("")
    x0_blend = formulas.run_tiled(lambda t: base.apply_model(t, sigma, c_crossattn=context), x, tile=12, overlap=6)

    def raw(t):
        xc = base.model_sampling.calculate_input(sigma, t)
        return base.diffusion_model(xc, base.model_sampling.timestep(sigma).float(), context=context)

    with torch.no_grad():
        out_blend = formulas.run_tiled(raw, x, tile=12, overlap=6)
        converted = base.model_sampling.calculate_denoised(sigma, out_blend, x)
        x0_blend = x0_blend.detach()
    assert len(formulas.latent_tile_boxes(20, 18, 12, 6)) == 6  # overlapping tiles
    assert torch.allclose(x0_blend, converted, rtol=1e-5, atol=1e-5), (x0_blend - converted).abs().max()
    if model_type == "EPS":  # and it is the engine's eps-space blend (x0 from the blended eps)
        with torch.no_grad():
            eps_blend = formulas.run_tiled(lambda t: engine.model.unet(t, 999, encoder_hidden_states=context).sample,
                                           latent, tile=12, overlap=6)
        engine_x0 = formulas.x0_from_eps(latent, eps_blend, formulas.abar_at(999))
        assert torch.allclose(x0_blend, engine_x0, rtol=1e-4, atol=1e-4), (x0_blend - engine_x0).abs().max()


@pytest.mark.parametrize("size,scale", [((7, 9), 4.0), ((13, 5), 3.0), ((1, 1), 4.0), ((17, 23), 1.0)])
def test_odd_sizes_come_back_at_exactly_scale_times_size(comfy, engine, size, scale):
    vae = make_vae(engine)
    (out,) = run_node(comfy.node, model=make_model(engine), vae=vae, image=_images(1, *size),
                      positive=positive(engine), scale=scale)
    assert out.shape == (1, round(size[0] * scale), round(size[1] * scale), 3)
    assert out.min() >= 0 and out.max() <= 1
    (_, shape, _), = [c for c in vae.calls if c[0] == "encode"]
    assert shape[1] % 8 == 0 and shape[2] % 8 == 0 and min(shape[1:3]) >= 64


def test_alpha_is_upscaled_separately(comfy, engine):
    images = _images(1, 10, 12, channels=4, seed=7)
    (out,) = run_node(comfy.node, model=make_model(engine), vae=make_vae(engine), image=images,
                      positive=positive(engine), color_fix="none")
    assert out.shape == (1, 40, 48, 4)
    assert torch.allclose(out[..., :3], _engine_out(engine, images, color_fix="none"), atol=ATOL, rtol=0)
    from onestep_sr.sd.onestep import bicubic_to
    assert torch.equal(out[..., 3], bicubic_to(images[..., 3:].permute(0, 3, 1, 2), (40, 48))[:, 0])


# --- tiled VAE ------------------------------------------------------------------------------------


def test_large_images_use_comfyuis_tiled_vae(comfy, engine):
    images = _images(1, 80, 72, seed=8)                # x4: 320 x 288
    model, vae = make_model(engine), make_vae(engine)
    (tiled,) = run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine), vae_tile=256,
                        color_fix="none")
    kinds = {c[0]: c for c in vae.calls}
    assert set(kinds) == {"encode_tiled", "decode_tiled"}
    assert kinds["encode_tiled"][2] == dict(tile_x=256, tile_y=256, overlap=32)   # pixels
    assert kinds["decode_tiled"][2] == dict(tile_x=32, tile_y=32, overlap=4)      # latent pixels
    (whole,) = run_node(comfy.node, model=model, vae=make_vae(engine), image=images, positive=positive(engine),
                        color_fix="none")
    assert tiled.shape == whole.shape == (1, 320, 288, 3)
    assert (tiled - whole).abs().mean() < 0.1  # tiny random VAE: tile borders differ, the picture does not


# --- progress, cancel, loading --------------------------------------------------------------------


def test_progress_ticks_per_tile_and_cancel_stops_between_tiles(comfy, engine, monkeypatch):
    images = _images(1, 40, 36)                        # latent 20 x 18, tile 16 / 8: 4 tiles
    model, vae = make_model(engine), make_vae(engine)
    options = dict(model=model, vae=vae, image=images, positive=positive(engine), tile=16, overlap=8)
    run_node(comfy.node, **options)
    assert comfy.ticks == [(i, 6) for i in range(1, 7)]  # encode, 4 tiles, decode

    calls = []
    forward = model.model.diffusion_model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            comfy.mm.interrupt_current_processing()  # Cancel pressed during the first tile
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model.diffusion_model, "forward", counting)
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run_node(comfy.node, **options)
    assert len(calls) == 1


def test_out_of_memory_in_the_unet_halves_the_tile(comfy, engine, monkeypatch):
    """The UNet runs out of memory on more than 16 x 16 latent pixels: the node retries with half
    the tile, not below the 16-pixel floor (20 -> 16, overlap 6 -> 4), and gives the engine's result
    at that tiling; the progress bar's total follows the new tile count; at the floor it stops with
    a readable error."""
    images = _images(1, 40, 36)                        # latent 20 x 18: one 96 tile (effective 20)
    model, vae = make_model(engine), make_vae(engine)
    forward = model.model.diffusion_model.forward

    def small_tiles_only(x, *args, **kwargs):
        if max(x.shape[-2:]) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model.model.diffusion_model, "forward", small_tiles_only)
    (out,) = run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine))
    assert torch.allclose(out, _engine_out(engine, images, tile=16, overlap=4), atol=ATOL, rtol=0)
    n = len(formulas.latent_tile_boxes(20, 18, 16, 4))
    assert n > 1 and comfy.ticks == [(1, 3), *[(1 + i, n + 2) for i in range(1, n + 1)], (n + 2, n + 2)]

    def never_fits(x, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(model.model.diffusion_model, "forward", never_fits)
    with pytest.raises(RuntimeError, match="out of memory in the UNet on the image .* even with 16-pixel latent tiles"):
        run_node(comfy.node, model=model, vae=vae, image=_images(1, 64, 64), positive=positive(engine))


def test_a_cancel_before_the_node_starts_runs_nothing(comfy, engine):
    vae = make_vae(engine)
    comfy.mm.interrupt_current_processing()
    with pytest.raises(comfy.mm.InterruptProcessingException):
        run_node(comfy.node, model=make_model(engine), vae=vae, image=_images(1, 8, 8), positive=positive(engine))
    assert vae.calls == [] and comfy.ticks == []


def test_model_patches_apply_because_the_model_is_loaded_first(comfy, engine):
    """LoraLoader's patches live on a cloned MODEL patcher and reach the weights only through
    load_models_gpu: the node's output then equals the engine with the same change merged."""
    unet = copy.deepcopy(engine.model.unet)
    model = make_model(engine, unet=unet)
    key = "diffusion_model.unet.conv_in.weight"
    delta = 0.05 * torch.randn(unet.conv_in.weight.shape, generator=torch.Generator().manual_seed(9))
    patched = model.clone()
    patched.add_patches({key: ("diff", (delta,))}, 1.0)
    images = _images(1, 12, 10, seed=4)
    (out,) = run_node(comfy.node, model=patched, vae=make_vae(engine), image=images, positive=positive(engine))
    assert any(patched in models for models, _ in comfy.mm.load_calls)
    other = copy.deepcopy(engine)
    with torch.no_grad():
        other.model.unet.conv_in.weight += delta
    assert torch.allclose(out, _engine_out(other, images), atol=ATOL, rtol=0)
    assert not torch.allclose(out, _engine_out(engine, images), atol=1e-3)
    (plain,) = run_node(comfy.node, model=model, vae=make_vae(engine), image=images, positive=positive(engine))
    assert torch.allclose(plain, _engine_out(engine, images), atol=ATOL, rtol=0)  # the base is clean again


def _vae_lora(vae_module) -> dict[str, torch.Tensor]:
    """A small kohya VAE-encoder LoRA on LDM names, as the '_vae' files of onestep-sr convert."""
    g = torch.Generator().manual_seed(11)
    state = {}
    sd = vae_module.state_dict()
    for prefix in ("encoder.conv_in", "encoder.mid.attn_1.q", "quant_conv"):
        weight = sd[prefix + ".weight"]
        out_ch, in_ch = weight.shape[0], weight.shape[1]
        kernel = weight.shape[2:] if weight.ndim == 4 else (1, 1)
        state[prefix + ".lora_down.weight"] = 0.3 * torch.randn(2, in_ch, *kernel, generator=g)
        state[prefix + ".lora_up.weight"] = 0.3 * torch.randn(out_ch, 2, 1, 1, generator=g)
        state[prefix + ".alpha"] = torch.tensor(4.0)
    return state


def test_vae_encoder_lora_is_applied_to_a_copy_of_the_vae(comfy, engine):
    vae = make_vae(engine)
    lora = _vae_lora(vae.first_stage_model)
    save_file(lora, str(comfy.loras / "student_vae.safetensors"))
    before = {k: v.clone() for k, v in vae.first_stage_model.state_dict().items()}
    images = _images(1, 12, 10, seed=6)
    (out,) = run_node(comfy.node, model=make_model(engine), vae=vae, image=images, positive=positive(engine),
                      vae_lora="student_vae.safetensors", vae_lora_strength=0.7)
    other = copy.deepcopy(engine)
    counts = merge_kohya_lora(None, other.model.vae, lora, strength=0.7)
    assert counts["lora"] == 3
    assert torch.allclose(out, _engine_out(other, images), atol=ATOL, rtol=0)
    loaded = [m for models, _ in comfy.mm.load_calls for m in models]
    assert vae.patcher.patches == {} and vae.patcher not in loaded  # the given VAE: neither patched nor loaded
    assert any(m.model is vae.first_stage_model and m.parent is vae.patcher for m in loaded)  # its clone was
    (plain,) = run_node(comfy.node, model=make_model(engine), vae=vae, image=images, positive=positive(engine))
    assert torch.allclose(plain, _engine_out(engine, images), atol=ATOL, rtol=0)
    for key, value in vae.first_stage_model.state_dict().items():
        assert torch.equal(value, before[key]), key  # unpatched again once the plain VAE is loaded

    unet_lora = {"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3),
                 "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 2, 1, 1)}
    save_file(unet_lora, str(comfy.loras / "student.safetensors"))
    with refused(r"2 of 2 keys of vae_lora 'student.safetensors' match no VAE weight"
                                         r".*'_vae' file.*LoraLoader"):
        run_node(comfy.node, model=make_model(engine), vae=vae, image=images, positive=positive(engine),
                 vae_lora="student.safetensors")
    with pytest.raises(ValidationError, match="value_not_in_list"):
        run_node(comfy.node, model=make_model(engine), vae=vae, image=images, positive=positive(engine),
                 vae_lora="gone_vae.safetensors")


# --- the guidance input (a w-conditioned student file) ---------------------------------------------


def _guided_file(unet, dim: int = 16) -> dict[str, torch.Tensor]:
    """A small w-conditioned student: LoRAs on three UNet modules (kohya names), a conv_in diff and a
    random cond_proj (onestep_sr.sd.guidance's format)."""
    from onestep_sr.sd.guidance import COND_PROJ_KEY
    from onestep_sr.sd.lora import kohya_unet_name

    g = torch.Generator().manual_seed(21)
    state = {}
    names = [n for n, m in unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_v", "resnets.0.conv1"))][:3]
    for name in names:
        weight = dict(unet.named_modules())[name].weight
        kernel = weight.shape[2:] if weight.ndim == 4 else ()
        up_shape = (weight.shape[0], 2, 1, 1) if weight.ndim == 4 else (weight.shape[0], 2)
        state[kohya_unet_name(name) + ".lora_down.weight"] = 0.3 * torch.randn(2, weight.shape[1], *kernel, generator=g)
        state[kohya_unet_name(name) + ".lora_up.weight"] = 0.3 * torch.randn(*up_shape, generator=g)
        state[kohya_unet_name(name) + ".alpha"] = torch.tensor(2.0)
    state["lora_unet_conv_in.diff"] = 0.02 * torch.randn(unet.conv_in.weight.shape, generator=g)
    state[COND_PROJ_KEY] = 0.5 * torch.randn(unet.time_embedding.linear_1.in_features, dim, generator=g)
    return state


def test_the_guidance_widget_applies_the_guided_student_at_its_w(comfy, engine):
    from onestep_sr.sd.guidance import COND_PROJ_KEY
    from onestep_sr.sd.onestep import merge_lora

    state = _guided_file(engine.model.unet)
    save_file(state, str(comfy.loras / "student_guided.safetensors"))
    model, vae = make_model(engine), make_vae(engine)
    images = _images(1, 12, 10, seed=8)
    run = lambda **o: run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine), **o)[0]  # noqa: E731
    outs = {w: run(guided_lora="student_guided.safetensors", guidance=w) for w in (0.0, 3.0, 7.5)}
    for w, out in outs.items():  # = the engine with the file baked at w and merged
        other = copy.deepcopy(engine)
        merge_lora(other.model, state, guidance=w)
        assert torch.allclose(out, _engine_out(other, images), atol=ATOL, rtol=0), w
    assert (outs[3.0] - outs[0.0]).abs().max() > 1e-3 and (outs[7.5] - outs[3.0]).abs().max() > 1e-3
    plain = copy.deepcopy(engine)  # w = 0: the plain student, its LoRA alone
    merge_lora(plain.model, {k: v for k, v in state.items() if k != COND_PROJ_KEY})
    assert torch.allclose(outs[0.0], _engine_out(plain, images), atol=ATOL, rtol=0)
    assert model.patches == {}  # the given MODEL is not patched; a clone is
    assert torch.allclose(run(), _engine_out(engine, images), atol=ATOL, rtol=0)

    save_file({k: v for k, v in state.items() if k != COND_PROJ_KEY}, str(comfy.loras / "plain.safetensors"))
    with refused("guided_lora 'plain.safetensors'.*not a w-conditioned"):
        run(guided_lora="plain.safetensors", guidance=1.0)
    with refused("guidance needs a guided_lora"):
        run(guidance=2.0)
    with refused("guidance"):
        run(guided_lora="student_guided.safetensors", guidance=float("nan"))
    other = {**state, "lora_unet_not_a_module.diff": torch.zeros(3)}
    save_file(other, str(comfy.loras / "foreign_guided.safetensors"))
    with refused("1 of .* keys of guided_lora 'foreign_guided.safetensors' match no weight"):
        run(guided_lora="foreign_guided.safetensors", guidance=1.0)


def test_an_api_graph_saved_before_the_guidance_inputs_runs_as_it_did(comfy, engine):
    """The node's first input set (f1f2f93: no guided_lora, no guidance), as a saved API graph sends
    it to /prompt: validated as ComfyUI does (a missing required input is refused, no widget default
    filled in) and run: the plain student, exactly as with guided_lora 'none' and guidance 0."""
    images = _images(1, 12, 10, seed=9)
    old = dict(model=make_model(engine), vae=make_vae(engine), image=images, positive=positive(engine), scale=4.0,
               tile=96, overlap=32, vae_tile=1024, color_fix="adain", vae_lora="none", vae_lora_strength=1.0)
    (out,) = comfy_pack.run_api(comfy.node, **old)
    assert torch.allclose(out, _engine_out(engine, images), atol=ATOL, rtol=0)
    (explicit,) = comfy_pack.run_api(comfy.node, **old, guided_lora="none", guidance=0.0)
    assert torch.equal(out, explicit)
    with pytest.raises(ValidationError, match="image: required_input_missing"):
        comfy_pack.run_api(comfy.node, **{k: v for k, v in old.items() if k != "image"})


# --- errors ---------------------------------------------------------------------------------------


def test_readable_errors(comfy, engine):
    images = _images(1, 8, 8)
    model, vae = make_model(engine), make_vae(engine)
    with refused("needs text conditioning.*connect 'positive'.*'clip'"):
        run_node(comfy.node, model=model, vae=vae, image=images)
    with refused("conditioning is 768 wide but this MODEL's cross-attention takes 32"):
        run_node(comfy.node, model=model, vae=vae, image=images, positive=[[torch.zeros(1, 77, 768), {}]])
    with refused("conditioning has a batch of 3; give 1 or 2"):
        run_node(comfy.node, model=model, vae=vae, image=_images(2, 8, 8), positive=[[torch.zeros(3, 77, 32), {}]])
    vae16 = make_vae(engine)
    vae16.latent_channels = 16
    with refused("VAE makes 16-channel latents but the MODEL works on 4 channels"):
        run_node(comfy.node, model=model, vae=vae16, image=images, positive=positive(engine))
    with refused("prediction type is FLOW"):
        run_node(comfy.node, model=make_model(engine, "FLOW"), vae=vae, image=images, positive=positive(engine))
    with refused("not a diffusion MODEL"):
        run_node(comfy.node, model=object(), vae=vae, image=images, positive=positive(engine))
    with refused(r"expected an IMAGE \(B x H x W x 3 or 4\)"):
        run_node(comfy.node, model=model, vae=vae, image=torch.zeros(1, 8, 8, 2), positive=positive(engine))
    with pytest.raises(ValidationError, match="value_smaller_than_min"):
        run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine), tile=8)
    # values ComfyUI's API lets through (it checks min/max, not the widgets' steps): the rule, never rounded
    for bad, message in [(dict(vae_tile=300), "vae_tile must be a whole number of pixels, at least 256 and a "
                                              "multiple of 8, got 300"),
                         (dict(tile=32, overlap=32), r"overlap must be .* \(smaller than the tile 32\), got 32"),
                         (dict(vae_lora_strength=float("nan")), "vae_lora_strength must be a finite number, got nan"),
                         (dict(scale=float("nan")), r"scale must be a number in \(0, 64\]")]:
        with refused(message):
            run_node(comfy.node, model=model, vae=vae, image=images, positive=positive(engine), **bad)
    assert model.model.calls == [] and vae.calls == []  # every refusal came before any network ran


# --- registration and isolation -----------------------------------------------------------------------


def test_schema(comfy):
    schema = comfy.node.GET_SCHEMA()
    assert schema.display_name == "OneStep SD Upscale" and schema.category == "image/upscaling/OneStep SR"
    inputs = {i.id: i for i in schema.inputs}
    assert [i.io_type for i in schema.inputs[:5]] == ["MODEL", "VAE", "IMAGE", "CONDITIONING", "CLIP"]
    assert inputs["positive"].optional and inputs["clip"].optional
    assert (inputs["scale"].default, inputs["tile"].default, inputs["overlap"].default) == (4.0, 96, 32)
    assert inputs["color_fix"].default == "adain" and inputs["vae_lora"].options[0] == "none"
    (comfy.loras / "x_vae.safetensors").write_bytes(b"")
    assert "x_vae.safetensors" in {i.id: i for i in comfy.node.GET_SCHEMA().inputs}["vae_lora"].options


PURE_TORCH_RUN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from pathlib import Path
import comfy_pack
_, nodes = comfy_pack.load_pack(Path(sys.argv[3]))
from comfy.latent_formats import SD15
from comfy.model_base import BaseModel, ModelConfig, ModelType
from comfy.model_patcher import ModelPatcher
from comfy.sd import VAE

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    def forward(self, x, t, context=None, **kw):
        return self.conv(x) + context.mean()

class AE(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.down = torch.nn.Conv2d(3, 4, 8, 8); self.up = torch.nn.ConvTranspose2d(4, 3, 8, 8)
    def encode(self, x): return self.down(x)
    def decode(self, z): return torch.tanh(self.up(z))

model = ModelPatcher(BaseModel(ModelConfig(), ModelType.EPS, diffusion_model=Net()), torch.device("cpu"), torch.device("cpu"))
out, = comfy_pack.run_node(nodes["OneStepSR_SDUpscale"], model=model, vae=VAE(first_stage_model=AE()),
                           image=torch.rand(1, 9, 7, 3), positive=[[torch.zeros(1, 77, 8), {}]])
assert out.shape == (1, 36, 28, 3), out.shape
bad = sorted(m for m in ("diffusers", "transformers", "peft", "torchvision", "accelerate") if m in sys.modules)
print("imported:", bad)
sys.exit(1 if bad else 0)
"""


def test_the_node_runs_without_diffusers_transformers_or_torchvision(tmp_path):
    """In a fresh interpreter: load the pack, run the node on pure-torch fakes; none of the heavy
    libraries the standalone SD engine uses is imported on the ComfyUI path."""
    done = subprocess.run([sys.executable, "-c", PURE_TORCH_RUN, str(ROOT / "tests"), str(ROOT), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
