"""Fake of comfy.model_patcher.ModelPatcher: moves a torch module between its load and offload
devices, recording on the module what the real one records, and keeps weight patches (LoRA)
that are applied only when the patcher is loaded (``load_models_gpu``) and removed when it is
detached, as ComfyUI 0.3.64 does. Clones share the module and copy the patch lists."""
import copy

import torch

from . import utils


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def calculate_weight(patches, weight, key):
    """The patched weight: ``set`` replaces, ``diff`` adds, ``lora`` adds alpha/rank * up @ down
    (reshaped to the weight, as ComfyUI's LoRA adapter does), each times its strength."""
    for strength, value, strength_model, _offset, _function in patches:
        kind, args = value
        if strength_model != 1.0:
            weight = weight * strength_model
        if kind == "set":
            weight = args[0].to(weight).reshape(weight.shape).clone()
        elif kind == "diff":
            weight = weight + strength * args[0].to(weight).reshape(weight.shape)
        elif kind == "lora":
            up, down, alpha = args
            scale = 1.0 if alpha is None else alpha / down.shape[0]
            delta = up.flatten(1).float() @ down.flatten(1).float()
            weight = weight + (strength * scale * delta).reshape(weight.shape).to(weight)
        else:
            raise NotImplementedError(f"fake patch kind {kind!r} ({key})")
    return weight


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:
            self.model.device = offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        if not hasattr(self.model, "model_loaded_weight_memory"):
            self.model.model_loaded_weight_memory = 0
        if not hasattr(self.model, "current_weight_patches"):
            self.model.current_weight_patches = None  # the patcher whose patches are in the weights

    def model_size(self):
        if self.size <= 0:
            self.size = module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size,
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        model_sd = self.model.state_dict()
        added = set()
        for key in patches:
            if key in model_sd:
                added.add(key)
                self.patches.setdefault(key, []).append((strength_patch, patches[key], strength_model, None, None))
        return list(added)

    def get_key_patches(self, filter_prefix=None):
        return {k: v for k, v in self.patches.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def patch_weights(self):
        """Put this patcher's patches into the (shared) module's weights, in place."""
        if self.model.current_weight_patches is self:
            return
        self.unpatch_weights()
        for key, patches in self.patches.items():
            weight = utils.get_attr(self.model, key)
            self.backup[key] = weight.detach().clone()
            weight.copy_(calculate_weight(patches, weight.detach().float(), key).to(weight.dtype))
        self.model.current_weight_patches = self

    @torch.no_grad()
    def unpatch_weights(self):
        owner = self.model.current_weight_patches
        if owner is None:
            return
        for key, saved in list(owner.backup.items()):
            utils.get_attr(self.model, key).copy_(saved)
        owner.backup.clear()
        self.model.current_weight_patches = None

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if not full_load and not getattr(self.model, "comfy_native", False):
            raise NotImplementedError("the fake only loads fully, as the pack asks (force_full_load=True)")
        self.model.to(device_to)
        self.model.device = device_to
        self.patch_weights()
        self.model.model_loaded_weight_memory = self.model_size()

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_weights()
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return self.model
