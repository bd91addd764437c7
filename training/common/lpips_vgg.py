"""LPIPS-VGG (Zhang et al. 2018) from weight files the user supplies; no torchvision, no download.

Network: VGG16's convolutional trunk (torchvision's ``features`` indices: 3x3 convs at 0, 2, 5, 7,
10, 12, 14, 17, 19, 21, 24, 26, 28, each followed by ReLU, max-pools at 4, 9, 16, 23), tapped after
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 (indices 3, 8, 15, 22, 29). Input in [-1, 1], first
shifted / scaled per channel (shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450). Each tap is
normalised to unit length over channels; the squared differences are weighted per channel by the
LPIPS linear layers (1x1, no bias), summed over channels, averaged over pixels, summed over taps.

Weights (``--lpips-weights FILE[,FILE]``, safetensors or ``.pth`` read with ``weights_only=True``):
the VGG16 trunk as ``features.N.weight/bias`` (torchvision's ImageNet ``vgg16-397923af.pth``) or
``net.sliceK.N.*`` (a saved ``lpips.LPIPS`` state dict), and the linear layers as
``linK.model.1.weight`` (LPIPS' ``weights/v0.1/vgg.pth``). Both can be in one file or two.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .perceptual import normalise_channels

CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
         17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}
POOLS = (4, 9, 16, 23)
TAPS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
WHERE = ("LPIPS-VGG needs --lpips-weights with the VGG16 trunk (torchvision's ImageNet "
         "vgg16-397923af.pth, https://download.pytorch.org/models/vgg16-397923af.pth) and the LPIPS linear "
         "layers (weights/v0.1/vgg.pth of github.com/richzhang/PerceptualSimilarity), comma-separated; "
         "--perceptual vae and --perceptual none work offline without them")


class LPIPSVGG(nn.Module):
    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(TAPS[-1] + 1):
            if i in CONVS:
                layers.append(nn.Conv2d(*CONVS[i], kernel_size=3, padding=1))
            elif i in POOLS:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = (x - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample LPIPS distance of images in [-1, 1]."""
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for lin, fx, fy in zip(self.lins, self.taps(x.float()), self.taps(y.float())):
            diff = (normalise_channels(fx) - normalise_channels(fy)) ** 2
            total = total + lin(diff).flatten(1).mean(dim=1)
        return total


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else {}


def _rename(key: str) -> str | None:
    if key.startswith("features."):
        return key
    m = re.match(r"^net\.slice\d\.(\d+)\.(weight|bias)$", key)
    if m:
        return f"features.{m[1]}.{m[2]}"
    m = re.match(r"^lin(\d)\.model\.1\.weight$", key)
    if m:
        return f"lins.{m[1]}.weight"
    return None


def load_lpips(spec: str | None) -> LPIPSVGG:
    """``spec``: one path or two comma-separated paths (see the module docstring)."""
    if not spec:
        raise ValueError(WHERE)
    state: dict[str, torch.Tensor] = {}
    for part in str(spec).split(","):
        path = Path(part.strip())
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights file not found: {path}. {WHERE}")
        for key, value in _read(path).items():
            name = _rename(key)
            if name is not None:
                state[name] = value.float()
    net = LPIPSVGG()
    expected = {k for k in net.state_dict() if k not in ("shift", "scale")}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"{spec}: the LPIPS-VGG weights are incomplete: missing {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}. {WHERE}")
    try:
        net.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{spec}: not LPIPS-VGG weights ({exc}). {WHERE}") from exc
    return net.requires_grad_(False).eval()
