"""``train restore --gan-weight W``: the restore fine-tune with an adversarial term (issue 28,
item 5; Real-ESRGAN's recipe at CPU size, our adaptation to a one-step ResShift model).

Per step: the one-step output x0_hat from x_T = y + kappa sqrt(eta_T) noise (as ``restore``);
the discriminator (``common/discriminator.py``, from scratch) takes one Adam step on
BCE(real -> 1) + BCE(x0_hat -> 0); then the model's loss is L1(x0_hat, x0) + W x BCE(D(x0_hat) -> 1).
Real-ESRGAN also has a VGG perceptual term; it needs downloaded ImageNet weights, so there is none
here (said in docs/training.md). The discriminator and its optimiser are saved in every checkpoint
and resumed with it. One process only (the discriminator's step is not synchronised).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from onestep_sr.checkpoint import write_safetensors_atomic
from onestep_sr.samplers import prior_sample

from ..common.discriminator import UNetDiscriminator, discriminator_loss, generator_loss
from .losses import call
from .trainer import Run, TrainConfig

DISCRIMINATOR, DISCRIMINATOR_OPTIMIZER = "discriminator.safetensors", "discriminator_optimizer.pt"
D_LR, D_BETAS, D_FEATURES = 1e-4, (0.9, 0.99), 32  # Real-ESRGAN's GAN stage: Adam 1e-4, betas (0.9, 0.99)


class AdversarialRun(Run):
    def __init__(self, config: TrainConfig):
        if config.mode != "restore":
            raise ValueError("--gan-weight applies to restore only")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before any data or model is loaded
            raise ValueError("the adversarial fine-tune runs in one process (its discriminator step is not "
                             "synchronised): start it without torchrun / accelerate launch")
        torch.manual_seed(config.seed + 7)
        self.discriminator = UNetDiscriminator(D_FEATURES)
        self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=D_LR, betas=D_BETAS)
        super().__init__(config)
        self.discriminator.to(self.accelerator.device)

    def _resume(self, model: torch.nn.Module) -> None:
        super()._resume(model)
        if self.step:
            folder = Path(self.out) / "checkpoints" / f"step-{self.step}"
            self.discriminator.load_state_dict(load_file(str(folder / DISCRIMINATOR)))
            self.d_optimizer.load_state_dict(torch.load(folder / DISCRIMINATOR_OPTIMIZER, weights_only=True))

    def save_extra(self, tmp: Path) -> None:
        """The discriminator and its optimiser, in the staging folder (committed with the rest)."""
        write_safetensors_atomic({k: v.detach().cpu().contiguous() for k, v in self.discriminator.state_dict().items()},
                                 {}, tmp / DISCRIMINATOR)
        torch.save(self.d_optimizer.state_dict(), tmp / DISCRIMINATOR_OPTIMIZER)

    def losses(self, batch: tuple[torch.Tensor, ...], micro: int) -> dict[str, torch.Tensor]:
        c = self.config
        gt = batch[-1]
        x0, y, cond, noise = self.draws(batch, micro)[:4]
        pred = call(self.model, self.schedule, prior_sample(y, self.schedule, noise), self.schedule.steps - 1, cond)
        real, fake = gt * 2 - 1, self.autoencoder.decode(pred, quantize=False)
        d_loss = discriminator_loss(self.discriminator, real, fake)
        self.d_optimizer.zero_grad()
        d_loss.backward()
        self.d_optimizer.step()
        l1 = (pred - x0).abs().flatten(1).mean(1)
        adversarial = generator_loss(self.discriminator, fake)
        return {"total": l1 + c.gan_weight * adversarial, "l1": l1, "adversarial": adversarial,
                "discriminator": d_loss.detach().expand(x0.shape[0])}
