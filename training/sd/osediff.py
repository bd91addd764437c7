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

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


from . import osediff_losses as L
from ..common.data import DEGRADATIONS, CaptionedCoupledPairDataset, CaptionedPairDataset
from ..common.perceptual import PERCEPTUALS, build_perceptual
from ..common.runs import checkpoint_dirs
from .run_base import NEGATIVE_PROMPT, SDRunOptions, SDRunState

__all__ = ["NEGATIVE_PROMPT", "LORA_FILE", "OSEDiffConfig", "OSEDiffRun", "run_weights"]

LORA_FILE = "osediff_lora.safetensors"


@dataclass
class OSEDiffConfig(SDRunOptions):
    lr: float = 5e-5
    lr_regulariser: float = 5e-5
    warmup: int = 500
    scale: int = 4  # LR scale of the pairs (the generator resizes the LR to the HR crop size)
    init: str | None = None  # a run folder (its newest checkpoint): start from its weights
    scale_teacher: str | None = None  # the x(scale/2) run of the scale curriculum (a run folder)
    lambda_scale: float = 1.0  # weight of the latent term against the scale teacher
    real_score: str | None = None  # a w-conditioned file (train guided): the real score in ONE call at w = cfg - 1
    guidance_range: str | None = None  # "W_MIN,W_MAX": the generator gets a guidance input, w drawn per sample
    export_guidance: float | None = None  # the w baked into the kohya LoRA (default: the range's middle)
    degradation: str = "realesrgan"
    vae_lora: bool = True
    cfg: float = 7.5
    lambda_mse: float = 1.0
    lambda_perceptual: float = 2.0
    lambda_vsd: float = 1.0
    perceptual: str = "vae"
    lpips_weights: str | None = None  # --perceptual lpips: VGG16 + LPIPS weight file(s), comma-separated

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.perceptual not in PERCEPTUALS:
            raise ValueError(f"unknown perceptual loss {self.perceptual!r}; use one of {', '.join(PERCEPTUALS)}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {self.degradation!r}")
        if self.scale not in (2, 4, 8):  # with gt_size a multiple of 32 the LR size is whole
            raise ValueError(f"--scale must be 2, 4 or 8, got {self.scale}")
        if self.scale_teacher and self.scale < 4:
            raise ValueError("a scale teacher works at half the scale: --scale-teacher needs --scale 4 or 8")
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


class OSEDiffRun(SDRunState):
    """State of one OSEDiff training run; :meth:`train` does the work."""

    def __init__(self, config: OSEDiffConfig):
        from .osediff_model import build_networks, trainable

        self.config = c = config
        self.out = Path(c.out)
        lpips = build_perceptual("lpips", None, c.lpips_weights) if c.perceptual == "lpips" else None  # fail fast
        guided = None
        if c.real_score is not None:  # read (and refused) before the SD model loads
            from onestep_sr.checkpoint import read_checkpoint
            from onestep_sr.sd.guidance import parse_guided

            guided = parse_guided(*read_checkpoint(c.real_score), source=c.real_score)
        sd = self.load_base()
        device = self.accelerator.device
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
        if guided is not None:  # the real score in one call: the w-conditioned file on the score UNet
            from .guidance_model import HookedLora

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
        self.optimizer = self.adamw(
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
            data = CaptionedCoupledPairDataset(self.images, c.gt_size, c.scale, c.degradation, seed=c.seed, augment=c.augment,
                                               prompt=c.prompt, teacher_scale=c.scale // 2)
        else:
            data = CaptionedPairDataset(self.images, c.gt_size, c.scale, c.degradation, seed=c.seed, augment=c.augment,
                                        prompt=c.prompt)
        self.loader = self.make_loader(data)  # per-process batches of the global one (common/distributed.py)
        (self.generator, self.score, self.optimizer, self.loader) = self.accelerator.prepare(
            generator, score, self.optimizer, self.loader)

    # --- pieces ---

    def _rng(self, step: int, salt: int) -> torch.Generator:
        """Timesteps / noise of (seed, micro-step, what), drawn for the global micro-batch on every
        process (each keeps its rows: see ``mine``)."""
        return self.rng(((self.config.seed * 1_000_003 + step) * 4 + salt) * 1024)

    def _t_and_noise(self, z: torch.Tensor, low: int, high: int, generator: torch.Generator):
        """t ~ U[low, high) mapped through the schedule shift (the identity at native size), and noise."""
        n = z.shape[0]
        t = self.t_map[self.mine(lambda shape: torch.randint(low, high, shape, generator=generator), n)]
        noise = self.mine(lambda shape: torch.randn(shape, generator=generator), n, *z.shape[1:])
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
        generator = self._rng(step, 2)
        return low + (high - low) * self.mine(lambda shape: torch.rand(shape, generator=generator), z_shape)

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

    # --- checkpoints (save / resume: run_base.SDRunState) ---

    def trainable_params(self) -> dict[str, torch.nn.Parameter]:
        return {**self.gen_params, **self.reg_params}

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
        self.step_scheduler()
        self.optimizer.zero_grad(set_to_none=True)

    EXPORT_FILE = LORA_FILE

    def networks(self) -> tuple[torch.nn.Module, ...]:
        return self.generator, self.score

    def ema_params(self) -> dict[str, torch.nn.Parameter]:
        return self.gen_params

    def micro_step(self, batch, micro: int) -> dict[str, torch.Tensor]:
        lq, gt, prompts = batch[0], batch[-2], batch[-1]
        lq_teacher = batch[1] if len(batch) == 4 else None
        parts, z = self.generator_losses(lq, gt, prompts, micro, lq_teacher)
        self.check_finite(parts["total"], "generator loss", self.step, "lower --lr or use --mixed-precision no")
        parts["regulariser"] = self.regulariser_loss(z, prompts, micro)
        self._update(parts["total"] + parts["regulariser"])
        return parts


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
