"""Helpers shared by the tests (importable: ``tests`` is on pytest's pythonpath)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONESTEP_SR_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
GOLDENS = REFERENCE / "goldens"


def reference_keys(path: Path) -> list[tuple[str, list[int]]]:
    """Parse a ``key [d0,d1,...]`` listing."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split(" ", 1)
            dims = shape.strip()[1:-1]
            out.append((key, [int(d) for d in dims.split(",")] if dims else []))
    return out
