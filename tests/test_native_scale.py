"""Models that know their native scale (x2 / x8 YONOS exports) and progressively distilled models
(their own levels) in the engine and in every host's adapter: exact output sizes, passes instead
of Lanczos where a native scale fits, the step counts a model supports."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import comfy_pack  # noqa: E402
import webui_fake  # noqa: E402
from comfy_pack import run_node  # noqa: E402
from onestep_sr import load_model  # noqa: E402
from onestep_sr.app.service import AppService, Settings  # noqa: E402
from onestep_sr.native_scale import passes_for  # noqa: E402
from onestep_sr.options import OptionError  # noqa: E402
from training.cli import main as train_main  # noqa: E402


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """x2 -> x4 -> x8 YONOS ladder and a 2-level progressive model, one optimiser step each (the
    maths is tested elsewhere; here what matters is what the files declare)."""
    root = tmp_path_factory.mktemp("native")
    data = root / "hr"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(data / "a.png")
    common = ["--data", str(data), "--gt-size", "32", "--batch-size", "1", "--steps", "1", "--arch", "compact",
              "--degradation", "bicubic", "--no-progress"]
    assert train_main(["resshift", "--scale", "2", "--out", str(root / "x2"), *common]) == 0
    assert train_main(["yonos", "--teacher", str(root / "x2" / "model.safetensors"), "--out", str(root / "x4"),
                       *common]) == 0
    assert train_main(["yonos", "--teacher", str(root / "x4" / "model.safetensors"), "--out", str(root / "x8"),
                       *common]) == 0
    assert train_main(["resshift", "--schedule", "T4", "--out", str(root / "t4"), *common]) == 0
    assert train_main(["progressive", "--teacher", str(root / "t4" / "model.safetensors"), "--rounds", "1",
                       "--out", str(root / "pd"), *common]) == 0
    models = root / "models"
    models.mkdir()
    names = {"x2": "yonos_x2.safetensors", "x8": "yonos_x8.safetensors", "pd": "pd_2steps.safetensors"}
    for key, name in names.items():
        source = root / key / "model.safetensors" if key != "pd" else root / "pd" / "round-1" / "model.safetensors"
        shutil.copy(source, models / name)
    return {"models": models, **{k: models / v for k, v in names.items()}}


def _image(w: int = 13, h: int = 9, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_passes_while_the_result_does_not_exceed_the_request():
    assert [passes_for(2, r) for r in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 3]
    assert [passes_for(4, r) for r in (2, 4, 8, 16)] == [1, 1, 1, 2]
    assert [passes_for(8, r) for r in (4, 8, 16)] == [1, 1, 1]


def test_the_engine_runs_x2_and_x8_natively_and_chains_passes_without_lanczos(exports):
    x2, x8 = load_model(exports["x2"], device="cpu"), load_model(exports["x8"], device="cpu")
    assert (x2.scale, x8.scale) == (2, 8)
    image = _image()
    assert x2.upscale(image, scale=2).size == (26, 18) and x8.upscale(image, scale=8).size == (104, 72)
    two_passes = x2.upscale(x2.upscale(image, scale=2), scale=2)
    assert np.array_equal(np.asarray(x2.upscale(image, scale=4)), np.asarray(two_passes))  # 4x = two x2 passes
    assert x2.upscale(image, scale=3).size == (39, 27) and x8.upscale(image, scale=4).size == (52, 36)


def test_a_progressive_model_runs_its_own_levels_and_refuses_other_step_counts(exports):
    model = load_model(exports["pd"], device="cpu")
    assert model.levels == [3, 1] and model.supported_steps == [2] and model.sampler == "deterministic"
    image = _image()
    assert np.array_equal(np.asarray(model.upscale(image)), np.asarray(model.upscale(image, steps=2)))
    for steps in (1, 4):
        with pytest.raises(OptionError, match=r"steps must be 2 \(this model was distilled for 2 step\(s\), levels \[3, 1\]\)"):
            model.upscale(image, steps=steps)


@pytest.fixture()
def comfy(tmp_path, exports, monkeypatch):
    folder = tmp_path / "models" / "onestep_sr"
    shutil.copytree(exports["models"], folder)
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    module, nodes = comfy_pack.load_pack(tmp_path)
    yield nodes
    comfy_pack.unload_pack()


def test_comfyui_loader_and_upscale_node_run_x2_x8_and_progressive_models(comfy, exports):
    images = torch.rand(2, 9, 13, 3, generator=torch.Generator().manual_seed(0))
    for name, scale in (("yonos_x2.safetensors", 2), ("yonos_x8.safetensors", 8), ("yonos_x2.safetensors", 4)):
        (model,) = run_node(comfy["OneStepSR_LoadModel"], model_name=name)
        out, _ = run_node(comfy["OneStepSR_Upscale"], model=model, image=images, scale=float(scale), color_fix="none")
        assert tuple(out.shape) == (2, 9 * scale, 13 * scale, 3)
    (model,) = run_node(comfy["OneStepSR_LoadModel"], model_name="pd_2steps.safetensors")
    out, _ = run_node(comfy["OneStepSR_Upscale"], model=model, image=images, steps=2, color_fix="none")
    assert tuple(out.shape) == (2, 36, 52, 3)
    with pytest.raises(Exception, match="distilled for 2 step"):
        run_node(comfy["OneStepSR_Upscale"], model=model, image=images, steps=1)


@pytest.fixture()
def webui(tmp_path, exports, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    models = tmp_path / "models"
    shutil.copytree(exports["models"], models / "OneStepSR")
    shared = webui_fake.load_extension(models)
    yield shared
    webui_fake.unload()


def test_a1111_entries_are_named_with_their_scale_and_give_exact_sizes(webui):
    names = [u.name for u in webui.sd_upscalers]
    assert "OneStepSR 2x yonos_x2 (15 steps)" in names and "OneStepSR 8x yonos_x8" in names
    assert "OneStepSR 4x pd_2steps (2 steps)" in names
    assert webui_fake.upscaler(webui, "OneStepSR 2x yonos_x2 (15 steps)").scale == 2
    for name, scale, size in (("OneStepSR 2x yonos_x2 (15 steps)", 2, (26, 18)), ("OneStepSR 2x yonos_x2 (15 steps)", 4, (52, 36)),
                              ("OneStepSR 8x yonos_x8", 8, (104, 72)), ("OneStepSR 8x yonos_x8", 3, (39, 27)),
                              ("OneStepSR 4x pd_2steps (2 steps)", 4, (52, 36))):
        assert webui_fake.extras(webui, _image(), name, scale).size == size


def test_the_web_app_lists_scales_and_the_distilled_step_count(tmp_path, exports, monkeypatch):
    monkeypatch.setenv("ONESTEP_SR_OFFLINE", "1")
    service = AppService(folders=[exports["models"]], output_dir=tmp_path / "out", device="cpu", dtype="fp32")
    labels = dict((source, label) for label, source in service.choices())
    assert labels[str(exports["x2"])] == "yonos_x2 (x2) - 15 steps"
    assert labels[str(exports["pd"])] == "pd_2steps - 2 steps"
    assert service.step_choices(str(exports["pd"])) == [("2 steps (distilled for them)", "2/deterministic")]
    image = tmp_path / "in.png"
    _image().save(image)
    [x2] = service.upscale_files([image], str(exports["x2"]), Settings(seed=1, scale=2))
    [pd] = service.upscale_files([image], str(exports["pd"]), Settings(seed=1, steps="2/deterministic", scale=4))
    assert x2.error is None and x2.size == (26, 18) and pd.error is None and pd.size == (52, 36)
    with pytest.raises(OptionError, match="distilled for 2 step"):
        list(service.upscale_files([image], str(exports["pd"]), Settings(seed=1, steps="1", scale=4)))


def test_the_cli_upscales_with_the_models_native_scale_by_default(exports, tmp_path):
    from onestep_sr.cli import main as cli_main

    source = tmp_path / "in.png"
    _image().save(source)
    for model, extra, size in ((exports["x2"], [], (26, 18)), (exports["x2"], ["--scale", "4"], (52, 36)),
                               (exports["x8"], [], (104, 72))):
        out = tmp_path / f"out_{model.stem}_{len(extra)}.png"
        assert cli_main(["upscale", str(source), "-o", str(out), "--denoiser", str(model), *extra]) == 0
        assert Image.open(out).size == size


def test_the_cli_runs_a_progressive_model_with_its_steps_and_refuses_others_before_any_image(exports, tmp_path, capsys):
    from onestep_sr.cli import main as cli_main

    source = tmp_path / "in.png"
    _image().save(source)
    assert cli_main(["upscale", str(source), "-o", str(tmp_path / "a.png"), "--denoiser", str(exports["pd"])]) == 0
    assert Image.open(tmp_path / "a.png").size == (52, 36)
    capsys.readouterr()
    assert cli_main(["upscale", str(source), "-o", str(tmp_path / "b.png"), "--denoiser", str(exports["pd"]),
                     "--steps", "1"]) == 2
    assert "distilled for 2 step" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
