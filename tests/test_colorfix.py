"""Colour fixes (adain / wavelet) and their banded, in-place form on huge buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from onestep_sr.colorfix import (COLOR_FIXES, WAVELET_KERNEL, WAVELET_RADIUS, adain, color_fix,
                                 color_fix_buffer, wavelet, wavelet_blur)


def _smooth_image(h: int, w: int, seed: int, lo: float = 0.2, hi: float = 0.8) -> torch.Tensor:
    """1 x 3 x h x w float32 with structure at several scales, values within [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(h, 1)
    x = torch.linspace(0, 1, w).view(1, w)
    chans = []
    for c in range(3):
        a, b, p = torch.rand(3, generator=g) * 6
        base = 0.5 + 0.25 * torch.sin(a * x + p) * torch.cos(b * y + c)
        noise = 0.15 * (torch.rand(h, w, generator=g) - 0.5)
        chans.append(base + noise)
    img = torch.stack(chans)[None]
    img = (img - img.amin()) / (img.amax() - img.amin())
    return (lo + (hi - lo) * img).float()


# ----------------------------------------------------------------------------- adain


def test_adain_matches_reference_statistics():
    sr = _smooth_image(37, 53, 0, 0.1, 0.9)
    ref = _smooth_image(37, 53, 1, 0.15, 0.8)
    out = adain(sr, ref)
    assert out.shape == sr.shape and out.dtype == torch.float32
    assert 0.0 < out.min() and out.max() < 1.0  # no clipping happened
    for c in range(3):
        assert out[0, c].mean().item() == pytest.approx(ref[0, c].mean().item(), abs=1e-5)
        assert out[0, c].std().item() == pytest.approx(ref[0, c].std().item(), abs=1e-4)
        # exactly: std_out = std_sr * sqrt(var_ref + eps) / sqrt(var_sr + eps)
        var_sr, var_ref = sr[0, c].double().var().item(), ref[0, c].double().var().item()
        expected = np.sqrt(var_sr) * np.sqrt(var_ref + 1e-5) / np.sqrt(var_sr + 1e-5)
        assert out[0, c].double().std().item() == pytest.approx(expected, abs=2e-6)
    # and the result is still an affine image of sr, per channel (correlation 1)
    for c in range(3):
        corr = torch.corrcoef(torch.stack([out[0, c].flatten(), sr[0, c].flatten()]))[0, 1]
        assert corr.item() == pytest.approx(1.0, abs=1e-5)


def test_adain_undoes_per_channel_affine_change():
    ref = _smooth_image(37, 53, 2, 0.05, 0.95)
    a = torch.tensor([0.9, 1.05, 0.8]).view(1, 3, 1, 1)
    b = torch.tensor([0.05, -0.04, 0.15]).view(1, 3, 1, 1)
    sr = a * ref + b
    out = adain(sr, ref)
    assert (out - ref).abs().max().item() < 1e-4
    assert (sr - ref).abs().max().item() > 0.05  # the change was real


def test_adain_uses_unbiased_variance_plus_eps():
    # two-pixel channel images: values 0.4, 0.6 -> unbiased var 0.02; ref 0.2, 0.8 -> var 0.18
    sr = torch.tensor([0.4, 0.6]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    ref = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
    out = adain(sr, ref)
    scale = np.sqrt(0.18 + 1e-5) / np.sqrt(0.02 + 1e-5)
    expected_hi = 0.5 + 0.1 * scale
    assert out[0, 0, 0, 1].item() == pytest.approx(expected_hi, abs=1e-6)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0 - expected_hi, abs=1e-6)


def test_adain_clamps_to_unit_range():
    sr = _smooth_image(20, 20, 3, 0.45, 0.55)
    ref = _smooth_image(20, 20, 4, 0.0, 1.0) * 3 - 1  # wild reference statistics
    out = adain(sr, ref)
    assert out.min().item() == 0.0 and out.max().item() == 1.0


# ----------------------------------------------------------------------------- wavelet


def test_wavelet_kernel_sums_to_one_and_radius():
    assert WAVELET_KERNEL.sum().item() == pytest.approx(1.0, abs=1e-7)
    assert WAVELET_KERNEL[1, 1].item() == pytest.approx(0.25)
    assert WAVELET_KERNEL[0, 0].item() == pytest.approx(1 / 16)
    assert WAVELET_RADIUS == 31


@pytest.mark.parametrize("level", [0, 1, 2])
def test_wavelet_blur_one_level_by_hand(level):
    g = torch.Generator().manual_seed(5)
    img = torch.rand(1, 3, 6, 7, generator=g)
    out = wavelet_blur(img, level)
    d = 2 ** level
    k = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    h, w = 6, 7
    expected = np.zeros((3, h, w))
    src = img[0].double().numpy()
    for c in range(3):
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for di in range(3):
                    for dj in range(3):
                        ii = min(max(i + (di - 1) * d, 0), h - 1)  # replicate padding
                        jj = min(max(j + (dj - 1) * d, 0), w - 1)
                        acc += k[di][dj] * src[c, ii, jj]
                expected[c, i, j] = acc / 16
    assert np.abs(out[0].double().numpy() - expected).max() < 1e-6


def test_wavelet_constant_passes_through():
    sr = torch.full((1, 3, 37, 53), 0.3)
    sr[0, 1] = 0.7
    assert torch.allclose(wavelet(sr, sr), sr, atol=1e-6)


def test_wavelet_takes_low_from_ref_and_high_from_sr():
    ref = _smooth_image(37, 53, 6)
    offset = torch.tensor([0.1, -0.05, 0.08]).view(1, 3, 1, 1)
    assert (wavelet(ref + offset, ref) - ref).abs().max().item() < 1e-5
    # a constant sr gives exactly the low-pass of ref (no high frequencies)
    flat = torch.full_like(ref, 0.5)
    out = wavelet(flat, ref)
    assert (out - ref).abs().max().item() > 0.02  # the noise (high frequencies) of ref is gone
    assert abs(out.mean().item() - ref.mean().item()) < 0.01
    # a constant ref replaces the colour but keeps sr's detail: out - sr is (nearly) constant
    out2 = wavelet(ref, torch.full_like(ref, 0.5))
    assert (out2 - ref)[:, :, 10:-10, 10:-10].std().item() < 0.05


def test_wavelet_clamps():
    sr = _smooth_image(20, 20, 7, 0.0, 1.0)
    out = wavelet(sr, torch.full_like(sr, 0.95))
    assert out.max().item() == 1.0 and out.min().item() >= 0.0


def test_wavelet_shape_mismatch_raises():
    with pytest.raises(ValueError):
        wavelet(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# ----------------------------------------------------------------------------- dispatch


def test_color_fix_dispatch_and_unknown_mode():
    sr = _smooth_image(16, 16, 8, 0.3, 0.6)
    ref = _smooth_image(16, 16, 9, 0.4, 0.6)
    assert torch.equal(color_fix(sr, ref, "none"), sr)
    assert torch.equal(color_fix(sr, ref, "adain"), adain(sr, ref))
    assert torch.equal(color_fix(sr, ref, "wavelet"), wavelet(sr, ref))
    assert COLOR_FIXES == ("none", "adain", "wavelet")
    with pytest.raises(ValueError, match="sepia") as info:
        color_fix(sr, ref, "sepia")
    assert "wavelet" in str(info.value) and "adain" in str(info.value)
    with pytest.raises(ValueError, match="sepia"):
        color_fix_buffer(np.zeros((4, 4, 3), np.uint8), lambda a, b: None, "sepia")


# ----------------------------------------------------------------------------- banded buffer

H, W = 300, 200
SCALES = {np.uint8: 255.0, np.uint16: 65535.0}


def _buffer(dtype) -> np.ndarray:
    img = _smooth_image(H, W, 10, 0.05, 0.95)[0].permute(1, 2, 0).numpy()
    if dtype == np.float32:
        return img.copy()
    return np.rint(img * np.float32(SCALES[dtype])).astype(dtype)


def _dequantised(buf: np.ndarray) -> torch.Tensor:
    x = buf.astype(np.float32)
    if buf.dtype != np.float32:
        x = x / np.float32(SCALES[buf.dtype.type])
    return torch.from_numpy(x).permute(2, 0, 1)[None]


def _quantised(x: torch.Tensor, dtype) -> np.ndarray:
    x = x.clamp(0, 1)[0].permute(1, 2, 0).numpy()
    if dtype == np.float32:
        return x
    return np.rint(x * np.float32(SCALES[dtype])).astype(dtype)


@pytest.fixture(scope="module")
def ref_image() -> torch.Tensor:
    # reference colours differ clearly from the buffer's
    return _smooth_image(H, W, 11, 0.1, 0.7)


@pytest.mark.parametrize("mode", ["adain", "wavelet"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("band_rows", [7, 64, 100, 256, 1000])
def test_buffer_equals_whole_image(mode, dtype, band_rows, ref_image):
    buf = _buffer(dtype)
    expected = _quantised(color_fix(_dequantised(buf), ref_image, mode), dtype)
    requests = []

    def reference(row0, row1):
        requests.append((row0, row1))
        return ref_image[:, :, row0:row1].clone()

    before = buf.copy()
    color_fix_buffer(buf, reference, mode, band_rows=band_rows)
    assert buf.dtype == dtype and buf.shape == (H, W, 3)
    if dtype == np.float32:
        assert np.allclose(buf, expected, atol=1e-5, rtol=0)
    else:
        diff = np.abs(buf.astype(np.int64) - expected.astype(np.int64))
        assert diff.max() <= 1
        assert (diff == 0).mean() > 0.999
    assert np.abs(buf.astype(np.float64) - before.astype(np.float64)).max() > 0  # modified in place
    # band-local: every reference request is one band plus at most the halo on each side
    assert requests
    for row0, row1 in requests:
        assert 0 <= row0 < row1 <= H
        assert row1 - row0 <= band_rows + 2 * WAVELET_RADIUS
        if mode == "adain":
            assert row1 - row0 <= band_rows
    covered = np.zeros(H, bool)
    for row0, row1 in requests:
        covered[row0:row1] = True
    assert covered.all()
    if band_rows < H:
        assert len(requests) > 1


def test_buffer_wavelet_small_bands_need_carry(ref_image):
    """band_rows < WAVELET_RADIUS: halos reach back several bands that were already written."""
    buf = _buffer(np.float32)
    expected = _quantised(wavelet(_dequantised(buf), ref_image), np.float32)
    color_fix_buffer(buf, lambda a, b: ref_image[:, :, a:b], "wavelet", band_rows=3)
    assert np.allclose(buf, expected, atol=1e-5, rtol=0)


def test_buffer_none_does_not_touch():
    buf = _buffer(np.uint8)
    before = buf.copy()

    def reference(row0, row1):  # pragma: no cover - must not be called
        raise AssertionError("reference must not be requested for mode 'none'")

    color_fix_buffer(buf, reference, "none")
    assert np.array_equal(buf, before)


def test_buffer_wavelet_with_itself_as_reference_round_trips_uint8():
    # wavelet(sr, sr) == sr up to float error; the uint8 dequantise/quantise round-trip is exact,
    # so the buffer must come back unchanged (also checks the halo rows read originals).
    buf = _buffer(np.uint8)
    before = buf.copy()
    ref = _dequantised(before)
    color_fix_buffer(buf, lambda a, b: ref[:, :, a:b].clone(), "wavelet", band_rows=50)
    assert np.array_equal(buf, before)


@pytest.mark.parametrize("mode", ["adain", "wavelet"])
def test_buffer_tiny_image_exact_statistics(mode):
    # few pixels: the unbiased (N - 1) variance and the edge replicate padding both matter here
    g = torch.Generator().manual_seed(12)
    sr = 0.3 + 0.4 * torch.rand(1, 3, 5, 4, generator=g)
    ref = 0.2 + 0.5 * torch.rand(1, 3, 5, 4, generator=g)
    buf = sr[0].permute(1, 2, 0).numpy().copy()
    color_fix_buffer(buf, lambda a, b: ref[:, :, a:b], mode, band_rows=2)
    expected = color_fix(sr, ref, mode)[0].permute(1, 2, 0).numpy()
    assert np.abs(buf - expected).max() < 1e-6
