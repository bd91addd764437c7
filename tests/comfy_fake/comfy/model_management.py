"""Fake of comfy.model_management: device choice, the loaded-model list that load_models_gpu /
free_memory manage, and the interruption flag. Devices are whatever the test sets in DEVICE."""
import threading

import torch

DEVICE = torch.device("cpu")  # what get_torch_device() answers; tests may change it
OFFLOAD_DEVICE = torch.device("cpu")
FP16_OK = False
current_loaded_models = []  # the ModelPatchers currently loaded, newest last
load_calls = []  # (models, kwargs) of every load_models_gpu call, for the tests


OOM_EXCEPTION = torch.OutOfMemoryError  # (plain Exception on a CPU-only build of the real one)


def get_free_memory(dev=None, torch_free_too=False):
    return 1 << 40


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def vae_device():
    return DEVICE


def vae_offload_device():
    return OFFLOAD_DEVICE


class InterruptProcessingException(Exception):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def get_torch_device():
    return DEVICE


def unet_offload_device():
    return OFFLOAD_DEVICE


def intermediate_device():
    return torch.device("cpu")


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    if device is not None and device.type == "cpu":
        return False
    return FP16_OK


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    load_calls.append((list(models), dict(memory_required=memory_required, force_full_load=force_full_load)))
    for patcher in models:
        if patcher in current_loaded_models:
            current_loaded_models.remove(patcher)
        for other in list(current_loaded_models):  # a clone with other patches: unpatched first
            if other is not patcher and other.model is patcher.model:
                other.detach()
                current_loaded_models.remove(other)
        patcher.load(patcher.load_device, full_load=force_full_load)
        current_loaded_models.append(patcher)


def free_memory(memory_required, device, keep_loaded=[]):
    """Offload every loaded model on ``device`` (the fake frees all it can)."""
    unloaded = []
    for patcher in list(current_loaded_models):
        if patcher.current_loaded_device() == device and patcher not in keep_loaded:
            patcher.detach()
            current_loaded_models.remove(patcher)
            unloaded.append(patcher)
    return unloaded


def unload_all_models():
    free_memory(1e30, get_torch_device())


def interrupt_current_processing(value=True):
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted():
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
