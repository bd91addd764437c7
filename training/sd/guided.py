"""Guidance distillation (Meng et al. 2023, stage 1) of the user's SD 1.x / 2.x UNet: one
w-conditioned network whose single call matches the two-call classifier-free-guided output.

Student: the checkpoint's UNet + one LoRA (``guided`` adapter, the OSEDiff target list) + a
zero-initialised ``cond_proj`` (``guidance_model.attach_cond_proj``): at step 0 it IS the base
model's conditional output, at every w. Teacher: the same UNet with the adapter disabled and no w
(no second copy in memory). Each step, on real data (Meng's recipe, not teacher samples):

    z0 = VAE(HR crop) (posterior mode x scaling factor),  t ~ U[20, 980) (schedule-shifted),
    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps,  w ~ U[w_min, w_max] per sample,
    target = (1 + w) UNet(z_t, t, prompt) - w UNet(z_t, t, negative prompt)   (no gradient)
    loss = MSE(student(z_t, t, prompt, w), target)

in the model's own parameterisation (eps or v; the CFG map is the same in each, see
``guidance_model.guided_output``). The uncond branch is the negative prompt, as in the OSEDiff real
score it replaces. Meng's loss weight omega(lambda_t) is not specified beyond "as the teacher's"
[recall]; we use the plain output MSE, the teacher's own diffusion loss weight.

Run folder, resume, EMA, accelerate and mixed precision as the OSEDiff trainer; the export
``guided_lora.safetensors`` is the w-conditioned file of ``onestep_sr.sd.guidance`` (kohya LoRA keys
+ ``cond_proj``), which ``osediff --real-score`` and the OneStep SD Upscale node read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from onestep_sr.checkpoint import write_safetensors_atomic
from onestep_sr.sd.guidance import COND_PROJ_KEY, CONVENTION, EMBED_DIM

from . import osediff_losses as L
from ..common.data import CaptionedPairDataset
from .run_base import SDRunOptions, SDRunState
from .guidance_model import attach_cond_proj, conditioned, guided_output

GUIDED_FILE = "guided_lora.safetensors"
ADAPTER = "guided"


def parse_range(text: str, what: str = "--w-range") -> tuple[float, float]:
    """``"2,10"`` -> (2.0, 10.0), refused with a sentence unless two finite numbers, low <= high."""
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{what} must be two numbers 'W_MIN,W_MAX' (w = CFG scale - 1), got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high or low < 0:
        raise ValueError(f"{what} must satisfy 0 <= W_MIN <= W_MAX (finite), got {text!r}")
    return low, high


@dataclass
class GuidedConfig(SDRunOptions):
    lr: float = 1e-4
    warmup: int = 100
    w_range: str = "2,10"  # w ~ U[W_MIN, W_MAX] (CFG scale 3 - 11), the spec's default
    embed_dim: int = EMBED_DIM

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_range(self.w_range)
        if self.embed_dim < 4 or self.embed_dim % 2:
            raise ValueError(f"--embed-dim must be even and >= 4, got {self.embed_dim}")


class GuidedRun(SDRunState):
    """State of one guidance-distillation run; :meth:`train` does the work."""

    def __init__(self, config: GuidedConfig):
        from .osediff_model import add_full_adapter, trainable

        self.config = c = config
        self.out = Path(c.out)
        self.w_range = parse_range(c.w_range)
        sd = self.load_base()
        torch.manual_seed(c.seed)
        unet = sd.unet
        unet.requires_grad_(False)
        self.modules = add_full_adapter(unet, c.rank, c.lora_alpha, ADAPTER)
        attach_cond_proj(unet, c.embed_dim).requires_grad_(True)
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.vae = sd.vae.requires_grad_(False).to(self.accelerator.device)
        self.text_encoder = sd.text_encoder.to(self.accelerator.device)
        self._embeddings: dict[str, torch.Tensor] = {}
        self.params = trainable(unet, "")
        self.optimizer = self.adamw(list(self.params.values()), lr=c.lr, betas=(0.9, 0.999),
                                    weight_decay=c.weight_decay)
        warm = max(1, c.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.ema = {k: v.detach().float().cpu().clone() for k, v in self.params.items()}
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._resume()
        data = CaptionedPairDataset(self.images, c.gt_size, 4, "bicubic", seed=c.seed, augment=c.augment, prompt=c.prompt)
        self.loader = self.make_loader(data)  # per-process batches of the global one (common/distributed.py)
        self.unet, self.optimizer, self.loader = self.accelerator.prepare(unet, self.optimizer, self.loader)

    # --- pieces ---

    def _rng(self, step: int) -> torch.Generator:
        """The same on every process: draws are for the global micro-batch (``mine`` keeps this
        process's rows)."""
        return self.rng((self.config.seed * 1_000_003 + step) * 1024)

    @torch.no_grad()
    def latents(self, gt: torch.Tensor) -> torch.Tensor:
        """HR crops in [0, 1] -> scaled VAE latents (posterior mode)."""
        x = gt.to(self.accelerator.device) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * float(self.vae.config.scaling_factor)

    def draw(self, z0: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, w) of a micro-batch: functions of (seed, micro-step)."""
        g, n = self._rng(step), z0.shape[0]
        t = self.t_map[self.mine(lambda shape: torch.randint(*L.VSD_T_RANGE, shape, generator=g), n)].to(z0.device)
        noise = self.mine(lambda shape: torch.randn(shape, generator=g), n, *z0.shape[1:]).to(z0.device, z0.dtype)
        low, high = self.w_range
        w = low + (high - low) * self.mine(lambda shape: torch.rand(shape, generator=g), n)
        return L.add_noise(z0, noise, t, self.alphas_cumprod), t, w

    @torch.no_grad()
    def teacher(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, negative: torch.Tensor,
                w: torch.Tensor) -> torch.Tensor:
        """The two-call CFG output at ``w`` of the base model (adapter off, no w)."""
        unet = self.accelerator.unwrap_model(self.unet)
        unet.disable_adapters()
        try:
            both = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, context]))
        finally:
            unet.enable_adapters()
        uncond, cond = both.sample.float().chunk(2)
        return guided_output(uncond, cond, w)

    def student(self, z_t, t, context, w) -> torch.Tensor:
        return conditioned(self.unet, z_t, t, context, w)

    def loss(self, gt: torch.Tensor, prompts, step: int) -> torch.Tensor:
        context = self.embeddings(list(prompts))
        negative = self.embeddings([self.config.negative_prompt] * len(prompts))
        z_t, t, w = self.draw(self.latents(gt), step)
        target = self.teacher(z_t, t, context, negative, w)
        return L.regulariser_loss(self.student(z_t, t, context, w), target)

    # --- checkpoints (save / resume: run_base.SDRunState) and export ---

    def trainable_params(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    def export(self, use_ema: bool = True, path: Path | None = None) -> Path:
        from .osediff_export import guided_file_tensors

        c = self.config
        weights = self.ema if use_ema else {k: v.detach().cpu() for k, v in self.params.items()}
        unet = self.accelerator.unwrap_model(self.unet)
        tensors, metadata = guided_file_tensors(self, weights, unet, self.w_range)
        metadata.update({"trained_with": "onestep-sr train guided", "loss": "output MSE to (1 + w) out_c - w out_u",
                         "negative_prompt": c.negative_prompt, "steps": str(self.step),
                         "weights": "ema" if use_ema else "current",
                         "losses_last_logged": json.dumps({k: round(v, 6) for k, v in self.last_losses.items()})})
        dst = Path(path or self.out / GUIDED_FILE)
        write_safetensors_atomic(tensors, metadata, dst)
        return dst

    # --- the loop (run_base.SDRunState.train) ---

    EXPORT_FILE = GUIDED_FILE

    def networks(self) -> tuple[torch.nn.Module, ...]:
        return (self.unet,)

    def ema_params(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    def micro_step(self, batch, micro: int) -> dict[str, torch.Tensor]:
        _lq, gt, prompts = batch
        loss = self.loss(gt, prompts, micro)
        self.check_finite(loss, "loss", self.step, "lower --lr")
        acc = self.accelerator
        acc.backward(loss)
        if acc.sync_gradients and self.config.grad_clip > 0:
            acc.clip_grad_norm_(list(self.params.values()), self.config.grad_clip)
        self.optimizer.step()
        self.step_scheduler()
        self.optimizer.zero_grad(set_to_none=True)
        return {"total": loss}


__all__ = ["GuidedConfig", "GuidedRun", "GUIDED_FILE", "COND_PROJ_KEY", "CONVENTION", "parse_range"]
