"""The three stages of :meth:`OneStepSR.upscale` for hosts that hand the latent on (ComfyUI's
latent nodes): encode the LR image, sample in latent space, decode; and the progress counter
every stage and ``upscale`` share (cancel points included)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from .errors import IncompatibleInputError
from .imageio import ImageInputError, from_unit_float
from .options import DEFAULT_SEED
from .strength import resolve_strengths
from .pipeline import (SCALE, Tiling, check_finite, decode_rows, encode_tiled, model_to_unit, network_calls,
                       pad_bottom_right, run_sampler, tile_counts, tiled_x0_predictor, unit_to_model)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SRLatent:
    """A batch in the sampler's latent space (x4 with the f4 autoencoder: latent size = LR size)."""

    samples: torch.Tensor  # B x C x H x W float32: z_y after encode, the sampled latent after sample
    lq: torch.Tensor  # B x 3 x H x W float32 in [-1, 1]: the LR image padded to H x W (the condition)
    size: tuple[int, int]  # (h, w) of the LR image before padding


class LatentStages:
    """Mixed into :class:`onestep_sr.model.OneStepSR` (which provides ``plan``, ``_robust``,
    ``denoiser``, ``autoencoder``, ``schedule``, ``scale``, ``device``)."""

    # --- the three stages of upscale, for hosts that hand the latent on ---------------------

    def encode(self, image: torch.Tensor, *, vq_tile: int | None = None, dtype: str | torch.dtype | None = None,
               progress: Progress | None = None) -> SRLatent:
        """Stage 1 of :meth:`upscale` for a batch ``image`` (B x 3 x h x w floats in [0, 1]): the
        LR image padded to the denoiser's multiple, and its latent z_y = encode(bicubic x4)."""
        job = self.plan(vq_tile=vq_tile, dtype=dtype)
        self._check_latent_path()
        if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ImageInputError(f"encode takes a float batch B x 3 x h x w, got {image.dtype} {tuple(image.shape)}")
        h, w = image.shape[-2:]
        lq = pad_bottom_right(unit_to_model(image.float().cpu().contiguous()), self.denoiser.config.latent_multiple)
        counter = CallCounter(progress, len(lq) * tile_counts(lq.shape, job.tiling, 1)[0])

        def run(tiling: Tiling) -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([encode_tiled(self.autoencoder, lq[i:i + 1].to(self.device), tiling,
                                               counter.tick).float().cpu() for i in range(len(lq))])

        return SRLatent(self._robust(run, job, counter, f"a {w}x{h} image"), lq, (h, w))

    def sample(self, latent: SRLatent, *, steps: int | None = None, stochastic: bool | None = None,
               seed: int | None = DEFAULT_SEED, tile: int | None = None, overlap: int | None = None,
               dtype: str | torch.dtype | None = None, progress: Progress | None = None,
               strength: Any = None) -> SRLatent:
        """Stage 2: run the sampler from ``latent`` (made by :meth:`encode`); the result holds the
        sampled, not yet quantised latent. Options as in :meth:`upscale` (``strength`` too: a model
        with a strength knob measures ``auto`` on the latent's LR image); every image of the batch
        gets the noise of ``seed``, as :meth:`upscale` gives it."""
        job = self.plan(steps=steps, stochastic=stochastic, seed=seed, tile=tile, overlap=overlap, dtype=dtype)
        self._check_latent(latent)
        h, w = latent.size
        knob = getattr(self, "knob", None)
        strengths = resolve_strengths(knob, strength, getattr(self, "strength", "auto"),
                                      [(latent.lq[i:i + 1, :, :h, :w].float() + 1) / 2 for i in range(len(latent.lq))])
        seed = job.seed if job.seed is not None else secrets.randbits(63)
        per_image = network_calls(job.sampler, self.schedule, job.levels) * tile_counts(latent.lq.shape, job.tiling, 1)[1]
        counter = CallCounter(progress, len(latent.lq) * per_image)

        def run(tiling: Tiling) -> torch.Tensor:
            out = []
            for i in range(len(latent.lq)):
                lq = latent.lq[i:i + 1].to(self.device)
                if strengths[i] is not None:
                    knob.apply(self.denoiser, strengths[i])
                with torch.inference_mode():
                    predict = tiled_x0_predictor(self.denoiser, self.schedule, lq, tiling, counter.tick)
                    z = run_sampler(job.sampler, predict, latent.samples[i:i + 1].to(self.device), self.schedule,
                                    torch.Generator().manual_seed(seed), levels=job.levels)
                check_finite(z, "sampled latent")
                out.append(z.float().cpu())
            return torch.cat(out)

        result = replace(latent, samples=self._robust(run, job, counter, f"a {w}x{h} image"))
        self.last_strengths = strengths
        return result

    def decode(self, latent: SRLatent, *, vq_tile: int | None = None, dtype: str | torch.dtype | None = None,
               progress: Progress | None = None) -> torch.Tensor:
        """Stage 3: quantise and decode a sampled ``latent``; B x 3 x 4h x 4w floats in [0, 1]."""
        job = self.plan(vq_tile=vq_tile, dtype=dtype)
        self._check_latent(latent)
        h, w = latent.size
        out = torch.empty((len(latent.lq), 3, SCALE * h, SCALE * w))
        counter = CallCounter(progress, len(out) * tile_counts(latent.lq.shape, job.tiling, 1)[0])

        def run(tiling: Tiling) -> torch.Tensor:
            for i in range(len(out)):
                def emit(row0: int, rows: torch.Tensor) -> None:
                    out[i, :, row0:row0 + rows.shape[1]] = torch.from_numpy(
                        from_unit_float(model_to_unit(rows).cpu(), np.float32))

                with torch.inference_mode():
                    decode_rows(latent.samples[i:i + 1].to(self.device), self.autoencoder, (h, w), tiling, emit,
                                counter.tick)
            return out

        return self._robust(run, job, counter, f"a {w}x{h} image")

    def _check_latent_path(self) -> None:
        if self.denoiser.config.lq_mode != "lq3":
            raise IncompatibleInputError(f"the latent stages (encode/sample/decode) run x{SCALE} models whose "
                                         f"condition is the LR image; this x{self.scale} model upscales with "
                                         "upscale() (OneStep Upscale node)")

    def _check_latent(self, latent: SRLatent) -> None:
        self._check_latent_path()
        z, lq, (h, w) = latent.samples, latent.lq, latent.size
        channels = self.autoencoder.config.embed_dim
        if z.ndim != 4 or z.shape[1] != channels:
            raise IncompatibleInputError(f"this latent has shape {tuple(z.shape)}; the model's autoencoder needs "
                                         f"B x {channels} x H x W (a latent from another model, e.g. Stable "
                                         "Diffusion, cannot be used here)")
        if lq.shape[0] != z.shape[0] or lq.shape[-2:] != z.shape[-2:] or not (h <= lq.shape[-2] and w <= lq.shape[-1]):
            raise IncompatibleInputError(f"the latent ({tuple(z.shape)}) does not match its LR image "
                                         f"({tuple(lq.shape)}, size {w}x{h})")


class CallCounter:
    """Progress over all network calls of one ``upscale`` call."""

    def __init__(self, callback: Progress | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def tick(self, _stage: str) -> None:
        self.done += 1
        if self.callback:
            self.callback(min(self.done, self.total), self.total)

    def check(self) -> None:
        """A cancel point inside a network call (``models.cancel``): the callback, ``done`` unchanged."""
        if self.callback:
            self.callback(min(self.done, self.total), self.total)

    def restart(self) -> None:
        """A retry redoes the work: keep the bar monotone by growing the total."""
        self.total += self.done
