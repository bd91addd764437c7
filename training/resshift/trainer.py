"""One training loop for the ResShift-space methods, on accelerate: the ResShift teacher
(``resshift``), SinSR one-step distillation (``sinsr``) and YONOS scale distillation (``yonos``: a
frozen teacher at scale s/2 gives the x0 targets of a student at scale s that starts as the teacher).

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

from onestep_sr.checkpoint import atomic_write_text, load_denoiser, write_safetensors_atomic
from onestep_sr.model import SCHEDULES
from onestep_sr.model_info import ModelInfo, read_model_info, save_model
from onestep_sr.models import (PIXEL_AUTOENCODER, DenoiserConfig, PixelSpaceAutoencoder, PixelSpaceConfig,
                               build_denoiser, lq_condition, zero_init_outputs_)
from onestep_sr.models.configs import LQ_MODES
from onestep_sr.pipeline import SCALE, bicubic_upscale

from ..common.data import CoupledPairDataset, ImageSet, PairDataset
from ..common.distributed import (batch_line, global_rows, make_accelerator, mean_over_processes, resumed_samples,
                                  sample_loader, samples_per_step)
from ..common.options import check_common
from .losses import (multiscale_mse, per_sample_mse, progressive_loss, resshift_loss, restore_loss, sinsr_losses,
                     yonos_losses)
from ..common.runs import (CsvLog, checkpoint_dirs, commit_checkpoint, ema_decay, ema_update, resume_newest,
                   save_run_state, staging_dir)

MODES = ("resshift", "sinsr", "yonos", "progressive", "restore")
DISTILLING = ("sinsr", "yonos", "progressive")  # modes that start from --teacher
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
    # compact's width, three levels (LR, 1/2, 1/4) instead of one: 5x the parameters (1.67 M) and
    # ~4x the receptive field at about the same CPU time per pixel. Tried for the default model
    # (issue 28): with the same recipe it was 0.1 dB below compact on clean val and no better on
    # degraded LR, so the bundled model stays compact (docs/training.md)
    "compact_unet": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=(2, 2, 2),
                         attention_resolutions=(), mid_attention=False, residual="lq_bicubic", image_size=64),
    "official": {},
}


@dataclass
class TrainConfig:
    mode: str  # "resshift" (teacher), "sinsr" (one-step student) or "yonos" (scale distillation)
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
    scale: int = 0  # LR scale of the pairs; 0: 4 (resshift), the teacher's (sinsr), twice the teacher's (yonos)
    lq_mode: str = ""  # LR condition of a new network: "lq3" or "unshuffle48"; "": lq3 at x4, else unshuffle48
    teacher: str | None = None  # sinsr, yonos: the teacher checkpoint (the student starts from it)
    lambda_distill: float = 1.0  # sinsr: weights of the three terms (equal as released)
    lambda_inverse: float = 1.0
    lambda_gt: float | None = None  # sinsr: 1 (as released); yonos: weight of the GT term, 0 (the paper's loss)
    last_step_weight: float = 0.25  # yonos: share of samples at t = T-1, the step a one-step sampler calls
    multiscale_loss: bool = False  # x0 terms measured at 1, 1/2, 1/4, 1/8 resolution (simple diffusion's multiscale loss)
    init: str | None = None  # resshift: start from these weights
    gan_weight: float = 0.0  # restore: > 0 adds the adversarial term (resshift/adversarial.py), L1 instead of MSE
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
        if self.mode == "restore" and not self.init:
            raise ValueError("restore fine-tunes a one-step model: give it with --init")
        if not (self.gan_weight >= 0 and math.isfinite(self.gan_weight)):
            raise ValueError(f"--gan-weight must be 0 or more, got {self.gan_weight}")
        if self.gan_weight and self.mode != "restore":
            raise ValueError("--gan-weight applies to restore only")
        if self.mode in DISTILLING and not self.teacher:
            raise ValueError(f"{self.mode} distillation needs --teacher (a trained ResShift checkpoint)")
        if self.lambda_gt is None:
            self.lambda_gt = 1.0 if self.mode == "sinsr" else 0.0
        if self.lq_mode and self.lq_mode not in LQ_MODES:
            raise ValueError(f"unknown lq_mode {self.lq_mode!r}; use one of {', '.join(LQ_MODES)}")
        if self.scale not in (0, 2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8 (0: the method's default), got {self.scale}")
        if not 0 <= self.last_step_weight <= 1:
            raise ValueError(f"last_step_weight is a share of the batch in [0, 1], got {self.last_step_weight}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if not (self.kappa >= 0 and math.isfinite(self.kappa)):
            raise ValueError(f"kappa must be a positive number (0: the schedule's own), got {self.kappa}")
        if not (self.min_noise_level >= 0 and math.isfinite(self.min_noise_level)):
            raise ValueError(f"min_noise_level must be a positive number (0: the schedule's own), got {self.min_noise_level}")
        weights = (self.lambda_distill, self.lambda_inverse, self.lambda_gt)
        if self.mode == "sinsr" and not all(w >= 0 and math.isfinite(w) for w in weights) or not any(weights):
            raise ValueError(f"the SinSR loss weights must be >= 0 and not all 0, got {weights}")
        if min(self.steps, self.batch_size, self.grad_accum) < 1:
            raise ValueError("steps, batch size and gradient accumulation must be at least 1")
        check_common(self)
        if self.arch not in ARCHS:
            read_arch(self.arch)


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


def read_arch(arch: str) -> dict[str, Any]:
    """The DenoiserConfig fields of ``--arch``: a name of ARCHS or a JSON file of them."""
    if arch in ARCHS:
        return dict(ARCHS[arch])
    try:
        fields = json.loads(Path(arch).read_text())
    except (OSError, ValueError) as exc:
        reason = "no such file" if not Path(arch).exists() else getattr(exc, "strerror", None) or exc
        raise ValueError(f"--arch {arch}: neither one of {', '.join(ARCHS)} nor a readable JSON file of "
                         f"DenoiserConfig fields ({reason})") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--arch {arch}: expected a JSON object of DenoiserConfig fields")
    return fields


def denoiser_config(arch: str, autoencoder: torch.nn.Module, lq_mode: str = "lq3") -> DenoiserConfig:
    fields = read_arch(arch)
    channels = autoencoder.config.embed_dim
    lq_channels = 48 if lq_mode == "unshuffle48" else 3
    return DenoiserConfig(**{**fields, "in_channels": channels + lq_channels, "out_channels": channels,
                             "lq_mode": lq_mode})


def load_start(path: str) -> tuple[torch.nn.Module, ModelInfo | None]:
    return load_denoiser(path), read_model_info(path)


# --- the run -----------------------------------------------------------------------------------


class Run:
    """State of one training run; :meth:`train` does the work."""

    def __init__(self, config: TrainConfig):
        self.config = c = config
        self.out = Path(c.out)
        images = ImageSet(c.data, c.gt_size)  # every bad file named before any model is built
        # several processes (torchrun / accelerate launch): see common/distributed.py
        self.accelerator = make_accelerator(gradient_accumulation_steps=c.grad_accum, mixed_precision=c.mixed_precision)
        device = self.accelerator.device
        self.autoencoder = build_autoencoder(c.autoencoder, device).to(device)
        self.schedule = SCHEDULES[c.schedule]
        if c.kappa:
            self.schedule = replace(self.schedule, kappa=c.kappa)
        if c.min_noise_level:
            self.schedule = replace(self.schedule, min_noise_level=c.min_noise_level)
        self.teacher, self.teacher_scale, self.levels, self.teacher_levels = None, None, None, None
        self.scale = c.scale or SCALE
        if c.mode in DISTILLING:
            teacher, info = load_start(c.teacher)
            if info and info.autoencoder != c.autoencoder:
                raise ValueError(f"the teacher works with the {info.autoencoder!r} autoencoder, not {c.autoencoder!r}")
            if info:  # the student learns from the teacher's predictions: the teacher's schedule
                self.schedule = info.resshift_schedule()
            self.teacher_scale = info.scale if info else SCALE
            self.scale = self._student_scale(c, self.teacher_scale)
            self.teacher = teacher.to(device).eval().requires_grad_(False)
            model = load_denoiser(c.teacher)  # the student starts as the teacher
            if c.mode == "progressive":  # every other level of the teacher's grid
                self.teacher_levels = (info.levels if info and info.levels else
                                       list(range(self.schedule.steps - 1, -1, -1)))
                if len(self.teacher_levels) < 2:
                    raise ValueError(f"{c.teacher} already runs in one step: nothing to halve")
                self.levels = self.teacher_levels[::2]
        elif c.init:
            model, info = load_start(c.init)
            if c.mode == "restore" and info:  # a one-step model keeps its own schedule and scale
                self.schedule, self.scale = info.resshift_schedule(), info.scale
        else:
            torch.manual_seed(c.seed)
            lq_mode = c.lq_mode or ("lq3" if self.scale == SCALE else "unshuffle48")
            model = zero_init_outputs_(build_denoiser(denoiser_config(c.arch, self.autoencoder, lq_mode)))
        self.lq_mode = model.config.lq_mode
        pixel = c.autoencoder == PIXEL_AUTOENCODER
        self.mse = multiscale_mse(SCALE if pixel else 1) if c.multiscale_loss else per_sample_mse
        if c.lq_mode and c.lq_mode != self.lq_mode:
            raise ValueError(f"--lq-mode {c.lq_mode} differs from the starting model's {self.lq_mode}")
        if self.lq_mode == "lq3" and self.scale != SCALE:
            raise ValueError(f"a model with the LR image as its condition (lq3) trains at x{SCALE} only; "
                             f"use --lq-mode unshuffle48 for x{self.scale}")
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(c, s))
        self.step, self.samples = 0, 0  # optimiser steps done, pairs used (all processes)
        self._resume(model)
        if c.mode == "yonos":
            data = CoupledPairDataset(images, c.gt_size, self.scale, c.degradation, seed=c.seed, augment=c.augment,
                                      teacher_scale=self.teacher_scale)
        else:
            data = PairDataset(images, c.gt_size, self.scale, c.degradation, seed=c.seed, augment=c.augment)
        self.loader = sample_loader(data, self.samples, c.steps - self.step, c, self.accelerator)
        # the scheduler is stepped once per optimiser step by the loop (accelerate's wrapper would
        # step it once per process: the warm-up and decay would run N times too fast)
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, self.optimizer, self.loader)

    @staticmethod
    def _student_scale(c: TrainConfig, teacher_scale: int) -> int:
        if c.mode != "yonos":
            if c.scale and c.scale != teacher_scale:
                raise ValueError(f"{c.mode} keeps the teacher's scale x{teacher_scale}, not --scale {c.scale}")
            return teacher_scale
        scale = c.scale or 2 * teacher_scale
        if scale <= teacher_scale:
            raise ValueError(f"scale distillation needs a student scale above the teacher's x{teacher_scale}, got x{scale}")
        return scale

    # --- checkpoints ---

    def _checkpoint_dirs(self) -> list[Path]:
        return checkpoint_dirs(self.out)

    def _resume(self, model: torch.nn.Module) -> None:
        resumed = resume_newest(self.out, "model.safetensors", model.load_state_dict, self.optimizer, self.scheduler)
        if resumed:
            self.ema, self.step, state = resumed
            self.samples = resumed_samples(state, self.step, self.config)

    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N/``, written to a temporary folder first, then renamed."""
        tmp, final = staging_dir(self.out, self.step)
        model = self.accelerator.unwrap_model(self.model)
        write_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                 {"config": json.dumps(model.config.to_dict())}, tmp / "model.safetensors")
        save_run_state(tmp, self.step, self.ema, self.optimizer, self.scheduler, asdict(self.config),
                       {"samples": self.samples, "processes": self.accelerator.num_processes})
        self.save_extra(tmp)
        return commit_checkpoint(tmp, final, self.out, self.config.keep)

    def save_extra(self, tmp: Path) -> None:
        """More state of a subclass's run, written into the staging folder before it is committed."""

    def export(self, use_ema: bool = True) -> Path:
        """``model.safetensors`` + ``model.json``: the (EMA) weights with their model info."""
        model = self.accelerator.unwrap_model(self.model)
        net = build_denoiser(model.config)
        net.load_state_dict(self.ema if use_ema else {k: v.cpu() for k, v in model.state_dict().items()})
        sampler = "one_step" if self.config.mode in (*DISTILLING, "restore") else "stochastic"
        if self.levels is not None and len(self.levels) > 1:
            sampler = "deterministic"
        description = f"{self.config.mode} model trained with onestep-sr train"
        if self.config.mode == "yonos":
            description += f" (scale-distilled from a x{self.teacher_scale} teacher)"
        if self.levels is not None:
            description += f" ({len(self.levels)} step(s), levels {self.levels})"
        info = ModelInfo(autoencoder=self.config.autoencoder, scale=self.scale, schedule=asdict(self.schedule),
                         sampler=sampler, description=description, levels=self.levels)
        path, _ = save_model(self.out / "model.safetensors", net, info)
        return path

    # --- steps ---

    @staticmethod
    def for_config(config: TrainConfig) -> "Run":
        """The run of ``config``: an adversarial one for ``restore --gan-weight W``."""
        if config.gan_weight:
            from .adversarial import AdversarialRun

            return AdversarialRun(config)
        return Run(config)

    def _inputs(self, lq: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(y = Enc(bicubic x``scale`` of lq), the LR condition) for ``lq`` in [0, 1]."""
        lq = lq * 2 - 1
        with torch.no_grad():
            return self.autoencoder.encode(bicubic_upscale(lq, scale)), lq_condition(lq, self.lq_mode, scale)

    def draws(self, batch: tuple[torch.Tensor, ...], micro: int):
        """(x0 = Enc(gt), y, the LR condition, noise, the generator, global rows, this process's
        rows) of one micro-batch: what every loss starts from."""
        lq, gt = batch[0], batch[-1]
        with torch.no_grad():
            x0 = self.autoencoder.encode(gt * 2 - 1)
        y, cond = self._inputs(lq, self.scale)
        # drawn for the global micro-batch, this process's rows kept (common/distributed.py)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + micro)
        rows, mine = global_rows(self.accelerator, x0.shape[0])
        noise = torch.randn((rows, *x0.shape[1:]), generator=generator)[mine].to(x0.device)
        return x0, y, cond, noise, generator, rows, mine

    def losses(self, batch: tuple[torch.Tensor, ...], micro: int) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch (``batch``: (lq, gt), or (lq, lq_teacher, gt) for yonos)."""
        c = self.config
        x0, y, cond, noise, generator, rows, mine = self.draws(batch, micro)
        if c.mode == "sinsr":
            weights = (c.lambda_distill, c.lambda_inverse, c.lambda_gt)
            return sinsr_losses(self.model, self.teacher, self.schedule, x0, y, cond, noise, weights, self.mse)
        if c.mode == "restore":
            return {"total": restore_loss(self.model, self.schedule, x0, y, cond, noise, self.mse)}
        if c.mode == "progressive":
            index = torch.randint(0, len(self.levels), (rows,), generator=generator)[mine]
            return {"total": progressive_loss(self.model, self.teacher, self.schedule, self.teacher_levels, self.levels,
                                              x0, y, cond, index, noise, self.mse)}
        t = torch.randint(0, self.schedule.steps, (rows,), generator=generator)[mine]
        if c.mode == "resshift":
            return {"total": resshift_loss(self.model, self.schedule, x0, y, cond, t.to(x0.device), noise, self.mse)}
        last = torch.rand(rows, generator=generator)[mine] < c.last_step_weight  # our up-weighting of T-1
        t = torch.where(last, torch.full_like(t, self.schedule.steps - 1), t).to(x0.device)
        return yonos_losses(self.model, self.teacher, self.schedule, x0, (y, cond),
                            self._inputs(batch[1], self.teacher_scale), t, noise, c.lambda_gt, self.mse)

    def ema_decay(self) -> float:
        """The configured decay, warmed up as (1 + step) / (10 + step) so the average forgets the
        initial weights: a fixed 0.999 still holds 37 % of them after 1000 steps."""
        return ema_decay(self.config.ema, self.step)

    def _update_ema(self) -> None:
        ema_update(self.ema, self.accelerator.unwrap_model(self.model).state_dict().items(), self.ema_decay(),
                   copy_only=lambda k, v: k.endswith("relative_position_index"))

    def train(self, progress: bool = True) -> Path:
        """Train to ``config.steps``; returns the export path."""
        c, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:  # one process writes config.json, log.csv, checkpoints and the export
            atomic_write_text(self.out / "config.json", json.dumps(asdict(c), indent=1) + "\n")
            print(batch_line(c.mode, c, acc), flush=True)
        bar = None
        if progress and acc.is_main_process:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc=c.mode, dynamic_ncols=True)
        try:  # closed on an error or Ctrl-C too, so the bar is not redrawn after the error's line
            started, sums, count = time.perf_counter(), {}, 0
            micro = self.step * c.grad_accum
            self.model.train()
            with CsvLog(self.out / "log.csv", self.step, enabled=acc.is_main_process) as log:
                for batch in self.loader:
                    with self.accelerator.accumulate(self.model):
                        parts = self.losses(batch, micro)
                        loss = parts["total"].mean()
                        if not math.isfinite(loss.item()):
                            raise FloatingPointError(f"the loss is {loss.item()} at step {self.step}; lower --lr "
                                                     "or use fp32 (--mixed-precision no)")
                        self.accelerator.backward(loss)
                        self.optimizer.step()
                        if acc.sync_gradients and not self.optimizer.step_was_skipped:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    micro += 1
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach().mean())
                    count += 1
                    if not self.accelerator.sync_gradients:
                        continue
                    self.step += 1
                    self.samples += samples_per_step(c, acc)
                    self._update_ema()
                    if bar:
                        bar.update(1)
                        bar.set_postfix(loss=f"{sums['total'] / count:.4g}")
                    if self.step % c.log_every == 0 or self.step == c.steps:
                        means = mean_over_processes(acc, {k: v / count for k, v in sums.items()})
                        log.write({"step": self.step, **{f"loss_{k}": v for k, v in means.items()},
                                   "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started,
                                   "global_batch": samples_per_step(c, acc)})
                        sums, count = {}, 0
                    if self.step % c.save_every == 0 or self.step == c.steps:
                        acc.wait_for_everyone()
                        if acc.is_main_process:
                            self.save_checkpoint()
        finally:
            if bar:
                bar.close()
        self.model.eval()
        path = self.export() if acc.is_main_process else self.out / "model.safetensors"
        acc.wait_for_everyone()  # every process returns once the export is there (progressive's next round reads it)
        return path
