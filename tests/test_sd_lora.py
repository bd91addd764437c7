"""OSEDiff LoRA -> kohya LoRA (``onestep-sr convert``) and the reference merge (``onestep_sr.sd.lora``).

The end-to-end tests build a tiny diffusers UNet2DConditionModel / AutoencoderKL, attach PEFT LoRA
adapters the way OSEDiff does (three UNet adapters ``default_encoder`` / ``default_decoder`` /
``default_others`` of rank 4 on OSEDiff's name patterns, ``init_lora_weights="gaussian"``, conv_in
trainable; a ``default_encoder`` adapter on the VAE encoder convs / attention / quant_conv), save a
checkpoint dict in OSEDiff's layout, convert it with the CLI and check that merging the kohya files
into fresh base models reproduces the PEFT models' outputs. The error and name-mapping tests need
neither diffusers nor peft.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from onestep_sr.cli import main
from onestep_sr.sd import lora
from osediff_layout import unet_targets, vae_targets

RANK = 4
ALPHA = 8.0  # PEFT's default lora_alpha: OSEDiff's scale is 8 / rank
# merged (weights folded) vs PEFT (separate LoRA branch), fp32: differences are float rounding only
TOLERANCE = 1e-5


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


# ---------------------------------------------------------------------------------------------
# tiny models with OSEDiff-style PEFT adapters


def _activate(model, names: list[str]) -> None:
    try:
        model.set_adapter(names)
    except (TypeError, ValueError):
        model.set_adapters(names)


@pytest.fixture(scope="module")
def osediff(tmp_path_factory):
    """Base models, PEFT-adapted models, their outputs and the OSEDiff-layout checkpoint file."""
    pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    from peft import LoraConfig

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(4, 8), use_linear_projection=True, norm_num_groups=32)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every weight off its init so that a mis-mapped key shows
        for p in [*unet.parameters(), *vae.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    unet.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    base_unet, base_vae = copy.deepcopy(unet), copy.deepcopy(vae)

    groups = unet_targets(unet)
    with warnings.catch_warnings():  # peft warns that a second adapter makes several: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for group, names in groups.items():
            unet.add_adapter(LoraConfig(r=RANK, init_lora_weights="gaussian", target_modules=names),
                             adapter_name=f"default_{group}")
    _activate(unet, [f"default_{g}" for g in groups])
    vae_names = vae_targets(vae)
    vae.add_adapter(LoraConfig(r=RANK, init_lora_weights="gaussian", target_modules=vae_names),
                    adapter_name="default_encoder")
    _activate(vae, ["default_encoder"])
    with torch.no_grad():
        for name, p in [*unet.named_parameters(), *vae.named_parameters()]:
            if ".lora_B." in name:  # gaussian init leaves B = 0: make every LoRA count
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
        conv_in = unet.conv_in.base_layer  # OSEDiff trains conv_in in full
        conv_in.weight.add_(0.1 * torch.randn(conv_in.weight.shape, generator=generator))
        conv_in.bias.add_(0.1 * torch.randn(conv_in.bias.shape, generator=generator))

    z = torch.randn(1, 4, 16, 16, generator=generator)
    text = torch.randn(1, 8, 32, generator=generator)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    t = torch.tensor([999])
    with torch.no_grad():
        out_unet = unet(z, t, encoder_hidden_states=text).sample
        out_vae = vae.encode(image).latent_dist.parameters
        base_out_unet = base_unet(z, t, encoder_hidden_states=text).sample
        base_out_vae = base_vae.encode(image).latent_dist.parameters

    ckpt = {
        "unet_lora_encoder_modules": groups["encoder"], "unet_lora_decoder_modules": groups["decoder"],
        "unet_lora_others_modules": groups["others"], "vae_lora_encoder_modules": vae_names,
        "rank_unet": RANK, "rank_vae": RANK,
        # what OSEDiff's save_model keeps: the LoRA parameters and the (PEFT-wrapped) conv_in
        "state_dict_unet": {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.clone() for k, v in vae.state_dict().items() if "lora" in k},
    }
    folder = tmp_path_factory.mktemp("osediff")
    path = folder / "osediff.pkl"
    torch.save(ckpt, path)
    lora_modules = {name for name, m in unet.named_modules()
                    if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and len(m.lora_A)}
    vae_lora_modules = {name for name, m in vae.named_modules()
                        if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and len(m.lora_A)}
    return argparse.Namespace(
        unet=unet, vae=vae, base_unet=base_unet, base_vae=base_vae, groups=groups, vae_names=vae_names,
        inputs=(z, t, text, image), out_unet=out_unet, out_vae=out_vae, base_out_unet=base_out_unet,
        base_out_vae=base_out_vae, ckpt=ckpt, path=path, lora_modules=lora_modules,
        vae_lora_modules=vae_lora_modules)


@pytest.fixture(scope="module")
def converted(osediff, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "osediff_lora.safetensors"
    assert main(["convert", str(osediff.path), str(out)]) == 0
    return out, lora.vae_sibling_path(out)


def _outputs(unet, vae, inputs):
    z, t, text, image = inputs
    with torch.no_grad():
        return unet(z, t, encoder_hidden_states=text).sample, vae.encode(image).latent_dist.parameters


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------
# end to end


def test_the_fixture_mimics_osediff(osediff):
    groups = osediff.groups
    assert "conv_in" in groups["encoder"] and "conv_out" in groups["decoder"]
    assert groups["others"] and all(n.startswith("mid_block.") for n in groups["others"])
    # every one of OSEDiff's kinds of target is there
    for pattern in ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"):
        assert any(n.endswith(pattern) for g in groups.values() for n in g), pattern
    assert osediff.lora_modules == {n for g in groups.values() for n in g}
    keys = osediff.ckpt["state_dict_unet"]
    assert "conv_in.base_layer.weight" in keys and "conv_in.base_layer.bias" in keys
    assert any(".to_q.lora_A.default_encoder.weight" in k for k in keys)
    assert any(".lora_B.default_decoder.weight" in k for k in keys)
    assert any(k.startswith("mid_block.") and ".lora_A.default_others." in k for k in keys)
    assert "quant_conv" in osediff.vae_names and "encoder.mid_block.attentions.0.to_q" in osediff.vae_names
    # the LoRA changes the outputs clearly, so equality below means something
    assert _max_rel(osediff.base_out_unet, osediff.out_unet) > 1e-2
    assert _max_rel(osediff.base_out_vae, osediff.out_vae) > 1e-2


def test_merged_kohya_files_reproduce_the_peft_models(osediff, converted):
    unet_file, vae_file = converted
    unet, vae = copy.deepcopy(osediff.base_unet), copy.deepcopy(osediff.base_vae)
    decoder_before = copy.deepcopy(vae.decoder.state_dict())
    counts = lora.merge_kohya_lora(unet, vae, {**load_file(str(unet_file)), **load_file(str(vae_file))})
    n_unet = len(osediff.lora_modules) - 1  # conv_in: its LoRA is folded into its full weight
    assert counts == {"lora": n_unet + len(osediff.vae_names), "set": 2, "diff": 0}
    out_unet, out_vae = _outputs(unet, vae, osediff.inputs)
    assert _max_rel(out_unet, osediff.out_unet) < TOLERANCE
    assert _max_rel(out_vae, osediff.out_vae) < TOLERANCE
    assert all(torch.equal(v, decoder_before[k]) for k, v in vae.decoder.state_dict().items())

    # the two halves apply separately too (UNet file alone on the UNet, VAE file alone on the VAE)
    unet2, vae2 = copy.deepcopy(osediff.base_unet), copy.deepcopy(osediff.base_vae)
    lora.merge_kohya_lora(unet2, None, load_file(str(unet_file)))
    lora.merge_kohya_lora(None, vae2, load_file(str(vae_file)))
    out_unet2, out_vae2 = _outputs(unet2, vae2, osediff.inputs)
    assert torch.equal(out_unet2, out_unet) and torch.equal(out_vae2, out_vae)


def test_every_peft_lora_module_has_kohya_keys(osediff, converted):
    unet_sd, vae_sd = load_file(str(converted[0])), load_file(str(converted[1]))
    downs = {k[: -len(".lora_down.weight")] for k in unet_sd if k.endswith(".lora_down.weight")}
    expected = {lora.kohya_unet_name(n) for n in osediff.lora_modules if n != "conv_in"}
    assert downs == expected
    for prefix in downs:
        assert {f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= unet_sd.keys()
        assert float(unet_sd[f"{prefix}.alpha"]) == ALPHA and unet_sd[f"{prefix}.lora_down.weight"].shape[0] == RANK
    others = set(unet_sd) - {f"{p}{s}" for p in downs for s in (".lora_down.weight", ".lora_up.weight", ".alpha")}
    assert others == {"diffusion_model.input_blocks.0.0.set_weight", "diffusion_model.input_blocks.0.0.bias.set_weight"}
    # no dropped attention projections: 4 per attention module (self and cross)
    attentions = [n for n, m in osediff.base_unet.named_modules() if type(m).__name__ == "Attention"]
    projections = [p for p in downs if p.endswith(("_to_q", "_to_k", "_to_v", "_to_out_0"))]
    assert len(attentions) == 8 and len(projections) == 4 * len(attentions) == 32
    assert sum("_attn2_" in p for p in projections) == 16  # cross-attention included
    # VAE: every adapted module, by its LDM name
    vae_downs = {k[: -len(".lora_down.weight")] for k in vae_sd if k.endswith(".lora_down.weight")}
    assert vae_downs == {lora.vae_diffusers_to_ldm(n) for n in osediff.vae_lora_modules}
    assert len(vae_downs) == len(osediff.vae_names) == 17
    assert {"encoder.mid.attn_1.q", "encoder.mid.attn_1.proj_out", "quant_conv",
            "encoder.down.1.block.0.nin_shortcut", "encoder.down.0.downsample.conv"} <= vae_downs
    assert len(vae_sd) == 3 * len(vae_downs)
    # conv LoRAs keep their conv shapes (LoCon layout); LDM attention projections are 1x1 convs
    name = lora.kohya_unet_name("down_blocks.0.resnets.0.conv1")
    assert unet_sd[f"{name}.lora_down.weight"].shape == (RANK, 32, 3, 3)
    assert unet_sd[f"{name}.lora_up.weight"].shape == (32, RANK, 1, 1)
    assert vae_sd["encoder.mid.attn_1.q.lora_down.weight"].shape == (RANK, 16, 1, 1)
    assert vae_sd["encoder.mid.attn_1.q.lora_up.weight"].shape == (16, RANK, 1, 1)


def test_kohya_tensors_are_the_peft_factors_and_the_scale_is_alpha_over_rank(osediff, converted):
    unet_sd = load_file(str(converted[0]))
    state = osediff.ckpt["state_dict_unet"]
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    name = lora.kohya_unet_name(module)
    assert name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    a, b = state[f"{module}.lora_A.default_encoder.weight"], state[f"{module}.lora_B.default_encoder.weight"]
    assert torch.equal(unet_sd[f"{name}.lora_down.weight"], a) and torch.equal(unet_sd[f"{name}.lora_up.weight"], b)
    # conv_in: the trained base weight plus its own LoRA at scale 8/4 = 2; the bias as trained
    w = state["conv_in.base_layer.weight"]
    folded = w + 2.0 * (state["conv_in.lora_B.default_encoder.weight"].flatten(1)
                        @ state["conv_in.lora_A.default_encoder.weight"].flatten(1)).reshape(w.shape)
    assert torch.allclose(unet_sd["diffusion_model.input_blocks.0.0.set_weight"], folded, atol=1e-6)
    assert torch.equal(unet_sd["diffusion_model.input_blocks.0.0.bias.set_weight"], state["conv_in.base_layer.bias"])
    # strength scales the LoRA (W + s * 8/4 * B @ A) but not the set_weight patch (as in ComfyUI)
    unet = copy.deepcopy(osediff.base_unet)
    lora.merge_kohya_lora(unet, None, unet_sd, strength=0.5)
    base = osediff.base_unet.get_submodule(module).weight
    assert torch.allclose(unet.get_submodule(module).weight, base + 0.5 * 2.0 * (b @ a), atol=1e-6)
    assert torch.equal(unet.conv_in.weight, unet_sd["diffusion_model.input_blocks.0.0.set_weight"])


def test_header_metadata(osediff, converted):
    unet_file, vae_file = converted
    meta = header(unet_file)
    assert meta["format"] == "kohya-lora" and meta["converted_from"] == "OSEDiff"
    assert meta["source"] == "osediff.pkl" and meta["rank_unet"] == "4" and meta["rank_vae"] == "4"
    assert meta["alpha"] == "8" and meta["ss_network_alpha"] == "8" and meta["ss_network_dim"] == "4"
    assert meta["unet_lora_modules"] == str(len(osediff.lora_modules) - 1)
    g = osediff.groups
    assert meta["unet_adapters"] == (f"default_encoder: {len(g['encoder'])}, default_decoder: {len(g['decoder'])}, "
                                     f"default_others: {len(g['others'])}")
    assert meta["vae_lora_modules"] == "17" and "set_weight" in meta["conv_in"]
    assert meta["onestep_sr_part"] == "unet" and meta["vae_file"] == vae_file.name
    vmeta = header(vae_file)
    assert vmeta["onestep_sr_part"] == "vae" and vmeta["unet_file"] == unet_file.name
    assert listing(unet_file.parent) == sorted([unet_file.name, vae_file.name])  # no temporary file left


def test_vae_names_match_the_ldm_layout(osediff, converted):
    """The VAE keys address real LDM ``first_stage_model`` weights with LoCon-compatible shapes
    (checked against the independent diffusers -> LDM mapping of the tiny-SD test helper)."""
    from sd_tiny import vae_to_ldm

    ldm = {k[len("first_stage_model."):]: v for k, v in vae_to_ldm(osediff.base_vae).items()}
    vae_sd = load_file(str(converted[1]))
    for key, down in vae_sd.items():
        if not key.endswith(".lora_down.weight"):
            continue
        prefix = key[: -len(".lora_down.weight")]
        weight = ldm[prefix + ".weight"]
        up = vae_sd[prefix + ".lora_up.weight"]
        assert down.shape[1:] == weight.shape[1:] and up.shape[0] == weight.shape[0], prefix
        assert lora.vae_ldm_to_diffusers(prefix) is not None
        assert lora.vae_diffusers_to_ldm(lora.vae_ldm_to_diffusers(prefix)) == prefix


def test_half_precision_output(osediff, tmp_path):
    out = tmp_path / "half.safetensors"
    assert main(["convert", str(osediff.path), str(out), "--dtype", "fp16"]) == 0
    tensors = {**load_file(str(out)), **load_file(str(lora.vae_sibling_path(out)))}
    assert {v.dtype for k, v in tensors.items() if not k.endswith(".alpha")} == {torch.float16}
    assert {v.dtype for k, v in tensors.items() if k.endswith(".alpha")} == {torch.float32}


# ---------------------------------------------------------------------------------------------
# a synthetic OSEDiff dict: conversion without diffusers / peft, errors


def synthetic(rank: int = RANK, conv_in_lora: bool = True) -> dict:
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    unet = {"conv_in.base_layer.weight" if conv_in_lora else "conv_in.weight": r(32, 4, 3, 3),
            "conv_in.base_layer.bias" if conv_in_lora else "conv_in.bias": r(32)}
    enc = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"]
    dec = ["up_blocks.0.resnets.0.conv_shortcut"]
    oth = ["mid_block.attentions.0.proj_in"]
    shapes = {enc[0]: ((rank, 32), (32, rank)), enc[1]: ((rank, 32, 3, 3), (32, rank, 1, 1)),
              dec[0]: ((rank, 96, 1, 1), (64, rank, 1, 1)), oth[0]: ((rank, 64), (64, rank))}
    if conv_in_lora:
        enc = ["conv_in", *enc]
        shapes["conv_in"] = ((rank, 4, 3, 3), (32, rank, 1, 1))
    adapters = {m: "default_encoder" for m in enc} | {m: "default_decoder" for m in dec} | {oth[0]: "default_others"}
    for module, (sa, sb) in shapes.items():
        unet[f"{module}.lora_A.{adapters[module]}.weight"] = r(*sa)
        unet[f"{module}.lora_B.{adapters[module]}.weight"] = r(*sb)
    vae_modules = ["encoder.mid_block.attentions.0.to_v", "quant_conv"]
    vae = {"encoder.mid_block.attentions.0.to_v.lora_A.default_encoder.weight": r(rank, 16),
           "encoder.mid_block.attentions.0.to_v.lora_B.default_encoder.weight": r(16, rank),
           "quant_conv.lora_A.default_encoder.weight": r(rank, 8, 1, 1),
           "quant_conv.lora_B.default_encoder.weight": r(8, rank, 1, 1)}
    return {"unet_lora_encoder_modules": enc, "unet_lora_decoder_modules": dec, "unet_lora_others_modules": oth,
            "vae_lora_encoder_modules": vae_modules, "rank_unet": rank, "rank_vae": rank,
            "state_dict_unet": unet, "state_dict_vae": vae}


def test_conversion_needs_neither_diffusers_nor_peft(tmp_path):
    src = tmp_path / "osediff.pkl"
    torch.save(synthetic(), src)
    out = tmp_path / "out" / "lora.safetensors"
    code = ("import sys\n"
            "for name in ('diffusers', 'peft', 'transformers', 'torchvision'): sys.modules[name] = None\n"
            "from onestep_sr.cli import main\n"
            f"code = main(['convert', {str(src)!r}, {str(out)!r}])\n"
            "assert not any(m.split('.')[0] in ('diffusers', 'peft') and sys.modules[m] is not None\n"
            "               for m in sys.modules), 'diffusers/peft imported'\n"
            "sys.exit(code)\n")
    root = Path(lora.__file__).resolve().parents[2]  # the onestep_sr this test imported
    path = os.pathsep.join(x for x in (str(root), os.environ.get("PYTHONPATH")) if x)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "OSEDiff LoRA as kohya LoRA, 4 UNet modules (rank 4) + conv_in (set_weight, ComfyUI only; --base for A1111), 2 VAE-encoder modules" in done.stdout
    unet_sd, vae_sd = load_file(str(out)), load_file(str(tmp_path / "out" / "lora_vae.safetensors"))
    assert sorted(unet_sd) == sorted(
        ["diffusion_model.input_blocks.0.0.set_weight", "diffusion_model.input_blocks.0.0.bias.set_weight"]
        + [f"lora_unet_{m}.{s}" for m in ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                                          "down_blocks_0_resnets_0_conv1", "up_blocks_0_resnets_0_conv_shortcut",
                                          "mid_block_attentions_0_proj_in")
           for s in ("lora_down.weight", "lora_up.weight", "alpha")])
    assert sorted(vae_sd) == sorted(f"{m}.{s}" for m in ("encoder.mid.attn_1.v", "quant_conv")
                                    for s in ("lora_down.weight", "lora_up.weight", "alpha"))


def test_conv_in_without_its_own_lora_and_an_osediff_file_named_pth(tmp_path, capsys):
    ckpt = {**synthetic(conv_in_lora=False), "global_step": 14000}
    src = tmp_path / "renamed.pth"
    torch.save(ckpt, src)
    out = tmp_path / "lora.safetensors"
    assert main(["convert", str(src), str(out)]) == 0  # auto: detected although it is not a .pkl
    unet_sd = load_file(str(out))
    assert torch.equal(unet_sd["diffusion_model.input_blocks.0.0.set_weight"],
                       ckpt["state_dict_unet"]["conv_in.weight"])
    assert "(its LoRA folded in)" not in header(out)["conv_in"]
    assert header(out)["ignored_source_keys"] == "global_step"


def test_name_mappings():
    assert lora.kohya_unet_name("up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj") == \
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_0_proj"
    pairs = {"encoder.conv_in": "encoder.conv_in", "encoder.conv_out": "encoder.conv_out",
             "encoder.conv_norm_out": "encoder.norm_out", "quant_conv": "quant_conv",
             "encoder.down_blocks.3.resnets.1.conv2": "encoder.down.3.block.1.conv2",
             "encoder.down_blocks.1.resnets.0.conv_shortcut": "encoder.down.1.block.0.nin_shortcut",
             "encoder.down_blocks.2.downsamplers.0.conv": "encoder.down.2.downsample.conv",
             "encoder.mid_block.resnets.0.conv1": "encoder.mid.block_1.conv1",
             "encoder.mid_block.resnets.1.norm2": "encoder.mid.block_2.norm2",
             "encoder.mid_block.attentions.0.to_q": "encoder.mid.attn_1.q",
             "encoder.mid_block.attentions.0.to_out.0": "encoder.mid.attn_1.proj_out",
             "encoder.mid_block.attentions.0.group_norm": "encoder.mid.attn_1.norm"}
    for diffusers_name, ldm_name in pairs.items():
        assert lora.vae_diffusers_to_ldm(diffusers_name) == ldm_name
        assert lora.vae_ldm_to_diffusers(ldm_name) == diffusers_name
    for outside in ("decoder.conv_in", "post_quant_conv", "encoder.mid_block.attentions.0.to_out.1"):
        assert lora.vae_diffusers_to_ldm(outside) is None
    assert lora.unet_diffusers_to_ldm("conv_in") == "input_blocks.0.0"
    assert lora.unet_ldm_to_diffusers("out.2") == "conv_out"


def _refused(argv: list[str], capsys, *messages: str) -> str:
    assert main(["convert", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("onestep-sr: error: ") and err.count("\n") == 1, err
    for message in messages:
        assert message in err, err
    return err


def test_bad_inputs_are_refused_and_leave_no_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dst = str(out / "lora.safetensors")

    plain = tmp_path / "plain.pkl"
    torch.save({"weight": torch.zeros(2)}, plain)
    _refused([str(plain), dst], capsys, f"{plain} is not an OSEDiff checkpoint", "'weight'")

    needs_code = tmp_path / "needs_code.pkl"
    torch.save({**synthetic(), "args": argparse.Namespace(lora_rank=4)}, needs_code)
    _refused([str(needs_code), dst], capsys, f"{needs_code}: refused to load", "weights_only")

    mismatch = tmp_path / "mismatch.pkl"
    torch.save({**synthetic(), "rank_unet": 8}, mismatch)
    _refused([str(mismatch), dst], capsys, str(mismatch),
             "key 'conv_in.lora_A.default_encoder.weight' has rank 4 (shape [4, 4, 3, 3])", "UNet rank is 8")

    ckpt = synthetic()
    del ckpt["state_dict_unet"]["up_blocks.0.resnets.0.conv_shortcut.lora_B.default_decoder.weight"]
    missing = tmp_path / "missing.pkl"
    torch.save(ckpt, missing)
    _refused([str(missing), dst], capsys,
             f"{missing}: key 'up_blocks.0.resnets.0.conv_shortcut.lora_B.default_decoder.weight' is missing")

    ckpt = synthetic()
    del ckpt["rank_vae"]
    no_rank = tmp_path / "no_rank.pkl"
    torch.save(ckpt, no_rank)
    _refused([str(no_rank), dst], capsys, f"{no_rank}: OSEDiff checkpoint key(s) missing: 'rank_vae'")

    ckpt = synthetic()
    del ckpt["state_dict_unet"]["conv_in.base_layer.weight"]
    no_conv_in = tmp_path / "no_conv_in.pkl"
    torch.save(ckpt, no_conv_in)
    _refused([str(no_conv_in), dst], capsys, "key 'conv_in.base_layer.weight' (or 'conv_in.weight') is missing")

    ckpt = synthetic()
    ckpt["state_dict_vae"]["encoder.skip_conv_1.weight"] = torch.zeros(1)
    extra = tmp_path / "extra.pkl"
    torch.save(ckpt, extra)
    _refused([str(extra), dst], capsys, "unexpected key(s) in the VAE state dict", "'encoder.skip_conv_1.weight'")

    ckpt = synthetic()
    ckpt["unet_lora_decoder_modules"] = []
    unlisted = tmp_path / "unlisted.pkl"
    torch.save(ckpt, unlisted)
    _refused([str(unlisted), dst], capsys, "no module list names", "'up_blocks.0.resnets.0.conv_shortcut'")

    # a plain state-dict .pth keeps the denoiser/autoencoder path and its message
    pth = tmp_path / "plain.pth"
    torch.save({"weight": torch.zeros(2)}, pth)
    _refused([str(pth), dst], capsys, "is neither a denoiser nor a VQ autoencoder checkpoint")
    assert listing(out) == []


def test_existing_outputs_need_force_and_a_failed_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = tmp_path / "osediff.pkl"
    torch.save(synthetic(), src)
    dst = tmp_path / "lora.safetensors"
    vae_dst = tmp_path / "lora_vae.safetensors"
    vae_dst.write_bytes(b"keep me")
    _refused([str(src), str(dst)], capsys, f"{vae_dst} already exists; use --force")
    assert vae_dst.read_bytes() == b"keep me" and not dst.exists()
    assert main(["convert", str(src), str(dst), "--force"]) == 0
    assert len(load_file(str(vae_dst))) == 6
    dst.unlink()
    vae_dst.unlink()

    import onestep_sr.checkpoint as checkpoint_module
    real_save = checkpoint_module.save_file
    calls = []

    def second_write_fails(tensors, filename, metadata=None):  # the VAE file is written, then the UNet fails
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", second_write_fails)
    assert main(["convert", str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert len(calls) == 2 and listing(tmp_path) == ["osediff.pkl"]


def test_merge_refuses_unused_keys_and_changes_nothing():
    model = nn.Module()
    model.conv_in = nn.Conv2d(4, 8, 3, padding=1)
    model.down_blocks = nn.ModuleList([nn.Linear(8, 8)])
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    good = {"lora_unet_down_blocks_0.lora_down.weight": torch.randn(2, 8, generator=g),
            "lora_unet_down_blocks_0.lora_up.weight": torch.randn(8, 2, generator=g),
            "lora_unet_down_blocks_0.alpha": torch.tensor(4.0)}
    bad = {**good, "lora_unet_up_blocks_9_to_q.lora_down.weight": torch.zeros(2, 8),
           "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 2)}
    with pytest.raises(lora.LoraFormatError, match=r"2 key\(s\) not used .*lora_te_text_model.*lora_unet_up_blocks_9"):
        lora.merge_kohya_lora(model, None, bad)
    with pytest.raises(lora.LoraFormatError, match="does not fit"):
        lora.merge_kohya_lora(model, None, {**good, "lora_unet_down_blocks_0.lora_up.weight": torch.randn(4, 2)})
    vae_keys = {"quant_conv.lora_down.weight": torch.zeros(1, 1, 1, 1),
                "quant_conv.lora_up.weight": torch.zeros(1, 1, 1, 1)}
    with pytest.raises(lora.LoraFormatError, match=r"not used \(no matching module in the given UNet\).*quant_conv"):
        lora.merge_kohya_lora(model, None, vae_keys)  # VAE keys, but no VAE given
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the good part applies: alpha 4 / rank 2 = scale 2; diff / diff_b add with the strength
    diff = {"diffusion_model.input_blocks.0.0.diff": torch.ones(8, 4, 3, 3),
            "diffusion_model.input_blocks.0.0.diff_b": torch.ones(8)}
    counts = lora.merge_kohya_lora(model, None, {**good, **diff}, strength=0.5)
    assert counts == {"lora": 1, "set": 0, "diff": 2}
    expected = before["down_blocks.0.weight"] + 0.5 * 2 * good["lora_unet_down_blocks_0.lora_up.weight"] @ \
        good["lora_unet_down_blocks_0.lora_down.weight"]
    assert torch.allclose(model.down_blocks[0].weight, expected, atol=1e-6)
    assert torch.allclose(model.conv_in.bias, before["conv_in.bias"] + 0.5)
    assert torch.allclose(model.conv_in.weight, before["conv_in.weight"] + 0.5)


def test_conv_in_as_a_difference_to_the_base(osediff, tmp_path):
    """With the base conv_in known, conv_in is written as lora_unet_conv_in.diff / .diff_b (keys
    A1111's Lora extension applies too) and the merge still reproduces the peft model."""
    base_conv = osediff.base_unet.conv_in
    unet_sd, vae_sd, metadata = lora.osediff_to_kohya(osediff.ckpt, conv_in_base=(base_conv.weight, base_conv.bias))
    assert {"lora_unet_conv_in.diff", "lora_unet_conv_in.diff_b"} <= set(unet_sd)
    assert not any(k.endswith(".set_weight") for k in unet_sd) and "diff" in metadata["conv_in"]
    unet, vae = copy.deepcopy(osediff.base_unet), copy.deepcopy(osediff.base_vae)
    lora.merge_kohya_lora(unet, vae, {**unet_sd, **vae_sd})
    out_unet, out_vae = _outputs(unet, vae, osediff.inputs)
    assert _max_rel(out_unet, osediff.out_unet) < TOLERANCE and _max_rel(out_vae, osediff.out_vae) < TOLERANCE
    with pytest.raises(lora.LoraFormatError, match="base conv_in"):
        lora.osediff_to_kohya(osediff.ckpt, conv_in_base=(base_conv.weight[:, :2], base_conv.bias))


@pytest.mark.parametrize("layout", ["single_file", "diffusers_folder"])
def test_convert_with_the_base_checkpoint_writes_conv_in_as_a_difference(osediff, tmp_path, layout, capsys):
    """``onestep-sr convert osediff.pkl OUT --base SD`` reads only the base's conv_in and writes the
    same files as ``osediff_to_kohya(conv_in_base=...)``: .diff keys, which A1111 applies too."""
    conv = osediff.base_unet.conv_in
    if layout == "single_file":
        base = tmp_path / "sd15.safetensors"
        save_file({"model.diffusion_model.input_blocks.0.0.weight": conv.weight.detach().clone(),
                   "model.diffusion_model.input_blocks.0.0.bias": conv.bias.detach().clone(),
                   "model.diffusion_model.out.2.bias": torch.zeros(4)}, str(base))
    else:
        base = tmp_path / "sd15"
        (base / "unet").mkdir(parents=True)
        save_file({"conv_in.weight": conv.weight.detach().clone(), "conv_in.bias": conv.bias.detach().clone()},
                  str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    out = tmp_path / "lora.safetensors"
    assert main(["convert", str(osediff.path), str(out), "--base", str(base)]) == 0
    assert f"conv_in (its difference to {base.name})" in capsys.readouterr().out
    unet_sd = load_file(str(out))
    expected, _, _ = lora.osediff_to_kohya(osediff.ckpt, conv_in_base=(conv.weight, conv.bias))
    assert set(unet_sd) == set(expected) and {"lora_unet_conv_in.diff", "lora_unet_conv_in.diff_b"} <= set(unet_sd)
    assert all(torch.equal(unet_sd[k], expected[k]) for k in expected)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["conv_in_base"] == base.name
    unet, vae = copy.deepcopy(osediff.base_unet), copy.deepcopy(osediff.base_vae)
    lora.merge_kohya_lora(unet, vae, {**unet_sd, **load_file(str(lora.vae_sibling_path(out)))})
    out_unet, _ = _outputs(unet, vae, osediff.inputs)
    assert _max_rel(out_unet, osediff.out_unet) < TOLERANCE


def test_convert_base_errors_name_the_problem_and_write_nothing(osediff, tmp_path, capsys):
    no_unet = tmp_path / "vae_only.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}, str(no_unet))
    out = tmp_path / "lora.safetensors"
    assert main(["convert", str(osediff.path), str(out), "--base", str(no_unet)]) == 2
    assert "model.diffusion_model.input_blocks.0.0.weight' is missing" in capsys.readouterr().err
    wrong = tmp_path / "wrong.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3)}, str(wrong))
    assert main(["convert", str(osediff.path), str(out), "--base", str(wrong)]) == 2
    assert "does not match the trained one" in capsys.readouterr().err
    assert main(["convert", str(osediff.path), str(out), "--base", str(tmp_path / "gone.safetensors")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae_only.safetensors", "wrong.safetensors"]
