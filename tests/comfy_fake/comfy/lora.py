"""Fake of comfy.lora.load_lora: kohya ``x.lora_up.weight`` / ``x.lora_down.weight`` (+ ``x.alpha``),
``x.diff``, ``x.diff_b`` (a diff patch on the bias beside the mapped weight) and ``x.set_weight``
keys -> {model key: patch}; unused keys are logged as ComfyUI 0.3.64 does ("lora key not loaded").
And of ``model_lora_keys_unet`` for the test MODEL, whose diffusion model holds a diffusers UNet
under ``unet.``: ComfyUI maps ``lora_unet_<diffusers name>`` (its unet_to_diffusers loop),
``lora_unet_<LDM name>`` and ``diffusion_model.<LDM name>`` (its state-dict loop); the LDM names
of the top-level modules are listed here."""
import logging


def load_lora(lora, to_load, log_missing=True):
    patch_dict = {}
    loaded_keys = set()
    for x in to_load:
        alpha_name = f"{x}.alpha"
        alpha = None
        if alpha_name in lora:
            alpha = lora[alpha_name].item()
            loaded_keys.add(alpha_name)
        up, down = f"{x}.lora_up.weight", f"{x}.lora_down.weight"
        if up in lora and down in lora:
            patch_dict[to_load[x]] = ("lora", (lora[up], lora[down], alpha))
            loaded_keys.update((up, down))
        if f"{x}.diff" in lora:
            patch_dict[to_load[x]] = ("diff", (lora[f"{x}.diff"],))
            loaded_keys.add(f"{x}.diff")
        if f"{x}.diff_b" in lora:
            patch_dict[to_load[x][: -len(".weight")] + ".bias"] = ("diff", (lora[f"{x}.diff_b"],))
            loaded_keys.add(f"{x}.diff_b")
        if f"{x}.set_weight" in lora:
            patch_dict[to_load[x]] = ("set", (lora[f"{x}.set_weight"],))
            loaded_keys.add(f"{x}.set_weight")
    if log_missing:
        for x in lora:
            if x not in loaded_keys:
                logging.warning("lora key not loaded: {}".format(x))
    return patch_dict


_LDM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def model_lora_keys_unet(model, key_map={}):
    prefix = "diffusion_model.unet."
    for key in model.state_dict():
        if key.startswith(prefix) and key.endswith(".weight"):
            name = key[len(prefix): -len(".weight")]
            key_map["lora_unet_" + name.replace(".", "_")] = key
            if name in _LDM_TOP:
                key_map["lora_unet_" + _LDM_TOP[name].replace(".", "_")] = key
                key_map["diffusion_model." + _LDM_TOP[name]] = key
    return key_map
