"""Shared fixtures: the official goldens in ../shared/reference (see its README)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import GOLDENS, REFERENCE


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"reference data missing: {path} (set ONESTEP_SR_SHARED to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has ../shared: missing data is a broken setup
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """The user's own settings never reach a test (models folder, offline switches, mirror)."""
    for name in ("ONESTEP_SR_OFFLINE", "HF_HUB_OFFLINE", "ONESTEP_SR_MODELS", "ONESTEP_SR_MIRROR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def server():
    """A loopback HTTP server (see ``loopback.Server``), closed after the test."""
    from loopback import Server

    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def goldens() -> Path:
    return _require(GOLDENS)


@pytest.fixture(scope="session")
def reference() -> Path:
    return _require(REFERENCE)


@pytest.fixture(scope="session")
def schedules_json(reference) -> dict:
    return json.loads((reference / "schedules.json").read_text())


@pytest.fixture(scope="session")
def golden_denoiser(goldens):
    from onestep_sr import load_denoiser

    return load_denoiser(goldens / "unet.safetensors")


@pytest.fixture(scope="session")
def golden_autoencoder(goldens):
    from onestep_sr import load_autoencoder

    return load_autoencoder(goldens / "vq.safetensors")


@pytest.fixture(scope="session")
def cases(goldens):
    def load(name: str) -> dict[str, torch.Tensor]:
        return load_file(str(goldens / f"{name}.safetensors"))

    return load
