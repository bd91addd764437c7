"""A real AUTOMATIC1111 / Forge webui started API-only on a free loopback port with a throw-away
``--data-dir`` holding this checkout as an extension (tests/test_a1111_real.py,
benchmarks/bench_a1111.py). Downloads are off (``ONESTEP_SR_OFFLINE``); nothing in the webui
checkout is modified."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, PngImagePlugin

from ldm_random import RANDOM_LDM_STATE

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 420
LAUNCH_FLAGS = ["--nowebui", "--api", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-download-sd-model",
                "--skip-prepare-environment", "--skip-install", "--no-half", "--api-server-stop",
                "--skip-load-model-at-start"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebUI:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log
        self.startup = 0.0

    def call(self, path: str, payload: Any = None, timeout: float = 600) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, body.decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def prepare_data_dir(data: Path) -> Path:
    """``data/extensions/onestep-sr`` -> this checkout, the Extras result cache off (so every
    request runs the upscaler), ``data/models`` for the caller's models."""
    (data / "extensions").mkdir(parents=True, exist_ok=True)
    (data / "extensions" / "onestep-sr").symlink_to(ROOT, target_is_directory=True)
    (data / "models" / "OneStepSR").mkdir(parents=True, exist_ok=True)
    (data / "config.json").write_text(json.dumps({"upscaling_max_images_in_cache": 0}))
    return data


@contextlib.contextmanager
def start_webui(checkout: str, python: str, data_dir: Path, flags: list[str] = (),
                env: dict[str, str] | None = None) -> Iterator[WebUI]:
    """The webui in ``checkout`` run by ``python``, ready (``/sdapi/v1/upscalers`` answers); killed
    with ``/sdapi/v1/server-kill`` at the end. Its output goes to ``data_dir/webui.log``."""
    port = _free_port()
    log = data_dir / "webui.log"
    command = [python, "launch.py", *LAUNCH_FLAGS, "--server-name", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), *flags]
    environment = {**os.environ, "ONESTEP_SR_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    environment.pop("PYTHONPATH", None)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, env=environment)
    server = WebUI(f"http://127.0.0.1:{port}", process, log)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the webui exited with {process.returncode}:\n{server.log_tail()}")
            if time.perf_counter() - started > START_TIMEOUT:
                raise RuntimeError(f"the webui did not answer in {START_TIMEOUT} s:\n{server.log_tail()}")
            try:
                if server.call("/sdapi/v1/upscalers", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        server.startup = time.perf_counter() - started
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.call("/sdapi/v1/server-kill", {}, timeout=5)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png_base64(image: Image.Image) -> str:
    """Base64 PNG with a 'parameters' text chunk (Forge reads pixel-hidden infotext, slowly,
    from PNGs without one)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "onestep-sr test image")
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_image(text: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(text.split(",", 1)[-1]))).convert("RGB")




# --- an SD 1.5 checkpoint, the CLIP tokenizer and a Lora probe for the real webui (offline) ---------
#
# A1111 builds an SD 1.5 model from its configs/v1-inference.yaml (the full-size UNet) and asks
# transformers for the tokenizer and text-model config of "openai/clip-vit-large-patch14". Both come
# from a Hugging Face cache made here (``clip_l_cache``, pointed at with HF_HOME and the offline
# switches): the CLIP-L text config and a small byte-level BPE vocabulary (the 256 byte symbols,
# each also with the end-of-word mark, and CLIP's two special tokens at their real ids), generated
# by code. The checkpoint (``SD15_GENERATOR``) has random weights in the original LDM key layout,
# its shapes read from the webui's own classes.

CLIP_REPO = "openai/clip-vit-large-patch14"
CLIP_L_TEXT = {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"], "vocab_size": 49408,
               "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
               "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "initializer_range": 0.02,
               "initializer_factor": 1.0, "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407}


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what CLIP's byte-level BPE works on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_l_cache(hf_home: Path) -> Path:
    """A Hugging Face cache under ``hf_home`` holding ``openai/clip-vit-large-patch14`` as far as an
    SD 1.5 webui reads it offline: the text config and a CLIPTokenizer (vocab.json, merges.txt).
    Returns the snapshot folder."""
    repo = hf_home / "hub" / ("models--" + CLIP_REPO.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    (snapshot / "vocab.json").write_text(json.dumps(vocab))
    (snapshot / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (snapshot / "special_tokens_map.json").write_text(json.dumps(special))
    (snapshot / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
         "errors": "replace", "add_prefix_space": False}))
    (snapshot / "config.json").write_text(json.dumps(CLIP_L_TEXT))
    return snapshot


def offline_hf_env(hf_home: Path) -> dict[str, str]:
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


# Run by the webui's interpreter in the webui checkout: argv = target, seed, CLIP text config (JSON
# file). Shapes from the webui's LDM classes built on the meta device with configs/v1-inference.yaml
# and from transformers' CLIPTextModel; 1-D weights 1, biases 0, embeddings N(0, 0.02), other
# weights N(0, 1/fan_in); fp16 (position ids int64), safetensors.
SD15_GENERATOR = RANDOM_LDM_STATE + r'''
import json, math, os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "repositories", "stable-diffusion-stability-ai"))
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel
from ldm.models.autoencoder import AutoencoderKL
from ldm.modules.diffusionmodules.openaimodel import UNetModel

target, seed, text_config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
params = OmegaConf.load(os.path.join("configs", "v1-inference.yaml")).model.params
with torch.device("meta"):
    unet = UNetModel(**OmegaConf.to_container(params.unet_config.params))
    vae = AutoencoderKL(**OmegaConf.to_container(params.first_stage_config.params))
    with open(text_config) as f:
        clip = CLIPTextModel(CLIPTextConfig(**json.load(f)))
generator = torch.Generator().manual_seed(seed)
state = random_ldm_state((("model.diffusion_model.", unet), ("first_stage_model.", vae),
                          ("cond_stage_model.transformer.", clip)), generator)
save_file(state, target)
print(len(state), "tensors,", sum(t.numel() for t in state.values()), "parameters")
'''


def make_sd15_checkpoint(checkout: str, python: str, target: Path, hf_home: Path, seed: int = 20240601) -> str:
    """Write the random SD 1.5 checkpoint with the webui's interpreter; returns its summary line."""
    text_config = clip_l_cache(hf_home) / "config.json"
    script = target.with_suffix(".make.py")
    script.write_text(SD15_GENERATOR)
    done = subprocess.run([python, str(script), str(target), str(seed), str(text_config)], cwd=checkout,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **offline_hf_env(hf_home)})
    if done.returncode != 0 or not target.is_file():
        raise RuntimeError(f"SD 1.5 checkpoint generation failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


# A throw-away extension for the webui under test: GET /onestep-probe/lora?name=NAME loads the
# network file with the Lora extension's own ``networks.load_network`` (its debug log captured:
# that is where A1111 1.10 reports "didn't match keys") and reports, for the copy the last
# generation used (``networks.loaded_networks``), whether each module's layer carries it
# (``network_current_names``) and how far the layer moved from its backup. For ``.diff``
# modules it compares the change with the file's difference.
LORA_PROBE = r'''
import logging
from collections import Counter

import torch
from modules import script_callbacks


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _max(a, b):
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def lora_report(name: str):
    import networks
    from safetensors import safe_open

    networks.list_available_networks()
    on_disk = networks.available_networks.get(name)
    if on_disk is None:
        return {"error": f"no network {name!r}", "available": sorted(networks.available_networks)}
    with safe_open(on_disk.filename, "pt") as f:
        file = {k: f.get_tensor(k) for k in f.keys()}
    root, capture = logging.getLogger(), _Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        net = networks.load_network(name, on_disk)
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
    prefixes = sorted({k.partition(".")[0] for k in file})
    covered = {m.network_key.partition(".")[0] for m in net.modules.values()}
    report = {
        "file": on_disk.filename, "alias": on_disk.alias, "sd_version": str(on_disk.sd_version),
        "file_keys": len(file), "file_modules": len(prefixes), "modules": len(net.modules),
        "module_types": dict(Counter(type(m).__name__ for m in net.modules.values())),
        "covered_modules": len(covered),
        "uncovered": [p for p in prefixes if p not in covered][:20],
        "didnt_match": sum(m.count("': '") for m in capture.messages if "didn't match keys" in m),
        "didnt_match_log": [m[:300] for m in capture.messages if "didn't match keys" in m],
        "loaded_networks": [n.name for n in networks.loaded_networks],
        "errors": dict(getattr(networks.extra_network_lora, "errors", {}) or {}),
    }
    active = next((n for n in networks.loaded_networks if n.name == name), None)
    if active is not None:
        wanted = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in networks.loaded_networks)
        carried, moved, full, lora_error, lora_delta = 0, 0, {}, 0.0, 0.0
        for key, module in active.modules.items():
            layer = module.sd_module
            backup = getattr(layer, "network_weights_backup", None)
            carried += getattr(layer, "network_current_names", ()) == wanted
            moved += backup is not None and _max(layer.weight, backup) > 0
            prefix = module.network_key.partition(".")[0]
            if type(module).__name__ == "NetworkModuleLora" and backup is not None:
                # the kohya formula, from the file: alpha / rank * up @ down, in the layer's shape
                up, down = file[prefix + ".lora_up.weight"].float(), file[prefix + ".lora_down.weight"].float()
                expected = (float(file[prefix + ".alpha"]) / down.shape[0] * up.flatten(1) @ down.flatten(1))
                change = layer.weight.detach().float().cpu() - backup.float().cpu()
                lora_error = max(lora_error, _max(change, expected.reshape(change.shape)))
                lora_delta = max(lora_delta, float(expected.abs().max()))
            if type(module).__name__ == "NetworkModuleFull":
                bias_backup = getattr(layer, "network_bias_backup", None)
                change = layer.weight - backup.to(layer.weight.device)
                full[key] = {
                    "weight_change_vs_diff": _max(change, file[prefix + ".diff"]),
                    "max_diff": float(file[prefix + ".diff"].abs().max()),
                    "bias_change_vs_diff_b": None if prefix + ".diff_b" not in file or bias_backup is None else
                        _max(layer.bias - bias_backup.to(layer.bias.device), file[prefix + ".diff_b"])}
        report |= {"applied_modules": carried, "moved_layers": moved, "full": full,
                   "lora_change_vs_file": lora_error, "lora_max_delta": lora_delta,
                   "unet_multiplier": active.unet_multiplier}
    return report


def _on_app_started(_demo, app):
    app.add_api_route("/onestep-probe/lora", lora_report, methods=["GET"])


script_callbacks.on_app_started(_on_app_started)
'''


def install_lora_probe(data: Path) -> Path:
    folder = data / "extensions" / "onestep-sr-lora-probe" / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "onestep_lora_probe.py").write_text(LORA_PROBE)
    return folder.parent
