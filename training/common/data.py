"""Training pairs from a folder of HR images: a random GT crop (flipped at random; with augment
"all" also rotated by a multiple of 90 degrees and its RGB channels permuted, so a handful of
images covers every orientation and hue) and its LR, synthesised on the fly (Real-ESRGAN
second-order degradation, or bicubic only).

Pair ``i`` depends only on (seed, i): a run is reproducible and a resumed run sees the same
pairs it would have seen without the interruption."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from onestep_sr.imagefile import open_image
from onestep_sr.imageio import ImageInputError

from .degradations import DegradationConfig, bicubic_degrade, degrade, degrade_coupled
from .realworld import MIXTURES, degrade_realworld

DEGRADATIONS = ("realesrgan", "bicubic", *MIXTURES)  # realworld, realworld_photo: see realworld.py
AUGMENTS = ("flip", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(folder, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (extensions in IMAGE_EXTENSIONS, any case), sorted; with
    ``recursive`` in its subfolders too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: p.relative_to(folder).as_posix())


def load_rgb(path, scale: int = 1) -> torch.Tensor:
    """Image file -> float32 (3, H, W) in [0, 1], cropped (top-left kept) to multiples of ``scale``.
    A file that is no readable image is an ``ImageInputError`` (a ValueError) naming it."""
    try:
        with open_image(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except ImageInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # the header was fine, the pixels are not
        raise ImageInputError(f"{path}: truncated or corrupt image ({exc})") from exc
    h, w = arr.shape[0] - arr.shape[0] % scale, arr.shape[1] - arr.shape[1] % scale
    if h == 0 or w == 0:
        raise ValueError(f"{path}: {arr.shape[1]}x{arr.shape[0]} is smaller than scale {scale}")
    arr = np.array(arr[:h, :w])  # a writable copy (PIL arrays are read-only)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def min_side(gt_size: int) -> int:
    """The smallest image side a ``gt_size`` crop is cut from: half the crop (rounded up). Smaller
    sides are mirrored out to the crop (see :func:`mirror_pad`); below half it would show the same
    pixels three times or more, so such images are refused."""
    return (gt_size + 1) // 2


class DataError(ValueError):
    """A training folder that cannot be used: one sentence naming every bad file."""


class ImageSet:
    """Every image of a training folder (searched recursively), decoded and checked at once:
    ``files`` and ``images`` (float32 (3, H, W) in [0, 1]). Unreadable files and images with a
    side under :func:`min_side` of ``gt_size`` are all named in one :class:`DataError`; no image
    at all is a FileNotFoundError."""

    def __init__(self, folder: str | os.PathLike, gt_size: int):
        self.folder = Path(folder)
        files = list_images(folder, recursive=True)
        if not files:
            raise FileNotFoundError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        unreadable, small, self.images = [], [], []
        smallest = min_side(gt_size)
        for path in files:
            try:
                image = load_rgb(path)
            except ValueError as exc:
                unreadable.append(str(exc))
                continue
            if min(image.shape[1:]) < smallest:
                small.append(f"{path} ({image.shape[2]}x{image.shape[1]})")
            self.images.append(image)
        problems = []
        if unreadable:
            problems.append(f"{len(unreadable)} unreadable: " + "; ".join(unreadable))
        if small:
            problems.append(f"{len(small)} with a side under {smallest} pixels, half the --gt-size {gt_size} "
                            f"crop: " + ", ".join(small) + " (use a smaller --gt-size)")
        if problems:
            raise DataError(f"{len(unreadable) + len(small)} of the {len(files)} image files in {folder} cannot be "
                            f"used for training ({'; and '.join(problems)}); move them out of the folder or fix them")
        self.files = files


def mirror_pad(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` (C, H, W) extended to at least ``size`` x ``size`` (right and bottom) by mirroring
    without repeating the edge: torch's reflect padding, continued (mirrored again) where the pad
    is as large as the side."""
    _, h, w = image.shape
    rows, cols = (_reflected(n, max(n, size)) for n in (h, w))
    return image[:, rows][:, :, cols]


def _reflected(n: int, length: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros(length, dtype=torch.long)
    period = 2 * n - 2
    index = torch.arange(length) % period
    return torch.where(index < n, index, period - index)


class PairDataset(torch.utils.data.Dataset):
    """``length`` pairs (lq (3, gt/scale, gt/scale), gt (3, gt, gt)), both float32 in [0, 1].
    ``folder``: the HR image folder, or its :class:`ImageSet` already read (made with the same
    ``gt_size``)."""

    def __init__(self, folder: str | os.PathLike | ImageSet, gt_size: int, scale: int = 4, degradation: str = "realesrgan",
                 seed: int = 0, length: int = 10**9, config: DegradationConfig | None = None, augment: str = "flip"):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}")
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTS)}")
        if gt_size % scale:
            raise ValueError(f"the GT crop ({gt_size}) must be a multiple of the scale ({scale})")
        images = folder if isinstance(folder, ImageSet) else ImageSet(folder, gt_size)
        self.files, self.images = images.files, images.images
        self.gt_size, self.scale, self.degradation, self.seed, self.length = gt_size, scale, degradation, seed, length
        self.config = config or DegradationConfig()
        self.augment = augment

    def __len__(self) -> int:
        return self.length

    def crop(self, rng: np.random.Generator) -> torch.Tensor:
        return self.crop_with_index(rng)[0]

    def crop_with_index(self, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """(the crop, the index in ``files`` of the image it was cut from)."""
        index = int(rng.integers(len(self.images)))
        image = self.images[index]
        size = self.gt_size
        _, h, w = image.shape
        if h < size or w < size:  # mirror small images out to the crop size
            image = mirror_pad(image, size)
            _, h, w = image.shape
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        crop = image[:, y:y + size, x:x + size]
        crop = crop.flip(-1) if rng.random() < 0.5 else crop
        if self.augment == "all":
            crop = torch.rot90(crop, int(rng.integers(4)), dims=(1, 2))[torch.from_numpy(rng.permutation(3))]
        return crop, index

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(lq, gt, index in ``files`` of the source image) of pair ``index``."""
        rng = np.random.default_rng([self.seed, int(index)])
        gt, source = self.crop_with_index(rng)
        gt = gt.contiguous()
        if self.degradation == "bicubic":
            lq = bicubic_degrade(gt, self.scale)
        elif self.degradation in MIXTURES:
            lq = degrade_realworld(gt, self.scale, rng, self.config, self.degradation)
        else:
            lq = degrade(gt, self.scale, rng, self.config)
        return lq.float(), gt.float(), source

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pair(index)[:2]


def captions(files: list[Path], prompt: str) -> list[str]:
    """The prompt of each image: the text of the ``<image stem>.txt`` file beside it, else ``prompt``."""
    return [p.with_suffix(".txt").read_text(encoding="utf-8").strip() if p.with_suffix(".txt").is_file() else prompt
            for p in files]


class CaptionedPairDataset(PairDataset):
    """Pairs with a prompt: ``(lq, gt, prompt)``. The prompt of a crop is the text of the
    ``<image stem>.txt`` file beside its source image when there is one, else ``prompt``."""

    def __init__(self, *args, prompt: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = captions(self.files, prompt)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        lq, gt, source = self.pair(index)
        return lq, gt, self.prompts[source]


class CoupledPairDataset(PairDataset):
    """Pairs at two scales from ONE draw, for scale distillation: ``(lq, lq_teacher, gt)``, where
    ``lq`` is the x``scale`` LR and ``lq_teacher`` the x``teacher_scale`` LR of the same crop with
    the same degradation draw (bicubic: both are plain downscales; realesrgan: every random
    choice is shared, see ``degradations.degrade_coupled``). ``lq`` equals what a
    :class:`PairDataset` of the same arguments at ``scale`` gives for the same index."""

    def __init__(self, *args, teacher_scale: int, **kwargs):
        super().__init__(*args, **kwargs)
        if self.degradation in MIXTURES:
            raise ValueError("coupled pairs (scale distillation) support the bicubic and realesrgan degradations only")
        if self.gt_size % teacher_scale:
            raise ValueError(f"the GT crop ({self.gt_size}) must be a multiple of the teacher's scale ({teacher_scale})")
        self.teacher_scale = teacher_scale

    def coupled(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(lq, lq_teacher, gt, index in ``files`` of the source image) of pair ``index``."""
        rng = np.random.default_rng([self.seed, int(index)])
        gt, source = self.crop_with_index(rng)
        gt = gt.contiguous()
        if self.degradation == "bicubic":
            lq, lq_teacher = (bicubic_degrade(gt, s) for s in (self.scale, self.teacher_scale))
        else:
            lq, lq_teacher = degrade_coupled(gt, (self.scale, self.teacher_scale), rng, self.config)
        return lq.float(), lq_teacher.float(), gt.float(), source

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.coupled(index)[:3]


class CaptionedCoupledPairDataset(CoupledPairDataset):
    """Coupled pairs with a prompt: ``(lq, lq_teacher, gt, prompt)`` (prompts as in
    :class:`CaptionedPairDataset`)."""

    def __init__(self, *args, prompt: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts = captions(self.files, prompt)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        lq, lq_teacher, gt, source = self.coupled(index)
        return lq, lq_teacher, gt, self.prompts[source]
