"""``onestep-sr models``, ``onestep-sr download`` and ``onestep-sr convert``: managing weights.

* ``models`` lists the registry entries and their state in the models folder (present, partly
  downloaded, missing), then any other checkpoint files there. It never touches the network and
  only hashes files with ``--verify``.
* ``download`` fetches registry weights (a denoiser brings its VQ autoencoder along) through
  :func:`onestep_sr.download.ensure_weights`: resumable, hash-checked, renamed into place only
  when complete.
* ``convert`` turns a checkpoint of our denoiser or VQ autoencoder (``.pth``/``.pt``/``.ckpt``/
  ``.bin`` read with ``weights_only=True``, or ``.safetensors``) into a ``.safetensors`` file whose
  metadata holds the architecture config, so loading it needs no shape inference. An OSEDiff LoRA
  checkpoint (``osediff.pkl``, or ``--kind osediff``) becomes kohya-format LoRA files instead
  (``OUT`` for the UNet, ``OUT_vae.safetensors`` for the VAE encoder; see
  :mod:`onestep_sr.sd.osediff_convert`). A model we trained keeps its model info, also as the tensor
  copy one-file hosts read (:mod:`onestep_sr.onefile`). ``convert --bundle DENOISER AUTOENCODER OUT``
  packs a two-file model into one (:mod:`onestep_sr.cli.bundle`).

The registry is read from ``onestep_sr.registry.REGISTRY_FILE`` at call time (not import time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .. import download, registry
from ..checkpoint import (CHECKPOINT_SUFFIXES, PICKLE_SUFFIXES, CheckpointError, load_autoencoder, load_denoiser,
                          read_checkpoint, write_safetensors_atomic)
from ..download import human_size
from ..model import BUNDLED_MODELS
from ..model_info import INFO_KEY, read_model_info
from ..onefile import HEADER_KEY, header_of, header_tensor
from ..registry import RegistryEntry, UnknownModelError
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError

NON_COMMERCIAL_NOTE = ("Note: these weights are licensed for non-commercial use only (see each licence "
                       "above); they come from the authors' releases and are not redistributed.")


# ---------------------------------------------------------------------------------------------
# shared helpers


def _registry_file() -> Path:
    """Looked up at call time so that a test or an embedding application can point it elsewhere."""
    return registry.REGISTRY_FILE


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_non_commercial(entries: list[RegistryEntry]) -> bool:
    return any("non-commercial" in e.licence.lower() for e in entries)


# ---------------------------------------------------------------------------------------------
# models


@dataclass
class _Row:
    entry: RegistryEntry
    status: str
    problem: Optional[str] = None  # a line explaining a failed --verify


def _hash_source(entry: RegistryEntry) -> str:
    return "registry hash" if entry.sha256 else "sha256 pinned"


def _present_status(entry: RegistryEntry, target: Path, verify: bool) -> _Row:
    size = human_size(target.stat().st_size)
    try:
        expected = download.known_hash(entry, target)
    except download.DownloadError as exc:  # the <file>.sha256 pin is unreadable
        if not verify:
            return _Row(entry, f"ready ({size}, unreadable sha256 pin)")
        return _Row(entry, f"PIN UNREADABLE ({size})", problem=f"PIN UNREADABLE: {_one_line(exc)}")
    if not expected:
        return _Row(entry, f"ready ({size}, not verified: no hash pinned)")
    if not verify:
        return _Row(entry, f"ready ({size}, {_hash_source(entry)})")
    actual = download.sha256_of(target)
    if actual == expected:
        return _Row(entry, f"verified ({size}, {_hash_source(entry)})")
    origin = "the registry" if entry.sha256 else download.sidecar_path(target).name
    return _Row(entry, f"HASH MISMATCH ({size}, {_hash_source(entry)})",
                problem=f"HASH MISMATCH: {target} has sha256 {actual}, expected {expected} (from {origin}); "
                         f"move it away and run `onestep-sr download {entry.name}`")


def _partial_status(entry: RegistryEntry, part: Path) -> str:
    have = part.stat().st_size / 2**20
    if entry.expected_payload_bytes:
        return f"partial download ({have:.1f} MiB of about {entry.expected_payload_bytes / 2**20:.1f} MiB)"
    return f"partial download ({have:.1f} MiB of an unknown size)"


def entry_status(entry: RegistryEntry, folder: Path, verify: bool = False) -> _Row:
    """The state of one registry entry in ``folder``, from file presence, size and pin only
    (plus a sha256 of the file when ``verify``)."""
    target = folder / entry.file
    part = target.with_name(target.name + ".part")
    if target.is_file():
        return _present_status(entry, target, verify)
    probe = download.probe_path(target)
    if probe.is_file():
        return _Row(entry, f"downloaded, not yet checked ({human_size(probe.stat().st_size)} as {probe.name}; "
                           "the next download or use checks it)")
    if part.is_file():
        return _Row(entry, _partial_status(entry, part))
    return _Row(entry, "missing")


def other_checkpoints(folder: Path, known_files: set[str]) -> list[Path]:
    """Checkpoint files in ``folder`` (not recursive) that are not registry files."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and not p.name.startswith(".")
                  and p.name not in known_files)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip())


def run_models(args: argparse.Namespace) -> int:
    folder = registry.models_dir(args.models_dir)
    entries = registry.list_entries(_registry_file())
    exists = "" if folder.is_dir() else " (does not exist yet)"
    print(f"Models folder: {folder}{exists}")
    print(f"  (change it with --models-dir DIR or the {registry.MODELS_ENV} environment variable)")
    if registry.mirror():
        print(f"Downloads come from the mirror {registry.mirror()} (the {registry.MIRROR_ENV} environment variable)")
    print()
    rows = [entry_status(e, folder, args.verify) for e in entries]
    _print_table(["NAME", "KIND", "FILE", "STATUS", "LICENCE"],
                 [[r.entry.name, r.entry.kind, r.entry.file, r.status, r.entry.licence] for r in rows])
    print()
    print("Bundled with this package (offline, no download):")
    for name, path in BUNDLED_MODELS.items():
        print(f"  {name}  {path.name}  " + (human_size(path.stat().st_size) if path.is_file() else "missing"))
    others = other_checkpoints(folder, {e.file for e in entries})
    print()
    print(f"Other checkpoint files in {folder}:" + ("" if others else " none"))
    for path in others:
        print(f"  {path.name}  {human_size(path.stat().st_size)}")
    problems = [r.problem for r in rows if r.problem]
    if problems:
        print()
        print("\n".join(problems))
    print()
    print("Download with `onestep-sr download NAME` (or --all).")
    if _is_non_commercial(entries):
        print("The official weights are licensed for non-commercial use only.")
    return EXIT_FAILED if problems else EXIT_OK


# ---------------------------------------------------------------------------------------------
# download


def download_plan(names: list[str], everything: bool, path: Path) -> list[RegistryEntry]:
    """Entries to fetch, in order, without repeats: each denoiser is followed by its autoencoder."""
    if everything and names:
        raise UsageError("give model names or --all, not both")
    try:
        if everything:
            requested = registry.list_entries(path)
        elif names:
            requested = [registry.get_entry(name, path) for name in names]
        else:
            known = ", ".join(e.name for e in registry.list_entries(path))
            raise UsageError(f"name at least one model to download (known models: {known}) or use --all")
        plan: dict[str, RegistryEntry] = {}
        for entry in requested:
            plan.setdefault(entry.name, entry)
            if entry.kind == "denoiser" and entry.autoencoder:
                plan.setdefault(entry.autoencoder, registry.get_entry(entry.autoencoder, path))
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from exc
    return list(plan.values())


def _fetch(entry: RegistryEntry, models_dir: Optional[str]) -> tuple[Path, bool]:
    """``ensure_weights`` with an end line on stderr; its start line is the engine's own log line
    (what, how big, from where, into which folder), which the CLI prints, and the TTY progress bar
    drawn by ``ensure_weights`` goes between them. Returns the path and whether it was fetched."""
    target = download.target_path(entry, models_dir)
    if target.is_file():
        return download.ensure_weights(entry, models_dir), False
    path = download.ensure_weights(entry, models_dir)
    print(f"onestep-sr: {entry.name} done: {human_size(path.stat().st_size)} saved as {path}",
          file=sys.stderr, flush=True)
    return path, True


def run_download(args: argparse.Namespace) -> int:
    plan = download_plan(args.names, args.all, _registry_file())
    done: list[RegistryEntry] = []
    code = EXIT_OK
    entry = None
    try:
        present = {}
        if download.is_offline(None):  # every missing file named in one error, not one per run
            pair = len(plan) == 2 and plan[0].autoencoder == plan[1].name  # a denoiser and its autoencoder
            paths = download.ensure_all(plan, args.models_dir, offline=True, needed_by=plan[0].name if pair else "")
            present = dict(zip((e.name for e in plan), paths))
        for entry in plan:
            path, fetched = (present[entry.name], False) if entry.name in present else _fetch(entry, args.models_dir)
            how = "downloaded" if fetched else "already there"
            print(f"{entry.name}: {path} ({how}; licence: {entry.licence})")
            done.append(entry)
    except download.WeightsUnavailableError as exc:
        raise UsageError(str(exc)) from exc
    except (download.DownloadError, OSError) as exc:  # HashMismatchError is a DownloadError
        print(f"onestep-sr: error: {_one_line(exc)}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        name, kept = "", ""
        if entry is not None:
            target = download.target_path(entry, args.models_dir)
            part = target.with_name(target.name + ".part")
            name = f" of {entry.name}"
            probe = download.probe_path(target)
            if probe.exists() and not target.exists():
                kept = f"; the complete download {probe} is kept and the same command checks and finishes it"
            elif part.exists():
                kept = f"; the partial download {part} is kept and the same command resumes it"
        print(f"\nonestep-sr: download{name} interrupted{kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _is_non_commercial(done):
        print(NON_COMMERCIAL_NOTE)
    return code


# ---------------------------------------------------------------------------------------------
# convert


@dataclass(frozen=True)
class _Kind:
    label: str
    load: Callable[..., nn.Module]


KINDS = {
    "denoiser": _Kind("Swin-UNet denoiser", load_denoiser),
    "autoencoder": _Kind("VQ autoencoder", load_autoencoder),
}
DTYPES = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_BRIEF = 240


def check_convert_paths(src: Path, dst: Path, force: bool) -> None:
    if dst.suffix != ".safetensors":
        raise UsageError(f"the output must be a .safetensors file, not {dst.name!r}")
    same = dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst))
    if same:
        raise UsageError(f"refusing to overwrite the input {src}")
    if dst.is_dir():
        raise UsageError(f"{dst} is a folder")
    if dst.exists() and not force:
        raise UsageError(f"{dst} already exists; use --force to overwrite it")


def _reason(exc: Exception) -> str:
    """The loader's message without its ``state dict`` subject (we name the file ourselves)."""
    text = _one_line(exc)
    for prefix in ("state dict: ", "state dict "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def identify(src: Path, kind_name: str, state: Mapping[str, torch.Tensor],
             metadata: Mapping[str, str]) -> tuple[str, nn.Module]:
    """(kind, loaded model); ``auto`` tries the denoiser, then the autoencoder."""
    names = list(KINDS) if kind_name == "auto" else [kind_name]
    reasons = []
    for name in names:
        try:
            # the config stored in the metadata is used when it is of this kind, else inferred
            return name, KINDS[name].load(state, metadata=metadata)
        except CheckpointError as exc:
            reasons.append((name, _reason(exc)))
    if len(reasons) == 1:
        name, reason = reasons[0]
        raise CheckpointError(f"{src} is not a complete {KINDS[name].label} checkpoint: {reason}")
    brief = "; ".join(f"as a {KINDS[n].label}: {r[:_BRIEF] + ('...' if len(r) > _BRIEF else '')}"
                      for n, r in reasons)
    raise CheckpointError(f"{src} is neither a denoiser nor a VQ autoencoder checkpoint ({brief})")


def output_tensors(model: nn.Module, source: Mapping[str, torch.Tensor],
                   dtype: Optional[torch.dtype]) -> dict[str, torch.Tensor]:
    """The model's state dict, contiguous, floating tensors cast to ``dtype`` (``None``: the
    source file's dtype of that tensor, or the model's for a recomputed buffer)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if tensor.is_floating_point():
            original = source.get(key)
            keep = original.dtype if original is not None and original.is_floating_point() else tensor.dtype
            tensor = tensor.to(dtype or keep)
        tensor = tensor.contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages:  # safetensors refuses shared storage: give tied tensors their own
            tensor = tensor.clone()
        storages.add(pointer)
        out[key] = tensor
    return out


OSEDIFF_KIND = "osediff"


def run_convert_osediff(src: Path, dst: Path, args: argparse.Namespace) -> int:
    """OSEDiff ``.pkl`` -> kohya LoRA ``dst`` (UNet) and ``dst``'s ``_vae`` sibling (VAE encoder)."""
    from ..sd import osediff_convert  # torch + safetensors only (no diffusers / peft)

    vae_dst = osediff_convert.vae_sibling_path(dst)
    check_convert_paths(src, vae_dst, args.force)
    try:
        summary = osediff_convert.convert_osediff(src, dst, dtype=DTYPES[args.dtype], base=args.base)
    except OSError as exc:
        print(f"onestep-sr: error: could not write {dst}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    written = " and ".join(f"{p} ({p.stat().st_size:,} bytes)" for p in summary.paths)
    print(f"{src} -> {written}: OSEDiff LoRA as kohya LoRA, {summary.unet_modules} UNet modules "
          f"(rank {summary.rank_unet}) + conv_in ({'its difference to ' + Path(args.base).name if args.base else 'set_weight, ComfyUI only; --base for A1111'}), "
          f"{summary.vae_modules} VAE-encoder modules "
          f"(rank {summary.rank_vae}), alpha {summary.alpha:g}, {summary.tensors} tensors")
    return EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    if args.bundle:
        from .bundle import run_bundle

        return run_bundle(args)
    if not (args.input and args.output):
        raise UsageError("convert needs INPUT and OUTPUT (or --bundle DENOISER AUTOENCODER OUT)")
    src, dst = Path(args.input), Path(args.output)
    check_convert_paths(src, dst, args.force)
    if args.kind == OSEDIFF_KIND or (args.kind == "auto" and src.suffix == ".pkl"):
        return run_convert_osediff(src, dst, args)
    try:
        state, metadata = read_checkpoint(src)
    except CheckpointError:
        if args.kind == "auto" and src.suffix in PICKLE_SUFFIXES:
            from ..sd.osediff_convert import is_osediff_file

            if is_osediff_file(src):  # an OSEDiff file renamed to .pth/.pt/...
                return run_convert_osediff(src, dst, args)
        raise
    if args.base:
        raise UsageError(f"--base is for OSEDiff LoRA checkpoints; {src} is not one")
    kind, model = identify(src, args.kind, state, metadata)
    tensors = output_tensors(model, state, DTYPES[args.dtype])
    del state
    header = {"config": json.dumps(model.config.to_dict()), "kind": kind, "source": src.name, "format": "pt"}
    info = read_model_info(src) if kind == "denoiser" else None
    if info is not None:  # a model we trained: its info kept, and the header copy for one-file hosts
        header[INFO_KEY] = info.to_json()
        tensors[HEADER_KEY] = header_tensor(header_of(header))
    try:
        write_safetensors_atomic(tensors, header, dst)
    except OSError as exc:
        print(f"onestep-sr: error: could not write {dst}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    parameters = sum(p.numel() for p in model.parameters())
    weights = [t for k, t in tensors.items() if k != HEADER_KEY]
    dtypes = ", ".join(sorted({str(t.dtype).replace("torch.", "") for t in weights}))
    print(f"{src} -> {dst}: {KINDS[kind].label}, {len(weights)} tensors, {parameters:,} parameters, "
          f"{dst.stat().st_size:,} bytes ({dtypes})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# argument parsers


def register(sub) -> None:
    models = sub.add_parser("models", help="list the registry models and the files in the models folder")
    models.add_argument("--models-dir", help=f"models folder (default: ${registry.MODELS_ENV} or "
                                             "~/.cache/onestep_sr/models)")
    models.add_argument("--verify", action="store_true",
                        help="hash every present file and compare it with its known sha256 (slow)")
    models.set_defaults(run=run_models)

    dl = sub.add_parser("download", help="download registry weights (a denoiser brings its autoencoder)",
                        description="Download registry weights into the models folder (resumable, hash-checked). "
                                    "They come from the official URLs, or with "
                                    f"{registry.MIRROR_ENV}=URL-or-folder set, the same file names from that "
                                    "mirror or local folder (the same checks apply).")
    dl.add_argument("names", nargs="*", metavar="NAME")
    dl.add_argument("--all", action="store_true", help="every model in the registry")
    dl.add_argument("--models-dir", help=f"models folder (default: ${registry.MODELS_ENV} or "
                                         "~/.cache/onestep_sr/models)")
    dl.set_defaults(run=run_download)

    conv = sub.add_parser("convert", help="check a denoiser/VQ checkpoint and write it as .safetensors; "
                                          "turn an OSEDiff .pkl into kohya LoRA files")
    conv.add_argument("input", nargs="?", help=".safetensors, or .pth/.pt/.ckpt/.bin (read with weights_only=True), "
                                               "or OSEDiff's osediff.pkl")
    conv.add_argument("output", nargs="?", help="the .safetensors file to write (OSEDiff: the UNet LoRA; the "
                                                "VAE-encoder LoRA goes to OUTPUT_vae.safetensors beside it)")
    conv.add_argument("--kind", choices=["auto", *KINDS, OSEDIFF_KIND], default="auto",
                      help="auto: a .pkl is an OSEDiff LoRA checkpoint, other files our denoiser or autoencoder")
    conv.add_argument("--dtype", choices=list(DTYPES), default="keep",
                      help="cast floating tensors (integer buffers are kept)")
    conv.add_argument("--base", metavar="SD_CHECKPOINT",
                      help="OSEDiff: the SD checkpoint the LoRA was trained on (file or diffusers folder); conv_in "
                           "is written as its difference to it (.diff keys, applied by ComfyUI and A1111) instead of "
                           "set_weight (ComfyUI only)")
    conv.add_argument("--bundle", nargs=3, metavar=("DENOISER", "AUTOENCODER", "OUT"),
                      help="pack a denoiser and its VQ autoencoder (files or registry names) into one .safetensors "
                           "that one-file hosts load (ComfyUI's Load Upscale Model) as well as ours")
    conv.add_argument("--force", action="store_true", help="overwrite an existing output")
    conv.set_defaults(run=run_convert)
