"""``onestep-sr upscale INPUT... -o OUT``: super-resolution (the model's native scale, x4 for the bundled model) of image files, folders and globs.

    onestep-sr upscale photo.jpg -o photo_x4.png
    onestep-sr upscale shots/ "more/*.jpg" -o upscaled/ --format webp --color-fix wavelet
    onestep-sr upscale lr.png -o sr.png --denoiser unet.safetensors --autoencoder vq.safetensors

INPUT: files; folders (the image files directly inside, by extension, sorted, dot files skipped);
glob patterns (expanded here, since Windows shells do not: matched image files, and the images of
matched folders). Duplicates are dropped, first occurrence kept.
OUT: the output file when there is one input and OUT has an image extension (and is not an existing
folder); otherwise a folder receiving ``<input stem>.<--format>``.

The work runs in this order, and each stage stops everything before the next one starts:

1. collect the inputs (a missing file, an empty folder or a pattern matching nothing);
2. plan the outputs (two inputs with one output name, an output that is an input);
3. check the options' own rules (``onestep_sr.options``: e.g. ``--vq-tile 1``, ``--seed -1``),
   every input's header (a readable image of at most --max-pixels pixels; a lone input is decoded
   in full) and every output's place (an existing folder there, a file where a folder should be,
   no permission to write, an alpha channel into JPEG), before any weights are downloaded or
   loaded; then load the model (unknown name, weights missing offline, bad checkpoint);
4. check the sampling options against the model (e.g. ``--steps 7``, ``--tile 100``);
5. upscale image by image: a file that cannot be read, written or fits no memory is reported on
   stderr and the batch goes on.

Nothing is created before the model has loaded, and files are written atomically, so an error or
Ctrl-C leaves no partial file. A batch into a folder skips the outputs that exist already, so the
same command resumes an interrupted batch (--overwrite writes everything again).

Several processes, one device each (GPUs, else CPU cores), share a batch with no other option:
  torchrun --nproc_per_node 4 -m onestep_sr upscale photos/ -o upscaled/
  accelerate launch --multi_gpu --num_processes 4 -m onestep_sr upscale photos/ -o upscaled/

Exit codes: 0 every image written; 1 some images of a batch failed (the others are written);
2 a usage, input or model error, or the only input failed; 130 interrupted.
"""
from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..colorfix import COLOR_FIXES
from ..download import DownloadError, WeightsUnavailableError
from ..imagefile import DEFAULT_MAX_PIXELS, check_output, folder_problem, open_image
from ..imageio import SUPPORTED_EXTENSIONS, ImageInputError, read_image, write_image_atomic
from ..checkpoint import CHECKPOINT_SUFFIXES
from ..strength import check_strength
from ..options import OptionError, check_upscale
from ..model import (DEFAULT_MODEL, DEFAULT_SEED, SCHEDULES, OneStepSR,
                     OutOfMemoryError, load_model)
from ..pipeline import NonFiniteError
from ..registry import UnknownModelError
from .common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from .progress import TextBar
from .shard import JobProgress, Shard, load_when_available, outputs_from_before, say, skip_existing, start_line

FORMATS = ("png", "jpg", "webp", "tif")
DTYPE_CHOICES = ("fp32", "fp16", "bf16")
GLOB_CHARS = "*?["
#: Failures of one image: reported, and the batch goes on.
IMAGE_FAILURES = (ImageInputError, OutOfMemoryError, NonFiniteError, OSError)


@dataclass
class Plan:
    jobs: list[tuple[Path, Path]]  # (input, output) in processing order
    folder: Path | None            # the output folder, None when OUT is a single output file


# ---------------------------------------------------------------------------------------------
# 1. inputs


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_EXTENSIONS and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p))


def _extensions() -> str:
    return ", ".join(sorted(SUPPORTED_EXTENSIONS))


def _expand(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        images = _images_in(path)
        if not images:
            raise UsageError(f"no image files in folder {path} (looked for {_extensions()})")
        return images
    if path.exists():
        return [path]  # a file named on the command line is used whatever its extension
    if any(c in spec for c in GLOB_CHARS):
        images: list[Path] = []
        for match in map(Path, sorted(glob.glob(spec))):
            if match.is_dir():
                images.extend(_images_in(match))
            elif match.is_file() and _is_image_name(match):
                images.append(match)
        if not images:
            raise UsageError(f"no image files match {spec!r}")
        return images
    raise UsageError(f"input not found: {path}")


def collect_inputs(specs: list[str]) -> list[Path]:
    """Files, folders and glob patterns -> image paths, duplicates (same resolved path) removed."""
    seen: set[Path] = set()
    inputs = []
    for spec in specs:
        for path in _expand(spec):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                inputs.append(path)
    return inputs


# ---------------------------------------------------------------------------------------------
# 2. outputs


def _has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_EXTENSIONS


def plan_outputs(inputs: list[Path], output: str, fmt: str | None) -> Plan:
    out = Path(output)
    if len(inputs) == 1 and _has_image_extension(out) and not out.is_dir():
        if fmt and SUPPORTED_EXTENSIONS[f".{fmt}"] != SUPPORTED_EXTENSIONS[out.suffix.lower()]:
            raise UsageError(f"--format {fmt} contradicts the output file name {out}")
        plan = Plan([(inputs[0], out)], folder=None)
    else:
        if _has_image_extension(out) and not out.is_dir():
            raise UsageError(f"-o {out} names one image file but there are {len(inputs)} inputs; "
                             "give a folder instead")
        if out.exists() and not out.is_dir():
            raise UsageError(f"-o {out} exists and is not a folder")
        ext = fmt or FORMATS[0]
        plan = Plan([(src, out / f"{src.stem}.{ext}") for src in inputs], folder=out)
        _check_collisions(plan.jobs)
    _check_inputs_untouched(plan.jobs)
    return plan


def _check_collisions(jobs: list[tuple[Path, Path]]) -> None:
    """Case-insensitively, so that a batch behaves the same on Windows and macOS file systems."""
    owners: dict[str, Path] = {}
    for src, dst in jobs:
        first = owners.setdefault(dst.name.casefold(), src)
        if first is not src:
            raise UsageError(f"{first} and {src} would both be written to {dst}; "
                             "rename one or upscale them into different folders")


def _check_inputs_untouched(jobs: list[tuple[Path, Path]]) -> None:
    inputs = {src.resolve() for src, _ in jobs}
    for _, dst in jobs:
        if dst.resolve() in inputs:
            raise UsageError(f"refusing to overwrite the input {dst}; choose another -o or --format")


# ---------------------------------------------------------------------------------------------
# 3. model


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"invalid device {text!r} ({exc})") from exc
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use cpu, cuda, cuda:N or mps")
    return device


def check_device(device: torch.device | None) -> None:
    if device is None or device.type == "cpu":
        return
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available (torch {torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)")


def _looks_like_path(spec: str) -> bool:
    return Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES or "/" in spec or "\\" in spec


def load(args: argparse.Namespace, offline: bool = False) -> OneStepSR:
    """The model named by ``--model`` or ``--denoiser``/``--autoencoder``; every failure is a UsageError
    (or CheckpointError), raised before anything is written. ``offline``: never download (the
    other processes of a sharded run, see ``shard``)."""
    if args.model and args.denoiser:
        raise UsageError("use either --model NAME or --denoiser PATH, not both")
    if args.model and args.schedule:
        raise UsageError("--schedule is for --denoiser checkpoint files; registry models bring their own")
    for flag, spec in (("--denoiser", args.denoiser), ("--autoencoder", args.autoencoder)):
        if spec and _looks_like_path(spec) and not Path(spec).exists():
            raise UsageError(f"{flag}: checkpoint not found: {spec}")
    denoiser = args.denoiser or args.model or DEFAULT_MODEL
    spec = (denoiser, args.autoencoder) if args.autoencoder else denoiser
    try:
        return load_model(spec, device=args.device, dtype=args.dtype, schedule=args.schedule,
                          models_dir=args.models_dir, offline=True if args.offline or offline else None)
    except (UnknownModelError, WeightsUnavailableError, DownloadError, ValueError, OSError) as exc:
        raise UsageError(" ".join(str(exc).split()) or type(exc).__name__) from exc


# ---------------------------------------------------------------------------------------------
# 4. options


def upscale_options(args: argparse.Namespace) -> dict:
    options = dict(steps=args.steps, stochastic=args.stochastic, seed=args.seed, scale=args.scale,
                   tile=args.tile, overlap=args.overlap, vq_tile=args.vq_tile, color_fix=args.color_fix,
                   strength=args.strength)
    if options["scale"] is None:  # the model's native scale
        del options["scale"]
    return options


def check_options(model: OneStepSR | None, options: dict) -> None:
    """``upscale``'s own option checks (``onestep_sr.options``), before any image is read or anything
    written; without a model, the rules that hold for every model (before loading one)."""
    try:
        if model is None:
            check_upscale(**options)
            if options.get("strength") is not None:
                check_strength(options["strength"])
        else:
            model.check_options(**options)
    except OptionError as exc:
        raise UsageError(f"--{exc.option.replace('_', '-')}: {exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------
# 3b. the files, before any weights


def check_files(plan: Plan, max_pixels: int) -> int:
    """Every input's header (a readable image within ``max_pixels``; a lone input is decoded in
    full, so a truncated file stops here too) and every output's place and format, before any
    weights are downloaded or loaded. A problem of the output folder itself stops everything
    (UsageError); a job that cannot succeed is reported on stderr and dropped from ``plan``, and
    the batch goes on without it. Returns how many were dropped."""
    if plan.folder is not None and (problem := folder_problem(plan.folder)):
        raise UsageError(f"cannot write into the output folder {plan.folder}: {problem}")
    kept = []
    for src, dst in plan.jobs:
        try:
            with open_image(src, max_pixels) as header:
                check_output(dst, header)
            if len(plan.jobs) == 1:
                read_image(src, max_pixels)
        except ImageInputError as exc:
            print(f"onestep-sr: error: {_failure_line(src, dst, exc)}", file=sys.stderr, flush=True)
            continue
        kept.append((src, dst))
    dropped = len(plan.jobs) - len(kept)
    plan.jobs[:] = kept
    return dropped


# ---------------------------------------------------------------------------------------------
# 5. run


def _failure_line(src: Path, dst: Path, exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, ImageInputError):
        message = f"cannot write {dst} ({exc.strerror or message})"
    return message if str(src) in message else f"{src}: {message}"


def upscale_file(model: OneStepSR, src: Path, dst: Path, options: dict, bar: TextBar | None) -> tuple[int, int]:
    """Read, upscale and atomically write one image; returns the output's (width, height)."""
    try:
        image = read_image(src)
        result = model.upscale(image, progress=bar.update if bar else None, **options)
        write_image_atomic(result, dst, overwrite_guard=src)
        return result.size
    finally:
        if bar:
            bar.close()


def upscale_all(model: OneStepSR | None, plan: Plan, options: dict, failed: int = 0, shard: Shard = Shard(),
                progress: JobProgress | None = None) -> int:
    """``failed``: jobs ``check_files`` already reported and dropped (``model`` is None when none is left).
    Several processes (``shard``): only process 0 prints progress, numbered by ``progress`` over the job."""
    if plan.folder is not None and plan.jobs:
        try:
            plan.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the output folder {plan.folder}: {exc.strerror or exc}") from exc
    total, written = len(plan.jobs) + failed, 0
    tty = sys.stderr.isatty() and shard.main
    for index, (src, dst) in enumerate(plan.jobs, 1):
        counter = progress.label() if progress else f"[{index}/{len(plan.jobs)}]"
        bar = TextBar(sys.stderr, f"{counter} {src.name}") if tty else None
        start = time.perf_counter()
        try:
            width, height = upscale_file(model, src, dst, options, bar)
        except IMAGE_FAILURES as exc:
            failed += 1
            print(f"onestep-sr: error: {_failure_line(src, dst, exc)}", file=sys.stderr, flush=True)
            continue
        written += 1
        chosen = model.last_strengths[0] if model.last_strengths else None
        strength = "" if chosen is None else f", strength {chosen:g}" + (" (auto)" if options.get("strength") in (None, "auto") else "")
        if shard.main:
            counter = f"{progress.label()} " if progress else ""
            print(f"{counter}{src} -> {dst} ({width}x{height}{strength}, {time.perf_counter() - start:.1f} s)",
                  flush=True)
    if progress and shard.main and progress.present() < progress.total:
        say(f"onestep-sr: process 0 has done its share; {progress.label()} outputs are there, the other "
            "processes finish theirs")
    if not failed:
        return EXIT_OK
    if total == 1:
        return EXIT_USAGE
    print(f"onestep-sr: {failed} of {total} images failed; the other {written} were written", file=sys.stderr)
    return EXIT_FAILED


def upscale(args: argparse.Namespace) -> int:
    try:
        plan = plan_outputs(collect_inputs(args.inputs), args.output, args.format)
        check_device(args.device)
        options = upscale_options(args)
        check_options(None, options)
        shard, progress = share(plan, args)
        dropped = check_files(plan, args.max_pixels)
        args.device = shard.device(args.device)
        model = load_when_available(lambda offline: load(args, offline), shard, _not_downloaded) if plan.jobs else None
        if model is not None:
            check_options(model, options)
        return upscale_all(model, plan, options, failed=dropped, shard=shard, progress=progress)
    except KeyboardInterrupt:
        print("\nonestep-sr: interrupted; no partial file was left", file=sys.stderr)
        return EXIT_INTERRUPTED


def share(plan: Plan, args: argparse.Namespace) -> tuple[Shard, JobProgress | None]:
    """Keep this process's jobs of ``plan`` (several processes: see ``shard``), without the outputs
    of a folder batch that exist already (unless --overwrite); returns (the shard, the job-wide
    progress of a sharded run)."""
    try:
        shard = Shard.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    resumable = plan.folder is not None and not args.overwrite
    progress = JobProgress([dst for _, dst in plan.jobs]) if shard.world > 1 else None
    if shard.main:
        # several processes: not what the others wrote in this run already
        present = outputs_from_before(plan.jobs) if shard.world > 1 else skip_existing(plan.jobs)[1]
        say(start_line(shard, len(plan.jobs), present if resumable else 0, plan.folder))
    if not shard.main:  # one voice: the others report failures only
        logging.getLogger("onestep_sr").setLevel(logging.WARNING)
    plan.jobs[:] = shard.mine(plan.jobs)
    if resumable:
        plan.jobs[:] = skip_existing(plan.jobs)[0]
    return shard, progress


def _not_downloaded(exc: BaseException) -> bool:
    return isinstance(exc, UsageError) and isinstance(exc.__cause__, WeightsUnavailableError)


def register(sub) -> None:
    up = sub.add_parser(
        "upscale", help="super-resolution (x4 with the bundled model; a model's native scale) of image files, folders or glob patterns",
        description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output file (one input, image extension) or folder")
    up.add_argument("--format", choices=FORMATS, default=None,
                    help="output format in a folder (default png)")
    up.add_argument("--overwrite", action="store_true",
                    help="write every output again; by default a batch into a folder skips the outputs that "
                         "exist (written atomically, so they are complete): an interrupted run resumes")
    from ..options import whole_arg  # --max-pixels -5 is refused here, not blamed on the image

    up.add_argument("--max-pixels", type=whole_arg(1), default=DEFAULT_MAX_PIXELS, metavar="N",
                    help=f"refuse inputs with more pixels than this, read from the file's header before anything "
                         f"is loaded (default {DEFAULT_MAX_PIXELS:,}: a 4000x3000 photo; the web app's limit too)")
    model = up.add_argument_group("model")
    model.add_argument("--model", metavar="NAME", default=None,
                       help=f"model name (default {DEFAULT_MODEL}: the bundled model, offline); a registry model "
                            "(sinsr_v1, resshift_v3, ...: official weights, non-commercial licences) is "
                            "downloaded on first use")
    model.add_argument("--denoiser", metavar="PATH", default=None,
                       help="denoiser checkpoint (.safetensors/.pth) instead of --model")
    model.add_argument("--autoencoder", metavar="PATH|NAME", default=None,
                       help="VQ-f4 checkpoint or registry name (default: the model's, vq_f4)")
    model.add_argument("--schedule", choices=sorted(SCHEDULES), default=None,
                       help="diffusion schedule of a --denoiser checkpoint (default T15)")
    model.add_argument("--models-dir", metavar="DIR", default=None,
                       help="where registry weights live (default $ONESTEP_SR_MODELS or ~/.cache/onestep_sr/models)")
    model.add_argument("--offline", action="store_true", help="never download; say which URL to save where")
    model.add_argument("--device", type=parse_device, default=None,
                       help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)")
    model.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                       help="weights' dtype (default fp16 on CUDA, fp32 otherwise)")
    sampling = up.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=None,
                          help="1 = one-step, or the schedule's T = full ResShift sampling; a progressively "
                               "distilled model runs only its own step count (default: the model's)")
    sampling.add_argument("--stochastic", action="store_true", default=None,
                          help="the original ResShift stochastic sampler (with --steps T)")
    sampling.add_argument("--seed", type=int, default=DEFAULT_SEED,
                          help=f"noise seed, 0 to 2**64-1 (default {DEFAULT_SEED})")
    sampling.add_argument("--scale", type=float, default=None,
                          help="output scale (default: the model's native scale, 4 for the bundled and official "
                               "models); larger scales chain native passes, the rest is one Lanczos resize")
    sampling.add_argument("--strength", default=None, metavar="auto|0..1",
                          help="restoration strength of a model with two weight sets (the bundled default): 0 keeps "
                               "the input faithful (grain stays; best on clean images), 1 removes noise and JPEG "
                               "artefacts (and smooths fine texture); auto (default) measures each image")
    sampling.add_argument("--color-fix", choices=COLOR_FIXES, default="none",
                          help="match colours to the input (default none)")
    tiling = up.add_argument_group("tiling (memory)")
    tiling.add_argument("--tile", type=int, default=None,
                        help="denoiser tile in LR pixels (default 256; at least 64, a multiple of 64 for the "
                             "official models: another value is refused, never rounded)")
    tiling.add_argument("--overlap", type=int, default=None,
                        help="denoiser tile overlap in LR pixels (smaller than the tile)")
    tiling.add_argument("--vq-tile", type=int, default=None,
                        help="autoencoder tile in LR pixels (default 128, at least 16)")
    up.set_defaults(run=upscale)
