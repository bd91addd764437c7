"""Image files checked before the expensive part: an input's header, and where a result can go.

Hosts that read and write files (the CLI, the web app) run these checks before any weights are
downloaded or loaded and before any pixel is computed, so a bad input or output location costs
nothing and the message names the file and the reason:

* :func:`open_image` opens an input and reads its header only (no pixel decoded): a missing file,
  a folder, an unreadable file, not an image, over PIL's decompression-bomb limit or over
  ``max_pixels`` (the hosts' ``--max-pixels``). :func:`onestep_sr.imageio.read_image` decodes the
  image it opens, so both find the same problems with the same words.
* :func:`output_format` is the format a path is written in (from its extension), refusing an
  unknown extension and a format that would drop the image's alpha channel (JPEG, BMP); used by
  :func:`onestep_sr.imageio.write_image_atomic` too.
* :func:`check_output` adds the location: an existing folder at the path, a regular file where a
  parent folder should be, a folder this user cannot create files in.

``DEFAULT_MAX_PIXELS`` is the input pixel limit of the CLI and the web app (``--max-pixels``).

This module reads headers and paths only; :mod:`onestep_sr.imageio` (pixels in and out) builds on
it, never the other way round.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from .errors import ImageInputError
from .options import OptionError, is_whole

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_EXTENSIONS", "check_output", "folder_problem", "has_alpha",
           "open_image", "output_format", "too_large"]

DEFAULT_MAX_PIXELS = 16_000_000   # input pixels per image (a 4000x3000 photo; its x4 is 192 MP)
NO_ALPHA_FORMATS = ("JPEG", "BMP")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SUPPORTED_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                        ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


# ------------------------------------------------------------------------------------------ inputs
@contextlib.contextmanager
def open_image(path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """The image file opened with its header read and checked, no pixel decoded; closed on exit.

    Errors are :class:`ImageInputError`. While the block runs, PIL's decompression-bomb warning is
    an error, so decoding the image inside the block is guarded too.
    """
    if max_pixels is not None and (not is_whole(max_pixels) or max_pixels < 1):  # the limit, not the image
        raise OptionError("max_pixels", max_pixels, "a whole number, at least 1 (--max-pixels)")
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"input not found: {path}")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, not an image file")
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise ImageInputError(f"{path}: cannot read the file ({error.strerror or error})") from error
    with handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_header(handle, path)
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageInputError(f"{path}: {image.width}x{image.height} is {image.width * image.height:,} pixels, "
                                  f"over the limit of {max_pixels:,} (--max-pixels)")
        yield image


def too_large(label, error: Exception) -> ImageInputError:
    """The error for an image over PIL's decompression-bomb limit (from its header or its data)."""
    return ImageInputError(f"{label}: image too large ({error}); the limit is "
                           f"Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels")


def _open_header(handle, path: Path) -> Image.Image:
    try:
        return Image.open(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise too_large(path, error) from error
    except UnidentifiedImageError as error:
        reason = "the file is empty" if path.stat().st_size == 0 else "unrecognised image format"
        raise ImageInputError(f"{path}: not an image ({reason})") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageInputError(f"{path}: truncated or corrupt image ({error})") from error


def has_alpha(image: Image.Image) -> bool:
    """Whether the image (or the result the engine makes of it: same mode) has an alpha channel."""
    return image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


# ----------------------------------------------------------------------------------------- outputs
def output_format(path, image: Image.Image | None = None) -> str:
    """The PIL format ``path`` is written in; ImageInputError for an unknown extension, or for a
    format that cannot store the alpha channel of ``image`` (the result, or its input: the engine
    keeps the input's alpha)."""
    path = Path(path)
    fmt = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ImageInputError(f"cannot write {path}: unsupported output extension {path.suffix!r}; use one of "
                              f"{', '.join(SUPPORTED_EXTENSIONS)}")
    if image is not None and fmt in NO_ALPHA_FORMATS and has_alpha(image):
        raise ImageInputError(f"cannot write {path}: {fmt} cannot store the alpha channel of this {image.mode} "
                              "image; save it as .png (or .webp/.tiff) instead")
    return fmt


def folder_problem(folder) -> str | None:
    """Why files cannot be created in ``folder`` (made first when missing), or None. Looks only at
    the file system: the nearest existing folder on the way must be a folder this user can write."""
    existing = Path(folder)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to create files in {existing} (or it is on a read-only file system)"
    return None


def check_output(path, image: Image.Image | None = None) -> str:
    """:func:`output_format`, plus whether a file can be written at ``path`` at all (an existing
    folder there, a regular file where a parent folder should be, a folder without write
    permission): ImageInputError naming the path and the reason. Returns the format."""
    path = Path(path)
    fmt = output_format(path, image)
    problem = "it is an existing folder" if path.is_dir() else folder_problem(path.parent)
    if problem:
        raise ImageInputError(f"cannot write {path}: {problem}")
    return fmt
