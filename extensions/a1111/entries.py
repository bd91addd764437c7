"""The upscaler dropdown: one entry per model of the engine's catalog (``onestep_sr.catalog``).

An entry's ``name`` is what the Extras tab, hires fix and the API's ``upscaler_1`` use, so it never
depends on download state: ``OneStepSR 4x default`` (bundled), ``OneStepSR 4x SinSR v1``,
``OneStepSR 4x ResShift v1 (15 steps)`` (multi-step models say so), ``OneStepSR 4x <file name>``,
``OneStepSR 2x <file name>`` (each entry says its model's native scale).
``data_path`` (handed back to ``do_upscale``) is the catalog's source: ``registry:<name>``,
``bundled:<name>`` or the file's path."""
from __future__ import annotations

from dataclasses import dataclass

from ...onestep_sr import catalog
from ...onestep_sr.catalog import Weights, weights_for  # noqa: F401 - the upscaler's entry point

PREFIX = "OneStepSR"


@dataclass(frozen=True)
class Entry:
    name: str                 # the dropdown label
    data_path: str            # registry:<name>, bundled:<name> or a file path
    steps: int = 1            # 1 for one-step models, else the schedule's T (multi-step ResShift)
    scale: int = 4            # the model's native scale: what the webui is told a pass gives


def label(entry: catalog.CatalogEntry) -> str:
    return f"{PREFIX} {entry.scale}x {entry.title}" + (f" ({entry.steps} steps)" if entry.steps > 1 else "")


def discover(folders: list[str]) -> list[Entry]:
    """Every entry for the models folders ``folders``."""
    return [Entry(label(e), e.source, e.steps, e.scale) for e in catalog.discover(folders)]
