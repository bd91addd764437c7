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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import atomic_write_text, write_safetensors_atomic
from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod
from onestep_sr.sd.guidance import COND_PROJ_KEY, CONVENTION, EMBED_DIM
from onestep_sr.sd.lora import DEFAULT_ALPHA

from . import osediff_losses as L
from ..common.data import AUGMENTS, CaptionedPairDataset
from ..common.runs import (CsvLog, checkpoint_dirs, commit_checkpoint, ema_decay, ema_update, restore_run_state,
                           save_run_state, staging_dir)
from .guidance_model import attach_cond_proj, conditioned, guided_output
from .osediff import NEGATIVE_PROMPT
from .schedule_shift import native_size, resolve_shift, shift_table

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
class GuidedConfig:
    checkpoint: str  # SD 1.x / 2.x single file or diffusers folder
    data: str  # folder of HR images (captions: <stem>.txt beside an image)
    out: str  # run folder
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup: int = 100
    grad_clip: float = 1.0
    ema: float = 0.999
    gt_size: int = 512
    w_range: str = "2,10"  # w ~ U[W_MIN, W_MAX] (CFG scale 3 - 11), the spec's default
    embed_dim: int = EMBED_DIM
    schedule_shift: str = "auto"
    augment: str = "flip"
    rank: int = 4
    lora_alpha: float = DEFAULT_ALPHA
    prompt: str = ""
    negative_prompt: str = NEGATIVE_PROMPT
    family: str | None = None
    prediction_type: str | None = None
    config_dir: str | None = None
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not Path(self.checkpoint).exists():
            raise FileNotFoundError(f"SD checkpoint not found: {self.checkpoint} (give an SD 1.x/2.x "
                                    ".safetensors file or a diffusers folder)")
        parse_range(self.w_range)
        resolve_shift(self.schedule_shift, self.gt_size, 512)
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}")
        if self.gt_size % 32:
            raise ValueError(f"--gt-size must be a multiple of 32, got {self.gt_size}")
        if self.embed_dim < 4 or self.embed_dim % 2:
            raise ValueError(f"--embed-dim must be even and >= 4, got {self.embed_dim}")
        if min(self.steps, self.batch_size, self.grad_accum, self.rank) < 1:
            raise ValueError("steps, batch size, gradient accumulation and rank must be at least 1")


class GuidedRun:
    """State of one guidance-distillation run; :meth:`train` does the work."""

    def __init__(self, config: GuidedConfig):
        from accelerate import Accelerator

        from onestep_sr.sd.checkpoint import load_sd_model

        from .osediff_model import add_full_adapter, trainable

        self.config = c = config
        self.out = Path(c.out)
        self.w_range = parse_range(c.w_range)
        self.accelerator = Accelerator(gradient_accumulation_steps=c.grad_accum, mixed_precision=c.mixed_precision)
        self.sd = sd = load_sd_model(c.checkpoint, family=c.family, prediction_type=c.prediction_type,
                                     config_dir=c.config_dir)
        self.prediction_type = sd.prediction_type
        self.alphas_cumprod = scaled_linear_alphas_cumprod().float()
        self.schedule_shift = resolve_shift(c.schedule_shift, c.gt_size, native_size(sd.unet))
        self.t_map = shift_table(self.alphas_cumprod, self.schedule_shift)
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
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=c.lr, betas=(0.9, 0.999),
                                           weight_decay=c.weight_decay)
        warm = max(1, c.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.ema = {k: v.detach().float().cpu().clone() for k, v in self.params.items()}
        self.step = 0
        self.last_losses: dict[str, float] = {}
        self._resume()
        data = CaptionedPairDataset(c.data, c.gt_size, 4, "bicubic", seed=c.seed, augment=c.augment, prompt=c.prompt)
        per_step = c.batch_size * c.grad_accum * self.accelerator.num_processes
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, range(self.step * per_step, c.steps * per_step)),
            batch_size=c.batch_size, shuffle=False, num_workers=int(c.extra.get("workers", 0)))
        self.unet, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            unet, self.optimizer, self.loader, self.scheduler)

    # --- pieces ---

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        from onestep_sr.sd.prompt import encode_prompt

        for p in set(prompts) - set(self._embeddings):
            self._embeddings[p] = encode_prompt(self.text_encoder, p, self.sd.prompt)
        return torch.cat([self._embeddings[p] for p in prompts]).to(self.accelerator.device)

    def _rng(self, step: int) -> torch.Generator:
        key = (self.config.seed * 1_000_003 + step) * 1024 + self.accelerator.process_index
        return torch.Generator().manual_seed(key)

    @torch.no_grad()
    def latents(self, gt: torch.Tensor) -> torch.Tensor:
        """HR crops in [0, 1] -> scaled VAE latents (posterior mode)."""
        x = gt.to(self.accelerator.device) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * float(self.vae.config.scaling_factor)

    def draw(self, z0: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_t, t, w) of a micro-batch: functions of (seed, micro-step)."""
        g = self._rng(step)
        t = self.t_map[torch.randint(*L.VSD_T_RANGE, (z0.shape[0],), generator=g)].to(z0.device)
        noise = torch.randn(z0.shape, generator=g).to(z0.device, z0.dtype)
        low, high = self.w_range
        w = low + (high - low) * torch.rand(z0.shape[0], generator=g)
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

    # --- checkpoints and export ---

    def _resume(self) -> None:
        saved = checkpoint_dirs(self.out)
        if not saved:
            return
        weights = load_file(saved[-1] / "trainable.safetensors")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(weights[name])
        self.ema, self.step = restore_run_state(saved[-1], self.optimizer, self.scheduler)

    def save_checkpoint(self) -> Path:
        tmp, final = staging_dir(self.out, self.step)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.params.items()}
        write_safetensors_atomic(weights, {}, tmp / "trainable.safetensors")
        save_run_state(tmp, self.step, self.ema, self.optimizer, self.scheduler, asdict(self.config))
        return commit_checkpoint(tmp, final, self.out, self.config.keep)

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

    # --- the loop ---

    def train(self, progress: bool = True) -> Path:
        c, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            atomic_write_text(self.out / "config.json", json.dumps(asdict(c), indent=1) + "\n")
        bar = None
        if progress and acc.is_local_main_process:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc="guided", dynamic_ncols=True)
        started, total, count = time.perf_counter(), 0.0, 0
        micro = self.step * c.grad_accum
        self.unet.train()
        with CsvLog(self.out / "log.csv") as log:
            for _lq, gt, prompts in self.loader:
                with acc.accumulate(self.unet), acc.autocast():
                    loss = self.loss(gt, prompts, micro)
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"the loss is {loss.item()} at step {self.step}; lower --lr")
                    acc.backward(loss)
                    if acc.sync_gradients and c.grad_clip > 0:
                        acc.clip_grad_norm_(list(self.params.values()), c.grad_clip)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro += 1
                total, count = total + float(loss.detach()), count + 1
                if not acc.sync_gradients:
                    continue
                self.step += 1
                ema_update(self.ema, self.params.items(), ema_decay(c.ema, self.step))
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / count:.4g}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self.last_losses = {"guided": total / count}
                    if acc.is_main_process:
                        log.write({"step": self.step, "loss_guided": total / count,
                                   "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started})
                    total, count = 0.0, 0
                if self.step % c.save_every == 0 or self.step == c.steps:
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        self.save_checkpoint()
        if bar:
            bar.close()
        self.unet.eval()
        return self.export() if acc.is_main_process else self.out / GUIDED_FILE


__all__ = ["GuidedConfig", "GuidedRun", "GUIDED_FILE", "COND_PROJ_KEY", "CONVENTION", "parse_range"]
