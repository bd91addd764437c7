"""OneStep models wherever ComfyUI takes an upscale model, in a real ComfyUI (opt-in): set
``COMFYUI_DIR`` / ``COMFYUI_PYTHON`` as for tests/test_comfyui_real.py, and ``ULTIMATE_SD_UPSCALE_DIR``
to a checkout of ssitu/ComfyUI_UltimateSDUpscale whose ``repositories/ultimate_sd_upscale`` holds its
submodule (Coyote-A/ultimate-upscale-for-automatic1111) for the UltimateSDUpscale test.

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python ULTIMATE_SD_UPSCALE_DIR=~/ComfyUI_UltimateSDUpscale \
        python -m pytest -s tests/test_comfyui_real_upscale_model.py

ComfyUI's "Load Upscale Model" / "Upscale Image (using Model)" (comfy_extras/nodes_upscale_model.py)
import spandrel, and without it that file does not load at all. spandrel needs torchvision; on a
CPU-only test machine the only torchvision build (a CUDA wheel) fails to import against CPU torch, so
its environment has spandrel installed with ``pip install --no-deps spandrel`` beside the small
torchvision import stub the real-ComfyUI suite already uses (a ``.pth`` hook defining
``torchvision::nms``; shared/specs/comfyui.md section 12). The first test says so when spandrel is
missing. A probe node written into the throw-away base directory reports full-precision differences
between two IMAGEs (8-bit PNGs would hide them) in the history JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from test_comfyui_real import (COMFYUI_DIR, SD_CHECKPOINT, Server, _free_port, _input_image,  # noqa: F401
                               _link_or_copy, _onestep_models, _options, comfyui, running_server, sd_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
USDU_DIR = os.environ.get("ULTIMATE_SD_UPSCALE_DIR", "").strip()
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="real-ComfyUI tests are opt-in: set COMFYUI_DIR (and "
                                                         "COMFYUI_PYTHON) to run them")
PACK, PROBE, USDU = "comfyui-onestep-sr", "onestep_test_probe", "ComfyUI_UltimateSDUpscale"
BUNDLED_FILE = "onestep_default_x4.safetensors"  # the bundled default, copied to models/upscale_models
BUNDLE_FILE = "sinsr_tiny_onefile.safetensors"  # onestep-sr convert --bundle of the tiny official-layout pair
SMALL, WIDE = "small.png", "wide.png"  # 32 x 24 (one of ComfyUI's 512 tiles), 600 x 40 (two tiles)
NODE_SETTINGS = dict(steps=1, seed=12345, tile=256, overlap=32, color_fix="wavelet", scale=4.0,
                     auto_strength=False, strength=0.0, noise="tileable")  # the descriptor's settings

PROBE_NODE = r'''
import json
import torch


class OneStepTestCompare:
    """Test probe: full-precision difference of two IMAGEs, shown as UI text."""
    RETURN_TYPES, FUNCTION, OUTPUT_NODE, CATEGORY = (), "compare", True, "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("IMAGE",), "b": ("IMAGE",)}}

    def compare(self, a, b):
        result = {"a": list(a.shape), "b": list(b.shape), "a_dtype": str(a.dtype)}
        if a.shape == b.shape:
            d = (a.float() - b.float()).abs()
            result.update(max=float(d.max()), mean=float(d.mean()),
                          over_1_255=float((d.amax(-1) > 1 / 255).float().mean()))
        return {"ui": {"text": [json.dumps(result)]}}


NODE_CLASS_MAPPINGS = {"OneStepTestCompare": OneStepTestCompare}
'''

# Run by COMFYUI_PYTHON: spandrel's own registry (as ComfyUI has it) with ours registered; which
# architecture detects first, for files of other architectures and for ours.
DETECT_PROBE = r'''
import json, sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
import spandrel
from safetensors.torch import load_file
import onestep_sr.spandrel
from rrdbnet import RRDBNet

layers = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.PReLU(16), torch.nn.Conv2d(16, 16, 3, padding=1),
          torch.nn.PReLU(16), torch.nn.Conv2d(16, 48, 3, padding=1)]
compact = {"body." + k: v for k, v in torch.nn.Sequential(*layers).state_dict().items()}
from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR  # spandrel's own class, a tiny one
swinir = SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2, upscale=4,
                upsampler="pixelshuffle").state_dict()
files = {"ESRGAN": RRDBNet(features=16, blocks=1).state_dict(), "Compact": compact, "SwinIR": swinir,
         "OneStepSR": load_file(sys.argv[2]), "OneStepSR bundle": load_file(sys.argv[3])}
order = spandrel.MAIN_REGISTRY.architectures("detection")
out = {"version": spandrel.__version__, "count": len(order), "first": order[0].architecture.id}
for name, sd in files.items():
    sd = spandrel.canonicalize_state_dict(sd)
    out[name] = {"detected_by": [a.architecture.id for a in order if a.detect(sd)],
                 "loaded_as": spandrel.ModelLoader().load_from_state_dict(sd).architecture.id}
print(json.dumps(out))
'''


def _spandrel_ok(python: str) -> str:
    done = subprocess.run([python, "-c", "import spandrel, sys; print(spandrel.__version__)"], capture_output=True,
                          text=True, timeout=300)
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="session")
def up_base(comfyui, tmp_path_factory, request) -> Path:
    """The base directory: our pack, the probe, UltimateSDUpscale (when given) and the models."""
    checkout, python, flags = comfyui
    if not _spandrel_ok(python):
        pytest.fail(f"spandrel does not import in {python}: ComfyUI's upscale-model nodes need it (`pip install "
                    "--no-deps spandrel` beside the torchvision import stub, see this module's docstring)")
    base = tmp_path_factory.mktemp("comfyui_upscale_model")
    _link_or_copy(ROOT, base / "custom_nodes" / PACK)
    (base / "custom_nodes" / f"{PROBE}.py").write_text(PROBE_NODE)
    if USDU_DIR:
        assert (Path(USDU_DIR) / "repositories" / "ultimate_sd_upscale" / "scripts").is_dir(), \
            f"{USDU_DIR}: repositories/ultimate_sd_upscale (the submodule) is missing"
        _link_or_copy(Path(USDU_DIR), base / "custom_nodes" / USDU)
        _link_or_copy(request.getfixturevalue("sd_checkpoint"), base / "models" / "checkpoints" / SD_CHECKPOINT)
    onestep = base / "models" / "onestep_sr"
    _onestep_models(onestep)  # SinSR_v1.pth + autoencoder_vq_f4.pth: tiny, random, the official layout
    upscale_models = base / "models" / "upscale_models"
    upscale_models.mkdir(parents=True)
    shutil.copy(ROOT / "weights" / BUNDLED_FILE, upscale_models / BUNDLED_FILE)
    from onestep_sr.cli import main

    assert main(["convert", "--bundle", str(onestep / "SinSR_v1.pth"), str(onestep / "autoencoder_vq_f4.pth"),
                 str(upscale_models / BUNDLE_FILE)]) == 0
    _input_image(base / "input" / SMALL, (32, 24))
    _input_image(base / "input" / WIDE, (600, 40))
    for name in ("output", "temp", "user"):
        (base / name).mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def up_server(comfyui, up_base) -> Server:
    checkout, python, flags = comfyui
    if not {"--base-directory", "--disable-all-custom-nodes", "--whitelist-custom-nodes"} <= flags:
        pytest.skip("this ComfyUI has no --base-directory / --whitelist-custom-nodes")
    port = _free_port()
    packs = [PACK, f"{PROBE}.py"] + ([USDU] if USDU_DIR else [])
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--base-directory", str(up_base), "--disable-all-custom-nodes", "--whitelist-custom-nodes", *packs]
    command += ["--database-url", "sqlite:///:memory:"] if "--database-url" in flags else []
    with running_server(command, checkout, up_base, PACK) as server:
        yield server


@pytest.fixture(scope="session")
def up_info(up_server) -> dict[str, Any]:
    return up_server.request("/object_info")


def run(server: Server, prompt: dict[str, Any]) -> dict[str, Any]:
    """Queue ``prompt``; {node id: its UI outputs} of the finished run (probe texts parsed)."""
    started = time.perf_counter()
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", \
        f"{json.dumps(entry['status'].get('messages', []))[-4000:]}\n{server.log_tail(40)}"
    outputs = {k: ({**v, "probe": json.loads(v["text"][0])} if v.get("text", [""])[0].startswith("{") else v)
               for k, v in entry["outputs"].items()}
    outputs["seconds"] = time.perf_counter() - started
    return outputs


def graph(image: str, upscale_model: dict[str, Any], model_name: str, **settings: Any) -> dict[str, Any]:
    """LoadImage -> [the upscale model] -> Upscale Image (using Model) -> probe.a, and the same image
    through Load OneStep SR Model (``model_name``) -> OneStep Upscale (``settings``) -> probe.b."""
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
            "2": upscale_model,
            "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
            "4": {"class_type": "OneStepSR_LoadModel", "inputs": {"model_name": model_name, "dtype": "fp32",
                                                                  "device": "auto"}},
            "5": {"class_type": "OneStepSR_Upscale", "inputs": {"model": ["4", 0], "image": ["1", 0],
                                                                **{**NODE_SETTINGS, **settings}}},
            "6": {"class_type": "OneStepTestCompare", "inputs": {"a": ["3", 0], "b": ["5", 0]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"stock_{image}"}}}


def stock_loader(name: str) -> dict[str, Any]:
    return {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}}


def adapter(model_name: str) -> dict[str, Any]:  # uses node 4 (the same loaded model as OneStep Upscale)
    return {"class_type": "OneStepSR_AsUpscaleModel", "inputs": {"model": ["4", 0], "strength": 0.0}}


def test_spandrel_detects_our_files_first_and_theirs_as_theirs(comfyui, up_base):
    checkout, python, _ = comfyui
    script = up_base / "detect_probe.py"
    script.write_text(DETECT_PROBE)
    done = subprocess.run([python, str(script), str(ROOT), str(ROOT / "weights" / BUNDLED_FILE),
                           str(up_base / "models" / "upscale_models" / BUNDLE_FILE)], capture_output=True, text=True,
                          timeout=600, cwd=checkout)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n[real spandrel {found['version']}] {found['count']} architectures, detected first: {found['first']}; "
          + "; ".join(f"{k}: {v}" for k, v in found.items() if isinstance(v, dict)))
    assert found["first"] == "OneStepSR"
    for name in ("ESRGAN", "Compact", "SwinIR"):  # ours never claims them; their own architecture loads them
        assert "OneStepSR" not in found[name]["detected_by"] and found[name]["loaded_as"] == name
    for name in ("OneStepSR", "OneStepSR bundle"):  # and none of spandrel's architectures claims ours
        assert found[name] == {"detected_by": ["OneStepSR"], "loaded_as": "OneStepSR"}


def test_the_stock_nodes_and_ours_are_registered(up_info):
    assert {"UpscaleModelLoader", "ImageUpscaleWithModel", "OneStepSR_AsUpscaleModel", "OneStepTestCompare"} <= set(up_info)
    listed = _options(up_info["UpscaleModelLoader"]["input"]["required"]["model_name"])
    assert {BUNDLED_FILE, BUNDLE_FILE} <= set(listed), listed
    assert up_info["OneStepSR_AsUpscaleModel"]["output"] == ["UPSCALE_MODEL"]


@pytest.mark.parametrize("image, size", [(SMALL, (96, 128)), (WIDE, (160, 2400))])
def test_our_file_in_the_stock_loader_equals_our_node(up_server, image, size):
    """The bundled default file in models/upscale_models, in Load Upscale Model -> Upscale Image (using
    Model), against OneStep Upscale at the same settings (the bundled model's clean end, tileable
    noise). One 512 tile: equal in fp32. Two tiles (600 px wide): the seam error of ComfyUI's tiling."""
    out = run(up_server, graph(image, stock_loader(BUNDLED_FILE), "onestep_default (bundled)"))
    probe = out["6"]["probe"]
    assert probe["a"] == probe["b"] == [1, *size, 3] and probe["a_dtype"] == "torch.float32", probe
    print(f"\n[real ComfyUI] {image}: stock Upscale Image (using Model) vs OneStep Upscale, one call: max "
          f"{probe['max']:.2e}, mean {probe['mean']:.2e}, {100 * probe['over_1_255']:.2f}% of pixels over 1/255 "
          f"({out['seconds']:.1f} s)")
    if image == SMALL:
        assert probe["max"] <= 1e-5
    else:
        official = run(up_server, graph(image, stock_loader(BUNDLED_FILE), "onestep_default (bundled)",
                                        noise="official"))["6"]["probe"]
        print(f"[real ComfyUI] the same against OneStep Upscale with the official (whole-image) noise: max "
              f"{official['max']:.2e}, mean {official['mean']:.2e}, {100 * official['over_1_255']:.2f}% over 1/255")
        assert probe["over_1_255"] < 0.1 and probe["mean"] < 0.5 * official["mean"]


@pytest.mark.parametrize("upscale_model", ["adapter", "bundle"])
def test_official_layout_models_in_the_stock_upscaler_equal_our_node(up_server, upscale_model):
    """The official-layout SinSR (registry name, local files) through OneStep SR as Upscale Model, and
    its --bundle file through the stock loader: Upscale Image (using Model) equals OneStep Upscale."""
    node = adapter("") if upscale_model == "adapter" else stock_loader(BUNDLE_FILE)
    out = run(up_server, graph(SMALL, node, "sinsr_v1 (auto-download)", auto_strength=True))  # one weight set
    probe = out["6"]["probe"]
    print(f"\n[real ComfyUI] {upscale_model}: max {probe['max']:.2e} ({out['seconds']:.1f} s)")
    assert probe["a"] == probe["b"] == [1, 96, 128, 3] and probe["max"] <= 1e-5, probe


@pytest.mark.skipif(not USDU_DIR, reason="set ULTIMATE_SD_UPSCALE_DIR to a ComfyUI_UltimateSDUpscale checkout")
@pytest.mark.parametrize("source, mode", [("adapter", "Linear"), ("adapter", "None"), ("stock", "None")])
def test_ultimate_sd_upscale_runs_with_a_onestep_upscale_model(up_server, up_info, source, mode):
    """UltimateSDUpscale (upscale_by 2: the x4 model, then its Lanczos resize) with a OneStep
    UPSCALE_MODEL on a 32 x 24 image: with a redraw (Linear: one tile, one sampler step on the
    synthetic SD1.5 checkpoint) the exact size; without (None) exactly PIL's Lanczos of what OneStep
    Upscale gives at the same settings, i.e. the OneStep model did the upscale."""
    import numpy as np
    from PIL import Image

    assert "UltimateSDUpscale" in up_info
    spec = up_info["UltimateSDUpscale"]["input"]
    prompt = graph(SMALL, adapter("") if source == "adapter" else stock_loader(BUNDLED_FILE),
                   "onestep_default (bundled)")
    del prompt["3"], prompt["6"], prompt["7"]
    prompt.update({
        "8": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"node_{source}"}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD_CHECKPOINT}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["10", 1]}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["10", 1]}},
        "13": {"class_type": "UltimateSDUpscale", "inputs": {
            "image": ["1", 0], "model": ["10", 0], "positive": ["11", 0], "negative": ["12", 0], "vae": ["10", 2],
            "upscale_by": 2.0, "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 0.2, "upscale_model": ["2", 0], "mode_type": mode, "tile_width": 512, "tile_height": 512,
            "mask_blur": 8, "tile_padding": 32, "seam_fix_mode": "None", "seam_fix_denoise": 1.0,
            "seam_fix_width": 64, "seam_fix_mask_blur": 8, "seam_fix_padding": 16, "force_uniform_tiles": False,
            "tiled_decode": False, "batch_size": 1}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": f"usdu_{source}_{mode}"}}})
    known = {**spec["required"], **spec.get("optional", {})}
    prompt["13"]["inputs"] = {k: v for k, v in prompt["13"]["inputs"].items() if k in known}
    out = run(up_server, prompt)

    def saved(node: str) -> np.ndarray:
        (image,) = out[node]["images"]
        return np.asarray(Image.open(up_server.output / image.get("subfolder", "") / image["filename"]).convert("RGB"))

    usdu, x4 = saved("14"), saved("8")
    print(f"\n[real ComfyUI] UltimateSDUpscale ({mode}) with a OneStep UPSCALE_MODEL ({source}): {usdu.shape[1]}x"
          f"{usdu.shape[0]} in {out['seconds']:.1f} s")
    assert usdu.shape == (48, 64, 3) and x4.shape == (96, 128, 3) and usdu.std() > 1.0
    if mode == "None":
        lanczos = np.asarray(Image.fromarray(x4).resize((64, 48), Image.Resampling.LANCZOS))
        assert np.abs(usdu.astype(int) - lanczos.astype(int)).max() <= 1
