"""The node pack inside a real ComfyUI (opt-in): set ``COMFYUI_DIR`` to a ComfyUI checkout, and
``COMFYUI_PYTHON`` to the interpreter of its environment (default: this one).

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python python -m pytest -s tests/test_comfyui_real.py

A throw-away base directory (``--base-directory``) holds the pack under ``custom_nodes/``, small
random models generated from fixed seeds (OneStep SR models under the registry's file names, so
"sinsr_v1 (auto-download)" resolves locally and nothing is downloaded; a synthetic SD1.5-format
checkpoint for the txt2img example) and a tiny input image; the user's checkout is not modified.
ComfyUI runs headless on a free loopback port. Every workflow in ``example_workflows/`` is
converted from the UI format to the API format with ``/object_info``, made cheap for a CPU, queued
with ``POST /prompt`` and its outputs checked. Without ``COMFYUI_DIR`` the whole module is skipped.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import pytest

from ldm_random import RANDOM_LDM_STATE

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "").strip()
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable

pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="real-ComfyUI tests are opt-in: set COMFYUI_DIR to a ComfyUI checkout "
           "(and COMFYUI_PYTHON to its interpreter) to run them")

PACK_FOLDER = "comfyui-onestep-sr"  # as a git clone of the pack would be named
INPUT_IMAGE = "onestep_test_input.png"
INPUT_SIZE = (32, 24)  # width, height
LATENT_SIZE = 64  # EmptyLatentImage width/height for the txt2img example
SD_CHECKPOINT = "synthetic_sd15.safetensors"
MODEL_CHOICE = "sinsr_v1 (auto-download)"
BUNDLED_CHOICE = "onestep_default (bundled)"  # the committed default model: offline, no download
OUR_NODES = {"OneStepSR_LoadModel", "OneStepSR_Upscale", "OneStepSR_Encode", "OneStepSR_ResShiftSampler",
             "OneStepSR_Decode", "OneStepSR_ColorFix", "OneStepSR_SDUpscale"}
STUDENT_LORA = "tiny_student.safetensors"  # kohya UNet LoRA (LoraLoader) for the synthetic SD1.5 UNet
STUDENT_VAE_LORA = "tiny_student_vae.safetensors"  # its VAE-encoder half (OneStep SD Upscale's vae_lora)
CONVERTED_LORA = "osediff_converted.safetensors"  # onestep-sr convert of a full OSEDiff-layout pickle
CONVERTED_VAE_LORA = "osediff_converted_vae.safetensors"
GUIDED_LORA = "tiny_student_guided.safetensors"  # a w-conditioned student (OneStep SD Upscale's guided_lora)
BAKED_LORA = "tiny_student_w3.safetensors"  # the same baked at w = 3 for the stock LoraLoader
BAKED_W = 3.0
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}  # never sent to the server
START_TIMEOUT = 240
PROMPT_TIMEOUT = 900

# Run by COMFYUI_PYTHON inside the ComfyUI checkout: an SD1.5-format checkpoint built from
# ComfyUI's own classes (shapes are what ComfyUI detects the model type from). UNet: 320
# channels, one level, one transformer block (~26 M parameters); the full SD VAE and CLIP-L
# (their configs are fixed). 1-D weights (norm scales) are 1, biases 0, other weights random
# with a 1/sqrt(fan_in) scale so activations stay finite; stored as fp16.
SD_GENERATOR = RANDOM_LDM_STATE + r'''
import json, math, os, sys
sys.path.insert(0, os.getcwd())
import torch
from safetensors.torch import save_file
from comfy.cli_args import args
args.cpu = True  # before comfy.model_management is imported
import comfy.ops
from comfy.clip_model import CLIPTextModel
from comfy.ldm.models.autoencoder import AutoencoderKL
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

meta, ops = torch.device("meta"), comfy.ops.disable_weight_init
unet = UNetModel(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                 channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                 transformer_depth_middle=1, context_dim=768, num_heads=8, use_spatial_transformer=True,
                 legacy=False, device=meta, operations=ops)
with meta:
    vae = AutoencoderKL(ddconfig={"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                  "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                  "attn_resolutions": [], "dropout": 0.0}, embed_dim=4)
with open(os.path.join("comfy", "sd1_clip_config.json")) as f:
    clip = CLIPTextModel(json.load(f), torch.float32, meta, ops)
generator = torch.Generator().manual_seed(int(sys.argv[2]))
state = random_ldm_state((("model.diffusion_model.", unet), ("first_stage_model.", vae),
                          ("cond_stage_model.transformer.", clip)), generator)
save_file(state, sys.argv[1])
print(len(state), "tensors,", sum(t.numel() for t in state.values()), "parameters")
'''


# --- fixtures: the synthetic files, the base directory, the server --------------------------------


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def comfyui() -> tuple[Path, str, set[str]]:
    """(checkout, interpreter, the command-line flags this ComfyUI version has)."""
    checkout = Path(COMFYUI_DIR).expanduser().resolve()
    if not (checkout / "main.py").is_file() or not (checkout / "comfy" / "cli_args.py").is_file():
        pytest.fail(f"COMFYUI_DIR={COMFYUI_DIR!r} is not a ComfyUI checkout (no main.py / comfy/cli_args.py)")
    if not shutil.which(COMFYUI_PYTHON) and not Path(COMFYUI_PYTHON).is_file():
        pytest.fail(f"COMFYUI_PYTHON={COMFYUI_PYTHON!r} is not an interpreter")
    source = (checkout / "comfy" / "cli_args.py").read_text()
    flags = {flag for flag in ("--base-directory", "--database-url", "--whitelist-custom-nodes",
                               "--disable-all-custom-nodes", "--disable-api-nodes", "--input-directory",
                               "--output-directory", "--temp-directory", "--user-directory")
             if f'"{flag}"' in source}
    return checkout, COMFYUI_PYTHON, flags


@pytest.fixture(scope="session")
def sd_checkpoint(comfyui, tmp_path_factory) -> Path:
    """The synthetic SD1.5 checkpoint, made once per session with ComfyUI's classes."""
    checkout, python, _ = comfyui
    folder = tmp_path_factory.mktemp("sd15_cache")
    script, target = folder / "make_sd15.py", folder / SD_CHECKPOINT
    script.write_text(SD_GENERATOR)
    started = time.perf_counter()
    done = subprocess.run([python, str(script), str(target), "20240601"], cwd=checkout, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0 and target.is_file(), f"SD1.5 fixture failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    print(f"\n[real ComfyUI] synthetic SD1.5 checkpoint: {target.stat().st_size / 2**20:.0f} MiB "
          f"in {time.perf_counter() - started:.1f} s ({done.stdout.strip()})")
    return target


def _onestep_models(folder: Path) -> None:
    """Tiny random OneStep SR networks in the official layout (plain state dicts saved with
    torch.save) under the registry's file names, from fixed seeds."""
    try:
        import onestep_sr  # noqa: F401
    except ImportError:  # pytest not started from the checkout and the package not installed
        sys.path.insert(0, str(ROOT))
    import torch

    from onestep_sr.models import AutoencoderConfig, DenoiserConfig, build_autoencoder, build_denoiser

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    denoiser = build_denoiser(DenoiserConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
                                             attention_resolutions=(64,), swin_embed_dim=32, num_head_channels=16))
    torch.save(denoiser.state_dict(), folder / "SinSR_v1.pth")
    torch.manual_seed(4321)
    autoencoder = build_autoencoder(AutoencoderConfig(ch=32, ch_mult=(1, 2, 1), n_embed=64))
    torch.save(autoencoder.state_dict(), folder / "autoencoder_vq_f4.pth")


def _student_loras(folder: Path) -> None:
    """A tiny OSEDiff-style student for the synthetic SD1.5 checkpoint, in the formats
    ``onestep-sr convert`` writes: kohya keys on diffusers UNet names (+ ``.alpha``) in
    STUDENT_LORA, LDM VAE-encoder names in its ``_vae`` sibling. Rank 2, fixed seed."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(99)

    def pair(prefix: str, out_ch: int, in_ch: int, kernel: int = 1) -> dict[str, torch.Tensor]:
        down = 0.1 * torch.randn(2, in_ch, *((kernel, kernel) if kernel > 1 else ()), generator=generator)
        up = 0.1 * torch.randn(out_ch, 2, *((1, 1) if kernel > 1 else ()), generator=generator)
        return {f"{prefix}.lora_down.weight": down, f"{prefix}.lora_up.weight": up, f"{prefix}.alpha": torch.tensor(2.0)}

    unet = {**pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
            **pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768),
            **pair("lora_unet_down_blocks_0_resnets_0_conv1", 320, 320, kernel=3)}
    vae = {**pair("encoder.conv_in", 128, 3, kernel=3), **pair("quant_conv", 8, 8, kernel=1),
           **pair("encoder.mid.attn_1.q", 512, 512, kernel=1)}
    vae = {k: (v[..., None, None] if v.ndim == 2 else v) for k, v in vae.items()}  # 1x1 convs in the LDM VAE
    folder.mkdir(parents=True, exist_ok=True)
    save_file(unet, str(folder / STUDENT_LORA))
    save_file(vae, str(folder / STUDENT_VAE_LORA))


def _guided_student(folder: Path, checkpoint: Path) -> None:
    """A w-conditioned student for the synthetic SD1.5 checkpoint (onestep_sr.sd.guidance's format:
    the tiny student's LoRA + a random cond_proj 320 x 256) as GUIDED_LORA, and the same baked at
    w = BAKED_W (its lora_unet_time_embed_0.diff_b from the checkpoint's own time_embed.0 weight)
    as BAKED_LORA, both written by the engine's functions."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from onestep_sr.sd import guidance as G

    lora = load_file(str(folder / STUDENT_LORA))
    proj = 0.05 * torch.randn(320, G.EMBED_DIM, generator=torch.Generator().manual_seed(7))
    save_file({**lora, G.COND_PROJ_KEY: proj}, str(folder / GUIDED_LORA))
    with safe_open(str(checkpoint), framework="pt") as f:
        weight = f.get_tensor("model.diffusion_model.time_embed.0.weight").float()
    baked = G.bake(G.parse_guided({**lora, G.COND_PROJ_KEY: proj}), weight, BAKED_W)
    save_file(baked, str(folder / BAKED_LORA))


def _converted_osediff(folder: Path) -> bool:
    """``onestep-sr convert`` of an OSEDiff-layout pickle with LoRA factors on every OSEDiff target
    of the synthetic checkpoint (diffusers names of a UNet with its shapes: 320 channels, one
    level, one transformer block, 768-wide context; the full SD VAE), written as CONVERTED_LORA and
    its ``_vae`` sibling. Needs diffusers in this interpreter (the test extra); False without it."""
    try:
        import diffusers
    except ImportError:
        return False
    import torch

    from onestep_sr.cli import main
    from osediff_layout import synthetic_osediff

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
            down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
            cross_attention_dim=768, attention_head_dim=8)
        vae = diffusers.AutoencoderKL.from_config(json.loads((ROOT / "weights/configs/sd1/vae.json").read_text()))
    folder.mkdir(parents=True, exist_ok=True)
    pickle = folder.parent / "osediff_synthetic.pkl"
    torch.save(synthetic_osediff(unet, vae, rank=4, seed=7), pickle)
    assert main(["convert", str(pickle), str(folder / CONVERTED_LORA)]) == 0
    assert (folder / CONVERTED_VAE_LORA).is_file()
    return True


def _input_image(path: Path, size: tuple[int, int] = INPUT_SIZE) -> None:
    """A small RGB image with structure (gradients plus noise), not a flat colour."""
    import numpy as np
    from PIL import Image

    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(7)
    rgb = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), 128 + 100 * np.sin(x / 3.0) * np.cos(y / 2.0)], -1)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source, target_is_directory=source.is_dir())
    except OSError:  # no symlinks (e.g. Windows without developer mode)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The running ComfyUI: HTTP helpers and where its files are."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, output: Path, pack_folder: str):
        self.url, self.process, self.log, self.output = url, process, log, output
        self.pack_folder = pack_folder  # the pack's folder name under custom_nodes

    def request(self, path: str, payload: Any = None, timeout: float = 60) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def view(self, image: dict[str, str]) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=60) as response:
            return response.read()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return _log_tail(self.log, lines)

    def queue(self, prompt: dict[str, Any]) -> str:
        try:
            answer = self.request("/prompt", {"prompt": prompt, "client_id": "onestep-sr-tests"})
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST /prompt refused the graph (HTTP {error.code}): "
                                 f"{error.read().decode(errors='replace')}") from None
        assert not answer.get("node_errors"), answer
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = PROMPT_TIMEOUT) -> dict[str, Any]:
        """The history entry of a finished prompt."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.alive(), f"ComfyUI exited (code {self.process.returncode}):\n{self.log_tail()}"
            entry = self.request(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                return entry
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} not finished after {timeout} s:\n{self.log_tail()}")


@pytest.fixture(scope="session")
def base_dir(comfyui, sd_checkpoint, tmp_path_factory) -> Path:
    """ComfyUI's throw-away base directory: the pack, the models and the input image."""
    base = tmp_path_factory.mktemp("comfyui_base")
    _link_or_copy(ROOT, base / "custom_nodes" / PACK_FOLDER)
    _onestep_models(base / "models" / "onestep_sr")
    _link_or_copy(sd_checkpoint, base / "models" / "checkpoints" / SD_CHECKPOINT)
    _student_loras(base / "models" / "loras")
    _converted_osediff(base / "models" / "loras")
    _guided_student(base / "models" / "loras", sd_checkpoint)
    _input_image(base / "input" / INPUT_IMAGE)
    for name in ("output", "temp", "user"):
        (base / name).mkdir(exist_ok=True)
    return base


@contextlib.contextmanager
def running_server(command: list[str], checkout: Path, base: Path, pack: str) -> Iterator[Server]:
    """Start ComfyUI with ``command`` (offline, our models folder variable dropped, its log in
    ``base``), wait until it answers, yield its :class:`Server`; stop it afterwards."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONESTEP_SR_MODELS", "HF_HUB_OFFLINE")}
    env.update(ONESTEP_SR_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    log = base / "comfyui.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    srv = Server(f"http://127.0.0.1:{command[command.index('--port') + 1]}", process, log, base / "output", pack)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert srv.alive(), f"ComfyUI exited during start-up (code {process.returncode}):\n{srv.log_tail()}"
            try:
                srv.request("/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                assert time.monotonic() < deadline, f"ComfyUI not ready after {START_TIMEOUT} s:\n{srv.log_tail()}"
                time.sleep(0.5)
        yield srv
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(comfyui, base_dir) -> Server:
    checkout, python, flags = comfyui
    port = _free_port()
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
    if "--database-url" in flags:
        command += ["--database-url", "sqlite:///:memory:"]
    if "--disable-api-nodes" in flags:
        command += ["--disable-api-nodes"]
    installed = None  # the pack's link in the user's checkout (only without --base-directory)
    if "--base-directory" in flags:
        command += ["--base-directory", str(base_dir)]
        pack_folder = PACK_FOLDER
    else:  # an older ComfyUI: link the pack into its custom_nodes for this run only
        pack_folder = f"{PACK_FOLDER}-test-{uuid.uuid4().hex[:8]}"
        installed = checkout / "custom_nodes" / pack_folder
        _link_or_copy(ROOT, installed)
        yaml = base_dir / "extra_model_paths.yaml"
        yaml.write_text(f"onestep_sr_tests:\n    base_path: {base_dir / 'models'}\n"
                        f"    checkpoints: checkpoints\n    onestep_sr: onestep_sr\n")
        command += ["--extra-model-paths-config", str(yaml)]
        for name in ("input", "output", "temp", "user"):
            if f"--{name}-directory" in flags:
                command += [f"--{name}-directory", str(base_dir / name)]
    if {"--disable-all-custom-nodes", "--whitelist-custom-nodes"} <= flags:
        command += ["--disable-all-custom-nodes", "--whitelist-custom-nodes", pack_folder]
    started = time.perf_counter()
    try:
        with running_server(command, checkout, base_dir, pack_folder) as srv:
            print(f"\n[real ComfyUI] started in {time.perf_counter() - started:.1f} s on port {port} ({checkout})")
            yield srv
    finally:
        if installed is not None and (installed.is_symlink() or installed.exists()):
            installed.unlink() if installed.is_symlink() else shutil.rmtree(installed)


@pytest.fixture(scope="session")
def object_info(server) -> dict[str, Any]:
    return server.request("/object_info")


# --- the UI -> API conversion (what the frontend's "queue prompt" does) ----------------------------


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _options(spec: list) -> list:
    """A combo's choices (V1: a list as the type; V3: "COMBO" with an options list)."""
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """A UI-format workflow as an API-format prompt: widget values are matched to the node's
    widget inputs in /object_info order (required, then optional), skipping the extra
    control_after_generate value that follows a seed; links become [source id, output slot]."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        assert node["type"] in object_info, f"node type {node['type']!r} is not registered in ComfyUI"
        info = object_info[node["type"]]["input"]
        order = object_info[node["type"]].get("input_order") or {k: list(info.get(k, {})) for k in ("required", "optional")}
        specs = {**info.get("required", {}), **info.get("optional", {})}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        upload = False
        for name in order.get("required", []) + order.get("optional", []):
            spec = specs[name]
            if _is_widget(spec):
                assert values, f"node {node['id']} ({node['type']}): no widget value for {name!r}"
                value = values.pop(0)
                if spec[1].get("control_after_generate"):
                    assert values and values.pop(0) in ("fixed", "increment", "decrement", "randomize"), \
                        f"node {node['id']} ({node['type']}): {name!r} needs a control_after_generate value"
                upload = upload or bool(spec[1].get("image_upload"))
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        assert len(values) <= int(upload), f"node {node['id']} ({node['type']}): extra widget values {values}"
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or node["type"]}}
    return prompt


def make_cheap(prompt: dict[str, Any]) -> dict[str, Any]:
    """The example made quick on a CPU: the tiny test image, a 64x64 latent, one sampler step,
    the synthetic checkpoint. Everything else (our nodes' settings included) is as shipped."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = INPUT_IMAGE
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=LATENT_SIZE, height=LATENT_SIZE, batch_size=1)
        elif node["class_type"] == "KSampler":
            inputs.update(steps=1, seed=1)
        elif node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = SD_CHECKPOINT
        elif node["class_type"] == "LoraLoader":
            inputs["lora_name"] = STUDENT_LORA
        elif node["class_type"] == "OneStepSR_SDUpscale" and inputs.get("vae_lora", "none") != "none":
            inputs["vae_lora"] = STUDENT_VAE_LORA
    return prompt


def _input_size(prompt: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of the image the graph upscales: the test image or the txt2img latent's."""
    if any(n["class_type"] == "EmptyLatentImage" for n in prompt.values()):
        return LATENT_SIZE, LATENT_SIZE
    return INPUT_SIZE


def _outputs(server: Server, prompt: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """{SaveImage filename_prefix: the output as a uint8 array} of a finished prompt."""
    import numpy as np
    from PIL import Image

    found = {}
    for node_id, output in entry["outputs"].items():
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            data = server.view(image)
            on_disk = server.output / image.get("subfolder", "") / image["filename"]
            assert on_disk.is_file() and on_disk.read_bytes() == data, f"/view differs from {on_disk}"
            found[prompt[node_id]["inputs"]["filename_prefix"]] = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    return found


def _failure(entry: dict[str, Any]) -> str:
    return json.dumps(entry.get("status", {}).get("messages", []), indent=1)[-6000:]


def run_workflow(server: Server, prompt: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    entry = server.wait(server.queue(prompt))
    seconds = time.perf_counter() - started
    assert entry["status"]["status_str"] == "success", f"prompt failed:\n{_failure(entry)}\n{server.log_tail(40)}"
    return _outputs(server, prompt, entry), seconds


# --- tests ----------------------------------------------------------------------------------------


def test_the_nodes_are_registered_with_the_registry_models(object_info):
    assert OUR_NODES <= set(object_info), sorted(OUR_NODES - set(object_info))
    for node_id in OUR_NODES:
        assert object_info[node_id]["python_module"].startswith("custom_nodes."), object_info[node_id]
    choices = _options(object_info["OneStepSR_LoadModel"]["input"]["required"]["model_name"])
    assert choices[0] == BUNDLED_CHOICE and MODEL_CHOICE in choices, choices
    # the models folder is listed too; the autoencoder file is not a model on its own
    assert "SinSR_v1.pth" in choices and "autoencoder_vq_f4.pth" not in choices, choices


def test_the_example_workflows_are_served_as_templates(server):
    """ComfyUI's template browser lists example_workflows/ and serves the files unchanged."""
    assert len(WORKFLOWS) >= 4, [p.name for p in WORKFLOWS]
    listed = server.request("/workflow_templates").get(server.pack_folder, [])
    assert sorted(listed) == [p.stem for p in WORKFLOWS], listed
    for path in WORKFLOWS:
        served = server.request(f"/api/workflow_templates/{urllib.parse.quote(server.pack_folder)}/{path.name}")
        assert served == json.loads(path.read_text()), path.name


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(server, object_info, path):
    import numpy as np

    prompt = make_cheap(to_api(json.loads(path.read_text()), object_info))
    saves = [n["inputs"]["filename_prefix"] for n in prompt.values() if n["class_type"] == "SaveImage"]
    assert saves and len(set(saves)) == len(saves), f"{path.name}: SaveImage prefixes must be distinct: {saves}"
    if not any(n["class_type"] == "OneStepSR_SDUpscale" for n in prompt.values()):
        assert any(n["class_type"] == "OneStepSR_LoadModel" and n["inputs"]["model_name"] in (MODEL_CHOICE, BUNDLED_CHOICE)
                   for n in prompt.values()), path.name
    outputs, seconds = run_workflow(server, prompt)
    w, h = _input_size(prompt)
    sizes = {prefix: f"{a.shape[1]}x{a.shape[0]}" for prefix, a in outputs.items()}
    print(f"\n[real ComfyUI] {path.name}: {seconds:.1f} s, input {w}x{h}, outputs {sizes}")
    assert set(outputs) == set(saves), (sorted(outputs), saves)
    for prefix, image in outputs.items():
        assert image.shape == (4 * h, 4 * w, 3), (prefix, image.shape)
        assert image.std() > 1.0 and len(np.unique(image.reshape(-1, 3), axis=0)) > 16, f"{prefix}: a flat image"
    if path.stem == "onestep_vs_15_steps":
        one = next(a for p, a in outputs.items() if "1_step" in p)
        fifteen = next(a for p, a in outputs.items() if "15_steps" in p)
        assert not np.array_equal(one, fifteen), "1 step and 15 steps gave the same image"
    if path.stem == "latent_path_resshift_sampler":
        # Encode -> ResShift Sampler -> Decode equals OneStep Upscale with the same settings
        assert np.array_equal(outputs["OneStepSR_latent_path"], outputs["OneStepSR_upscale_node"])
    if path.stem == "sd_onestep_upscale":
        assert "lora key not loaded" not in server.log.read_text(errors="replace"), server.log_tail()


def test_sd_upscale_applies_both_student_loras(server, object_info):
    """The SD example (Load Checkpoint -> LoraLoader -> OneStep SD Upscale) with the student's UNet
    LoRA and VAE-encoder LoRA, without each, and without both: four different images, every LoRA key
    loaded; the base checkpoint's VAE is unchanged by the patched copy (running without LoRAs after
    the LoRA runs gives the same image as before them)."""
    import numpy as np

    workflow = json.loads((ROOT / "example_workflows" / "sd_onestep_upscale.json").read_text())
    base = make_cheap(to_api(workflow, object_info))
    lora = next(n for n in base.values() if n["class_type"] == "LoraLoader")["inputs"]
    upscale = next(n for n in base.values() if n["class_type"] == "OneStepSR_SDUpscale")["inputs"]
    results = {}
    for name, unet_strength, vae_lora in [("none", 0.0, "none"), ("both", 1.0, STUDENT_VAE_LORA),
                                          ("unet", 1.0, "none"), ("vae", 0.0, STUDENT_VAE_LORA)]:
        lora["strength_model"], upscale["vae_lora"] = unet_strength, vae_lora
        outputs, seconds = run_workflow(server, base)
        (results[name],) = outputs.values()
        print(f"\n[real ComfyUI] OneStep SD Upscale, student LoRA {name}: {seconds:.1f} s")
    images = list(results.values())
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1:])
    upscale["overlap"] = 8
    upscale["tile"] = 16  # a new setting (not cached); latent 16 x 12 is still one tile, so the same image
    lora["strength_model"], upscale["vae_lora"] = 0.0, "none"
    outputs, _ = run_workflow(server, base)
    (again,) = outputs.values()
    assert np.abs(again.astype(int) - results["none"].astype(int)).max() <= 1
    assert "lora key not loaded" not in server.log.read_text(errors="replace"), server.log_tail()


# Run by COMFYUI_PYTHON in the checkout: ComfyUI's own LoRA loading of a kohya file against a
# checkpoint. Prints JSON: the LoRA modules in the file, the weights ComfyUI's load_lora made
# patches for, how many the model accepted, and the warnings ComfyUI logged meanwhile.
LORA_PROBE = r'''
import json, logging, os, sys
sys.path.insert(0, os.getcwd())
from comfy.cli_args import args
args.cpu = True
import comfy.lora, comfy.sd, comfy.utils
warnings = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger().addHandler(handler)
model, _, _, _ = comfy.sd.load_checkpoint_guess_config(sys.argv[1], output_vae=False, output_clip=False)
lora = comfy.utils.load_torch_file(sys.argv[2], safe_load=True)
patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model.model, {}))
accepted = model.clone().add_patches(patches, 1.0)
modules = {k.rsplit(".", 2)[0] for k in lora if k.endswith(".lora_down.weight")}
sets = [k for k in lora if k.endswith(".set_weight")]
print(json.dumps({"lora_modules": len(modules), "set_weights": len(sets), "keys": len(lora),
                  "patches": len(patches), "accepted": len(accepted), "warnings": warnings}))
'''


def _lora_probe(comfyui, checkpoint: Path, lora: Path) -> dict:
    """LORA_PROBE's report for ``lora`` against ``checkpoint``, run by ComfyUI's interpreter."""
    checkout, python, _ = comfyui
    done = subprocess.run([python, "-c", LORA_PROBE, str(checkpoint), str(lora)],
                          cwd=checkout, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_converted_osediff_lora_loads_in_comfyuis_loraloader_with_every_key(comfyui, server, object_info,
                                                                               base_dir, sd_checkpoint):
    """A file written by ``onestep-sr convert`` from a full OSEDiff-layout pickle (every attention
    projection, conv, feed-forward and conv_in of the synthetic SD1.5 UNet): ComfyUI's load_lora
    turns every LoRA module and both conv_in set_weight keys into a patch the model accepts,
    logging no "lora key not loaded"; through LoraLoader and OneStep SD Upscale (with the _vae
    sibling) it changes the image and nothing is skipped or shape-mismatched in the server log."""
    import numpy as np

    if not (base_dir / "models" / "loras" / CONVERTED_LORA).is_file():
        pytest.skip("the converted OSEDiff LoRA needs diffusers in the test interpreter (pip install -e .[test])")
    probe = _lora_probe(comfyui, sd_checkpoint, base_dir / "models" / "loras" / CONVERTED_LORA)
    print(f"\n[real ComfyUI] converted OSEDiff LoRA: {probe['lora_modules']} LoRA modules + "
          f"{probe['set_weights']} set_weight keys ({probe['keys']} keys) -> {probe['patches']} patches, "
          f"{probe['accepted']} accepted")
    assert probe["lora_modules"] > 50                               # the whole OSEDiff target list, not a sample
    assert probe["patches"] == probe["lora_modules"] + probe["set_weights"] == probe["accepted"]
    assert not [w for w in probe["warnings"] if "lora key not loaded" in w], probe["warnings"][:5]

    workflow = json.loads((ROOT / "example_workflows" / "sd_onestep_upscale.json").read_text())
    prompt = make_cheap(to_api(workflow, object_info))
    lora = next(n for n in prompt.values() if n["class_type"] == "LoraLoader")["inputs"]
    upscale = next(n for n in prompt.values() if n["class_type"] == "OneStepSR_SDUpscale")["inputs"]
    upscale["overlap"] = 8
    upscale["tile"] = 24  # a setting no other test uses: this run is not served from the cache
    results = {}
    for strength, vae_lora in ((0.0, "none"), (1.0, CONVERTED_VAE_LORA)):
        lora.update(lora_name=CONVERTED_LORA, strength_model=strength)
        upscale["vae_lora"] = vae_lora
        log_start = len(server.log.read_text(errors="replace"))
        outputs, seconds = run_workflow(server, prompt)
        (results[vae_lora],) = outputs.values()
        log = server.log.read_text(errors="replace")[log_start:]
        for problem in ("lora key not loaded", "SHAPE MISMATCH", "WEIGHT NOT MERGED", "ERROR"):
            assert problem not in log, log[-4000:]
        print(f"[real ComfyUI] OneStep SD Upscale with the converted LoRA at strength {strength}: {seconds:.1f} s")
    plain, student = results["none"], results[CONVERTED_VAE_LORA]
    assert student.shape == plain.shape and student.std() > 1.0
    assert np.abs(student.astype(int) - plain.astype(int)).mean() > 1.0


def test_the_guidance_widget_equals_the_baked_lora_in_the_stock_loraloader(comfyui, server, object_info, base_dir,
                                                                          sd_checkpoint):
    """ComfyUI's own load_lora maps every key of the baked fixed-w LoRA, the time-embedding bias
    delta (lora_unet_time_embed_0.diff_b) included; OneStep SD Upscale with the w-conditioned file
    and guidance w gives the image of LoraLoader with the file baked at w; guidance 0 is another."""
    import numpy as np

    probe = _lora_probe(comfyui, sd_checkpoint, base_dir / "models" / "loras" / BAKED_LORA)
    print(f"\n[real ComfyUI] baked guided LoRA: {probe['keys']} keys -> {probe['patches']} patches, "
          f"{probe['accepted']} accepted")
    assert probe["patches"] == probe["lora_modules"] + 2 == probe["accepted"]  # + time_embed.0 weight (0) and bias
    assert not [w for w in probe["warnings"] if "lora key not loaded" in w], probe["warnings"][:5]

    workflow = json.loads((ROOT / "example_workflows" / "sd_onestep_upscale.json").read_text())
    prompt = make_cheap(to_api(workflow, object_info))
    lora = next(n for n in prompt.values() if n["class_type"] == "LoraLoader")["inputs"]
    upscale = next(n for n in prompt.values() if n["class_type"] == "OneStepSR_SDUpscale")["inputs"]
    upscale.update(vae_lora="none", tile=40, overlap=8)  # a setting no other test uses (not cached)
    results = {}
    for name, lora_name, strength, guided, w in (("node w3", STUDENT_LORA, 0.0, GUIDED_LORA, BAKED_W),
                                                 ("loraloader w3", BAKED_LORA, 1.0, "none", 0.0),
                                                 ("node w0", STUDENT_LORA, 0.0, GUIDED_LORA, 0.0),
                                                 ("loraloader plain", STUDENT_LORA, 1.0, "none", 0.0)):
        lora.update(lora_name=lora_name, strength_model=strength)
        upscale.update(guided_lora=guided, guidance=w)
        log_start = len(server.log.read_text(errors="replace"))
        outputs, seconds = run_workflow(server, prompt)
        (results[name],) = outputs.values()
        log = server.log.read_text(errors="replace")[log_start:]
        for problem in ("lora key not loaded", "SHAPE MISMATCH", "ERROR"):
            assert problem not in log, log[-4000:]
        print(f"[real ComfyUI] OneStep SD Upscale, {name}: {seconds:.1f} s")
    diff = lambda a, b: np.abs(results[a].astype(int) - results[b].astype(int))  # noqa: E731
    assert diff("node w3", "loraloader w3").max() <= 1
    assert diff("node w0", "loraloader plain").max() <= 1   # w = 0: the plain student
    assert diff("node w3", "node w0").mean() > 0.5


def test_an_engine_error_is_readable_and_comfyui_keeps_running(server, object_info):
    import numpy as np

    workflow = json.loads((ROOT / "example_workflows" / "onestep_upscale.json").read_text())
    prompt = make_cheap(to_api(workflow, object_info))
    upscale = next(n for n in prompt.values() if n["class_type"] == "OneStepSR_Upscale")
    upscale["inputs"]["steps"] = 7  # inside the widget's range, refused by the engine
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and errors[0]["node_type"] == "OneStepSR_Upscale", _failure(entry)
    message = errors[0]["exception_message"]
    assert "steps must be 1" in message and "got 7" in message, message
    assert errors[0]["exception_type"] == "onestep_sr.OptionError", errors[0]["exception_type"]  # not the folder path
    print(f"\n[real ComfyUI] steps=7 refused: {errors[0]['exception_type']}: {message.strip()}")

    upscale["inputs"].update(steps=1, seed=777)  # a new seed: really executed, not served from the cache
    outputs, seconds = run_workflow(server, prompt)
    (image,) = outputs.values()
    assert image.shape == (4 * INPUT_SIZE[1], 4 * INPUT_SIZE[0], 3) and image.std() > 1.0
    assert server.alive()
    print(f"[real ComfyUI] next prompt after the error: success in {seconds:.1f} s")


def test_the_restoration_strength_widgets_and_report(server, object_info, base_dir):
    """OneStep Upscale's auto_strength / strength (issue 28) in a real ComfyUI: listed as optional
    widgets after the old ones, the STRING report after IMAGE; an API graph saved without them
    validates and runs at auto, its /history UI text and (through the core Preview Any node) its
    STRING output say auto's choice; auto off at 0 and 1 gives the engine's images at 0 and 1 (run
    here on the same input); a model with one weight set refuses a manual strength readably."""
    import numpy as np
    from PIL import Image

    from onestep_sr import load_model

    info = object_info["OneStepSR_Upscale"]
    auto_spec, strength_spec = info["input"]["optional"]["auto_strength"], info["input"]["optional"]["strength"]
    assert auto_spec[0] == "BOOLEAN" and auto_spec[1]["default"] is True
    assert strength_spec[0] == "FLOAT" and (strength_spec[1]["min"], strength_spec[1]["max"]) == (0.0, 1.0)
    assert info["output"] == ["IMAGE", "STRING"]
    workflow = json.loads((ROOT / "example_workflows" / "onestep_upscale.json").read_text())
    prompt = make_cheap(to_api(workflow, object_info))
    upscale_id = next(k for k, n in prompt.items() if n["class_type"] == "OneStepSR_Upscale")
    upscale = prompt[upscale_id]["inputs"]
    assert next(n for n in prompt.values() if n["class_type"] == "OneStepSR_LoadModel")["inputs"]["model_name"] \
        == BUNDLED_CHOICE
    for name in ("auto_strength", "strength"):
        del upscale[name]  # an API graph saved before these inputs existed
    upscale["seed"] = 4711  # a setting no other test uses: really executed
    prompt["90"] = {"class_type": "PreviewAny", "inputs": {"source": [upscale_id, 1]}}
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", _failure(entry)
    (text,) = entry["outputs"][upscale_id]["text"]
    assert entry["outputs"]["90"]["text"] == [text]
    source = Image.open(base_dir / "input" / INPUT_IMAGE).convert("RGB")
    engine = load_model("onestep_default", device="cpu", dtype="fp32")
    options = dict(steps=1, seed=4711, tile=upscale["tile"], overlap=upscale["overlap"], color_fix=upscale["color_fix"])
    engine.upscale(source, **options)
    (chosen,) = engine.last_strengths
    assert text == f"restoration strength {chosen:g} (auto)", text
    print(f"\n[real ComfyUI] a graph without the strength inputs: {text}")
    del prompt["90"]
    results = {}
    for value in (0.0, 1.0):
        upscale.update(auto_strength=False, strength=value)
        entry = server.wait(server.queue(prompt))
        assert entry["status"]["status_str"] == "success", _failure(entry)
        (results[value],) = _outputs(server, prompt, entry).values()
        expected = np.asarray(engine.upscale(source, strength=value, **options))
        difference = np.abs(results[value].astype(int) - expected.astype(int)).max()
        print(f"[real ComfyUI] strength {value:g}: max difference to the engine {difference}")
        assert difference <= 1
        assert entry["outputs"][upscale_id]["text"] == [f"restoration strength {value:g}"]
    assert np.abs(results[0.0].astype(int) - results[1.0].astype(int)).mean() > 0.5
    next(n for n in prompt.values() if n["class_type"] == "OneStepSR_LoadModel")["inputs"]["model_name"] = MODEL_CHOICE
    upscale.update(strength=0.3)
    entry = server.wait(server.queue(prompt))
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert entry["status"]["status_str"] == "error" and errors, _failure(entry)
    assert errors[0]["exception_type"] == "onestep_sr.OptionError", errors[0]
    assert "has one weight set: turn auto_strength on" in errors[0]["exception_message"], errors[0]
    print(f"[real ComfyUI] strength 0.3 with {MODEL_CHOICE}: {errors[0]['exception_message'].strip()}")


def test_cancel_stops_a_long_upscale(server, object_info, base_dir):
    """POST /interrupt (ComfyUI's Cancel) while OneStep Upscale runs many tiles x 15 steps: the
    prompt ends as interrupted, not as a success, and ComfyUI takes the next prompt."""
    _input_image(base_dir / "input" / "onestep_test_big.png", size=(384, 256))
    workflow = json.loads((ROOT / "example_workflows" / "onestep_upscale.json").read_text())
    prompt = make_cheap(to_api(workflow, object_info))
    next(n for n in prompt.values() if n["class_type"] == "LoadImage")["inputs"]["image"] = "onestep_test_big.png"
    upscale = next(n for n in prompt.values() if n["class_type"] == "OneStepSR_Upscale")
    upscale["inputs"].update(steps=15, tile=64, overlap=16, seed=4242)
    loader = next(n for n in prompt.values() if n["class_type"] == "OneStepSR_LoadModel")
    loader["inputs"]["model_name"] = MODEL_CHOICE  # a 15-step schedule (the bundled model has 4)
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 120
    while not server.request("/queue")["queue_running"]:
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    time.sleep(8.0)  # inside the 15 denoiser passes (the whole run takes ~100 s on 2 CPU cores)
    interrupted_at = time.perf_counter()
    server.request("/interrupt", {})
    entry = server.wait(prompt_id)
    seconds = time.perf_counter() - interrupted_at
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, _failure(entry)
    assert not entry["outputs"]
    print(f"\n[real ComfyUI] cancel during a 384x256 x4 15-step upscale: ended {seconds:.2f} s after POST /interrupt")
    upscale["inputs"].update(steps=1, seed=4243)
    next(n for n in prompt.values() if n["class_type"] == "LoadImage")["inputs"]["image"] = INPUT_IMAGE
    run_workflow(server, prompt)
