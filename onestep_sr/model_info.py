"""What a denoiser we trained needs besides its weights: its autoencoder, scale, schedule and
default sampler. Exports carry it in the safetensors header (``onestep_sr``, JSON, next to the
architecture ``config``) and in a JSON file of the same name beside it, so ``load_model(path)``
and the ComfyUI loader need nothing else. The file also keeps these header fields as one tensor
(``onefile.HEADER_KEY``), for hosts that load a file's tensors only (spandrel: ComfyUI's Load
Upscale Model)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (CheckpointError, atomic_write_text, describe_file, interrupts_deferred,
                         write_safetensors_atomic)
from .models import PIXEL_AUTOENCODER, SwinUNetDenoiser
from .onefile import HEADER_KEY, header_tensor
from .options import OptionError
from .schedule import SCHEDULE_T15, ResShiftSchedule

INFO_KEY = "onestep_sr"
FORMAT = 1


@dataclass(frozen=True)
class ModelInfo:
    """``autoencoder``: ``"pixel"`` (the identity autoencoder of pixel-space models) or a
    registry name (``"vq_f4"``). ``schedule``: the ResShiftSchedule fields."""

    autoencoder: str = PIXEL_AUTOENCODER
    scale: int = 4
    schedule: dict[str, Any] = field(default_factory=lambda: asdict(SCHEDULE_T15))
    sampler: str = "one_step"
    description: str = ""
    # the levels a progressively distilled model was trained on (descending, from T-1), e.g.
    # [14, 10, 6, 2] for 4 steps; None: every level (a teacher) or the one-step level (SinSR)
    levels: list[int] | None = None

    def step_levels(self, steps: int) -> list[int] | None:
        """The levels of an N-step deterministic run: the model's own grid when it has one (N must
        be its length), else None (the schedule's samplers decide)."""
        if self.levels is None:
            return None
        if steps != len(self.levels):
            raise OptionError("steps", steps, f"{len(self.levels)}",
                              message=f"this model was distilled for {len(self.levels)} step(s) (levels "
                                      f"{self.levels}); it cannot run {steps}")
        return list(self.levels)

    def resshift_schedule(self) -> ResShiftSchedule:
        return ResShiftSchedule(**self.schedule)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model info") -> "ModelInfo":
        try:
            data = json.loads(text)
            data.pop("format", None)
            data.pop("denoiser", None)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise CheckpointError(f"{source}: invalid OneStep SR model info ({exc})") from exc


def sidecar_json(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def read_model_info(path: str | os.PathLike) -> ModelInfo | None:
    """The model info of a checkpoint: its safetensors header, else a JSON file beside it, else
    None (an official checkpoint). Reads no tensors."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with interrupts_deferred(), safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get(INFO_KEY)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file: {describe_file(path) or exc}") from exc
        if text:
            return ModelInfo.from_json(text, str(path))
    sidecar = sidecar_json(path)
    if sidecar.is_file() and sidecar != path:
        return ModelInfo.from_json(sidecar.read_text(), str(sidecar))
    return None


def save_model(path: str | os.PathLike, denoiser: SwinUNetDenoiser, info: ModelInfo,
               dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors: weights, architecture and model info, the latter two also as the
    ``onefile.HEADER_KEY`` tensor) and its JSON file, each atomically. Returns both paths."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"export to a .safetensors file, got {path.name}")
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in denoiser.state_dict().items()}
    config = denoiser.config.to_dict()
    header = {"config": json.dumps(config), INFO_KEY: info.to_json()}
    tensors[HEADER_KEY] = header_tensor(header)
    write_safetensors_atomic(tensors, {**header, "format": "pt"}, path)
    sidecar = sidecar_json(path)
    text = json.dumps({"format": FORMAT, **asdict(info), "denoiser": config}, indent=1, sort_keys=True) + "\n"
    atomic_write_text(sidecar, text)
    return path, sidecar
