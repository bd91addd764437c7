"""The official-weights registry: complete, consistent, official URLs only, no network."""
from __future__ import annotations

import dataclasses

import pytest

from onestep_sr.registry import UnknownModelError, get_entry, list_entries, models_dir
from onestep_sr.schedule import SCHEDULE_T4, SCHEDULE_T15

OFFICIAL_PREFIXES = ("https://github.com/wyf0912/SinSR/releases/download/v1.0/",
                     "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/")


def test_every_official_sr_checkpoint_is_listed():
    names = {e.name for e in list_entries()}
    assert names == {"sinsr_v1", "sinsr_v2", "resshift_v1", "resshift_v2", "resshift_v3",
                     "resshift_bicsr_x4", "vq_f4"}
    for entry in list_entries():
        assert entry.url.startswith(OFFICIAL_PREFIXES) and entry.url.endswith("/" + entry.file)
        assert "non-commercial" in entry.licence
        if entry.sha256 is not None:
            assert len(entry.sha256) == 64


def test_payload_sizes_follow_from_the_architectures():
    def payload(build):
        model = build("meta")
        return sum(t.numel() * t.element_size() for t in model.state_dict().values())

    from onestep_sr.models import build_official_autoencoder, build_official_denoiser

    assert get_entry("sinsr_v1").expected_payload_bytes == payload(build_official_denoiser)
    assert get_entry("vq_f4").expected_payload_bytes == payload(build_official_autoencoder)


def test_denoisers_name_an_autoencoder_and_their_schedule():
    for entry in list_entries():
        if entry.kind == "denoiser":
            assert get_entry(entry.autoencoder).kind == "autoencoder"
    assert get_entry("sinsr_v1").resshift_schedule() == SCHEDULE_T15
    assert get_entry("sinsr_v1").sampler == "one_step"
    assert get_entry("resshift_v3").resshift_schedule() == SCHEDULE_T4
    with pytest.raises(ValueError, match="only denoisers"):
        get_entry("vq_f4").resshift_schedule()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as err:
        get_entry("sinsr_v9")
    assert "sinsr_v9" in str(err.value) and "sinsr_v1" in str(err.value) and "vq_f4" in str(err.value)


def test_models_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("ONESTEP_SR_MODELS", raising=False)
    assert models_dir().parts[-2:] == ("onestep_sr", "models")
    monkeypatch.setenv("ONESTEP_SR_MODELS", str(tmp_path / "env"))
    assert models_dir() == tmp_path / "env"
    assert models_dir(tmp_path / "arg") == tmp_path / "arg"


def test_a_mirror_gives_every_entry_the_same_file_name_there(monkeypatch, tmp_path):
    """ONESTEP_SR_MIRROR=URL or folder: every registry URL becomes <mirror>/<file>; nothing else changes."""
    official = {e.name: e for e in list_entries()}
    monkeypatch.setenv("ONESTEP_SR_MIRROR", "https://mirror.example/onestep/")
    for entry in list_entries():
        assert entry.url == f"https://mirror.example/onestep/{entry.file}"
        assert dataclasses.replace(entry, url=official[entry.name].url) == official[entry.name]
    assert get_entry("sinsr_v1").url == "https://mirror.example/onestep/SinSR_v1.pth"
    monkeypatch.setenv("ONESTEP_SR_MIRROR", str(tmp_path / "weights"))
    assert get_entry("vq_f4").url == (tmp_path / "weights" / "autoencoder_vq_f4.pth").as_uri()
    monkeypatch.setenv("ONESTEP_SR_MIRROR", " ")
    assert get_entry("vq_f4") == official["vq_f4"]


def test_every_entry_states_its_size_rule_and_where_its_figures_come_from():
    """size_bytes / sha256 only where a public source states them ('source' says which); without an
    exact size a file more than 1% away from the fp32 payload is refused, naming both sizes."""
    for entry in list_entries():
        assert entry.size_bytes is None or entry.size_bytes > 0
        assert entry.source and ("No exact size or hash found" in entry.source or "http" in entry.source)
        payload = entry.expected_payload_bytes
        assert entry.size_problem(payload) is None and entry.size_problem(int(payload * 1.0004)) is None
        problem = entry.size_problem(2_926_928)  # a 2.8 MiB checkpoint (the reported mirror file)
        assert f"is 2,926,928 bytes (2.8 MiB)" in problem and f"about {payload:,} bytes" in problem
        assert entry.size_problem(int(payload * 1.02)) and entry.size_problem(int(payload * 0.98))
    exact = dataclasses.replace(get_entry("vq_f4"), size_bytes=1000)
    assert exact.size_problem(1000) is None and "exactly 1,000 bytes" in exact.size_problem(1001)
