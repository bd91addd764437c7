"""Reading checkpoints safely and loading them into our networks.

Accepted: ``.safetensors``; ``.pth``/``.ckpt``/``.pt``/``.bin`` through
``torch.load(weights_only=True)`` (a pickle that needs code execution is refused); a bare
state dict or a ``{'state_dict': ...}`` wrapper (official trainer layout); ``module.`` /
``_orig_mod.`` prefixes in any combination (DDP, torch.compile); the recomputable buffers
(``relative_position_index``, ``attn_mask``) present or absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pickletools
import re
import signal
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import public_error
from .models import (AutoencoderConfig, DenoiserConfig, SwinUNetDenoiser, VQAutoencoder, build_autoencoder,
                     build_denoiser)
from .models.config_inference import ArchitectureMismatch, infer_autoencoder_config, infer_denoiser_config
from .onefile import HEADER_KEY, select

WRAPPER_KEYS = ("state_dict",)
PREFIXES = ("module.", "_orig_mod.")
RECOMPUTABLE_BUFFERS = ("relative_position_index", "attn_mask")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
_SHOW = 5


@public_error
class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the architecture."""


def load_weights_only(path: str | os.PathLike) -> Any:
    """A pickled checkpoint through torch's own weights-only unpickler (tensors, numbers, strings,
    containers; anything that would run code is refused), on the CPU. Called as
    ``torch.serialization.load`` because hosts replace ``torch.load``: A1111's ``modules/safe.py``
    swaps in a checker that rejects files written by current torch (their ``.format_version``
    entry) and returns None instead of raising."""
    return torch.serialization.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt.

    safetensors reads tensors in Rust, which turns a KeyboardInterrupt raised in its Python
    callbacks into an unrelated error ("could not determine the shape of object type
    'torch.storage.UntypedStorage'"): a complete file would then look corrupt (and a download
    verifier would delete it). Signals reach only the main thread, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, None):
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of a checkpoint file (unwrapped, prefixes stripped, all finite) and its text metadata."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in CHECKPOINT_SUFFIXES)
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the path of a "
                              f"{' or '.join(CHECKPOINT_SUFFIXES[:2])} file"
                              + (f" (this folder has {_listing(inside)})" if inside else ""))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with interrupts_deferred(), safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                obj: Any = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file: {describe_file(path) or exc}") from exc
    elif path.suffix in PICKLE_SUFFIXES:
        obj = read_pickle(path)
    else:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type {path.suffix!r} "
            f"(expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)})"
        )
    return normalise_state_dict(obj, source=str(path)), metadata


def read_pickle(path: Path, error: type[CheckpointError] = CheckpointError) -> Any:
    """A pickled checkpoint through :func:`load_weights_only`. A refusal raises ``error`` with our
    sentence (which code the pickle names, or what the file is), never torch's advice to load it
    with ``weights_only=False``."""
    try:
        return load_weights_only(path)
    except Exception as exc:  # UnpicklingError, zip RuntimeError, EOFError of an empty file, ...
        text = " ".join(str(exc).split()) if not isinstance(exc, pickle.UnpicklingError) else str(exc)
        calls, is_pickle = _pickle_globals(path, text)
        if calls:
            raise error(
                f"{path}: refused to load. The file is a pickle that needs to run code to be read "
                f"(it names {_listing(calls)}); only tensors, numbers, strings and containers are "
                "accepted (torch.load(weights_only=True)). If you trust its source, convert it to "
                ".safetensors in an isolated environment."
            ) from None
        reason = _torch_reason(text, exc)
        if is_pickle:
            what = f"a plain Python pickle, not a file written by torch.save ({reason})"
        else:
            what = describe_file(path) or (f"the file is damaged or cut short ({reason})"
                                           if "zip archive" in reason else None)
        raise error(f"{path}: not a readable PyTorch checkpoint: {what or reason}"
                    ) from (None if isinstance(exc, pickle.UnpicklingError) else exc)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_SAFE_MODULES = ("torch", "collections", "_codecs")  # what torch's own checkpoints name
_WINDOW = 1 << 20  # bytes of a refused pickle decoded to find what it names


def _pickle_globals(path: Path, torch_text: str) -> tuple[list[str], bool]:
    """(the globals, i.e. callables, a refused pickle names; whether the file is one whole plain
    pickle). Torch's message names the first one; a plain file is decoded with ``pickletools``
    (opcodes only: nothing runs), which names them all, also in the pickles torch's reader stops
    on early (protocol 0, 4, 5), and tells a text file from a pickle."""
    named = list(dict.fromkeys(_GLOBAL.findall(torch_text)))
    found, strings, memo, complete, pushed_string, stream = [], [], {}, False, False, io.BytesIO()
    try:
        with open(path, "rb") as f:
            stream = io.BytesIO(f.read(_WINDOW))
        if stream.getvalue().startswith(b"PK\x03\x04"):  # torch.save's zip: torch read its data.pkl
            return named, False
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name == "STOP":
                complete = True
                break
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):  # memo the value on top, keep it
                memo[len(memo) if name == "MEMOIZE" else arg] = strings[-1] if pushed_string else None
                continue
            value = memo.get(arg) if name in ("GET", "BINGET", "LONG_BINGET") else \
                arg if isinstance(arg, str) and name not in ("GLOBAL", "INST") else None
            pushed_string = value is not None
            if pushed_string:
                strings.append(value)
    except (ValueError, EOFError, OSError):  # not a pickle, or cut short
        pass
    if not complete:  # not a whole pickle (what looked like opcodes says nothing), or past the window
        return ([], False) if len(stream.getvalue()) < _WINDOW else (named, False)
    return [g for g in dict.fromkeys(found) if g.split(".")[0] not in _SAFE_MODULES] or named, True


def describe_file(path: Path) -> str | None:
    """What a file that is not a checkpoint is, when that is clear from its first bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if size == 0:
        return "the file is empty (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return ("it is a Git LFS pointer file, not the weights (fetch them with `git lfs pull`, "
                "or download the file again)")
    if b"\0" in head:
        return None
    text = head.decode("utf-8", errors="replace").lstrip()
    if text[:200].lower().startswith(("<!doctype html", "<html")):
        return "it is an HTML page (a download that saved a web page instead of the file?)"
    if text.count("\ufffd") <= 2 and all(c.isprintable() or c.isspace() for c in text):
        first = text.splitlines()[0] if text.strip() else ""
        return f"it is a text file of {size:,} bytes" + (f" starting {first[:60]!r}" if first else "")
    return None


def _torch_reason(text: str, exc: BaseException) -> str:
    """The informative part of torch's error ('Unsupported operand 110', a zip error), without
    its advice about ``weights_only``."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keep = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    return keep[0].split(". ")[0].rstrip(".") if keep else type(exc).__name__


def normalise_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{'state_dict': ...}``, strip ``module.``/``_orig_mod.`` prefixes and drop the header
    copy of one-file models (``onefile.HEADER_KEY``: not a weight); weights with NaN/Inf values are
    refused (the one check of every file and state dict loaded)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if key == HEADER_KEY:
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        name = str(key)
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise CheckpointError(f"{source}: key {name!r} appears twice once prefixes are stripped")
        out[name] = value
    _refuse_non_finite(out, source)
    return out


def _refuse_non_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Weights with NaN/Inf make every image fail after its compute: refuse them at load."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        first = state[bad[0]]
        nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
        raise CheckpointError(
            f"{source}: the weights have NaN/Inf values: {bad[0]} has {nan} NaN and {inf} Inf of "
            f"{first.numel():,} values" + (f" ({len(bad)} tensors in all)" if len(bad) > 1 else "")
            + "; they are damaged, or were saved from a training run that diverged")


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _is_recomputable(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RECOMPUTABLE_BUFFERS


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        optional: Callable[[str], bool] = lambda key: False) -> list[str]:
    """Sentences naming the missing (unless ``optional``), unexpected and mis-shaped keys of
    ``state`` against ``expected``; empty when it fits."""
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} key(s) with the wrong shape: {_listing(misshaped)}")
    return problems


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
              architecture: str) -> nn.Module:
    """Copy ``state`` into ``model``, strictly: every missing, unexpected or mis-shaped key is an
    error naming the keys first, then the ``architecture`` expected. Recomputable buffers may be absent."""
    problems = state_dict_problems(model.state_dict(), state, optional=_is_recomputable)
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems) + f"; it does not fit the {architecture}")
    model.load_state_dict(dict(state), strict=False)
    return model


def config_from_metadata(metadata: Mapping[str, str], marker: str) -> dict[str, Any] | None:
    """The architecture config stored in a safetensors header under ``config`` (JSON), if it
    has the ``marker`` field of the network kind being loaded."""
    text = metadata.get("config")
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint metadata 'config' is not valid JSON ({exc})") from exc
    return value if isinstance(value, dict) and marker in value else None


@dataclass(frozen=True)
class _Kind:
    name: str
    config_cls: type
    infer: Callable[[Mapping[str, torch.Tensor]], Any]
    build: Callable[[Any], nn.Module]
    marker: str  # a field that only this kind's config has
    part: str  # its keys' prefix in a bundle (onefile)


_DENOISER = _Kind("Swin-UNet denoiser", DenoiserConfig, infer_denoiser_config, build_denoiser, "model_channels",
                  "denoiser")
_AUTOENCODER = _Kind("VQ autoencoder", AutoencoderConfig, infer_autoencoder_config, build_autoencoder, "n_embed",
                     "autoencoder")

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


def _load(kind: _Kind, source: Source, config: Any, device: Any, dtype: Any,
          metadata: Mapping[str, str] | None = None) -> nn.Module:
    if isinstance(source, Mapping):  # a bundle's part and its config (onefile); the header copy is used
        state, metadata = select(source, metadata, kind.part)
        state, name = normalise_state_dict(state, "state dict"), "state dict"
    else:
        (state, metadata), name = read_checkpoint(source), str(source)
        state, metadata = select(state, metadata, kind.part)
    origin = "asked for"
    if config is None:
        stored = config_from_metadata(metadata, marker=kind.marker)
        origin = "read from the file's metadata" if stored else "inferred from the tensor shapes"
        try:
            config = kind.config_cls.from_dict(stored) if stored else kind.infer(state)
        except KeyError as exc:  # a key the inference reads
            raise CheckpointError(f"{name}: not a {kind.name} state dict (or a damaged one): key "
                                  f"{exc.args[0]!r} is missing") from exc
        except (ArchitectureMismatch, TypeError, ValueError) as exc:
            raise CheckpointError(f"{name}: {exc}") from exc
    try:
        model = kind.build(config)
    except (ValueError, AssertionError, ZeroDivisionError) as exc:  # not memory errors
        raise CheckpointError(f"{name}: the {kind.name} architecture {origin} cannot be built ({exc}): "
                              f"{config}") from exc
    model = load_into(model, state, name, f"{kind.name} architecture ({origin}) {config}")
    return model.to(device=device, dtype=dtype).eval()


def load_denoiser(source: Source, config: DenoiserConfig | None = None,
                  device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  metadata: Mapping[str, str] | None = None) -> SwinUNetDenoiser:
    """Swin-UNet denoiser from a file or state dict. Without ``config`` the architecture comes from
    the file's ``config`` metadata (for a state dict: ``metadata``), else is inferred from the key
    names and shapes."""
    return _load(_DENOISER, source, config, device, dtype, metadata)


def load_autoencoder(source: Source, config: AutoencoderConfig | None = None,
                     device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None) -> VQAutoencoder:
    """VQ-f4 autoencoder from a file or state dict (architecture as in :func:`load_denoiser`)."""
    return _load(_AUTOENCODER, source, config, device, dtype, metadata)


def new_file_mode(path: Path) -> int:
    """Permissions for a file written at ``path`` through a temporary file (which safetensors and
    mkstemp create private): the old file's, else 0o666 minus the umask."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], dst: Path) -> None:
    """Write to a temporary file in ``dst``'s folder, then rename: no partial file on failure. The
    file gets the usual permissions (``new_file_mode``)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(dst)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file through a temporary file in its folder, then rename."""
    path = Path(path)
    mode = new_file_mode(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
