"""OSEDiff-style one-step LoRA distillation from the user's SD 1.x / 2.x checkpoint.

Each step (a batch of HR crops, their Real-ESRGAN / bicubic LR and their prompts):

1. **generator update**: ``x_hat, z = G(LR)`` (see ``osediff_model.OneStepGenerator``), loss
   ``lambda_mse * MSE(x_hat, x_HQ) + lambda_perceptual * P(x_hat, x_HQ) + lambda_vsd * VSD(z)``
   where VSD uses the frozen base UNet with CFG between the negative prompt and the prompt (real
   score) and the LoRA regulariser without CFG (fake score), t ~ U[20, 980) (``osediff_losses``);
2. **regulariser update**: the fake-score LoRA's eps (or v) MSE on the detached ``z`` at
   t ~ U[0, 1000), with its own learning rate.

The two updates of a step are independent: the generator's VSD reads the regulariser without
gradient, and the regulariser learns from the generator's output detached, so the regulariser's
loss is the same before and after the generator's update. They therefore run as ONE AdamW step
with two parameter groups (betas 0.9 / 0.999, weight decay 1e-2, linear warm-up, each group's
gradient norm clipped on its own): the same numbers as two alternating optimisers, and under fp16
one loss scale per step, as accelerate's GradScaler expects (with two optimisers, accelerate
unscales both at each clipping and updates the scale twice per step, which corrupts accumulated
regulariser gradients). The run folder holds ``config.json``, ``log.csv``, ``checkpoints/step-N/``
(both adapters, conv_in, the VAE LoRA, EMA, the optimiser; resumed when the run is started again
on the same ``--out``) and
the export ``osediff_lora.safetensors`` + ``osediff_lora_vae.safetensors`` (``osediff_export``).
Timesteps and noise are functions of (seed, step), the pairs of (seed, index).

Scale curriculum (YONOS's scale distillation on this path, ../shared/specs/yonos.md 3.2 (ii-b),
our adaptation): train a x2 run first (``--scale 2``), then the x4 run from it (``--init X2_RUN``)
with ``--scale-teacher X2_RUN``: an extra ``lambda_scale * MSE(z_student(LR4), sg z_x2(LR2))`` on
the same HR crop with coupled degradations, on top of MSE + perceptual + VSD. Only the paper's
second reason applies (an easier task gives an accurate target): this generator has no noise
levels to adapt the target to.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import atomic_write_text, write_safetensors_atomic
from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod
from onestep_sr.sd.lora import DEFAULT_ALPHA

from . import osediff_losses as L
from ..common.data import AUGMENTS, DEGRADATIONS, CaptionedCoupledPairDataset, CaptionedPairDataset
from ..common.perceptual import PERCEPTUALS, build_perceptual
from .schedule_shift import native_size, resolve_shift, shift_table
from ..common.runs import (CsvLog, checkpoint_dirs, commit_checkpoint, ema_decay, ema_update, restore_run_state,
                   save_run_state, staging_dir)

NEGATIVE_PROMPT = ("painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, "
                   "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                   "signature, jpeg artifacts, deformed, lowres, over-smooth")
LORA_FILE = "osediff_lora.safetensors"


@dataclass
class OSEDiffConfig:
    checkpoint: str  # SD 1.x / 2.x single file or diffusers folder
    data: str  # folder of HR images (captions: <stem>.txt beside an image)
    out: str  # run folder
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    lr_regulariser: float = 5e-5
    weight_decay: float = 1e-2
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.999
    gt_size: int = 512
    scale: int = 4  # LR scale of the pairs (the generator resizes the LR to the HR crop size)
    init: str | None = None  # a run folder (its newest checkpoint): start from its weights
    scale_teacher: str | None = None  # the x(scale/2) run of the scale curriculum (a run folder)
    lambda_scale: float = 1.0  # weight of the latent term against the scale teacher
    schedule_shift: str = "auto"  # training timesteps shifted for crops above the native size: auto, none or a factor
    real_score: str | None = None  # a w-conditioned file (train guided): the real score in ONE call at w = cfg - 1
    guidance_range: str | None = None  # "W_MIN,W_MAX": the generator gets a guidance input, w drawn per sample
    export_guidance: float | None = None  # the w baked into the kohya LoRA (default: the range's middle)
    degradation: str = "realesrgan"
    augment: str = "flip"
    rank: int = 4
    lora_alpha: float = DEFAULT_ALPHA
    vae_lora: bool = True
    prompt: str = ""
    negative_prompt: str = NEGATIVE_PROMPT
    cfg: float = 7.5
    lambda_mse: float = 1.0
    lambda_perceptual: float = 2.0
    lambda_vsd: float = 1.0
    perceptual: str = "vae"
    lpips_weights: str | None = None  # --perceptual lpips: VGG16 + LPIPS weight file(s), comma-separated
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
                                    ".safetensors file, e.g. from ComfyUI/models/checkpoints, or a diffusers folder)")
        if self.perceptual not in PERCEPTUALS:
            raise ValueError(f"unknown perceptual loss {self.perceptual!r}; use one of {', '.join(PERCEPTUALS)}")
        if self.degradation not in DEGRADATIONS or self.augment not in AUGMENTS:
            raise ValueError(f"degradation must be one of {DEGRADATIONS}, augment one of {AUGMENTS}")
        resolve_shift(self.schedule_shift, self.gt_size, 512)  # the spelling; the size comes with the checkpoint
        if self.scale not in (2, 4, 8):  # with gt_size a multiple of 32 the LR size is whole
            raise ValueError(f"--scale must be 2, 4 or 8, got {self.scale}")
        if self.scale_teacher and self.scale < 4:
            raise ValueError("a scale teacher works at half the scale: --scale-teacher needs --scale 4 or 8")
        if self.gt_size % 32:
            raise ValueError(f"--gt-size must be a multiple of 32 (the LR is gt/4, the latent gt/8), got {self.gt_size}")
        if min(self.steps, self.batch_size, self.grad_accum, self.rank) < 1:
            raise ValueError("steps, batch size, gradient accumulation and rank must be at least 1")
        if min(self.lambda_mse, self.lambda_perceptual, self.lambda_vsd) < 0 or not math.isfinite(self.cfg):
            raise ValueError("loss weights must be >= 0 and cfg finite")
        if self.real_score is not None and not Path(self.real_score).is_file():
            raise FileNotFoundError(f"--real-score {self.real_score}: no such file (give the guided_lora.safetensors "
                                    "that `train guided` exported)")
        if self.guidance_range is not None:
            from .guided import parse_range

            low, high = parse_range(self.guidance_range, "--guidance-range")
            if self.scale_teacher:
                raise ValueError("--guidance-range with --scale-teacher is not supported (the x2 run has no guidance input)")
            if self.export_guidance is not None and not low <= self.export_guidance <= high:
                raise ValueError(f"--export-guidance {self.export_guidance} is outside --guidance-range {low:g},{high:g}")
        elif self.export_guidance is not None:
            raise ValueError("--export-guidance needs --guidance-range (a generator with a guidance input)")


class OSEDiffRun:
    """State of one OSEDiff training run; :meth:`train` does the work."""

    def __init__(self, config: OSEDiffConfig):
        from accelerate import Accelerator

        from onestep_sr.sd.checkpoint import load_sd_model

        from .osediff_model import build_networks, trainable

        self.config = c = config
        self.out = Path(c.out)
        lpips = build_perceptual("lpips", None, c.lpips_weights) if c.perceptual == "lpips" else None  # fail fast
        self.accelerator = Accelerator(gradient_accumulation_steps=c.grad_accum, mixed_precision=c.mixed_precision)
        device = self.accelerator.device
        self.sd = sd = load_sd_model(c.checkpoint, family=c.family, prediction_type=c.prediction_type,
                                     config_dir=c.config_dir)
        self.prediction_type = sd.prediction_type
        self.alphas_cumprod = scaled_linear_alphas_cumprod().float()
        self.schedule_shift = resolve_shift(c.schedule_shift, c.gt_size, native_size(sd.unet))
        self.t_map = shift_table(self.alphas_cumprod, self.schedule_shift)
        # "vae": a frozen copy of the VAE encoder taken before any LoRA is attached
        self.perceptual = lpips or build_perceptual(c.perceptual, sd.vae)
        if self.perceptual is not None:
            self.perceptual.net.to(device)
        torch.manual_seed(c.seed)  # the gaussian LoRA init
        generator, score, self.groups, self.vae_names = build_networks(sd, c.rank, c.lora_alpha, c.vae_lora)
        self.guidance_range = None
        if c.guidance_range is not None:  # Step B of the guidance spec: a w input on the generator
            from .guidance_model import attach_cond_proj
            from .guided import parse_range

            self.guidance_range = parse_range(c.guidance_range, "--guidance-range")
            attach_cond_proj(generator.unet)
        self.real_hooks = None
        if c.real_score is not None:  # the real score in one call: a w-conditioned file on the score UNet
            from onestep_sr.checkpoint import read_checkpoint
            from onestep_sr.sd.guidance import parse_guided

            from .guidance_model import HookedLora

            guided = parse_guided(*read_checkpoint(c.real_score), source=c.real_score)
            self.real_hooks = HookedLora(score.unet, guided, source=c.real_score)
            low, high = self.guidance_range or (c.cfg - 1, c.cfg - 1)
            if guided.w_range and not (guided.w_range[0] <= low and high <= guided.w_range[1]):
                warnings.warn(f"--real-score {c.real_score} was trained for w in {guided.w_range} but this run asks "
                              f"for w in [{low:g}, {high:g}] (w = cfg - 1): outside it the one-call score extrapolates")
        if c.gradient_checkpointing:
            for net in (generator.unet, generator.vae, score.unet):
                net.enable_gradient_checkpointing()
        self.text_encoder = sd.text_encoder.to(device)
        self._embeddings: dict[str, torch.Tensor] = {}
        self.gen_params = {**trainable(generator.unet, "unet."), **trainable(generator.vae, "vae.")}
        self.reg_params = trainable(score.unet, "reg.")
        if c.init:
            self._load_trainable(run_weights(c.init, generator_ema=True))
        self.scale_teacher = run_weights(c.scale_teacher, generator_ema=True) if c.scale_teacher else None
        self.optimizer = torch.optim.AdamW(
            [{"params": list(self.gen_params.values()), "lr": c.lr},
             {"params": list(self.reg_params.values()), "lr": c.lr_regulariser}],
            betas=(0.9, 0.999), weight_decay=c.weight_decay)
        warm = max(1, c.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.ema = {k: v.detach().float().cpu().clone() for k, v in self.gen_params.items()}
        self.step = 0
        self.last_losses: dict[str, float] = {}  # the last logged means (export header)
        self._resume()
        if self.scale_teacher is not None:
            data = CaptionedCoupledPairDataset(c.data, c.gt_size, c.scale, c.degradation, seed=c.seed, augment=c.augment,
                                               prompt=c.prompt, teacher_scale=c.scale // 2)
        else:
            data = CaptionedPairDataset(c.data, c.gt_size, c.scale, c.degradation, seed=c.seed, augment=c.augment,
                                        prompt=c.prompt)
        per_step = c.batch_size * c.grad_accum * self.accelerator.num_processes  # pairs per optimiser step
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(data, range(self.step * per_step, c.steps * per_step)),
            batch_size=c.batch_size, shuffle=False, num_workers=int(c.extra.get("workers", 0)))
        (self.generator, self.score, self.optimizer, self.loader, self.scheduler) = self.accelerator.prepare(
            generator, score, self.optimizer, self.loader, self.scheduler)

    # --- pieces ---

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        from onestep_sr.sd.prompt import encode_prompt

        for p in set(prompts) - set(self._embeddings):
            self._embeddings[p] = encode_prompt(self.text_encoder, p, self.sd.prompt)
        return torch.cat([self._embeddings[p] for p in prompts]).to(self.accelerator.device)

    def _rng(self, step: int, salt: int) -> torch.Generator:
        """Timesteps / noise of (seed, micro-step, what, process): each GPU draws its own."""
        key = ((self.config.seed * 1_000_003 + step) * 4 + salt) * 1024 + self.accelerator.process_index
        return torch.Generator().manual_seed(key)

    def _t_and_noise(self, z: torch.Tensor, low: int, high: int, generator: torch.Generator):
        """t ~ U[low, high) mapped through the schedule shift (the identity at native size), and noise."""
        t = self.t_map[torch.randint(low, high, (z.shape[0],), generator=generator)]
        noise = torch.randn(z.shape, generator=generator)
        return t.to(z.device), noise.to(z.device, z.dtype)

    def generator_losses(self, lq, gt, prompts, step: int,
                         lq_teacher: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"mse", "perceptual", "vsd", ("scale",) "total"}, z) of one micro-batch; ``lq_teacher``:
        the coupled x(scale/2) LR of the scale curriculum."""
        c = self.config
        context = self.embeddings(list(prompts))
        lq, x_hq = lq.to(context.device), gt.to(context.device) * 2 - 1
        size = tuple(x_hq.shape[-2:])
        target = None
        if lq_teacher is not None and c.lambda_scale:  # first: it swaps weights the graph must not see change
            target = self.teacher_latent(lq_teacher.to(context.device), context, size)
        w = self.guidance_weights(z_shape=lq.shape[0], step=step)
        z, x_hat = self.generator(lq, context, size, w if self.guidance_range else None)
        parts = {"mse": L.data_loss(x_hat, x_hq).mean()}
        total = c.lambda_mse * parts["mse"]
        if target is not None:
            parts["scale"] = (z.float() - target.float()).pow(2).mean()
            total = total + c.lambda_scale * parts["scale"]
        if self.perceptual is not None and c.lambda_perceptual:
            parts["perceptual"] = self.perceptual(x_hat.float(), x_hq).mean()
            total = total + c.lambda_perceptual * parts["perceptual"]
        if c.lambda_vsd:
            score = self.accelerator.unwrap_model(self.score)
            t, noise = self._t_and_noise(z, *L.VSD_T_RANGE, self._rng(step, 0))
            with torch.no_grad():
                z_t = L.add_noise(z.detach().float(), noise.float(), t, self.alphas_cumprod)
                x0_real = self.real_x0(z_t, t, context, w)
                x0_fake = L.score_x0(score, z_t, t, context, self.alphas_cumprod, self.prediction_type)
            parts["vsd"] = L.vsd_loss(z, x0_real, x0_fake)
            total = total + c.lambda_vsd * parts["vsd"]
        parts["total"] = total
        return parts, z

    def guidance_weights(self, z_shape: int, step: int) -> torch.Tensor:
        """Per-sample w of a micro-batch: U[guidance range] (a function of seed and step) for a
        generator with a guidance input, else the fixed ``cfg - 1``."""
        if self.guidance_range is None:
            return torch.full((z_shape,), self.config.cfg - 1.0)
        low, high = self.guidance_range
        return low + (high - low) * torch.rand(z_shape, generator=self._rng(step, 2))

    @torch.no_grad()
    def real_x0(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, w: torch.Tensor,
                one_call: bool | None = None) -> torch.Tensor:
        """The real score's x0 at guidance ``w`` (CFG scale 1 + w): the base UNet with two-call CFG
        against the negative prompt, or (``--real-score``) the w-conditioned file in ONE call."""
        score = self.accelerator.unwrap_model(self.score)
        one_call = self.real_hooks is not None if one_call is None else one_call
        if one_call:
            def guided(z, tt, ctx):
                with score.adapters_disabled(), self.real_hooks.active(w):
                    return score.unet(z, tt, encoder_hidden_states=ctx).sample
            return L.score_x0(guided, z_t, t, context, self.alphas_cumprod, self.prediction_type)
        negative = self.embeddings([self.config.negative_prompt] * z_t.shape[0])
        scale = (1.0 + w.float()).to(z_t.device).view(-1, *([1] * (z_t.dim() - 1)))
        return L.score_x0(score.real, z_t, t, context, self.alphas_cumprod, self.prediction_type,
                          negative=negative, guidance=scale)

    def regulariser_loss(self, z: torch.Tensor, prompts, step: int) -> torch.Tensor:
        context = self.embeddings(list(prompts))
        z = z.detach().float()
        t, noise = self._t_and_noise(z, *L.REGULARISER_T_RANGE, self._rng(step, 1))
        z_t = L.add_noise(z, noise, t, self.alphas_cumprod)
        target = L.diffusion_target(z, noise, t, self.alphas_cumprod, self.prediction_type)
        return L.regulariser_loss(self.score(z_t, t, context), target)

    @torch.no_grad()
    def teacher_latent(self, lq: torch.Tensor, context: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The scale teacher's latent: the same network with the teacher's generator weights swapped
        in for one forward (no second UNet in memory), then the student's weights put back."""
        own = {k: p.detach().clone() for k, p in self.gen_params.items()}
        generator = self.accelerator.unwrap_model(self.generator)
        try:
            for k, p in self.gen_params.items():
                p.copy_(self.scale_teacher[k].to(p))
            return generator.latent(lq, context, size)
        finally:
            for k, p in self.gen_params.items():
                p.copy_(own[k])

    def _load_trainable(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in {**self.gen_params, **self.reg_params}.items():
                if name in weights:
                    p.copy_(weights[name])

    # --- checkpoints ---

    def _resume(self) -> None:
        saved = checkpoint_dirs(self.out)
        if not saved:
            return
        weights = load_file(saved[-1] / "trainable.safetensors")
        with torch.no_grad():
            for name, p in {**self.gen_params, **self.reg_params}.items():
                p.copy_(weights[name])
        self.ema, self.step = restore_run_state(saved[-1], self.optimizer, self.scheduler)

    def save_checkpoint(self) -> Path:
        tmp, final = staging_dir(self.out, self.step)
        weights = {k: v.detach().cpu().contiguous() for k, v in {**self.gen_params, **self.reg_params}.items()}
        write_safetensors_atomic(weights, {}, tmp / "trainable.safetensors")
        save_run_state(tmp, self.step, self.ema, self.optimizer, self.scheduler, asdict(self.config))
        return commit_checkpoint(tmp, final, self.out, self.config.keep)

    def export(self, use_ema: bool = True, path: Path | None = None) -> Path:
        """The kohya LoRA (+ ``_vae`` sibling) from the EMA (or current) generator weights."""
        from .osediff_export import export_kohya

        weights = self.ema if use_ema else {k: v.detach().cpu() for k, v in self.gen_params.items()}
        return export_kohya(self, weights, path or self.out / LORA_FILE)

    # --- the loop ---

    def _update(self, loss: torch.Tensor) -> None:
        """Backward of both losses, each group's gradient norm clipped (after unscaling), one step."""
        acc = self.accelerator
        acc.backward(loss)
        if acc.sync_gradients and self.config.grad_clip > 0:
            acc.unscale_gradients(self.optimizer)
            for params in (self.gen_params, self.reg_params):
                torch.nn.utils.clip_grad_norm_(list(params.values()), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, progress: bool = True) -> Path:
        """Train to ``config.steps``; returns the exported LoRA path."""
        c, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            atomic_write_text(self.out / "config.json", json.dumps(asdict(c), indent=1) + "\n")
        bar = None
        if progress and acc.is_local_main_process:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc="osediff", dynamic_ncols=True)
        started, sums, count = time.perf_counter(), {}, 0
        micro = self.step * c.grad_accum
        self.generator.train()
        self.score.train()
        with CsvLog(self.out / "log.csv") as log:
            for batch in self.loader:
                lq, gt, prompts = batch[0], batch[-2], batch[-1]
                lq_teacher = batch[1] if len(batch) == 4 else None
                with acc.accumulate(self.generator, self.score), acc.autocast():
                    parts, z = self.generator_losses(lq, gt, prompts, micro, lq_teacher)
                    if not math.isfinite(parts["total"].item()):
                        raise FloatingPointError(f"the generator loss is {parts['total'].item()} at step "
                                                 f"{self.step}; lower --lr or use --mixed-precision no")
                    parts["regulariser"] = self.regulariser_loss(z, prompts, micro)
                    self._update(parts["total"] + parts["regulariser"])
                micro += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                count += 1
                if not acc.sync_gradients:
                    continue
                self.step += 1
                ema_update(self.ema, self.gen_params.items(), ema_decay(c.ema, self.step))
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums['total'] / count:.4g}", mse=f"{sums['mse'] / count:.4g}")
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self.last_losses = {k: v / count for k, v in sums.items()}
                    if acc.is_main_process:
                        log.write({"step": self.step, **{f"loss_{k}": v / count for k, v in sums.items()},
                                   "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started})
                    sums, count = {}, 0
                if self.step % c.save_every == 0 or self.step == c.steps:
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        self.save_checkpoint()
        if bar:
            bar.close()
        self.generator.eval()
        self.score.eval()
        return self.export() if acc.is_main_process else self.out / LORA_FILE


def run_weights(folder: str, generator_ema: bool = True) -> dict[str, torch.Tensor]:
    """The trainable weights of an earlier run (its newest checkpoint), with the generator's EMA
    (what the run exports) in place of its raw weights when ``generator_ema``."""
    saved = checkpoint_dirs(Path(folder))
    if not saved:
        raise FileNotFoundError(f"{folder}: not an osediff run folder with a checkpoint (checkpoints/step-N/)")
    weights = load_file(saved[-1] / "trainable.safetensors")
    if generator_ema:
        weights.update(load_file(saved[-1] / "ema.safetensors"))
    return weights
