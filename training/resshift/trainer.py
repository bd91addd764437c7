"""One training loop for the ResShift teacher and the SinSR student, on accelerate.

A run folder holds ``config.json``, ``log.csv`` (one row per logged step), ``checkpoints/step-N/``
(weights, EMA, optimiser; resumable) and the export ``model.safetensors`` + ``model.json`` that
``onestep_sr.load_model`` and the ComfyUI loader take directly.

Everything random is a function of (seed, step): the pairs (see ``data``), the timesteps and the
noise. A resumed run therefore continues exactly where the interrupted one stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import atomic_write_text, load_denoiser, write_safetensors_atomic
from onestep_sr.model import SCHEDULES
from onestep_sr.model_info import ModelInfo, read_model_info, save_model
from onestep_sr.models import (PIXEL_AUTOENCODER, DenoiserConfig, PixelSpaceAutoencoder, PixelSpaceConfig,
                               build_denoiser, zero_init_outputs_)
from onestep_sr.pipeline import SCALE, bicubic_upscale

from ..common.data import PairDataset
from .losses import resshift_loss, sinsr_losses
from ..common.runs import (CsvLog, checkpoint_dirs, commit_checkpoint, ema_decay, ema_update, restore_run_state,
                   save_run_state, staging_dir)

MODES = ("resshift", "sinsr")
ARCHS = {
    # CI-sized: seconds per hundred steps on a CPU
    "tiny": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(32,),
                 swin_embed_dim=32, num_head_channels=16, image_size=64),
    # a small Swin-UNet: a few MB
    "small": dict(model_channels=64, channel_mult=(1, 2), num_res_blocks=(2, 2), attention_resolutions=(32,),
                  swin_embed_dim=64, num_head_channels=32, image_size=64),
    # the bundled default model (chosen by measurement, see README "Training"): no attention, x0 as a
    # correction of the bicubic upsampled LR image; pixel space only
    "compact": dict(model_channels=32, channel_mult=(1,), num_res_blocks=(3,), attention_resolutions=(),
                    mid_attention=False, residual="lq_bicubic", image_size=64),
    "official": {},
}


@dataclass
class TrainConfig:
    mode: str  # "resshift" (teacher) or "sinsr" (one-step student)
    data: str  # folder of HR images
    out: str  # run folder
    steps: int = 1000  # optimiser steps
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    warmup: int = 0
    lr_decay: str = "none"  # "none" (constant after the warm-up) or "cosine" (to 0 at the last step)
    ema: float = 0.999  # EMA decay of the exported weights (warmed up, see Run.ema_decay)
    gt_size: int = 256
    degradation: str = "realesrgan"
    augment: str = "flip"  # "flip" or "all" (+ 90-degree rotations and RGB channel permutations)
    autoencoder: str = PIXEL_AUTOENCODER  # "pixel" or a VQ-f4 checkpoint path / registry name
    arch: str = "tiny"  # a name of ARCHS or a JSON file of DenoiserConfig fields
    schedule: str = "T15"
    kappa: float = 0.0  # noise scale of the schedule; 0 keeps the named schedule's (2.0)
    min_noise_level: float = 0.0  # noise std at the first step, kappa sqrt(eta_0); 0 keeps the schedule's (0.04)
    teacher: str | None = None  # sinsr: the teacher checkpoint (the student starts from it)
    lambda_distill: float = 1.0  # sinsr: weights of the three terms (equal as released)
    lambda_inverse: float = 1.0
    lambda_gt: float = 1.0
    init: str | None = None  # resshift: start from these weights
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (GPU)
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep: int = 2  # checkpoints kept
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr_decay not in ("none", "cosine"):
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; use none or cosine")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "sinsr" and not self.teacher:
            raise ValueError("SinSR distillation needs --teacher (a trained ResShift checkpoint)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a positive number (0: the schedule's own), got {self.kappa}")
        if not (self.min_noise_level >= 0 and math.isfinite(self.min_noise_level)):
            raise ValueError(f"min_noise_level must be a positive number (0: the schedule's own), got {self.min_noise_level}")
        weights = (self.lambda_distill, self.lambda_inverse, self.lambda_gt)
        if not all(w >= 0 and math.isfinite(w) for w in weights) or not any(weights):
            raise ValueError(f"the SinSR loss weights must be >= 0 and not all 0, got {weights}")
        if min(self.steps, self.batch_size, self.grad_accum) < 1:
            raise ValueError("steps, batch size and gradient accumulation must be at least 1")


def lr_factor(config: TrainConfig, step: int) -> float:
    """The learning rate at ``step`` (0-based) as a fraction of ``lr``: linear warm-up, then
    constant or a cosine decay that reaches 0 at ``steps``."""
    factor = min(1.0, (step + 1) / max(1, config.warmup))
    if config.lr_decay == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
    return factor


# --- networks ----------------------------------------------------------------------------------


def build_autoencoder(spec: str, device: torch.device) -> torch.nn.Module:
    if spec == PIXEL_AUTOENCODER:
        return PixelSpaceAutoencoder(PixelSpaceConfig(scale=SCALE))
    from onestep_sr.checkpoint import load_autoencoder
    from onestep_sr.model import _weights_path

    path, _ = _weights_path(spec, "autoencoder", models_dir=None, offline=None, progress=None)
    return load_autoencoder(path, device=device).requires_grad_(False)


def denoiser_config(arch: str, autoencoder: torch.nn.Module) -> DenoiserConfig:
    if arch in ARCHS:
        fields = dict(ARCHS[arch])
    else:
        fields = json.loads(Path(arch).read_text())
    channels = autoencoder.config.embed_dim
    return DenoiserConfig(**{**fields, "in_channels": channels + 3, "out_channels": channels})


def load_start(path: str) -> tuple[torch.nn.Module, ModelInfo | None]:
    return load_denoiser(path), read_model_info(path)


# --- the run -----------------------------------------------------------------------------------


class Run:
    """State of one training run; :meth:`train` does the work."""

    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator

        self.config = c = config
        self.out = Path(c.out)
        self.accelerator = Accelerator(gradient_accumulation_steps=c.grad_accum, mixed_precision=c.mixed_precision)
        device = self.accelerator.device
        self.autoencoder = build_autoencoder(c.autoencoder, device).to(device)
        self.schedule = SCHEDULES[c.schedule]
        if c.kappa:
            self.schedule = replace(self.schedule, kappa=c.kappa)
        if c.min_noise_level:
            self.schedule = replace(self.schedule, min_noise_level=c.min_noise_level)
        self.teacher = None
        if c.mode == "sinsr":
            teacher, info = load_start(c.teacher)
            if info and info.autoencoder != c.autoencoder:
                raise ValueError(f"the teacher works with the {info.autoencoder!r} autoencoder, not {c.autoencoder!r}")
            if info:  # the student learns the teacher's trajectories: the teacher's schedule
                self.schedule = info.resshift_schedule()
            self.teacher = teacher.to(device).eval().requires_grad_(False)
            model = load_denoiser(c.teacher)  # the student starts as the teacher
        elif c.init:
            model = load_denoiser(c.init)
        else:
            torch.manual_seed(c.seed)
            model = zero_init_outputs_(build_denoiser(denoiser_config(c.arch, self.autoencoder)))
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(c, s))
        self.step = 0
        self._resume(model)
        data = PairDataset(c.data, c.gt_size, SCALE, c.degradation, seed=c.seed, augment=c.augment)
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, range(self.step * c.batch_size * c.grad_accum,
                                                c.steps * c.batch_size * c.grad_accum)),
            batch_size=c.batch_size, shuffle=False, num_workers=int(c.extra.get("workers", 0)))
        self.model, self.optimizer, self.loader, self.scheduler = self.accelerator.prepare(
            model, self.optimizer, self.loader, self.scheduler)

    # --- checkpoints ---

    def _checkpoint_dirs(self) -> list[Path]:
        return checkpoint_dirs(self.out)

    def _resume(self, model: torch.nn.Module) -> None:
        saved = self._checkpoint_dirs()
        if not saved:
            return
        model.load_state_dict(load_file(saved[-1] / "model.safetensors"))
        self.ema, self.step = restore_run_state(saved[-1], self.optimizer, self.scheduler)

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/``, written to a temporary folder first, then renamed."""
        tmp, final = staging_dir(self.out, self.step)
        model = self.accelerator.unwrap_model(self.model)
        write_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                 {"config": json.dumps(model.config.to_dict())}, tmp / "model.safetensors")
        save_run_state(tmp, self.step, self.ema, self.optimizer, self.scheduler, asdict(self.config))
        return commit_checkpoint(tmp, final, self.out, self.config.keep)

    def export(self, use_ema: bool = True) -> Path:
        """``model.safetensors`` + ``model.json``: the (EMA) weights with their model info."""
        model = self.accelerator.unwrap_model(self.model)
        net = build_denoiser(model.config)
        net.load_state_dict(self.ema if use_ema else {k: v.cpu() for k, v in model.state_dict().items()})
        sampler = "one_step" if self.config.mode == "sinsr" else "stochastic"
        info = ModelInfo(autoencoder=self.config.autoencoder, scale=SCALE, schedule=asdict(self.schedule),
                         sampler=sampler, description=f"{self.config.mode} model trained with onestep-sr train")
        path, _ = save_model(self.out / "model.safetensors", net, info)
        return path

    # --- steps ---

    def _latents(self, lq: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0 = Enc(gt), y = Enc(bicubic x4 of lq), lq) in the model's [-1, 1] domain."""
        lq, gt = lq * 2 - 1, gt * 2 - 1
        with torch.no_grad():
            return self.autoencoder.encode(gt), self.autoencoder.encode(bicubic_upscale(lq)), lq

    def losses(self, lq: torch.Tensor, gt: torch.Tensor, micro: int) -> dict[str, torch.Tensor]:
        x0, y, lq = self._latents(lq, gt)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + micro)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        if self.config.mode == "resshift":
            t = torch.randint(0, self.schedule.steps, (x0.shape[0],), generator=generator).to(x0.device)
            return {"total": resshift_loss(self.model, self.schedule, x0, y, lq, t, noise)}
        weights = (self.config.lambda_distill, self.config.lambda_inverse, self.config.lambda_gt)
        return sinsr_losses(self.model, self.teacher, self.schedule, x0, y, lq, noise, weights)

    def ema_decay(self) -> float:
        """The configured decay, warmed up as (1 + step) / (10 + step) so the average forgets the
        initial weights: a fixed 0.999 still holds 37 % of them after 1000 steps."""
        return ema_decay(self.config.ema, self.step)

    def _update_ema(self) -> None:
        ema_update(self.ema, self.accelerator.unwrap_model(self.model).state_dict().items(), self.ema_decay(),
                   copy_only=lambda k, v: k.endswith("relative_position_index"))

    def train(self, progress: bool = True) -> Path:
        """Train to ``config.steps``; returns the export path."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(asdict(c), indent=1) + "\n")
        bar = None
        if progress and self.accelerator.is_local_main_process:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc=c.mode, dynamic_ncols=True)
        started, sums, count = time.perf_counter(), {}, 0
        micro = self.step * c.grad_accum
        self.model.train()
        with CsvLog(self.out / "log.csv") as log:
            for lq, gt in self.loader:
                with self.accelerator.accumulate(self.model):
                    parts = self.losses(lq, gt, micro)
                    loss = parts["total"].mean()
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"the loss is {loss.item()} at step {self.step}; lower --lr "
                                                 "or use fp32 (--mixed-precision no)")
                    self.accelerator.backward(loss)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                micro += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach().mean())
                count += 1
                if not self.accelerator.sync_gradients:
                    continue
                self.step += 1
                self._update_ema()
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['total'] / count:.4g}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    row = {"step": self.step, **{f"loss_{k}": v / count for k, v in sums.items()},
                           "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started}
                    log.write(row)
                    sums, count = {}, 0
                if self.step % c.save_every == 0 or self.step == c.steps:
                    self.accelerator.wait_for_everyone()
                    if self.accelerator.is_main_process:
                        self.save_checkpoint()
        if bar:
            bar.close()
        self.model.eval()
        return self.export() if self.accelerator.is_main_process else self.out / "model.safetensors"
