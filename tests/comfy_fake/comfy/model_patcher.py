"""Fake of comfy.model_patcher.ModelPatcher: moves a plain torch module between its load and
offload devices, recording on the module what the real one records."""



def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:
            self.model.device = offload_device
        self.load_device = load_device
        self.offload_device = offload_device
        self.parent = None
        self.model_options = {"transformer_options": {}}
        self.model.model_loaded_weight_memory = 0

    def model_size(self):
        if self.size <= 0:
            self.size = module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def current_loaded_device(self):
        return self.model.device

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if not full_load:
            raise NotImplementedError("the fake only loads fully, as the pack asks (force_full_load=True)")
        self.model.to(device_to)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()

    def detach(self, unpatch_all=True):
        self.model.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return self.model



