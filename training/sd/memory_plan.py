"""The memory plan of an ``osediff`` / ``guided`` run, made before any weights are read.

The networks are built from the checkpoint's configs on PyTorch's ``meta`` device (shapes, no
memory, no weights read; the family comes from the checkpoint's key names and shapes in a
``.safetensors`` header or a diffusers folder's configs), the run's LoRA adapters are attached as
the trainer attaches them, and the parameters are counted exactly. The activations are counted on
the meta device too: the trainer's own forward passes that keep a graph (the generator, the
perceptual features of its output and the regulariser for ``osediff``; the student for
``guided``) run at the run's crop and per-process batch under a saved-tensors hook that adds up
the bytes of every distinct activation kept for backward (parameters excluded). With gradient
checkpointing the checkpointed blocks keep only their inputs; the block recomputed in backward is
added. Attention is counted as a fused kernel keeps it (q, k, v, output; no N x N matrix: SDPA's
flash / memory-efficient kernels on CUDA, its flash kernel on the CPU). The backward's own
temporaries are estimated as twice the largest kept tensor.

Terms (bytes, per process): frozen and trainable weights fp32 (the trainers keep fp32 weights;
mixed precision casts the compute), gradients fp32 of the trainable ones, AdamW state 2 x fp32
(8-bit Adam, bitsandbytes: 2 x 1 byte), the activations (fp16 / bf16: half of the fp32 count, an
estimate: norms and softmax stay fp32). The EMA copy of the trainable weights lives in CPU memory.
A CUDA process adds its context and allocator slack (about 0.5-1 GiB, not counted here).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

GIB = 2 ** 30


@dataclass
class MemoryPlan:
    title: str
    networks: list[tuple[str, int, int]] = field(default_factory=list)  # (name, parameters, copies)
    trainable: int = 0
    adam_bytes_per_param: int = 8
    activations: int = 0  # bytes, fp32 count
    half_activations: bool = False
    notes: list[str] = field(default_factory=list)

    def weights_bytes(self) -> int:
        return 4 * (sum(n * copies for _, n, copies in self.networks) + self.trainable)

    def activation_bytes(self) -> int:
        return self.activations // 2 if self.half_activations else self.activations

    def total_bytes(self) -> int:
        return (self.weights_bytes() + 4 * self.trainable + self.adam_bytes_per_param * self.trainable
                + self.activation_bytes())

    def lines(self) -> list[str]:
        out = [f"memory plan ({self.title}), per process, made before any weights are read:"]
        for name, n, copies in self.networks:
            out.append(f"  {name:<24}{_count(n) + (f' x{copies}' if copies > 1 else ''):<24}{_size(4 * n * copies):>10} fp32")
        adam = "8-bit Adam" if self.adam_bytes_per_param == 2 else "AdamW fp32"
        out.append(f"  {'trainable (LoRA, ...)':<24}{_count(self.trainable):<24}{_size(4 * self.trainable):>10} weights, "
                   f"{_size(4 * self.trainable)} gradients, {_size(self.adam_bytes_per_param * self.trainable)} "
                   f"{adam} state")
        half = " (fp16/bf16: half the fp32 count)" if self.half_activations else ""
        out.append(f"  {'activations':<24}{'estimate':<24}{_size(self.activation_bytes()):>10}{half}")
        out.append(f"  {'total':<48}{_size(self.total_bytes()):>10} (+ on a GPU its CUDA context, about 0.5-1 GiB; "
                   f"the EMA, {_size(4 * self.trainable)}, is in CPU memory)")
        return out + [f"  {note}" for note in self.notes]

    def as_dict(self) -> dict:
        return {"title": self.title, "networks": self.networks, "trainable": self.trainable,
                "weights_bytes": self.weights_bytes(), "activation_bytes": self.activation_bytes(),
                "total_bytes": self.total_bytes()}


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M parameters" if n >= 1e5 else f"{n:,} parameters"


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:.1f} MiB"


# --- the networks on the meta device ---------------------------------------------------------------


def _header_family(path: Path) -> str | None:
    """sd1 / sd2 from a single file's key names and shapes, reading only its header (safetensors)."""
    from onestep_sr.sd.checkpoint import CLIP_PREFIX, OPENCLIP_PREFIX, PROJ_IN_KEY

    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        proj = f.get_slice(PROJ_IN_KEY).get_shape() if PROJ_IN_KEY in keys else None
    if any(k.startswith(CLIP_PREFIX) for k in keys):
        return "sd1"
    if any(k.startswith(OPENCLIP_PREFIX) for k in keys):
        return "sd2"
    return None if proj is None else ("sd1" if len(proj) == 4 else "sd2")


def read_run_configs(config) -> tuple[dict, str, list[str]]:
    """(the unet / vae / text_encoder / prompt configs, the family, notes) of a run's checkpoint."""
    from onestep_sr.sd.checkpoint import config_dir_for, read_configs

    path, notes = Path(config.checkpoint), []
    if path.is_dir():  # a diffusers folder: its own configs
        configs = {name: json.loads((path / name / "config.json").read_text())
                   for name in ("unet", "vae", "text_encoder")}
        family = config.family or ("sd1" if configs["text_encoder"].get("hidden_act") == "quick_gelu" else "sd2")
        return configs, family, notes
    family = config.family or _header_family(path)
    if family is None:
        family = "sd1"
        notes.append(f"{path.name}: family not readable without loading it; planned as sd1 (give --family)")
    folder = Path(config.config_dir) if config.config_dir else config_dir_for(family, config.prediction_type or "epsilon")
    return read_configs(folder), family, notes


def meta_networks(configs: dict):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from onestep_sr.sd.checkpoint import _clip_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text = CLIPTextModel(_clip_config(configs["text_encoder"]))
    return [m.eval().requires_grad_(False) for m in (unet, vae, text)]


def parameters(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


# --- activations ---------------------------------------------------------------------------------


class SavedBytes:
    """Bytes of the distinct tensors autograd keeps for backward (parameters and their views
    excluded) while the context is open; ``largest``: the largest such tensor."""

    def __init__(self, *modules: torch.nn.Module):
        self.params = {id(p) for m in modules for p in m.parameters()}
        self.seen, self.kept, self.total, self.largest = set(), [], 0, 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) in self.params or id(base) in self.params or id(base) in self.seen:
            return t
        self.seen.add(id(base))
        self.kept.append(base)  # keeps the id unique while counting
        size = base.numel() * base.element_size()
        self.total, self.largest = self.total + size, max(self.largest, size)
        return t

    def __enter__(self) -> "SavedBytes":
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)


def largest_block(forward, modules: list[torch.nn.Module], blocks: list[torch.nn.Module]) -> int:
    """The most activation bytes one of ``blocks`` keeps (no checkpointing): what gradient
    checkpointing recomputes at once in backward."""
    per_block, current = {}, []

    def enter(block):
        def hook(*_):
            current.append(block)
        return hook

    def leave(block):
        def hook(*_):
            current.pop()
        return hook

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(enter(b)), b.register_forward_hook(leave(b)))]
    counter = SavedBytes(*modules)
    original = counter.pack

    def pack(t):
        before = counter.total
        out = original(t)
        if current:
            per_block[id(current[-1])] = per_block.get(id(current[-1]), 0) + counter.total - before
        return out

    counter.pack = pack
    try:
        with counter:
            forward()
    finally:
        for h in handles:
            h.remove()
    return max(per_block.values(), default=0)


def unet_blocks(unet) -> list[torch.nn.Module]:
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]


def vae_blocks(vae) -> list[torch.nn.Module]:
    return [*vae.encoder.down_blocks, vae.encoder.mid_block, vae.decoder.mid_block, *vae.decoder.up_blocks]


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel (flash / memory-efficient on CUDA, flash on the CPU) keeps for
    backward: q, k, v, the output and the row log-sum-exp, never the N x N attention matrix that
    the meta device's reference implementation would keep."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: the plan runs forward only
        raise NotImplementedError


@contextmanager
def fused_attention():
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: _FusedAttention.apply(q, k, v)
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


def count_activations(forward, modules, blocks, checkpointing: bool) -> int:
    """Activation bytes (fp32) of ``forward()``: kept tensors + the backward's temporaries (+ the
    recomputed block under checkpointing)."""
    with fused_attention(), SavedBytes(*modules) as counter:
        forward()
    total = counter.total + 2 * counter.largest
    if checkpointing:
        for m in modules:
            for sub in m.modules():
                if hasattr(sub, "disable_gradient_checkpointing") and getattr(sub, "is_gradient_checkpointing", False):
                    sub.disable_gradient_checkpointing()
        with fused_attention():
            total += largest_block(forward, modules, blocks)
    return total


# --- the two trainers ------------------------------------------------------------------------------


def _adam_note(config) -> tuple[int, list[str]]:
    import importlib.util

    if getattr(config, "adam_8bit", False):
        return 2, []
    if importlib.util.find_spec("bitsandbytes") is not None:
        return 8, ["--adam-8bit (bitsandbytes is installed) keeps the optimiser state in 2 bytes per trainable "
                   "parameter instead of 8"]
    return 8, []


def _title(name: str, config, family: str) -> str:
    return (f"{name}, {family}, crop {config.gt_size}, batch {config.batch_size} per process, mixed precision "
            f"{config.mixed_precision}, gradient checkpointing {'on' if config.gradient_checkpointing else 'off'}, "
            f"{'8-bit Adam' if getattr(config, 'adam_8bit', False) else 'AdamW fp32'}")


def osediff_plan(config) -> MemoryPlan:
    from onestep_sr.sd.checkpoint import SDModel

    from ..common.perceptual import build_perceptual
    from .osediff_model import build_networks

    configs, family, notes = read_run_configs(config)
    unet, vae, text = meta_networks(configs)
    sizes = [parameters(m) for m in (unet, vae, text)]
    b, g = config.batch_size, config.gt_size
    with torch.device("meta"):
        perceptual = build_perceptual("vae", vae) if config.perceptual == "vae" else None
        generator, score, _, _ = build_networks(SDModel(unet, vae, text, family, "epsilon"), config.rank,
                                                config.lora_alpha, config.vae_lora)
        if config.guidance_range is not None:
            from .guidance_model import attach_cond_proj

            attach_cond_proj(generator.unet)
        context = torch.zeros(b, 77, configs["unet"]["cross_attention_dim"])
        lq = torch.zeros(b, 3, g // config.scale, g // config.scale)
    w = torch.zeros(b)  # on the CPU, as the trainer gives it
    networks = [("UNet (generator, score)", sizes[0], 2), ("VAE", sizes[1], 1), ("text encoder", sizes[2], 1)]
    if perceptual is not None:
        networks.insert(2, ("perceptual VAE encoder", parameters(perceptual.net), 1))
    elif config.perceptual == "lpips":
        networks.insert(2, ("perceptual LPIPS-VGG", 14_716_160, 1))
    modules = [generator, score] + ([perceptual.net] if perceptual is not None else [])
    if config.gradient_checkpointing:
        for net in (generator.unet, generator.vae, score.unet):
            net.enable_gradient_checkpointing()
    generator.train(), score.train()

    def forward():
        z, x_hat = generator(lq, context, (g, g), w if config.guidance_range else None)
        if perceptual is not None:
            perceptual(x_hat.float(), torch.zeros_like(x_hat))
        score(torch.zeros_like(z), torch.full((b,), 500, device=z.device), context)

    blocks = unet_blocks(generator.unet) + vae_blocks(generator.vae) + unet_blocks(score.unet)
    activations = count_activations(forward, modules, blocks, config.gradient_checkpointing)
    adam, more = _adam_note(config)
    return MemoryPlan(_title("osediff", config, family), networks, parameters(generator, True) + parameters(score, True),
                      adam, activations, config.mixed_precision in ("fp16", "bf16"), notes + more)


def guided_plan(config) -> MemoryPlan:
    from .guidance_model import attach_cond_proj, conditioned
    from .osediff_model import add_full_adapter

    configs, family, notes = read_run_configs(config)
    unet, vae, text = meta_networks(configs)
    sizes = [parameters(m) for m in (unet, vae, text)]
    b, latent = config.batch_size, config.gt_size // 8
    with torch.device("meta"):
        add_full_adapter(unet, config.rank, config.lora_alpha, "guided")
        attach_cond_proj(unet, config.embed_dim).requires_grad_(True)
        context = torch.zeros(b, 77, configs["unet"]["cross_attention_dim"])
        z_t, t = torch.zeros(b, 4, latent, latent), torch.full((b,), 500)
    w = torch.zeros(b)  # on the CPU, as the trainer gives it
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    activations = count_activations(lambda: conditioned(unet, z_t, t, context, w), [unet], unet_blocks(unet),
                                       config.gradient_checkpointing)
    adam, more = _adam_note(config)
    networks = [("UNet", sizes[0], 1), ("VAE", sizes[1], 1), ("text encoder", sizes[2], 1)]
    return MemoryPlan(_title("guided", config, family), networks, parameters(unet, True), adam, activations,
                      config.mixed_precision in ("fp16", "bf16"), notes + more)


def memory_plan(command: str, config) -> MemoryPlan:
    return guided_plan(config) if command == "guided" else osediff_plan(config)
