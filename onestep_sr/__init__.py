"""OneStep SR engine: ResShift/SinSR one-step diffusion super-resolution. Knows no host."""
from importlib import import_module

from .checkpoint import CheckpointError, load_autoencoder, load_denoiser
from .download import DownloadError, HashMismatchError, SizeMismatchError, WeightsUnavailableError
from .errors import ImageInputError, IncompatibleInputError, ModelNotFoundError
from .models import (AutoencoderConfig, DenoiserConfig, build_official_autoencoder,
                     build_official_denoiser)
from .models.config_inference import ArchitectureMismatch
from .model import DEFAULT_MODEL, OneStepSR, OutOfMemoryError, SRLatent, load_model
from .options import OptionError
from .pipeline import NonFiniteError, Tiling, super_resolve
from .registry import UnknownModelError
from .schedule import SCHEDULE_T4, SCHEDULE_T15, ResShiftSchedule, resshift_etas

# Errors are shown as ``onestep_sr.<Name>`` (``errors.public_error``); these two are importable
# here without importing their modules (the SD and app parts) with the package.
_LAZY = {"LoraFormatError": ".sd.kohya_lora", "Cancelled": ".app.service"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArchitectureMismatch", "AutoencoderConfig", "Cancelled", "CheckpointError", "DEFAULT_MODEL",
    "DenoiserConfig", "DownloadError", "HashMismatchError", "ImageInputError", "IncompatibleInputError",
    "LoraFormatError", "ModelNotFoundError", "NonFiniteError", "OneStepSR", "OptionError", "OutOfMemoryError",
    "ResShiftSchedule", "SizeMismatchError", "UnknownModelError",
    "WeightsUnavailableError", "SCHEDULE_T15", "SCHEDULE_T4", "SRLatent", "Tiling",
    "build_official_autoencoder", "build_official_denoiser", "load_autoencoder", "load_denoiser",
    "load_model", "resshift_etas", "super_resolve",
]
