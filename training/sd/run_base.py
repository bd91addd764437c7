"""What the SD-space trainers (``osediff``, ``guided``) share: the options every run has, the cached
prompt embeddings, the checkpoint folder of the trainable weights (save, resume) and the training
loop (accumulation, EMA, progress bar, ``log.csv``, checkpoints, export).

A trainer's config subclasses :class:`SDRunOptions` (its own fields come after these) and its run
class mixes in :class:`SDRunState` and gives: ``trainable_params()`` (what a checkpoint holds),
``ema_params()`` (what the export's EMA follows), ``networks()`` (the modules accelerate
accumulates over), ``micro_step(batch, micro)`` (losses + backward + optimiser step of one
micro-batch, returning ``{"total": ..., more parts}``), ``export()`` and ``EXPORT_FILE``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from onestep_sr.checkpoint import atomic_write_text, write_safetensors_atomic
from onestep_sr.sd.formulas import scaled_linear_alphas_cumprod
from onestep_sr.sd.lora import DEFAULT_ALPHA

from ..common.data import AUGMENTS, ImageSet
from ..common.distributed import (batch_line, global_rows, make_accelerator, mean_over_processes, resumed_samples,
                                  sample_loader, samples_per_step)
from ..common.options import check_common
from .schedule_shift import native_size, resolve_shift, shift_table
from ..common.runs import (CsvLog, commit_checkpoint, ema_decay, ema_update, resume_newest, save_run_state,
                           staging_dir)


NEGATIVE_PROMPT = ("painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, "
                   "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                   "signature, jpeg artifacts, deformed, lowres, over-smooth")  # OSEDiff's


@dataclass
class SDRunOptions:
    checkpoint: str  # SD 1.x / 2.x single file or diffusers folder
    data: str  # folder of HR images (captions: <stem>.txt beside an image)
    out: str  # run folder
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    ema: float = 0.999
    gt_size: int = 512
    schedule_shift: str = "auto"  # training timesteps shifted for crops above the native size: auto, none or a factor
    augment: str = "flip"
    rank: int = 4
    lora_alpha: float = DEFAULT_ALPHA
    prompt: str = ""  # of images without a caption file
    negative_prompt: str = NEGATIVE_PROMPT  # the unconditional branch of the CFG these trainers use
    family: str | None = None
    prediction_type: str | None = None
    config_dir: str | None = None
    gradient_checkpointing: bool = False
    adam_8bit: bool = False  # bitsandbytes' AdamW8bit: optimiser state in 2 bytes per trainable parameter
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
        resolve_shift(self.schedule_shift, self.gt_size, 512)  # the spelling; the size comes with the checkpoint
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        if self.gt_size % 32:
            raise ValueError(f"--gt-size must be a multiple of 32 (the LR is gt/4, the latent gt/8), got {self.gt_size}")
        if min(self.steps, self.batch_size, self.grad_accum, self.rank) < 1:
            raise ValueError("steps, batch size, gradient accumulation and rank must be at least 1")
        if self.adam_8bit:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError("--adam-8bit needs bitsandbytes (pip install bitsandbytes; it runs on CUDA GPUs)")
        check_common(self)


class SDRunState:
    """Needs ``config``, ``out``, ``sd``, ``text_encoder``, ``accelerator``, ``optimizer``,
    ``scheduler``, ``step``, ``ema`` and ``_embeddings`` (a dict) on the run."""

    def trainable_params(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def load_base(self):
        """The training images (``images``: every bad file named before the SD model loads), the
        accelerator, the user's SD model (offline) and the (shifted) training timestep table;
        returns the ``SDModel``."""
        from onestep_sr.sd.checkpoint import load_sd_model

        c = self.config
        self.images = ImageSet(c.data, c.gt_size)
        self.accelerator = make_accelerator(gradient_accumulation_steps=c.grad_accum, mixed_precision=c.mixed_precision)
        self.step, self.samples = 0, 0  # optimiser steps done, pairs used (all processes)
        self.sd = load_sd_model(c.checkpoint, family=c.family, prediction_type=c.prediction_type,
                                config_dir=c.config_dir)
        self.prediction_type = self.sd.prediction_type
        self.alphas_cumprod = scaled_linear_alphas_cumprod().float()
        self.schedule_shift = resolve_shift(c.schedule_shift, c.gt_size, native_size(self.sd.unet))
        self.t_map = shift_table(self.alphas_cumprod, self.schedule_shift)
        return self.sd

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings of ``prompts`` (each prompt encoded once per run)."""
        from onestep_sr.sd.prompt import encode_prompt

        for p in set(prompts) - set(self._embeddings):
            self._embeddings[p] = encode_prompt(self.text_encoder, p, self.sd.prompt)
        return torch.cat([self._embeddings[p] for p in prompts]).to(self.accelerator.device)

    def _resume(self) -> None:
        """Continue from the newest intact ``checkpoints/step-N/`` of ``out`` if there is one."""
        resumed = resume_newest(self.out, "trainable.safetensors", self._load_checkpoint_weights, self.optimizer,
                                self.scheduler)
        if resumed:
            self.ema, self.step, state = resumed
            self.samples = resumed_samples(state, self.step, self.config)

    def make_loader(self, data) -> torch.utils.data.DataLoader:
        """The pairs from the next unused one to ``--steps``, per-process batches (prepare it)."""
        return sample_loader(data, self.samples, self.config.steps - self.step, self.config, self.accelerator)

    def rng(self, key: int) -> torch.Generator:
        """A generator the same on every process (draw for the global micro-batch, keep :meth:`mine`)."""
        return torch.Generator().manual_seed(key)

    def mine(self, draw, local: int, *shape: int) -> torch.Tensor:
        """This process's ``local`` rows of ``draw((global rows, *shape))``."""
        rows, own = global_rows(self.accelerator, local)
        return draw((rows, *shape))[own]

    def adamw(self, groups, **options) -> torch.optim.Optimizer:
        """AdamW, or bitsandbytes' 8-bit AdamW with ``--adam-8bit``."""
        if self.config.adam_8bit:
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(groups, **options)
        return torch.optim.AdamW(groups, **options)

    def step_scheduler(self) -> None:
        """Once per optimiser step (accelerate's own wrapper would step it once per process)."""
        if self.accelerator.sync_gradients and not self.optimizer.step_was_skipped:
            self.scheduler.step()

    def _load_checkpoint_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.trainable_params().items():
                p.copy_(weights[name])

    def save_checkpoint(self) -> Path:
        tmp, final = staging_dir(self.out, self.step)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.trainable_params().items()}
        write_safetensors_atomic(weights, {}, tmp / "trainable.safetensors")
        save_run_state(tmp, self.step, self.ema, self.optimizer, self.scheduler, asdict(self.config),
                       {"samples": self.samples, "processes": self.accelerator.num_processes})
        return commit_checkpoint(tmp, final, self.out, self.config.keep)

    # --- the loop ---

    EXPORT_FILE = "lora.safetensors"

    def train(self, progress: bool = True) -> Path:
        """Train to ``config.steps`` (resumed runs continue); returns the exported file."""
        c, acc = self.config, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        name = type(self).__name__.removesuffix("Run").lower()
        if acc.is_main_process:  # one process writes config.json, log.csv, checkpoints and the export
            atomic_write_text(self.out / "config.json", json.dumps(asdict(c), indent=1) + "\n")
            print(batch_line(name, c, acc), flush=True)
        bar = None
        if progress and acc.is_main_process:
            from tqdm import tqdm
            bar = tqdm(total=c.steps, initial=self.step, desc=name, dynamic_ncols=True)
        started, sums, count = time.perf_counter(), {}, 0
        micro = self.step * c.grad_accum
        for net in self.networks():
            net.train()
        with CsvLog(self.out / "log.csv", self.step, enabled=acc.is_main_process) as log:
            for batch in self.loader:
                with acc.accumulate(*self.networks()), acc.autocast():
                    parts = self.micro_step(batch, micro)
                micro += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                count += 1
                if not acc.sync_gradients:
                    continue
                self.step += 1
                self.samples += samples_per_step(c, acc)
                ema_update(self.ema, self.ema_params().items(), ema_decay(c.ema, self.step))
                if bar:
                    bar.update(1)
                    bar.set_postfix({k: f"{v / count:.4g}" for k, v in sums.items() if k in ("total", "mse")})
                if self.step % c.log_every == 0 or self.step == c.steps:
                    self.last_losses = mean_over_processes(acc, {k: v / count for k, v in sums.items()})
                    log.write({"step": self.step, **{f"loss_{k}": v for k, v in self.last_losses.items()},
                               "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started,
                               "global_batch": samples_per_step(c, acc)})
                    sums, count = {}, 0
                if self.step % c.save_every == 0 or self.step == c.steps:
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        self.save_checkpoint()
        if bar:
            bar.close()
        for net in self.networks():
            net.eval()
        path = self.export() if acc.is_main_process else self.out / self.EXPORT_FILE
        acc.wait_for_everyone()
        return path

    @staticmethod
    def check_finite(loss: torch.Tensor, what: str, step: int, hint: str) -> None:
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the {what} is {loss.item()} at step {step}; {hint}")
