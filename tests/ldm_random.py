"""Source text shared by the real-host suites' checkpoint generators (run by the host's own
interpreter, so they build the networks from the host's classes): random weights for a Stable
Diffusion checkpoint in the original LDM key layout."""

RANDOM_LDM_STATE = r'''
def random_ldm_state(parts, generator):
    """{prefix + key: tensor} for each (prefix, module) of ``parts``: norm scales 1, biases 0,
    embeddings N(0, 0.02), other weights N(0, 1) / sqrt(fan_in) so activations stay finite, all
    stored as fp16; integer buffers (position ids) 0..n-1."""
    import math
    import torch

    state = {}
    for prefix, module in parts:
        for key, value in module.state_dict().items():
            if not value.is_floating_point():
                tensor = torch.arange(value.shape[-1]).expand(value.shape).clone()
            elif key.endswith("bias"):
                tensor = torch.zeros(value.shape)
            elif value.dim() == 1:
                tensor = torch.ones(value.shape)
            elif "embedding" in key:
                tensor = torch.randn(value.shape, generator=generator) * 0.02
            else:
                tensor = torch.randn(value.shape, generator=generator) / math.sqrt(math.prod(value.shape[1:]))
            state[prefix + key] = tensor.half() if tensor.is_floating_point() else tensor
    return state
'''
