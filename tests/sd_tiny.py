"""Tiny Stable Diffusion 1.x / 2.x models for tests, saved in the LDM single-file layout.

``make_tiny_sd(folder, family)`` builds a seeded tiny UNet / VAE / CLIP text model with diffusers
and transformers, writes their configs (the same file set as ``weights/configs/<family>/``) and a
``model.safetensors`` whose keys follow the original LDM / ComfyUI / A1111 naming, produced by the
hand-written diffusers -> LDM mapping below (the inverse of what the loader converts).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "weights" / "configs"


def tiny_configs(family: str) -> dict[str, dict]:
    sd2 = family == "sd2"
    unet = {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": [4, 8] if sd2 else 8,
            "norm_num_groups": 32, "sample_size": 8, "in_channels": 4, "out_channels": 4,
            "use_linear_projection": sd2, "flip_sin_to_cos": True, "freq_shift": 0}
    vae = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "latent_channels": 4, "in_channels": 3, "out_channels": 3, "sample_size": 64,
           "scaling_factor": 0.18215}
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "layer_norm_eps": 1e-05,
            "hidden_act": "gelu" if sd2 else "quick_gelu", "projection_dim": 16}
    prompt = json.loads((CONFIG_ROOT / family / "prompt.json").read_text())
    return {"unet": unet, "vae": vae, "text_encoder": text, "prompt": prompt}


def _jitter(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every parameter off its default init so that a mis-mapped key changes the output."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))


def build_tiny_modules(configs: dict[str, dict], seed: int = 0):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    vae = AutoencoderKL.from_config(configs["vae"])
    text = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    for m in (unet, vae, text):
        _jitter(m, generator)
        m.eval().requires_grad_(False)
    return unet, vae, text


# ----------------------------------------------------------------------------- diffusers -> LDM

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _rename(state, old: str, new: str, out: dict, sub: dict | None = None, reshape=None) -> None:
    for key in [k for k in state if k.startswith(old + ".")]:
        rest = key[len(old) + 1:]
        head, _, tail = rest.partition(".") if sub else (rest, "", "")
        if sub:
            rest = ".".join(x for x in (sub.get(head, head), tail) if x)
        value = state.pop(key)
        out[f"{new}.{rest}"] = reshape(value) if reshape and value.ndim == 2 else value


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    state, out = dict(unet.state_dict()), {}
    cfg = unet.config
    n, per = len(cfg.block_out_channels), cfg.layers_per_block
    _rename(state, "time_embedding.linear_1", "time_embed.0", out)
    _rename(state, "time_embedding.linear_2", "time_embed.2", out)
    _rename(state, "conv_in", "input_blocks.0.0", out)
    _rename(state, "conv_norm_out", "out.0", out)
    _rename(state, "conv_out", "out.2", out)
    for i in range(n):
        for j in range(per):
            k = 1 + i * (per + 1) + j
            _rename(state, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", out, _UNET_RESNET)
            _rename(state, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", out)
        _rename(state, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (per + 1) + per}.0.op", out)
        has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for j in range(per + 1):
            k = i * (per + 1) + j
            _rename(state, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", out, _UNET_RESNET)
            _rename(state, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", out)
        _rename(state, f"up_blocks.{i}.upsamplers.0.conv",
                f"output_blocks.{i * (per + 1) + per}.{2 if has_attn else 1}.conv", out)
    _rename(state, "mid_block.resnets.0", "middle_block.0", out, _UNET_RESNET)
    _rename(state, "mid_block.attentions.0", "middle_block.1", out)
    _rename(state, "mid_block.resnets.1", "middle_block.2", out, _UNET_RESNET)
    assert not state, f"unmapped UNet keys: {sorted(state)}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    state, out = dict(vae.state_dict()), {}
    n, per = len(vae.config.block_out_channels), vae.config.layers_per_block
    resnet = {"conv_shortcut": "nin_shortcut"}
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            _rename(state, f"{part}.{name}", f"{part}.{name}", out)
        _rename(state, f"{part}.conv_norm_out", f"{part}.norm_out", out)
        _rename(state, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", out, resnet)
        _rename(state, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", out, resnet)
        attn = {}
        _rename(state, f"{part}.mid_block.attentions.0", "a", attn, _VAE_ATTN, reshape=lambda w: w[:, :, None, None])
        out.update({f"{part}.mid.attn_1.{k[2:].replace('proj_out.0.', 'proj_out.')}": v for k, v in attn.items()})
    for i in range(n):
        for j in range(per):
            _rename(state, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", out, resnet)
        _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", out)
        for j in range(per + 1):
            _rename(state, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", out, resnet)
        _rename(state, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n - 1 - i}.upsample.conv", out)
    for name in ("quant_conv", "post_quant_conv"):
        _rename(state, name, name, out)
    assert not state, f"unmapped VAE keys: {sorted(state)}"
    return {"first_stage_model." + k: v for k, v in out.items()}


_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def clip_to_ldm(text, family: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    # transformers 5 drops the "text_model." prefix of CLIPTextModel keys; LDM files always have it.
    state = {k.removeprefix("text_model."): v for k, v in text.state_dict().items()}
    state.pop("embeddings.position_ids", None)
    if family == "sd1":
        return {"cond_stage_model.transformer.text_model." + k: v for k, v in state.items()}
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"),
           "ln_final.bias": state.pop("final_layer_norm.bias")}
    layers = text.config.num_hidden_layers
    for i in range(layers):
        pre, block = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[block + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(pre + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
            for old, new in _OPENCLIP.items():
                out[block + f"{new}.{kind}"] = state.pop(pre + f"{old}.{kind}")
    assert not state, f"unmapped text keys: {sorted(state)}"
    # SD 2.x files hold the last OpenCLIP layer too (unused: SD 2 takes the penultimate one).
    for key in [k for k in out if k.startswith("transformer.resblocks.0.")]:
        out[key.replace("resblocks.0.", f"resblocks.{layers}.")] = torch.randn(out[key].shape, generator=generator)
    width = text.config.hidden_size
    out["text_projection"] = torch.randn(width, width, generator=generator)
    out["logit_scale"] = torch.tensor(4.6052)
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def ldm_state_dict(unet, vae, text, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(text, family, generator)}
    state["alphas_cumprod"] = torch.ones(1000)   # LDM buffers that real files carry; must be ignored
    return {k: v.contiguous() for k, v in state.items()}


def make_tiny_sd(folder: Path, family: str = "sd1", seed: int = 0):
    """Write ``folder/config/*.json`` and ``folder/model.safetensors``; return (configs dir,
    checkpoint path, (unet, vae, text) diffusers modules)."""
    folder = Path(folder)
    configs = tiny_configs(family)
    config_dir = folder / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in configs.items():
        (config_dir / f"{name}.json").write_text(json.dumps(cfg, indent=1))
    modules = build_tiny_modules(configs, seed)
    path = folder / "model.safetensors"
    save_file(ldm_state_dict(*modules, family, seed), str(path))
    return config_dir, path, modules
