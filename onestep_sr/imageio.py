"""Image kinds in and out of the engine: PIL images, numpy arrays and torch tensors.

Canonical form
--------------
``prepare(image)`` turns any supported input into one :class:`Prepared` per image:

* ``rgb``   -- ``1 x 3 x H x W`` float32 CPU tensor with values in [0, 1];
* ``alpha`` -- ``1 x 1 x H x W`` float32 CPU tensor in [0, 1], or ``None`` without alpha;
* ``out_dtype`` -- the dtype of the engine's output buffers: uint8 for 8-bit inputs, uint16 for
  16-bit inputs, float32 for float inputs.

Greyscale inputs become RGB by repeating the grey channel three times. ``prepare`` also returns a
``Restore`` callable; the engine calls it with one ``(rgb_out, alpha_out)`` pair per ``Prepared``
(``OH x OW x 3`` and ``OH x OW`` arrays of ``out_dtype``; ``alpha_out`` is ``None`` exactly when the
``Prepared`` had no alpha) and gets back the input's kind: a PIL image of the matching mode, a numpy
array with the input's layout and dtype, or a torch tensor with the input's layout, dtype and device.
Greyscale outputs are the luma of the RGB result (PIL's own ``convert("L")`` for 8-bit PIL images,
``0.299 R + 0.587 G + 0.114 B`` otherwise).

Value mapping (exact; the engine is compared bit for bit with official goldens)
------------------------------------------------------------------------------
* uint8 -> float32 ``u8 / 255`` and uint16 -> float32 ``u16 / 65535`` (float32 division, as
  ``torch.from_numpy(u8).float().div(255.0)``); float inputs -> float32 clamped to [0, 1], and a
  NaN or +-Inf anywhere is an :class:`ImageInputError`.
* float -> uint8 ``round(clamp(x, 0, 1) * 255)`` and -> uint16 ``round(clamp(x, 0, 1) * 65535)``,
  computed in float32 with round-half-to-even. uint8/uint16 -> float -> same dtype is lossless.

:func:`to_unit_float` and :func:`from_unit_float` expose the two directions.

Files
-----
:func:`read_image` decodes a file completely (so truncation is found at read time), closes it and
applies the EXIF orientation; :func:`prepare` applies the orientation of PIL images too, which is a
no-op for images from :func:`read_image` (the transpose removes the tag), so it happens exactly once.
:func:`write_image_atomic` writes through a temporary file in the destination folder and
``os.replace``. The checks both make before any pixel is read or written (an input's header, an
output's format) are :mod:`onestep_sr.imagefile`'s, which this module builds on (never the other
way round); ``ImageInputError`` is defined in :mod:`onestep_sr.errors` and ``SUPPORTED_EXTENSIONS``
in :mod:`onestep_sr.imagefile`, both importable from here too.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .checkpoint import new_file_mode
from .errors import ImageInputError
from .imagefile import SUPPORTED_EXTENSIONS, open_image, output_format, too_large

__all__ = [
    "ImageInputError", "Prepared", "Restore", "SUPPORTED_EXTENSIONS", "from_unit_float", "prepare",
    "read_image", "resize_array", "to_unit_float", "write_image_atomic",
]


@dataclass
class Prepared:
    rgb: torch.Tensor            # 1 x 3 x H x W, float32, CPU, values in [0, 1]
    alpha: torch.Tensor | None   # 1 x 1 x H x W, float32, CPU, in [0, 1]; None without alpha
    out_dtype: np.dtype          # uint8, uint16 or float32: dtype of the engine's output buffers


Restore = Callable[[list[tuple[np.ndarray, "np.ndarray | None"]]], Any]

_UINT8, _UINT16, _FLOAT32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)
_LUMA = (0.299, 0.587, 0.114)
_NUMPY_DTYPES = "uint8, uint16, float16, float32 or float64"


# ----------------------------------------------------------------------------------- value mapping
def _numpy_dtype_ok(dtype: np.dtype) -> bool:
    return (dtype.kind == "u" and dtype.itemsize <= 2) or (dtype.kind == "f" and dtype.itemsize <= 8)


def _tensor_of(array: np.ndarray, dtype=None) -> torch.Tensor:
    """numpy -> CPU tensor in native byte order (copied when read-only, e.g. from ``np.asarray(pil)``)."""
    array = np.ascontiguousarray(array, dtype=dtype or array.dtype.newbyteorder("="))
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _describe(x) -> str:
    kind = "tensor" if isinstance(x, torch.Tensor) else "array"
    dtype = str(x.dtype).replace("torch.", "")
    return f"{kind} of shape {tuple(x.shape)} and dtype {dtype}"


def to_unit_float(x):
    """uint8 / uint16 / float array or tensor -> float32 in [0, 1], of the same kind.

    uint8 -> ``u8 / 255``, uint16 -> ``u16 / 65535`` (float32 division); floats are converted to
    float32 and clamped to [0, 1]. NaN or +-Inf raises :class:`ImageInputError`. A tensor stays on
    its device; a numpy array comes back as a float32 numpy array.
    """
    out = _unit_tensor(x)
    return out.numpy() if isinstance(x, np.ndarray) else out


def _unit_tensor(x) -> torch.Tensor:
    """:func:`to_unit_float`, always returning a tensor."""
    if isinstance(x, np.ndarray):
        if not _numpy_dtype_ok(x.dtype):
            raise ImageInputError(f"{_describe(x)} is not supported; use {_NUMPY_DTYPES}")
        t = _tensor_of(x)
    else:
        t = x.detach()
    if t.dtype == torch.uint8:
        out = t.float().div(255.0)
    elif t.dtype == torch.uint16:
        out = t.float().div(65535.0)
    elif t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise ImageInputError(f"float image {_describe(x)} contains {bad} NaN or infinite "
                                  "value(s); expected finite values in [0, 1]")
        out = t.float().clamp(0.0, 1.0)
    else:
        raise ImageInputError(f"{_describe(x)} is not supported; use uint8, uint16 or a float dtype")
    return out


def from_unit_float(x, dtype) -> np.ndarray:
    """Float array or tensor in [0, 1] -> numpy array of ``dtype`` (uint8, uint16 or float32).

    Computed in float32: ``clamp(x, 0, 1)``, then for integer dtypes ``* 255`` or ``* 65535`` and
    round half to even. A tensor is detached and copied to the CPU. NaN raises ``ValueError``.
    """
    dtype = np.dtype(dtype)
    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float32)
    else:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise ValueError(f"from_unit_float expects a float array, got dtype {x.dtype}")
        t = _tensor_of(x, np.float32)
    if bool(torch.isnan(t).any()):
        raise ValueError(f"from_unit_float: {_describe(x)} contains NaN")
    t = t.clamp(0.0, 1.0)
    if dtype == _FLOAT32:
        return t.numpy()  # clamp made a new tensor: never aliases the input
    if dtype == _UINT8:
        return t.mul(255.0).round().numpy().astype(np.uint8)
    if dtype == _UINT16:
        return t.mul(65535.0).round().numpy().astype(np.uint16)
    raise ValueError(f"from_unit_float: unsupported output dtype {dtype}; use uint8, uint16 or float32")


# --------------------------------------------------------------------------- canonical form & back
def _check_size(shape, what: str) -> None:
    if 0 in shape:
        raise ImageInputError(f"{what} of shape {tuple(shape)} is empty (a dimension is 0)")


def _prepared_from_hwc(unit: torch.Tensor, out_dtype: np.dtype) -> Prepared:
    """H x W x C float32 tensor in [0, 1] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) -> Prepared."""
    channels = unit.shape[2]
    colour = unit[..., :1].expand(-1, -1, 3) if channels <= 2 else unit[..., :3]
    rgb = colour.permute(2, 0, 1).unsqueeze(0).to("cpu").contiguous()
    alpha = None
    if channels in (2, 4):
        alpha = unit[..., channels - 1].unsqueeze(0).unsqueeze(0).to("cpu").contiguous()
    return Prepared(rgb=rgb, alpha=alpha, out_dtype=np.dtype(out_dtype))


def _luma(rgb: np.ndarray) -> np.ndarray:
    """OH x OW x 3 array of uint8/uint16/float32 -> OH x OW luma of the same dtype."""
    unit = to_unit_float(rgb).astype(np.float64)
    grey = unit[..., 0] * _LUMA[0] + unit[..., 1] * _LUMA[1] + unit[..., 2] * _LUMA[2]
    return from_unit_float(grey.astype(np.float32), rgb.dtype)


def _compose(rgb: np.ndarray, alpha: np.ndarray | None, channels: int) -> np.ndarray:
    """Engine output -> OH x OW x C with the input's channel meaning (luma for grey)."""
    if channels == 3:
        return rgb
    if channels == 4:
        return np.concatenate([rgb, alpha[..., None]], axis=2)
    grey = _luma(rgb)[..., None]
    return grey if channels == 1 else np.concatenate([grey, alpha[..., None]], axis=2)


def _checked_outputs(outputs, prepared: list[Prepared]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    if len(outputs) != len(prepared):
        raise ValueError(f"restore expects {len(prepared)} output(s), got {len(outputs)}")
    checked = []
    for index, ((rgb, alpha), item) in enumerate(zip(outputs, prepared)):
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != item.out_dtype:
            raise ValueError(f"restore: output {index} must be OH x OW x 3 {item.out_dtype}, "
                             f"got shape {rgb.shape} {rgb.dtype}")
        if (alpha is None) != (item.alpha is None):
            state = "has no alpha" if item.alpha is None else "has alpha"
            raise ValueError(f"restore: output {index} alpha must match the input, which {state}")
        if alpha is not None:
            alpha = np.asarray(alpha)
            if alpha.shape != rgb.shape[:2] or alpha.dtype != item.out_dtype:
                raise ValueError(f"restore: alpha {index} must be {rgb.shape[:2]} {item.out_dtype}, "
                                 f"got {alpha.shape} {alpha.dtype}")
        checked.append((rgb, alpha))
    return checked


def prepare(image) -> tuple[list[Prepared], Restore]:
    """PIL image, numpy array or torch tensor -> (one Prepared per image, Restore).

    numpy: H x W, H x W x 1 (grey), H x W x 2 (grey + alpha), H x W x 3 (RGB), H x W x 4 (RGBA) in
    uint8, uint16 or float16/32/64. torch: (C, H, W) or (B, C, H, W) with C in 1..4 and the same
    channel meaning, uint8 or any float dtype (a batch gives B items). PIL: see ``_pil_pixels``.
    """
    if isinstance(image, Image.Image):
        return _prepare_pil(image)
    if isinstance(image, np.ndarray):
        return _prepare_numpy(image)
    if isinstance(image, torch.Tensor):
        return _prepare_torch(image)
    raise ImageInputError(f"unsupported image type {type(image).__module__}.{type(image).__name__}; "
                          "expected a PIL.Image.Image, a numpy.ndarray or a torch.Tensor")


# numpy --------------------------------------------------------------------------------------------
def _prepare_numpy(array: np.ndarray) -> tuple[list[Prepared], Restore]:
    if array.dtype == np.bool_:
        raise ImageInputError(f"numpy bool array of shape {array.shape} is not supported; convert it "
                              "to uint8 (0/255) or float (0/1) first")
    if not _numpy_dtype_ok(array.dtype):
        raise ImageInputError(f"numpy array dtype {array.dtype} is not supported; use {_NUMPY_DTYPES}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ImageInputError(f"numpy array of shape {array.shape} is not an image; expected H x W or "
                              "H x W x C with C in 1..4 (grey, grey+alpha, RGB, RGBA)")
    _check_size(array.shape, "numpy array")
    hwc = array[..., None] if array.ndim == 2 else array
    out_dtype = _FLOAT32 if array.dtype.kind == "f" else np.dtype(array.dtype.newbyteorder("="))
    item = _prepared_from_hwc(_unit_tensor(hwc), out_dtype)
    in_dtype, ndim, channels = array.dtype, array.ndim, hwc.shape[2]

    def restore(outputs):
        [(rgb, alpha)] = _checked_outputs(outputs, [item])
        out = _compose(rgb, alpha, channels).astype(in_dtype, copy=False)
        return out[..., 0] if ndim == 2 else out

    return [item], restore


# torch --------------------------------------------------------------------------------------------
def _prepare_torch(tensor: torch.Tensor) -> tuple[list[Prepared], Restore]:
    shape, dtype = tuple(tensor.shape), tensor.dtype
    if not (tensor.is_floating_point() or dtype == torch.uint8):
        raise ImageInputError(f"torch tensor dtype {str(dtype).replace('torch.', '')} is not "
                              "supported; use uint8 or a float dtype with values in [0, 1]")
    if tensor.ndim not in (3, 4) or not 1 <= shape[-3] <= 4:
        raise ImageInputError(f"torch tensor of shape {shape} is not a channels-first image; expected "
                              "(C, H, W) or (B, C, H, W) with C in 1..4")
    _check_size(shape, "torch tensor")
    batch = tensor.detach().to("cpu")
    batch = batch.unsqueeze(0) if tensor.ndim == 3 else batch
    out_dtype = _UINT8 if dtype == torch.uint8 else _FLOAT32
    items = [_prepared_from_hwc(_unit_tensor(one.permute(1, 2, 0)), out_dtype) for one in batch]
    channels, device, ndim = shape[-3], tensor.device, tensor.ndim

    def restore(outputs):
        images = [_tensor_of(_compose(rgb, alpha, channels))
                  for rgb, alpha in _checked_outputs(outputs, items)]
        sizes = {tuple(one.shape) for one in images}
        if len(sizes) > 1:
            raise ValueError(f"restore: batch outputs differ in size {sorted(sizes)}")
        out = torch.stack(images).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=dtype)
        return out[0] if ndim == 3 else out

    return items, restore


# PIL ----------------------------------------------------------------------------------------------
_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")      # colour spaces converted with convert("RGB")
_CONVERT = {"1": ("L", "L"), "RGBa": ("RGBA", "RGBA"), "PA": ("RGBA", "RGBA"), "La": ("LA", "LA"),
            **{mode: ("RGB", "RGB") for mode in _TO_RGB}}
_NATIVE = {"RGB": "RGB", "RGBA": "RGBA", "L": "L", "LA": "LA", "F": "F",
           "I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16", "I;16N": "I;16", "I": "I;16"}


def _pil_name(image: Image.Image) -> str:
    name = getattr(image, "filename", "") or ""
    return f"PIL image {name}" if name else "PIL image"


def _pil_pixels(image: Image.Image, label: str) -> tuple[np.ndarray, str]:
    """PIL image (orientation applied) -> (H x W x C array, output mode).

    Modes: RGB, RGBA, L, LA as they are; "1" -> L; RGBa/PA -> RGBA; La -> LA; CMYK, YCbCr, LAB, HSV,
    RGBX -> RGB; P -> RGB, or RGBA when ``"transparency" in image.info``. 16-bit grey ("I;16",
    "I;16B", "I;16L", "I;16N", and "I" holding 0..65535) -> uint16 with output mode "I;16";
    "F" -> float32 (clamped to [0, 1]) with output mode "F". Pillow decodes 48/64-bit RGB(A) PNGs
    as 8-bit "RGB"/"RGBA", so those come out 8-bit.
    """
    mode = image.mode
    if mode == "P":
        target = "RGBA" if "transparency" in image.info else "RGB"
        return np.asarray(image.convert(target)), target
    if mode in _CONVERT:
        target, out_mode = _CONVERT[mode]
        return np.asarray(image.convert(target)), out_mode
    if mode not in _NATIVE:
        raise ImageInputError(f"{label} has unsupported mode {mode!r}; supported modes are "
                              f"{', '.join(sorted(set(_NATIVE) | set(_CONVERT) | {'P'}))}")
    pixels = np.asarray(image)
    if mode == "I":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ImageInputError(f"{label} of mode 'I' holds values {low}..{high}, beyond "
                                  "16 bit; only 0..65535 is supported")
    if mode.startswith("I"):
        pixels = pixels.astype(np.uint16)
    return pixels, _NATIVE[mode]


def _oriented(image: Image.Image, label: str) -> Image.Image:
    """Fully decoded copy of ``image`` with its EXIF orientation applied (and the tag removed)."""
    _decode(image, label)
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block must not block the pixels: use them unrotated
        return image.copy()


def _prepare_pil(image: Image.Image) -> tuple[list[Prepared], Restore]:
    label = _pil_name(image)
    _check_size((image.height, image.width), f"{label} (mode {image.mode!r})")
    pixels, out_mode = _pil_pixels(_oriented(image, label), label)
    hwc = pixels[..., None] if pixels.ndim == 2 else pixels
    out_dtype = _FLOAT32 if hwc.dtype.kind == "f" else hwc.dtype
    item = _prepared_from_hwc(_unit_tensor(hwc), out_dtype)
    icc = None if image.mode in _TO_RGB else image.info.get("icc_profile")

    def restore(outputs):
        [(rgb, alpha)] = _checked_outputs(outputs, [item])
        out = _pil_from_output(rgb, alpha, out_mode)
        if icc:
            out.info["icc_profile"] = icc
        return out

    return [item], restore


def _pil_from_output(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    if mode in ("RGB", "RGBA"):
        return Image.fromarray(np.ascontiguousarray(_compose(rgb, alpha, len(mode))))
    if mode in ("L", "LA"):
        grey = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")  # PIL's own luma
        if mode == "L":
            return grey
        return Image.merge("LA", (grey, Image.fromarray(np.ascontiguousarray(alpha))))
    return Image.fromarray(_luma(rgb))  # "I;16" from uint16, "F" from float32


# ------------------------------------------------------------------------------------------- files
def read_image(path, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file completely and return it with its EXIF orientation applied.

    The file is closed before returning. Only the first frame of animated / multi-page files is
    read. Errors are :class:`ImageInputError`: those of :func:`onestep_sr.imagefile.open_image`
    (missing path, a folder, not an image, more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` or
    than ``max_pixels``, from the header, before any pixel is decoded), then truncated or corrupt data.
    """
    with open_image(path, max_pixels) as image:
        return _oriented(image, str(Path(path)))


def _decode(image: Image.Image, label: str) -> None:
    """Force the full decode so that truncated or corrupt data is reported now."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise too_large(label, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"{label}: truncated or corrupt image ({error})") from error


_SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}  # 4:4:4 JPEG


def _fit_to_format(image: Image.Image, fmt: str) -> Image.Image:
    """Convert modes the format cannot store (alpha was checked by ``output_format``)."""
    if fmt == "JPEG" and image.mode == "P":
        return image.convert("RGB")
    high_depth = image.mode.startswith("I") or image.mode == "F"
    if not high_depth or fmt == "TIFF" or (fmt == "PNG" and image.mode != "F"):
        return image
    unit = to_unit_float(np.asarray(image, dtype=np.float32)) if image.mode == "F" else \
        np.asarray(image, dtype=np.float32) / np.float32(65535.0)
    # 16-bit/float grey: PNG keeps 16 bit, JPEG/WebP/BMP are 8-bit formats (documented limit)
    return Image.fromarray(from_unit_float(unit, _UINT16 if fmt == "PNG" else _UINT8))


def write_image_atomic(image: Image.Image, path, overwrite_guard: Path | None = None) -> None:
    """Save ``image`` to ``path`` atomically (temporary ``.part`` file, fsync, ``os.replace``).

    The format comes from the extension (see ``SUPPORTED_EXTENSIONS``); JPEG is written at quality 95
    without chroma subsampling, WebP at quality 95, and an ICC profile in ``image.info`` is kept
    (not for BMP). JPEG and BMP refuse images
    with alpha. 16-bit grey ("I;16"/"I") and float ("F") images keep their depth in TIFF; PNG
    stores them as 16-bit; JPEG, WebP and BMP store 8-bit grey (``round(v / 257)``). The parent
    folder is created when missing; ``overwrite_guard`` (the input file) is never overwritten.
    """
    path = Path(path)
    fmt = output_format(path, image)
    if overwrite_guard is not None and _same_file(path, Path(overwrite_guard)):
        raise ImageInputError(f"{path}: refusing to overwrite the input image {overwrite_guard}")
    image = _fit_to_format(image, fmt)
    options = dict(_SAVE_OPTIONS.get(fmt, {}))
    if image.info.get("icc_profile") and fmt != "BMP":
        options["icc_profile"] = image.info["icc_profile"]
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(path)
    fd, temp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=fmt, **options)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


# ------------------------------------------------------------------------------------------ resize
def resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of an H x W or H x W x C uint8/uint16/float32 array to ``size = (width, height)``.

    Channels are resampled independently (no alpha premultiplication). uint8 goes through PIL's
    8-bit "L"/"RGB" modes; uint16 and float32 through PIL's float "F" mode in unit range, then
    mapped back with :func:`from_unit_float` (uint16 rounded, float32 clamped to [0, 1]).
    """
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ImageInputError(f"resize target size {tuple(size)} must be at least 1 x 1 (width, height)")
    if array.dtype not in (_UINT8, _UINT16, _FLOAT32) or array.ndim not in (2, 3) or 0 in array.shape:
        raise ImageInputError(f"cannot resize array of shape {array.shape} and dtype {array.dtype}; "
                              "expected a non-empty H x W or H x W x C uint8, uint16 or float32 array")
    lanczos = Image.Resampling.LANCZOS
    if array.dtype == _UINT8 and array.ndim == 3 and array.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((width, height), lanczos))
    hwc = array[..., None] if array.ndim == 2 else array
    planes = [_resize_plane(np.ascontiguousarray(hwc[..., c]), (width, height)) for c in range(hwc.shape[2])]
    out = np.stack(planes, axis=2)
    return out[..., 0] if array.ndim == 2 else out


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    lanczos = Image.Resampling.LANCZOS
    if plane.dtype == _UINT8:
        return np.asarray(Image.fromarray(plane).resize(size, lanczos))
    unit = to_unit_float(plane)
    resized = np.asarray(Image.fromarray(unit).resize(size, lanczos))
    return from_unit_float(resized, plane.dtype)
