"""Fake of spandrel 0.4.2's registry and descriptor contract (what ComfyUI ships and the pack's
``onestep_sr.spandrel`` uses), with its public signatures and documented behaviour, written for the
tests; no architectures of its own (tests add stand-ins). The real one needs torchvision; the opt-in
real-ComfyUI suites run the real one. Documented behaviour kept: the registry detects in insertion
order unless ``before`` says otherwise and refuses duplicate ids; ``load`` canonicalises first; a
descriptor loads its state dict into its model (strictly) on construction; ``__call__`` runs in
inference mode, pads to ``size_requirements`` (reflect, then replicate), clamps to [0, 1] and crops
the padding away; ``to`` refuses a dtype the model does not support."""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Dict, Generic, Literal, NewType, Sequence, TypeVar

import torch

__version__ = "0.4.2"

T = TypeVar("T", bound=torch.nn.Module)
StateDict = Dict[str, Any]
ArchId = NewType("ArchId", str)
Purpose = Literal["SR", "FaceSR", "Inpainting", "Restoration"]


class UnsupportedModelError(Exception):
    pass


class DuplicateArchitectureError(ValueError):
    pass


class UnsupportedDtypeError(Exception):
    pass


class ModelTiling(Enum):
    SUPPORTED = 1
    DISCOURAGED = 2
    INTERNAL = 3


@dataclass
class SizeRequirements:
    minimum: int = 0
    multiple_of: int = 1
    square: bool = False

    def __post_init__(self):
        assert self.minimum >= 0 and self.multiple_of >= 1
        self.minimum = -(-self.minimum // self.multiple_of) * self.multiple_of

    @property
    def none(self) -> bool:
        return self.minimum == 0 and self.multiple_of == 1 and not self.square

    def get_padding(self, width: int, height: int) -> tuple[int, int]:
        w = -(-max(self.minimum, width) // self.multiple_of) * self.multiple_of
        h = -(-max(self.minimum, height) // self.multiple_of) * self.multiple_of
        if self.square:
            w = h = max(w, h)
        return w - width, h - height

    def check(self, width: int, height: int) -> bool:
        return self.get_padding(width, height) == (0, 0)


def _pad(image: torch.Tensor, req: SizeRequirements) -> tuple[bool, torch.Tensor]:
    pad_w, pad_h = req.get_padding(image.shape[-1], image.shape[-2])
    if not (pad_w or pad_h):
        return False, image
    rw, rh = min(pad_w, image.shape[-1] - 1), min(pad_h, image.shape[-2] - 1)
    image = torch.nn.functional.pad(image, (0, rw, 0, rh), "reflect")
    return True, torch.nn.functional.pad(image, (0, pad_w - rw, 0, pad_h - rh), "replicate")


class Architecture(Generic[T]):
    def __init__(self, *, id: ArchId | str, detect: Callable[[StateDict], bool], name: str | None = None) -> None:
        self._id, self._name, self._detect = ArchId(id), name or id, detect

    @property
    def id(self) -> ArchId:
        return self._id

    @property
    def name(self) -> str:
        return self._name

    def detect(self, state_dict: StateDict) -> bool:
        return self._detect(state_dict)

    def load(self, state_dict: StateDict) -> "ImageModelDescriptor[T]":
        raise NotImplementedError


class ModelBase(Generic[T]):
    def __init__(self, model: T, state_dict: StateDict, architecture: Architecture[T], tags: list[str],
                 supports_half: bool, supports_bfloat16: bool, scale: int, input_channels: int,
                 output_channels: int, size_requirements: SizeRequirements | None = None,
                 tiling: ModelTiling = ModelTiling.SUPPORTED):
        self._model, self._architecture, self.tags = model, architecture, tags
        self.supports_half, self.supports_bfloat16, self.scale = supports_half, supports_bfloat16, scale
        self.input_channels, self.output_channels = input_channels, output_channels
        self.size_requirements = size_requirements or SizeRequirements()
        self.tiling = tiling
        self.model.load_state_dict(state_dict)

    @property
    def model(self) -> T:
        return self._model

    @property
    def architecture(self) -> Architecture[T]:
        return self._architecture

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, *args: Any, **kwargs: Any):
        if len(args) == 1:
            kwargs["dtype" if isinstance(args[0], torch.dtype) else "device"] = args[0]
        elif len(args) == 2:
            kwargs["device"], kwargs["dtype"] = args
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        if kwargs:
            raise TypeError(f"to() got unexpected keyword arguments {list(kwargs)}")
        if dtype == torch.float16 and not self.supports_half or dtype == torch.bfloat16 and not self.supports_bfloat16:
            raise UnsupportedDtypeError(f"{self.architecture} does not support {dtype}")
        self.model.to(device=torch.device(device) if isinstance(device, str) else device, dtype=dtype)
        return self

    def half(self):
        return self.to(torch.half)

    def float(self):
        return self.to(torch.float)

    def cpu(self):
        self.model.cpu()
        return self

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self


class ImageModelDescriptor(ModelBase[T]):
    def __init__(self, model: T, state_dict: StateDict, architecture: Architecture[T],
                 purpose: Literal["SR", "FaceSR", "Restoration"], tags: list[str], supports_half: bool,
                 supports_bfloat16: bool, scale: int, input_channels: int, output_channels: int,
                 size_requirements: SizeRequirements | None = None, tiling: ModelTiling = ModelTiling.SUPPORTED,
                 call_fn: Callable[[T, torch.Tensor], torch.Tensor] | None = None):
        assert purpose != "Restoration" or scale == 1
        super().__init__(model, state_dict, architecture, tags, supports_half=supports_half,
                         supports_bfloat16=supports_bfloat16, scale=scale, input_channels=input_channels,
                         output_channels=output_channels, size_requirements=size_requirements, tiling=tiling)
        self._purpose = purpose
        self._call_fn = call_fn or (lambda model, image: model(image))

    @property
    def purpose(self):
        return self._purpose

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4:
            raise ValueError(f"Expected image tensor to have 4 dimensions, but got {image.shape}")
        h, w = image.shape[-2:]
        padded, image = _pad(image, self.size_requirements)
        if self.model.training:
            self.model.eval()
        output = self._call_fn(self.model, image)
        assert isinstance(output, torch.Tensor)
        output = output.clamp_(0, 1)
        return output[..., : h * self.scale, : w * self.scale] if padded else output


ModelDescriptor = ImageModelDescriptor


@dataclass(frozen=True)
class ArchSupport:
    architecture: Architecture
    detect: Callable[[StateDict], bool]
    before: tuple = ()

    @staticmethod
    def from_architecture(arch: Architecture, before: tuple = ()) -> "ArchSupport":
        return ArchSupport(arch, arch.detect, before)


class ArchRegistry:
    def __init__(self):
        self._architectures: list[ArchSupport] = []

    def __contains__(self, id: str) -> bool:
        return any(a.architecture.id == id for a in self._architectures)

    def __len__(self) -> int:
        return len(self._architectures)

    def get(self, id: str) -> ArchSupport | None:
        return next((a for a in self._architectures if a.architecture.id == id), None)

    def architectures(self, order: Literal["insertion", "detection"] = "insertion") -> list[ArchSupport]:
        if order == "insertion":
            return list(self._architectures)
        placed: list[ArchSupport] = []  # an arch goes in front of every arch it names in ``before``

        def visit(arch: ArchSupport) -> None:
            if arch in placed:
                return
            for other in self._architectures:
                if arch.architecture.id in other.before:
                    visit(other)
            placed.append(arch)

        for arch in self._architectures:
            visit(arch)
        return placed

    def add(self, *architectures: ArchSupport, ignore_duplicates: bool = False) -> list[ArchSupport]:
        added = []
        for arch in architectures:
            if arch.architecture.id in self or arch in added:
                if ignore_duplicates:
                    continue
                raise DuplicateArchitectureError(f"Duplicate architecture: {arch.architecture.id}")
            added.append(arch)
        self._architectures.extend(added)
        return added

    def load(self, state_dict: StateDict) -> ImageModelDescriptor:
        state_dict = canonicalize_state_dict(state_dict)
        for arch in self.architectures("detection"):
            if arch.detect(state_dict):
                return arch.architecture.load(state_dict)
        raise UnsupportedModelError


def canonicalize_state_dict(state_dict: StateDict) -> StateDict:
    for key in ("model_state_dict", "state_dict", "params_ema", "params-ema", "params", "model", "net"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if len(state_dict) == 1 and isinstance(next(iter(state_dict.values())), dict):
        state_dict = next(iter(state_dict.values()))
    for prefix in ("module.", "netG."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


MAIN_REGISTRY = ArchRegistry()


class ModelLoader:
    def __init__(self, device: str | torch.device | None = None, registry: ArchRegistry = MAIN_REGISTRY):
        self.device = torch.device(device) if isinstance(device, str) else device or torch.device("cpu")
        self.registry = registry

    def load_from_file(self, path: str | os.PathLike) -> ImageModelDescriptor:
        return self.load_from_state_dict(self.load_state_dict_from_file(path))

    def load_state_dict_from_file(self, path: str | os.PathLike) -> StateDict:
        extension = os.path.splitext(path)[1].lower()
        if extension == ".safetensors":
            from safetensors.torch import load_file

            return canonicalize_state_dict(load_file(str(path), device=str(self.device)))
        if extension in (".pth", ".ckpt", ".pt"):
            return canonicalize_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        raise ValueError(f"Unsupported model file extension {extension}. Please try a supported model type.")

    def load_from_state_dict(self, state_dict: StateDict) -> ImageModelDescriptor:
        return self.registry.load(state_dict).to(self.device)


__all__ = ["ArchId", "Architecture", "ArchRegistry", "ArchSupport", "canonicalize_state_dict",
           "DuplicateArchitectureError", "ImageModelDescriptor", "MAIN_REGISTRY", "ModelBase", "ModelDescriptor",
           "ModelLoader", "ModelTiling", "Purpose", "SizeRequirements", "StateDict", "UnsupportedDtypeError",
           "UnsupportedModelError"]
