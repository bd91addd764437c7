"""``onestep-sr convert --bundle DENOISER AUTOENCODER OUT.safetensors``: a model that needs two files
(an official SinSR / ResShift denoiser, or a VQ-f4 student trained here, and its VQ-f4 autoencoder)
packed into one (``onestep_sr.onefile``: keys ``denoiser.*`` / ``autoencoder.*``, both configs and the
model info in the header and in its tensor copy). The file loads with ``load_model(OUT)``, in "Load
OneStep SR Model" (models/onestep_sr) and, through spandrel, in ComfyUI's "Load Upscale Model"
(models/upscale_models).

DENOISER and AUTOENCODER are files or registry names (``sinsr_v1``, ``vq_f4``: the files in the models
folder, downloaded first if missing). The schedule and sampler come from the registry entry of the
denoiser (by name, or a file with the registry's file name), else from the model info of a student
trained here, else the official SinSR defaults (T15, one step), as ``load_model`` gives a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .. import download, registry
from ..checkpoint import CHECKPOINT_SUFFIXES, CheckpointError, read_checkpoint, write_safetensors_atomic
from ..model_info import INFO_KEY, ModelInfo, read_model_info
from ..models import PIXEL_AUTOENCODER
from ..onefile import HEADER_KEY, INCLUDED, header_of, header_tensor
from ..registry import RegistryEntry, UnknownModelError
from .common import EXIT_FAILED, EXIT_OK, UsageError
from .weights import DTYPES, KINDS, _one_line, _registry_file, check_convert_paths, identify, output_tensors


def resolve(spec: str, kind: str) -> tuple[Path, RegistryEntry | None]:
    """(the file, its registry entry if it is a registry model's) for a path or a registry name."""
    path = Path(spec).expanduser()
    entries = registry.list_entries(_registry_file())
    if path.is_file():
        return path, next((e for e in entries if e.kind == kind and e.file == path.name), None)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or len(path.parts) > 1:
        raise UsageError(f"{spec}: no such file")
    try:
        entry = registry.get_entry(spec, _registry_file())
    except UnknownModelError as exc:
        raise UsageError(f"{spec} is neither a file nor a registry model ({exc})") from exc
    if entry.kind != kind:
        raise UsageError(f"{spec} is an {entry.kind}, not the {kind} --bundle expects there")
    try:
        return download.ensure_weights(entry), entry
    except download.WeightsUnavailableError as exc:
        raise UsageError(str(exc)) from exc


def bundle_info(den_path: Path, entry: RegistryEntry | None) -> ModelInfo:
    """The bundle's model info: the registry's schedule/sampler, a trained student's own info, or
    the SinSR defaults; its autoencoder is ``included``."""
    if entry is not None:
        return ModelInfo(autoencoder=INCLUDED, schedule=asdict(entry.resshift_schedule()),
                         sampler=entry.sampler or "one_step", description=entry.description)
    info = read_model_info(den_path)
    if info is not None and info.autoencoder == PIXEL_AUTOENCODER:
        raise UsageError(f"{den_path} is a pixel-space model: it is one file already (`onestep-sr convert IN OUT` "
                         "gives it the header copy one-file hosts read)")
    return replace(info, autoencoder=INCLUDED) if info is not None else ModelInfo(autoencoder=INCLUDED)


def run_bundle(args: argparse.Namespace) -> int:
    if args.input or args.output:
        raise UsageError("--bundle takes DENOISER AUTOENCODER OUT; give no other paths")
    if args.kind != "auto" or args.base:
        raise UsageError("--kind and --base do not apply to --bundle")
    (den_path, den_entry), (ae_path, _) = resolve(args.bundle[0], "denoiser"), resolve(args.bundle[1], "autoencoder")
    dst = Path(args.bundle[2])
    for src in (den_path, ae_path):
        check_convert_paths(src, dst, args.force)
    info = bundle_info(den_path, den_entry)
    models, tensors = {}, {}
    for part, path in (("denoiser", den_path), ("autoencoder", ae_path)):
        state, metadata = read_checkpoint(path)
        kind, model = identify(path, part, state, metadata)
        models[part] = model
        tensors.update({f"{part}.{k}": v for k, v in output_tensors(model, state, DTYPES[args.dtype]).items()})
        del state
    name = den_entry.name if den_entry else dst.stem
    header = {"config": json.dumps(models["denoiser"].config.to_dict()),
              "autoencoder_config": json.dumps(models["autoencoder"].config.to_dict()),
              INFO_KEY: info.to_json(), "name": name}
    tensors[HEADER_KEY] = header_tensor(header_of(header))
    try:
        write_safetensors_atomic(tensors, {**header, "kind": "bundle", "format": "pt",
                                           "source": f"{den_path.name} + {ae_path.name}"}, dst)
    except OSError as exc:
        print(f"onestep-sr: error: could not write {dst}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    parameters = sum(p.numel() for m in models.values() for p in m.parameters())
    print(f"{den_path} + {ae_path} -> {dst}: one-file OneStep SR model {name} (x{info.scale}, {info.sampler}, "
          f"{info.resshift_schedule().steps}-level schedule), {KINDS['denoiser'].label} + {KINDS['autoencoder'].label}, "
          f"{len(tensors) - 1} tensors, {parameters:,} parameters, {dst.stat().st_size:,} bytes. It loads in Load OneStep "
          "SR Model (models/onestep_sr) and in ComfyUI's Load Upscale Model (models/upscale_models).")
    return EXIT_OK


__all__ = ["CheckpointError", "bundle_info", "resolve", "run_bundle"]
