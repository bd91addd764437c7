"""OSEDiff's released LoRA weights (``osediff.pkl``) as kohya-format LoRA files.

OSEDiff (cswry/OSEDiff) ships ``osediff.pkl``: a ``torch.save`` of a dict with

* ``rank_unet``, ``rank_vae``: the LoRA ranks (4);
* ``unet_lora_encoder_modules`` / ``unet_lora_decoder_modules`` / ``unet_lora_others_modules``:
  diffusers module names of the three UNet adapters (``default_encoder``: ``down_blocks`` and
  ``conv_in``; ``default_decoder``: ``up_blocks`` and ``conv_out``; ``default_others``: the mid
  block), ``vae_lora_encoder_modules``: the VAE-encoder adapter's modules (``default_encoder``);
* ``state_dict_unet``: PEFT parameter names with the adapter name inside
  (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default_encoder.weight``)
  plus the fully trained ``conv_in`` (``conv_in.base_layer.weight``/``.bias`` when PEFT wraps it, or
  ``conv_in.weight``/``.bias``); ``state_dict_vae``: the VAE-encoder LoRA, PEFT names.

PEFT's ``LoraConfig(r=rank)`` leaves ``lora_alpha`` at its default 8, so each LoRA adds
``8 / rank * B @ A`` to its weight. ComfyUI and A1111 cannot load these names (ComfyUI loads
nothing of them), so :func:`osediff_to_kohya` rewrites them.

Output format (written by ``onestep-sr convert osediff.pkl NAME.safetensors``)
------------------------------------------------------------------------------
``NAME.safetensors`` -- the UNet, for ComfyUI's LoraLoader / LoraLoaderModelOnly and A1111:

* every UNet LoRA module as kohya keys on the diffusers module name with dots turned into
  underscores (the names ComfyUI's ``model_lora_keys_unet`` and A1111 map):
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` (= A),
  ``...lora_up.weight`` (= B) and ``....alpha`` (a 0-dim float32 tensor, 8.0 by default; loaders
  scale by ``alpha / rank``). Conv LoRAs keep their conv shapes (down ``r x in x k x k``, up
  ``out x r x 1 x 1``, the LoCon layout).
* ``conv_in``, trained in full, as ``diffusion_model.input_blocks.0.0.set_weight`` and
  ``diffusion_model.input_blocks.0.0.bias.set_weight`` (its own LoRA folded in:
  ``W + alpha/rank * B @ A``). ``set_weight`` was chosen over ``.diff``: a difference needs the
  SD 2.1 base weights at conversion time, which the ``.pkl`` does not carry, while
  ``set_weight`` is exact with nothing else. ComfyUI maps ``diffusion_model.<ldm name>`` for the
  weight and ``diffusion_model.<ldm name>.bias`` for the bias (its generic keys) and applies a
  ``set`` patch regardless of the LoRA strength, so the strength scales the LoRAs only. A1111's
  Lora extension has no ``set_weight``: there ``conv_in`` stays the base model's (a warning).

``NAME_vae.safetensors`` -- the VAE-encoder LoRA, in a sibling file so that the UNet file has no
key a UNet loader would report as "not loaded": keys on the LDM (ComfyUI ``first_stage_model`` /
A1111) module names, ``encoder.mid.attn_1.q.lora_down.weight``, ``encoder.down.0.block.0.conv1.
lora_up.weight``, ``quant_conv.alpha`` ... With ComfyUI it goes through the VAE patcher:
``key_map = {k[:-7]: k for k in vae.first_stage_model.state_dict() if k.endswith(".weight")}``,
``comfy.lora.load_lora(vae_lora, key_map)``. The attention projections, ``Linear`` in diffusers,
are stored with the 1x1-conv shapes of the LDM ``q/k/v/proj_out`` convolutions.

Both files carry the same header metadata (source file, ranks, alpha, module counts, format) plus
``onestep_sr_part`` (``unet`` / ``vae``).

The key names and the reference merge that applies such files are in ``onestep_sr.sd.kohya_lora``.
Only torch and safetensors are used here: diffusers and peft are never imported.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..checkpoint import read_pickle, write_safetensors_atomic
from .kohya_lora import (CONV_IN_LDM, FORMAT, LoraFormatError, _listing, kohya_unet_name, lora_delta,
                         vae_diffusers_to_ldm)

DEFAULT_ALPHA = 8.0  # PEFT LoraConfig's default lora_alpha, which OSEDiff leaves unchanged
UNET_GROUPS = ("unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules")
VAE_GROUP = "vae_lora_encoder_modules"
OSEDIFF_KEYS = (*UNET_GROUPS, VAE_GROUP, "rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")
_LORA_PARAM = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


# ---------------------------------------------------------------------------------------------
# reading OSEDiff's checkpoint


@dataclass
class OSEDiffCheckpoint:
    """The parsed content of an OSEDiff ``.pkl`` (module lists de-duplicated, order kept)."""
    source: str
    rank_unet: int
    rank_vae: int
    unet_modules: dict[str, list[str]]  # group key (``unet_lora_encoder_modules`` ...) -> names
    vae_modules: list[str]
    state_dict_unet: dict[str, torch.Tensor]
    state_dict_vae: dict[str, torch.Tensor]
    extra_keys: list[str] = field(default_factory=list)  # top-level keys besides OSEDIFF_KEYS


def _load_pickle(path: Path) -> Any:
    if not path.is_file():
        raise LoraFormatError(f"checkpoint not found: {path}")
    return read_pickle(path, error=LoraFormatError)


def looks_like_osediff(obj: Any) -> bool:
    """Whether a loaded object has OSEDiff's layout (its ``state_dict_unet`` and ``rank_unet``)."""
    return isinstance(obj, Mapping) and "state_dict_unet" in obj and "rank_unet" in obj


def is_osediff_file(path: str | os.PathLike) -> bool:
    """True when ``path`` loads (weights only) as an OSEDiff checkpoint; False on any failure."""
    try:
        return looks_like_osediff(_load_pickle(Path(path)))
    except LoraFormatError:
        return False


def _rank(obj: Mapping, key: str, source: str) -> int:
    value = obj[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoraFormatError(f"{source}: key {key!r} must be a positive integer rank, found {value!r}")
    return value


def _names(obj: Mapping, key: str, source: str) -> list[str]:
    value = obj[key]
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise LoraFormatError(f"{source}: key {key!r} must be a list of module names, "
                              f"found {type(value).__name__}")
    return list(dict.fromkeys(value))


def _tensors(obj: Mapping, key: str, source: str) -> dict[str, torch.Tensor]:
    value = obj[key]
    if not isinstance(value, Mapping):
        raise LoraFormatError(f"{source}: key {key!r} must be a state dict, found {type(value).__name__}")
    for name, tensor in value.items():
        if not isinstance(tensor, torch.Tensor):
            raise LoraFormatError(f"{source}: {key}[{name!r}] is a {type(tensor).__name__}, not a tensor")
    return {str(k): v for k, v in value.items()}


def parse_osediff(obj: Any, source: str = "checkpoint") -> OSEDiffCheckpoint:
    """Check the layout of a loaded OSEDiff dict (not yet the tensors) and return it parsed."""
    if not isinstance(obj, Mapping):
        raise LoraFormatError(f"{source} is not an OSEDiff checkpoint: it holds a {type(obj).__name__}, "
                              f"not a dict with the keys {', '.join(OSEDIFF_KEYS)}")
    missing = [k for k in OSEDIFF_KEYS if k not in obj]
    if len(missing) == len(OSEDIFF_KEYS):
        shown = _listing([str(k) for k in list(obj)])
        raise LoraFormatError(f"{source} is not an OSEDiff checkpoint: none of the keys "
                              f"{', '.join(OSEDIFF_KEYS)} is there (found {shown or 'an empty dict'})")
    if missing:
        raise LoraFormatError(f"{source}: OSEDiff checkpoint key(s) missing: {_listing(missing)}")
    return OSEDiffCheckpoint(
        source=source,
        rank_unet=_rank(obj, "rank_unet", source),
        rank_vae=_rank(obj, "rank_vae", source),
        unet_modules={g: _names(obj, g, source) for g in UNET_GROUPS},
        vae_modules=_names(obj, VAE_GROUP, source),
        state_dict_unet=_tensors(obj, "state_dict_unet", source),
        state_dict_vae=_tensors(obj, "state_dict_vae", source),
        extra_keys=[str(k) for k in obj if k not in OSEDIFF_KEYS],
    )


def read_osediff(path: str | os.PathLike) -> OSEDiffCheckpoint:
    """Load ``osediff.pkl`` with ``torch.load(weights_only=True)`` and check its layout."""
    path = Path(path)
    return parse_osediff(_load_pickle(path), source=str(path))



# ---------------------------------------------------------------------------------------------
# OSEDiff -> kohya


@dataclass
class _Pair:
    down: torch.Tensor  # PEFT lora_A
    up: torch.Tensor    # PEFT lora_B
    adapter: str


def _lora_pairs(state: Mapping[str, torch.Tensor], modules: list[str], rank: int, what: str,
                source: str, full: set[str]) -> dict[str, _Pair]:
    """module -> (A, B) for every listed module, checked: every key used, both halves there, ranks
    and shapes consistent. ``full``: non-LoRA keys that are allowed (and handled by the caller)."""
    found: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    unexpected = []
    for key, tensor in state.items():
        m = _LORA_PARAM.match(key)
        if m is None:
            if key not in full:
                unexpected.append(key)
            continue
        found.setdefault(m["module"], {}).setdefault(m["adapter"], {})[m["ab"]] = tensor
    if unexpected:
        raise LoraFormatError(f"{source}: unexpected key(s) in the {what} state dict (neither a PEFT LoRA "
                              f"'<module>.lora_A|B.<adapter>.weight' nor a known full weight): {_listing(unexpected)}")
    unlisted = [m for m in found if m not in set(modules)]
    if unlisted:
        raise LoraFormatError(f"{source}: the {what} state dict has LoRA weights for module(s) that no "
                              f"module list names: {_listing(unlisted)}")
    pairs: dict[str, _Pair] = {}
    for module in modules:
        adapters = found.get(module)
        if not adapters:
            raise LoraFormatError(f"{source}: key '{module}.lora_A.<adapter>.weight' is missing "
                                  f"(module {module!r} is listed for the {what} LoRA)")
        if len(adapters) > 1:
            raise LoraFormatError(f"{source}: module {module!r} has LoRA weights for several adapters: "
                                  f"{_listing(sorted(adapters))}")
        (adapter, halves), = adapters.items()
        for ab in "AB":
            if ab not in halves:
                raise LoraFormatError(f"{source}: key '{module}.lora_{ab}.{adapter}.weight' is missing")
        a, b = halves["A"], halves["B"]
        key_a, key_b = f"{module}.lora_A.{adapter}.weight", f"{module}.lora_B.{adapter}.weight"
        if a.dim() not in (2, 4) or b.dim() != a.dim():
            raise LoraFormatError(f"{source}: key {key_a!r} / {key_b!r} have shapes {list(a.shape)} / "
                                  f"{list(b.shape)}; expected 2-D (linear) or 4-D (conv) LoRA factors")
        if a.shape[0] != rank:
            raise LoraFormatError(f"{source}: key {key_a!r} has rank {a.shape[0]} (shape {list(a.shape)}) but the "
                                  f"checkpoint's {what} rank is {rank}")
        if b.shape[1] != rank or (b.dim() == 4 and tuple(b.shape[2:]) != (1, 1)):
            raise LoraFormatError(f"{source}: key {key_b!r} has shape {list(b.shape)}; expected "
                                  f"[out, {rank}{', 1, 1' if b.dim() == 4 else ''}] for rank {rank}")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise LoraFormatError(f"{source}: key {key_a!r} / {key_b!r} are not floating point tensors")
        pairs[module] = _Pair(a, b, adapter)
    return pairs


def _out(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    return tensor.to(dtype or tensor.dtype).contiguous().clone()


def _alpha(alpha: float) -> torch.Tensor:
    return torch.tensor(float(alpha), dtype=torch.float32)


def osediff_to_kohya(ckpt: OSEDiffCheckpoint | Mapping, alpha: float = DEFAULT_ALPHA,
                     dtype: Optional[torch.dtype] = None,
                     conv_in_base: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(UNet kohya state dict, VAE-encoder LoRA state dict, header metadata); see the module
    docstring for the key format. ``alpha``: the PEFT ``lora_alpha`` OSEDiff trained with (8).
    ``dtype``: cast the written tensors (``None`` keeps the source dtype; ``.alpha`` is float32).
    ``conv_in_base``: the base model's conv_in (weight, bias); when known, conv_in is written as
    its difference to them, ``lora_unet_conv_in.diff`` / ``.diff_b`` (the "full" network keys that
    both ComfyUI and A1111's Lora extension apply), instead of ``set_weight`` (ComfyUI only)."""
    if not isinstance(ckpt, OSEDiffCheckpoint):
        ckpt = parse_osediff(ckpt)
    source = ckpt.source
    if not alpha > 0:
        raise LoraFormatError(f"lora alpha must be positive, got {alpha}")

    # ---- UNet
    state = ckpt.state_dict_unet
    conv_in_w = next((k for k in ("conv_in.base_layer.weight", "conv_in.weight") if k in state), None)
    conv_in_b = next((k for k in ("conv_in.base_layer.bias", "conv_in.bias") if k in state), None)
    if conv_in_w is None:
        raise LoraFormatError(f"{source}: key 'conv_in.base_layer.weight' (or 'conv_in.weight') is missing: "
                              "OSEDiff trains conv_in in full and saves it in state_dict_unet")
    listed = [m for g in UNET_GROUPS for m in ckpt.unet_modules[g]]
    duplicates = sorted({m for m in listed if listed.count(m) > 1})
    if duplicates:
        raise LoraFormatError(f"{source}: module(s) listed in more than one UNet adapter: {_listing(duplicates)}")
    pairs = _lora_pairs(state, listed, ckpt.rank_unet, "UNet", source,
                        full={k for k in (conv_in_w, conv_in_b) if k})
    scale = alpha / ckpt.rank_unet
    unet_sd: dict[str, torch.Tensor] = {}
    weight = state[conv_in_w]
    if weight.dim() != 4 or not weight.is_floating_point():
        raise LoraFormatError(f"{source}: key {conv_in_w!r} has shape {list(weight.shape)}; expected a conv weight")
    if "conv_in" in pairs:  # fold conv_in's own LoRA into the full weight: one `set` patch per key
        p = pairs.pop("conv_in")
        try:
            weight = (weight.to(torch.float32) + lora_delta(p.down, p.up, weight.shape, scale)).to(weight.dtype)
        except ValueError as exc:
            raise LoraFormatError(f"{source}: conv_in LoRA: {exc}") from exc
    bias = state[conv_in_b] if conv_in_b is not None else None
    if bias is not None and list(bias.shape) != [weight.shape[0]]:
        raise LoraFormatError(f"{source}: key {conv_in_b!r} has shape {list(bias.shape)}; expected "
                              f"[{weight.shape[0]}]")
    if conv_in_base is None:
        unet_sd[f"{CONV_IN_LDM}.set_weight"] = _out(weight, dtype)
        if bias is not None:
            unet_sd[f"{CONV_IN_LDM}.bias.set_weight"] = _out(bias, dtype)
    else:
        base_w, base_b = conv_in_base
        if base_w.shape != weight.shape or (bias is not None and (base_b is None or base_b.shape != bias.shape)):
            raise LoraFormatError(f"{source}: the base conv_in {list(base_w.shape)} does not match the trained one "
                                  f"{list(weight.shape)}")
        name = kohya_unet_name("conv_in")
        unet_sd[f"{name}.diff"] = _out(weight.float() - base_w.float(), dtype or weight.dtype)
        if bias is not None:
            unet_sd[f"{name}.diff_b"] = _out(bias.float() - base_b.float(), dtype or bias.dtype)
    for module, p in pairs.items():
        name = kohya_unet_name(module)
        unet_sd[f"{name}.lora_down.weight"] = _out(p.down, dtype)
        unet_sd[f"{name}.lora_up.weight"] = _out(p.up, dtype)
        unet_sd[f"{name}.alpha"] = _alpha(alpha)

    # ---- VAE encoder
    vae_sd: dict[str, torch.Tensor] = {}
    vae_pairs = _lora_pairs(ckpt.state_dict_vae, ckpt.vae_modules, ckpt.rank_vae, "VAE", source, full=set())
    unmapped = [m for m in vae_pairs if vae_diffusers_to_ldm(m) is None]
    if unmapped:
        raise LoraFormatError(f"{source}: VAE LoRA module(s) outside the encoder / quant_conv, which this "
                              f"converter cannot name in the LDM layout: {_listing(unmapped)}")
    for module, p in vae_pairs.items():
        name = vae_diffusers_to_ldm(module)
        down, up = p.down, p.up
        if ".mid.attn_1." in name and down.dim() == 2:  # LDM q/k/v/proj_out are 1x1 convolutions
            down, up = down[:, :, None, None], up[:, :, None, None]
        vae_sd[f"{name}.lora_down.weight"] = _out(down, dtype)
        vae_sd[f"{name}.lora_up.weight"] = _out(up, dtype)
        vae_sd[f"{name}.alpha"] = _alpha(alpha)

    counts = {g.split("_")[2]: len(ckpt.unet_modules[g]) for g in UNET_GROUPS}
    metadata = {
        "format": FORMAT,
        "converted_from": "OSEDiff",
        "source": Path(source).name,
        "base_model": "stabilityai/stable-diffusion-2-1-base",
        "rank_unet": str(ckpt.rank_unet),
        "rank_vae": str(ckpt.rank_vae),
        "alpha": f"{float(alpha):g}",
        "unet_lora_modules": str(len(pairs)),
        "unet_adapters": ", ".join(f"default_{k}: {v}" for k, v in counts.items()),
        "conv_in": (f"full weight as {CONV_IN_LDM}.set_weight / .bias.set_weight" if conv_in_base is None
                    else "difference to the base model as lora_unet_conv_in.diff / .diff_b")
                   + (" (its LoRA folded in)" if "conv_in" in listed else ""),
        "vae_lora_modules": str(len(vae_pairs)),
        "vae_keys": "LDM first_stage_model names (encoder.*, quant_conv)",
        # kohya's own header fields, which A1111 and LoRA managers display
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ckpt.rank_unet),
        "ss_network_alpha": f"{float(alpha):g}",
        "ss_v2": "True",
    }
    if ckpt.extra_keys:  # top-level entries besides OSEDiff's (not converted): say so in the header
        metadata["ignored_source_keys"] = ", ".join(ckpt.extra_keys)
    return unet_sd, vae_sd, metadata


def vae_sibling_path(dst: str | os.PathLike) -> Path:
    """``out/osediff_lora.safetensors`` -> ``out/osediff_lora_vae.safetensors``."""
    dst = Path(dst)
    return dst.with_name(f"{dst.stem}_vae{dst.suffix}")


def write_kohya_files(unet_sd: dict[str, torch.Tensor], vae_sd: dict[str, torch.Tensor],
                      metadata: dict[str, str], dst: str | os.PathLike) -> list[Path]:
    """Write ``dst`` and (if there is a VAE LoRA) its ``_vae`` sibling, each atomically, and the pair
    as a unit: the VAE file is staged under a hidden name first and renamed into place only after
    the UNet file is written, so a failure leaves neither new file. Returns the paths written."""
    dst = Path(dst)
    if not vae_sd:
        write_safetensors_atomic(unet_sd, {**metadata, "onestep_sr_part": "unet"}, dst)
        return [dst]
    vae_dst = vae_sibling_path(dst)
    staged = vae_dst.with_name(f".{vae_dst.name}.{uuid.uuid4().hex[:12]}.staged")
    try:
        write_safetensors_atomic(vae_sd, {**metadata, "onestep_sr_part": "vae", "unet_file": dst.name}, staged)
        write_safetensors_atomic(unet_sd, {**metadata, "onestep_sr_part": "unet", "vae_file": vae_dst.name}, dst)
        try:
            os.replace(staged, vae_dst)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
    return [dst, vae_dst]


@dataclass
class ConversionSummary:
    paths: list[Path]
    unet_modules: int
    vae_modules: int
    rank_unet: int
    rank_vae: int
    alpha: float
    tensors: int


def convert_osediff(src: str | os.PathLike, dst: str | os.PathLike, alpha: float = DEFAULT_ALPHA,
                    dtype: Optional[torch.dtype] = None, base: str | os.PathLike | None = None) -> ConversionSummary:
    """``read_osediff`` + ``osediff_to_kohya`` + ``write_kohya_files``. ``base``: the SD checkpoint
    the LoRA was trained on (file or diffusers folder); conv_in is then written as its difference."""
    ckpt = read_osediff(src)
    conv_in_base = None
    if base is not None:
        from .checkpoint import read_conv_in

        conv_in_base = read_conv_in(base)
    unet_sd, vae_sd, metadata = osediff_to_kohya(ckpt, alpha=alpha, dtype=dtype, conv_in_base=conv_in_base)
    if base is not None:
        metadata["conv_in_base"] = Path(base).name
    paths = write_kohya_files(unet_sd, vae_sd, metadata, dst)
    return ConversionSummary(paths, int(metadata["unet_lora_modules"]), int(metadata["vae_lora_modules"]),
                             ckpt.rank_unet, ckpt.rank_vae, alpha, len(unet_sd) + len(vae_sd))
