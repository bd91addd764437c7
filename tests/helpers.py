"""Helpers shared by the tests (importable: ``tests`` is on pytest's pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONESTEP_SR_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
GOLDENS = REFERENCE / "goldens"


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_keys(path: Path) -> list[tuple[str, list[int]]]:
    """Parse a ``key [d0,d1,...]`` listing."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split(" ", 1)
            dims = shape.strip()[1:-1]
            out.append((key, [int(d) for d in dims.split(",")] if dims else []))
    return out


def image_folder(folder: Path, count: int = 3, size: tuple[int, int] = (48, 56)) -> Path:
    """``count`` smooth, noisy RGB PNGs of ``size`` (h, w) in ``folder``: training data for tests."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[0], 0:size[1]]
    for i in range(count):
        base = np.stack([np.sin(x / (3 + i)), np.cos(y / (4 + i)), np.sin((x + y) / 5)], -1) * 90 + 128
        Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def wave_images(folder: Path, count: int = 3, size: int = 96) -> Path:
    """``count`` smooth sine-pattern RGB PNGs (``size`` square) in ``folder``: SD trainer data."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    for i in range(count):
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx * (i + 1) + yy * c)) for c in (0.5, 1.0, 1.5)], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return folder


def spy_strengths(monkeypatch, engine_class) -> list:
    """The ``strength`` keyword each ``engine_class.upscale`` call is given (the engine's
    ``OneStepSR`` as a host imports it), in call order."""
    original, seen = engine_class.upscale, []

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("strength"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine_class, "upscale", spy)
    return seen
