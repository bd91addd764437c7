"""OneStep SR engine: ResShift/SinSR one-step diffusion super-resolution. Knows no host."""
from .checkpoint import CheckpointError, load_autoencoder, load_denoiser
from .models import (AutoencoderConfig, DenoiserConfig, build_official_autoencoder,
                     build_official_denoiser)
from .model import DEFAULT_MODEL, OneStepSR, OutOfMemoryError, SRLatent, load_model
from .pipeline import Tiling, super_resolve
from .schedule import SCHEDULE_T4, SCHEDULE_T15, ResShiftSchedule, resshift_etas

__all__ = [
    "AutoencoderConfig", "CheckpointError", "DEFAULT_MODEL", "DenoiserConfig", "OneStepSR",
    "OutOfMemoryError", "ResShiftSchedule", "SCHEDULE_T15", "SCHEDULE_T4", "SRLatent", "Tiling",
    "build_official_autoencoder", "build_official_denoiser", "load_autoencoder", "load_denoiser",
    "load_model", "resshift_etas", "super_resolve",
]
