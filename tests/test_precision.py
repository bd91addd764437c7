"""Half precision: weights in fp16/bf16, GroupNorm and attention kept in fp32 (SinSR issue #5)."""
from __future__ import annotations

import copy

import pytest
import torch

from onestep_sr.models.autoencoder import SelfAttention
from onestep_sr.models.layers import GroupNorm32, attention_fp32

# max |half - fp32| allowed on the small golden models (outputs reach |x| ~ 1.7 and ~ 4.8)
GATES = {torch.float16: (0.02, 0.01), torch.bfloat16: (0.15, 0.05)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_denoiser_is_finite_and_close_to_fp32(golden_denoiser, cases, dtype):
    c = cases("denoiser_cases")
    x, lq = c["s64x128.x_in"], c["s64x128.lq"]
    half = copy.deepcopy(golden_denoiser).to(dtype)
    with torch.no_grad():
        ref = golden_denoiser(x, torch.tensor([14]), lq)
        out = half(x.to(dtype), torch.tensor([14]), lq.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < GATES[dtype][0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_autoencoder_is_finite_and_close_to_fp32(golden_autoencoder, cases, dtype):
    image = cases("vq_cases")["img128x96.image"]
    half = copy.deepcopy(golden_autoencoder).to(dtype)
    with torch.no_grad():
        ref = golden_autoencoder.decode(golden_autoencoder.encode(image), quantize=False)
        out = half.decode(half.encode(image.to(dtype)), quantize=False)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < GATES[dtype][1]


def test_attention_logits_beyond_fp16_range_stay_finite():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 16, 64, generator=g) * 60 for _ in range(3))
    naive = torch.softmax((q.half() @ k.half().transpose(-1, -2)), dim=-1)  # logits ~1e5 overflow fp16
    assert not torch.isfinite(naive).all()
    out = attention_fp32(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out.float(), ref, atol=0.5, rtol=1e-2)


def test_vq_mid_attention_in_fp16_with_large_activations():
    torch.manual_seed(0)
    block = SelfAttention(64)
    x = torch.randn(1, 64, 8, 8) * 200
    with torch.no_grad():
        ref = block(x)
        out = block.half()(x.half())
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 1e-2


def test_groupnorm_statistics_in_fp32():
    norm = GroupNorm32(32, 64)
    x = torch.randn(1, 64, 8, 8) * 1000  # variance ~1e6 overflows fp16
    out = norm.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), GroupNorm32(32, 64)(x), atol=1e-2)
