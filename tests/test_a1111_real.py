"""The extension inside a real AUTOMATIC1111 webui (or Forge), API-only (opt-in): set ``A1111_DIR``
to a webui checkout and ``A1111_PYTHON`` to its environment's interpreter; ``A1111_FLAGS`` adds
launch flags (Forge on a CPU needs ``--always-cpu``).

    A1111_DIR=~/webui A1111_PYTHON=~/webui/venv/bin/python python -m pytest -s tests/test_a1111_real.py

A throw-away ``--data-dir`` holds the extension (a link to this checkout under ``extensions/``),
the small random models of ``webui_fake.tiny_models`` in ``models/OneStepSR`` and a config with
the Extras result cache off; the user's checkout is not modified. The webui starts on a free
loopback port without loading an SD model, downloads off (``ONESTEP_SR_OFFLINE``). Each entry
of ``/sdapi/v1/upscalers`` that is ours goes through ``/sdapi/v1/extra-single-image`` and is
compared with the engine run here; an entry whose weights are not there must fail with HTTP 500
and a message, never answer with a resize. Skipped without ``A1111_DIR``.

The OSEDiff export in A1111's own Lora extension (A1111 only; Forge's Lora code differs): a
second webui, offline, with a random SD 1.5 checkpoint in the LDM layout (~2 GB, written by the
webui's interpreter from its own classes into a pytest tmp folder), a generated CLIP tokenizer /
text config in a throw-away Hugging Face cache, the files ``training/osediff_export.export_kohya``
writes for that checkpoint (LoRA on every OSEDiff target, conv_in as ``.diff``/``.diff_b``) in
``models/Lora`` and a small probe extension (``webui_real.LORA_PROBE``) that asks the Lora
extension's ``networks.load_network`` what it matched. Needs diffusers in this interpreter.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

import webui_fake
from webui_real import (WebUI, decode_image as _decode, install_lora_probe, make_sd15_checkpoint, offline_hf_env,
                        png_base64 as _png, prepare_data_dir, start_webui)

A1111_DIR = os.environ.get("A1111_DIR", "").strip()
A1111_PYTHON = os.environ.get("A1111_PYTHON", "").strip() or sys.executable
A1111_FLAGS = shlex.split(os.environ.get("A1111_FLAGS", ""))
ROOT = webui_fake.ROOT
LOCAL_ENTRIES = {webui_fake.TINY: "tiny_sinsr.safetensors", webui_fake.SINSR: "SinSR_v1.pth",
                 webui_fake.TEACHER: "tiny_teacher.safetensors"}

pytestmark = pytest.mark.skipif(not A1111_DIR, reason="real-webui tests are opt-in: set A1111_DIR to an "
                                "AUTOMATIC1111/Forge checkout (and A1111_PYTHON to its interpreter)")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = prepare_data_dir(tmp_path_factory.mktemp("webui_data"))
    webui_fake.tiny_models(data / "models" / "OneStepSR")
    return data


@pytest.fixture(scope="module")
def webui(data_dir) -> WebUI:
    with start_webui(A1111_DIR, A1111_PYTHON, data_dir, A1111_FLAGS) as server:
        print(f"\n[real webui] {A1111_DIR} ready in {server.startup:.1f} s")
        yield server


def _test_image(w: int = 24, h: int = 16) -> Image.Image:
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _extras(webui: WebUI, image: Image.Image, name: str, scale: float) -> tuple[int, Any, float]:
    started = time.perf_counter()
    status, body = webui.call("/sdapi/v1/extra-single-image", {"image": _png(image), "upscaler_1": name,
                                                                "upscaling_resize": scale})
    return status, body, time.perf_counter() - started


def _engine(data_dir: Path, file: str, image: Image.Image) -> Image.Image:
    from onestep_sr import load_model

    folder = data_dir / "models" / "OneStepSR"
    model = load_model({"denoiser": folder / file, "autoencoder": folder / "autoencoder_vq_f4.pth"}, device="cpu",
                       dtype="fp32")
    return model.upscale(image, seed=12345)   # the extension's defaults: the model's own sampler, seed 12345


def test_upscalers_lists_every_entry(webui):
    status, upscalers = webui.call("/sdapi/v1/upscalers")
    assert status == 200
    ours = {u["name"]: u for u in upscalers if u["name"].startswith("OneStepSR")}
    print(f"\n[real webui] /sdapi/v1/upscalers: {sorted(ours)}")
    assert set(LOCAL_ENTRIES) <= set(ours), sorted(ours)
    assert {"OneStepSR 4x SinSR v2", "OneStepSR 4x ResShift v1 (15 steps)", "OneStepSR 4x ResShift v3 (4 steps)"} <= set(ours)
    assert all(u["scale"] == 4 for u in ours.values())
    assert ours[webui_fake.SINSR]["model_path"] == "registry:sinsr_v1"


@pytest.mark.parametrize("name", sorted(LOCAL_ENTRIES))
def test_each_local_entry_equals_the_engine(webui, data_dir, name):
    image = _test_image()
    status, body, seconds = _extras(webui, image, name, 4)
    assert status == 200, f"{status}: {body}\n{webui.log_tail()}"
    out = _decode(body["image"])
    expected = _engine(data_dir, LOCAL_ENTRIES[name], image)
    difference = np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max()
    print(f"\n[real webui] {name}: {image.size} -> {out.size} in {seconds:.2f} s, max difference to the engine "
          f"{difference}; html_info {body.get('html_info')!r}")
    assert out.size == (96, 64) and difference <= 1


def test_non_x4_scales_keep_the_aspect_ratio(webui, data_dir):
    image = _test_image(16, 12)
    status, body, _ = _extras(webui, image, webui_fake.TINY, 2.5)
    assert status == 200, body
    out = _decode(body["image"])
    print(f"\n[real webui] x2.5 of 16x12 -> {out.size} (the webui's own rounding would give 40x24)")
    assert out.size == (40, 30)
    expected = _engine(data_dir, "tiny_sinsr.safetensors", image).resize((40, 30), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_an_entry_without_weights_fails_with_a_message_not_a_resize(webui):
    status, body, _ = _extras(webui, _test_image(), "OneStepSR 4x SinSR v2", 4)
    print(f"\n[real webui] SinSR v2 without its weights: HTTP {status}: {str(body)[:300]}")
    assert status == 500
    text = json.dumps(body)
    assert "OneStepSR 4x SinSR v2" in text and "SinSR_v2.pth" in text and "offline" in text
    status, _, _ = _extras(webui, _test_image(), webui_fake.TINY, 4)
    assert status == 200                                   # and the webui keeps serving


def test_the_strength_setting_reaches_the_bundled_default_and_the_console_line(webui):
    """Setting onestepsr_strength through /sdapi/v1/options: auto (the default) and 0 and 1 give the
    engine's images at those strengths (run here), and the webui's console says the strength used."""
    from onestep_sr import load_model
    from onestep_sr.strength import describe

    image, name = _test_image(), "OneStepSR 4x default"
    engine = load_model("onestep_default", device="cpu", dtype="fp32")
    results = {}
    try:
        for stored in ("auto", 0, 1):
            status, body = webui.call("/sdapi/v1/options", {"onestepsr_strength": stored})
            assert status == 200, f"{status}: {body}\n{webui.log_tail()}"
            status, body, seconds = _extras(webui, image, name, 4)
            assert status == 200, f"{status}: {body}\n{webui.log_tail()}"
            out = results[stored] = np.asarray(_decode(body["image"]), dtype=int)
            expected = engine.upscale(image, seed=12345, strength=stored)
            difference = np.abs(out - np.asarray(expected, dtype=int)).max()
            line = f"OneStepSR upscaler '{name}': {describe(engine.last_strengths, stored == 'auto')}"
            deadline = time.monotonic() + 10
            while line not in webui.log.read_text(errors="replace") and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"\n[real webui] onestepsr_strength={stored!r}: {seconds:.2f} s, max difference to the engine "
                  f"{difference}; console: {line!r}")
            assert difference <= 1 and line in webui.log.read_text(errors="replace"), webui.log_tail()
        assert np.abs(results[0] - results[1]).mean() > 0.5
        status, body = webui.call("/sdapi/v1/options", {"onestepsr_strength": "strong"})
        status, body, _ = _extras(webui, image, name, 4)
        assert status == 500 and "onestepsr_strength" in json.dumps(body), body
    finally:
        webui.call("/sdapi/v1/options", {"onestepsr_strength": "auto"})


# --- an OSEDiff export through A1111's built-in Lora extension ------------------------------------

SD_NAME = "synthetic_sd15"
LORA_NAME = "osediff_sd15"
BAKED_NAME = "osediff_sd15_w3"  # the export with a guidance input, baked at w = 3 (lora_unet_time_embed_0)


def _is_a1111(checkout: Path) -> bool:
    networks = checkout / "extensions-builtin" / "Lora" / "networks.py"
    return (checkout / "configs" / "v1-inference.yaml").is_file() and networks.is_file() and \
        "def load_network(name, network_on_disk)" in networks.read_text()


def export_osediff_for(checkpoint: Path, dst: Path) -> Path:
    """``training.sd.osediff_export.export_kohya`` for a run on ``checkpoint`` (an SD 1.5 single file):
    random OSEDiff-layout weights (``osediff_layout.synthetic_osediff``, rank 4, on every OSEDiff
    target of the SD 1.5 UNet / VAE built on the meta device from weights/configs/sd1), the run's
    base conv_in being the checkpoint's. Writes ``dst`` and its ``_vae`` sibling."""
    import diffusers
    import torch
    from safetensors import safe_open
    from types import SimpleNamespace

    from osediff_layout import synthetic_osediff
    from training.sd.osediff_export import export_kohya

    configs = ROOT / "weights" / "configs" / "sd1"
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(json.loads((configs / "unet.json").read_text()))
        vae = diffusers.AutoencoderKL.from_config(json.loads((configs / "vae.json").read_text()))
    osediff = synthetic_osediff(unet, vae, rank=4, seed=7)
    weights = {f"unet.{k}": v for k, v in osediff["state_dict_unet"].items()}
    weights |= {f"vae.{k}": v for k, v in osediff["state_dict_vae"].items()}
    conv_in = torch.nn.Conv2d(4, 320, 3, padding=1)
    with safe_open(str(checkpoint), "pt") as f, torch.no_grad():
        conv_in.weight.copy_(f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").float())
        conv_in.bias.copy_(f.get_tensor("model.diffusion_model.input_blocks.0.0.bias").float())
    config = SimpleNamespace(rank=4, lora_alpha=8.0, checkpoint=str(checkpoint), out=str(dst.parent / "run"),
                             lambda_mse=1.0, lambda_perceptual=2.0, lambda_vsd=1.0, perceptual="lpips", cfg=7.0,
                             prompt="")
    groups = {g: osediff[f"unet_lora_{g}_modules"] for g in ("encoder", "decoder", "others")}
    run = SimpleNamespace(config=config, groups=groups, vae_names=osediff["vae_lora_encoder_modules"],
                          score=SimpleNamespace(unet=SimpleNamespace(conv_in=conv_in)),
                          sd=SimpleNamespace(family="sd1"), prediction_type="epsilon", step=10, schedule_shift=1.0,
                          last_losses={"mse": 0.1}, ema=weights)
    return export_kohya(run, weights, dst)


def bake_guidance_for(checkpoint: Path, folder: Path) -> Path:
    """The OSEDiff export plus a random cond_proj (320 x 256) as a w-conditioned student, baked at
    w = 3 with the checkpoint's own time_embed.0 weight by ``onestep_sr.sd.guidance.bake``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from onestep_sr.sd import guidance as G

    lora = load_file(str(folder / f"{LORA_NAME}.safetensors"))
    with safe_open(str(checkpoint), "pt") as f:
        weight = f.get_tensor("model.diffusion_model.time_embed.0.weight").float()
    proj = 0.05 * torch.randn(320, G.EMBED_DIM, generator=torch.Generator().manual_seed(3))
    save_file(G.bake(G.GuidedLora(lora, proj), weight, 3.0), str(folder / f"{BAKED_NAME}.safetensors"))
    return folder / f"{BAKED_NAME}.safetensors"


@pytest.fixture(scope="module")
def sd_data_dir(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """(data dir, HF_HOME) for the SD webui: our extension, the probe, the checkpoint, the export.
    The 2 GB checkpoint is deleted afterwards (pytest keeps its last tmp folders)."""
    checkout = Path(A1111_DIR).expanduser().resolve()
    if not _is_a1111(checkout):
        pytest.skip(f"{checkout} is not AUTOMATIC1111 (no configs/v1-inference.yaml or Lora networks.load_network)")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        pytest.skip("the OSEDiff export test needs diffusers in this interpreter (pip install -e .[test])")
    data = prepare_data_dir(tmp_path_factory.mktemp("webui_sd_data"))
    hf_home = tmp_path_factory.mktemp("hf_home")
    install_lora_probe(data)
    checkpoint = data / "models" / "Stable-diffusion" / f"{SD_NAME}.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = make_sd15_checkpoint(str(checkout), A1111_PYTHON, checkpoint, hf_home)
    made = time.perf_counter() - started
    (data / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    export_osediff_for(checkpoint, data / "models" / "Lora" / f"{LORA_NAME}.safetensors")
    bake_guidance_for(checkpoint, data / "models" / "Lora")
    print(f"\n[real webui] random SD 1.5 checkpoint {checkpoint.stat().st_size / 2**30:.2f} GiB ({summary}) in "
          f"{made:.1f} s; OSEDiff export in {time.perf_counter() - started - made:.1f} s")
    yield data, hf_home
    checkpoint.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sd_webui(sd_data_dir) -> WebUI:
    data, hf_home = sd_data_dir
    with start_webui(A1111_DIR, A1111_PYTHON, data, A1111_FLAGS, env=offline_hf_env(hf_home)) as server:
        print(f"\n[real webui] SD webui ready in {server.startup:.1f} s")
        yield server


def _txt2img(webui: WebUI, prompt: str) -> tuple[np.ndarray, str, float]:
    started = time.perf_counter()
    status, body = webui.call("/sdapi/v1/txt2img", {
        "prompt": prompt, "negative_prompt": "", "steps": 1, "width": 64, "height": 64, "seed": 1234,
        "sampler_name": "Euler", "cfg_scale": 7, "save_images": False,
        "override_settings": {"sd_model_checkpoint": SD_NAME}})
    seconds = time.perf_counter() - started
    assert status == 200, f"{status}: {str(body)[:2000]}\n{webui.log_tail()}"
    infotext = json.loads(body["info"])["infotexts"][0]
    return np.asarray(_decode(body["images"][0]), dtype=int), infotext, seconds


def _probe(webui: WebUI, name: str) -> dict:
    status, report = webui.call(f"/onestep-probe/lora?name={name}")
    assert status == 200 and "error" not in report, report
    return report


def test_an_osediff_export_loads_in_a1111s_lora_extension_with_every_key(sd_webui, sd_data_dir):
    from safetensors import safe_open

    lora_file = sd_data_dir[0] / "models" / "Lora" / f"{LORA_NAME}.safetensors"
    with safe_open(str(lora_file), "pt") as f:
        keys = list(f.keys())
    modules = {k.partition(".")[0] for k in keys}
    assert {"lora_unet_conv_in.diff", "lora_unet_conv_in.diff_b"} <= set(keys)

    base, base_info, base_s = _txt2img(sd_webui, "a photo")
    patched, info, lora_s = _txt2img(sd_webui, f"a photo <lora:{LORA_NAME}:1>")
    report = _probe(sd_webui, LORA_NAME)
    difference = np.abs(base - patched)
    print(f"\n[real webui] txt2img 64x64, 1 step: {base_s:.1f} s without the LoRA (incl. model load), "
          f"{lora_s:.1f} s with it; pixel difference max {difference.max()}, mean {difference.mean():.2f}")
    print(f"[real webui] {LORA_NAME}: {len(keys)} keys / {len(modules)} modules in the file; A1111 made "
          f"{report['modules']} modules {report['module_types']}, {report['didnt_match']} keys unmatched, "
          f"{report['applied_modules']} layers carry it, {report['moved_layers']} moved; conv_in "
          f"{report['full']}; LoRA layers vs alpha/rank*up@down: max error {report['lora_change_vs_file']:.2e} "
          f"(largest delta {report['lora_max_delta']:.3f}); errors {report['errors']}")
    print(f"[real webui] infotext: {info!r}")

    assert report["file_keys"] == len(keys) and report["file_modules"] == len(modules)
    assert report["didnt_match"] == 0 and report["didnt_match_log"] == [], report["didnt_match_log"]
    assert report["modules"] == report["covered_modules"] == len(modules) and report["uncovered"] == []
    assert report["module_types"] == {"NetworkModuleLora": len(modules) - 1, "NetworkModuleFull": 1}
    assert report["loaded_networks"] == [LORA_NAME] and report["errors"] == {}
    assert report["applied_modules"] == report["moved_layers"] == len(modules)
    conv_in = report["full"]["diffusion_model_input_blocks_0_0"]
    assert conv_in["max_diff"] > 0.1 and conv_in["weight_change_vs_diff"] < 1e-5
    assert conv_in["bias_change_vs_diff_b"] is not None and conv_in["bias_change_vs_diff_b"] < 1e-6
    assert report["lora_max_delta"] > 1e-3 and report["lora_change_vs_file"] < 1e-5
    assert f"Lora hashes: \"{LORA_NAME}: " in info and "Networks with errors" not in info
    assert "Lora hashes" not in base_info
    assert difference.mean() > 1.0


def test_a_baked_guidance_lora_moves_the_time_embedding_bias_by_its_diff_b(sd_webui, sd_data_dir):
    """A student with a guidance input baked at one w (the w pathway as lora_unet_time_embed_0.diff_b
    with a zero .diff): A1111's Lora extension matches every key, builds time_embed.0 as a "full"
    module and moves its bias by exactly the file's diff_b."""
    from safetensors import safe_open

    with safe_open(str(sd_data_dir[0] / "models" / "Lora" / f"{BAKED_NAME}.safetensors"), "pt") as f:
        keys = list(f.keys())
        bias = f.get_tensor("lora_unet_time_embed_0.diff_b")
    plain, _, _ = _txt2img(sd_webui, f"a photo <lora:{LORA_NAME}:1>")
    baked, info, _ = _txt2img(sd_webui, f"a photo <lora:{BAKED_NAME}:1>")
    report = _probe(sd_webui, BAKED_NAME)
    time_embed = report["full"].get("diffusion_model_time_embed_0")
    print(f"\n[real webui] {BAKED_NAME}: {report['modules']} modules {report['module_types']}, "
          f"{report['didnt_match']} keys unmatched; time_embed.0 {time_embed}; |diff_b| max {float(bias.abs().max()):.3f}; "
          f"pixel difference to the unbaked LoRA max {np.abs(baked - plain).max()}")
    assert report["didnt_match"] == 0 and report["file_keys"] == len(keys) and report["errors"] == {}
    assert report["module_types"]["NetworkModuleFull"] == 2          # conv_in and time_embed.0
    assert time_embed is not None and time_embed["bias_change_vs_diff_b"] < 1e-6 < float(bias.abs().max())
    assert time_embed["weight_change_vs_diff"] == 0.0                 # the zero .diff changes no weight
    assert "Networks with errors" not in info


def test_the_vae_sibling_in_the_lora_folder_is_listed_but_matches_nothing(sd_webui, sd_data_dir):
    """``NAME_vae.safetensors`` holds LDM VAE-encoder keys (for our own loader / ComfyUI's VAE
    patcher). A1111's Lora extension lists it as a network; used in a prompt it loads with no
    module (every key unmatched, reported only at debug level) and changes nothing."""
    from safetensors import safe_open

    status, loras = sd_webui.call("/sdapi/v1/loras")
    assert status == 200 and {LORA_NAME, f"{LORA_NAME}_vae"} <= {x["name"] for x in loras}
    with safe_open(str(sd_data_dir[0] / "models" / "Lora" / f"{LORA_NAME}_vae.safetensors"), "pt") as f:
        keys = list(f.keys())
    base, _, _ = _txt2img(sd_webui, "a photo")
    with_vae, info, _ = _txt2img(sd_webui, f"a photo <lora:{LORA_NAME}_vae:1>")
    report = _probe(sd_webui, f"{LORA_NAME}_vae")
    print(f"\n[real webui] {LORA_NAME}_vae in a prompt: {report['modules']} modules, {report['didnt_match']} of "
          f"{len(keys)} keys unmatched; max pixel difference to no LoRA {np.abs(base - with_vae).max()}; "
          f"infotext {info!r}")
    assert report["modules"] == 0 and report["didnt_match"] == len(keys) == report["file_keys"]
    assert np.abs(base - with_vae).max() <= 1
