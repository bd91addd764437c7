"""Fake of comfy.lora.load_lora: kohya ``x.lora_up.weight`` / ``x.lora_down.weight`` (+ ``x.alpha``),
``x.diff`` and ``x.set_weight`` keys -> {model key: patch}; unused keys are logged as ComfyUI
0.3.64 does ("lora key not loaded")."""
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
        if f"{x}.set_weight" in lora:
            patch_dict[to_load[x]] = ("set", (lora[f"{x}.set_weight"],))
            loaded_keys.add(f"{x}.set_weight")
    if log_missing:
        for x in lora:
            if x not in loaded_keys:
                logging.warning("lora key not loaded: {}".format(x))
    return patch_dict
