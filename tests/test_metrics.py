"""PSNR / SSIM on Y (training.common.metrics) and the folder benchmark (training.common.evaluate)."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.common.evaluate import evaluate_folder, format_table, load_rgb, summarise
from training.common.metrics import SSIM_C1, SSIM_C2, psnr_y, rgb_to_y, ssim_y


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """(3, h, w) float64 in [0.1, 0.9]: smooth structure plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h, dtype=torch.float64).view(h, 1)
    x = torch.linspace(0, 1, w, dtype=torch.float64).view(1, w)
    chans = []
    for c in range(3):
        a, b = (torch.rand(2, generator=g, dtype=torch.float64) * 8 + 1).tolist()
        noise = torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5
        chans.append(0.5 + 0.25 * torch.sin(a * x + c) * torch.cos(b * y) + 0.1 * noise)
    return torch.stack(chans).clamp(0.1, 0.9)


def _constant(value: float, h: int = 24, w: int = 24) -> torch.Tensor:
    return torch.full((3, h, w), value, dtype=torch.float64)


# ----------------------------------------------------------------------------- rgb_to_y


@pytest.mark.parametrize("rgb, expected", [
    ((1, 1, 1), 235.0),
    ((0, 0, 0), 16.0),
    ((1, 0, 0), 16 + 65.481),
    ((0, 1, 0), 16 + 128.553),
    ((0, 0, 1), 16 + 24.966),
    ((0.5, 0.25, 1.0), 16 + 65.481 * 0.5 + 128.553 * 0.25 + 24.966),
])
def test_rgb_to_y_hand_values(rgb, expected):
    t = torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, 2, 5)
    y = rgb_to_y(t)
    assert y.shape == (2, 5) and y.dtype == torch.float64
    torch.testing.assert_close(y, torch.full((2, 5), expected, dtype=torch.float64), rtol=0, atol=1e-5)


def test_rgb_to_y_numpy_uint8_and_batch():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    y_np = rgb_to_y(arr)
    assert isinstance(y_np, np.ndarray) and y_np.shape == (5, 7) and y_np.dtype == np.float64
    r, g, b = (arr[..., i].astype(np.float64) / 255 for i in range(3))
    np.testing.assert_allclose(y_np, 16 + 65.481 * r + 128.553 * g + 24.966 * b, rtol=0, atol=1e-9)
    # The same pixels as a (3, H, W) float tensor, and as a batch.
    t = torch.from_numpy(arr).permute(2, 0, 1).double() / 255
    np.testing.assert_allclose(rgb_to_y(t).numpy(), y_np, rtol=0, atol=1e-9)
    yb = rgb_to_y(torch.stack([t, 1 - t]))
    assert yb.shape == (2, 5, 7)
    np.testing.assert_allclose(yb[0].numpy(), y_np, rtol=0, atol=1e-9)
    assert yb.min() >= 16 - 1e-9 and yb.max() <= 235 + 1e-9


# ----------------------------------------------------------------------------- psnr_y


def test_psnr_constant_offset():
    # An RGB offset delta on every channel moves Y by 219 * delta (0..255 scale).
    delta = 10 / 255
    hr = _image(20, 24, seed=1) * 0.5
    sr = hr + delta
    d = (65.481 + 128.553 + 24.966) * delta
    assert psnr_y(sr, hr) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)
    assert psnr_y(hr, sr, crop_border=0) == pytest.approx(20 * math.log10(255 / d), abs=1e-9)


def test_psnr_hand_pair_numpy():
    # Two 2x2 gray images; Y differs by 219/255 in one pixel of four: MSE = (219/255)^2 / 4.
    hr = np.zeros((2, 2, 3), np.uint8)
    sr = hr.copy()
    sr[1, 0] = 1
    d = 219 / 255
    assert psnr_y(sr, hr, crop_border=0) == pytest.approx(10 * math.log10(255 ** 2 / (d * d / 4)), abs=1e-9)


def test_psnr_identical_is_inf():
    hr = _image(16, 16, seed=2)
    assert psnr_y(hr.clone(), hr) == math.inf


def test_crop_border_really_crops():
    hr = _image(32, 40, seed=3)
    sr = hr.clone()
    sr[:, :4, :] = 0.0          # top rows
    sr[:, :, -4:] = 1.0         # right columns
    sr[:, -4:, 10] = 0.3        # bottom rows
    sr[:, 20, :4] = 0.95        # left columns
    assert psnr_y(sr, hr, crop_border=4) == math.inf
    assert ssim_y(sr, hr, crop_border=4) == pytest.approx(1.0, abs=1e-12)
    assert psnr_y(sr, hr, crop_border=0) < 30
    assert ssim_y(sr, hr, crop_border=0) < 0.99
    # One pixel just inside the border counts.
    inside = hr.clone()
    inside[:, 4, 4] += 0.05
    assert math.isfinite(psnr_y(inside, hr, crop_border=4))
    assert not math.isfinite(psnr_y(inside, hr, crop_border=5))


def test_numpy_and_tensor_agree():
    hr = _image(24, 28, seed=4)
    sr = (hr + 0.03 * torch.sin(torch.arange(28.0, dtype=torch.float64) * 1.3)).clamp(0, 1)
    q = lambda t: (t * 255).round() / 255  # noqa: E731
    as_np = lambda t: (t.permute(1, 2, 0) * 255).round().numpy().astype(np.uint8)  # noqa: E731
    assert psnr_y(as_np(sr), as_np(hr)) == pytest.approx(psnr_y(q(sr), q(hr)), abs=1e-9)
    assert ssim_y(as_np(sr), as_np(hr)) == pytest.approx(ssim_y(q(sr), q(hr)), abs=1e-12)
    # Float32 input, and a batch of one, give the same values.
    assert psnr_y(sr.float(), hr.float()) == pytest.approx(psnr_y(sr, hr), abs=1e-4)
    assert psnr_y(sr[None], hr[None]) == pytest.approx(psnr_y(sr, hr), abs=1e-12)


@pytest.mark.parametrize("metric", [psnr_y, ssim_y])
def test_shape_mismatch_names_the_shapes(metric):
    with pytest.raises(ValueError) as info:
        metric(torch.zeros(3, 16, 20), torch.zeros(3, 16, 24))
    assert "(3, 16, 20)" in str(info.value) and "(3, 16, 24)" in str(info.value)
    with pytest.raises(ValueError) as info:
        metric(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 17, 3), np.uint8))
    assert "(16, 16, 3)" in str(info.value) and "(16, 17, 3)" in str(info.value)


def test_bad_inputs():
    with pytest.raises(ValueError):
        psnr_y(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), crop_border=4)  # nothing left
    with pytest.raises(ValueError):
        ssim_y(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), crop_border=4)  # 8x8 < window
    with pytest.raises(ValueError):
        psnr_y(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), crop_border=0)  # batches
    with pytest.raises(ValueError):
        rgb_to_y(torch.zeros(4, 8, 8))


# ----------------------------------------------------------------------------- ssim_y


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM straight from the definition, one 11x11 window at a time (float64, no convolution)."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w = g / g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_definition():
    hr = _image(22, 25, seed=5)
    sr = (hr + 0.08 * (torch.rand(hr.shape, generator=torch.Generator().manual_seed(9),
                                  dtype=torch.float64) - 0.5)).clamp(0, 1)
    expected = _ssim_reference(rgb_to_y(sr)[2:-2, 2:-2].numpy(), rgb_to_y(hr)[2:-2, 2:-2].numpy())
    got = ssim_y(sr, hr, crop_border=2)
    assert got == pytest.approx(expected, abs=1e-10)
    assert 0.3 < got < 0.999  # a real distortion, not a degenerate case


def test_ssim_identical_is_one():
    hr = _image(30, 30, seed=6)
    assert ssim_y(hr.clone(), hr) == pytest.approx(1.0, abs=1e-12)


def test_ssim_negative_image():
    hr = _image(40, 40, seed=7)
    value = ssim_y(1 - hr, hr)
    assert value < 0
    assert value < ssim_y((hr + 0.05).clamp(0, 1), hr) - 0.5


@pytest.mark.parametrize("ga, gb", [(0.2, 0.7), (0.5, 0.5), (0.0, 1.0), (0.3, 0.31)])
def test_ssim_constant_images(ga, gb):
    a, b = 16 + 219 * ga, 16 + 219 * gb  # Y of gray levels ga, gb
    expected = (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)
    assert ssim_y(_constant(ga), _constant(gb)) == pytest.approx(expected, abs=1e-9)
    assert SSIM_C1 == pytest.approx(6.5025) and SSIM_C2 == pytest.approx(58.5225)


# ----------------------------------------------------------------------------- evaluate_folder


def _lr_antialiased(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """A stand-in degradation: antialiased bicubic downscale rounded to 1/255."""
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr[None], size=(h // scale, w // scale), mode="bicubic",
                       align_corners=False, antialias=True)[0]
    return (lr.clamp(0, 1) * 255).round() / 255


def _bicubic_up(lr: torch.Tensor, scale: int = 4) -> torch.Tensor:
    return F.interpolate(lr[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)


@pytest.fixture()
def folder(tmp_path):
    """Two small images (sizes not multiples of 4) and two files that are not images."""
    a = (_image(50, 45, seed=10).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    b = (_image(38, 52, seed=11).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "b_first.png")
    Image.fromarray(b).save(tmp_path / "c_second.JPG", quality=95)
    (tmp_path / "a_notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    return tmp_path


def test_evaluate_folder_bicubic_upscaler_gains_nothing(folder):
    calls = []

    def upscale(lr):
        calls.append(tuple(lr.shape))
        assert lr.dtype == torch.float32 and 0 <= lr.min() and lr.max() <= 1
        return _bicubic_up(lr)

    rows = evaluate_folder(upscale, folder, scale=4, make_lr=_lr_antialiased)
    assert [r["name"] for r in rows] == ["b_first.png", "c_second.JPG"]
    assert [r["size"] for r in rows] == [(48, 44), (36, 52)]
    assert calls == [(3, 12, 11), (3, 9, 13)]
    for r in rows:
        assert set(r) == {"name", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y", "size"}
        assert r["psnr_y"] == r["bicubic_psnr_y"] and r["ssim_y"] == r["bicubic_ssim_y"]
        assert 15 < r["psnr_y"] < 60 and 0 < r["ssim_y"] < 1
    summary = summarise(rows)
    assert summary["count"] == 2
    assert summary["psnr_gain"] == 0.0 and summary["ssim_gain"] == 0.0
    assert summary["psnr_y"] == pytest.approx((rows[0]["psnr_y"] + rows[1]["psnr_y"]) / 2)

    # The row values are the metrics of the quantised bicubic result against the cropped HR.
    hr = load_rgb(folder / "b_first.png", 4)
    sr = (_bicubic_up(_lr_antialiased(hr, 4)) * 255).round() / 255
    assert rows[0]["psnr_y"] == pytest.approx(psnr_y(sr, hr, 4), abs=1e-9)
    assert rows[0]["ssim_y"] == pytest.approx(ssim_y(sr, hr, 4), abs=1e-12)

    table = format_table(rows, summary)
    assert "b_first.png" in table and "c_second.JPG" in table and "44x48" in table
    assert "mean (2)" in table and "+0.00" in table


def test_evaluate_folder_oracle_and_worse_upscalers(folder):
    hrs = iter([load_rgb(folder / "b_first.png", 4), load_rgb(folder / "c_second.JPG", 4)])
    rows = evaluate_folder(lambda lr: next(hrs).clone(), folder, make_lr=_lr_antialiased)
    for r in rows:
        assert r["psnr_y"] == math.inf and r["ssim_y"] == pytest.approx(1.0, abs=1e-12)
        assert r["bicubic_psnr_y"] < 60 and r["bicubic_ssim_y"] < 1
    summary = summarise(rows)
    assert summary["psnr_gain"] == math.inf and summary["ssim_gain"] > 0
    assert "inf" in format_table(rows, summary)

    # A flat gray answer is much worse than bicubic.
    rows = evaluate_folder(lambda lr: torch.full((3, lr.shape[1] * 4, lr.shape[2] * 4), 0.5),
                           folder, make_lr=_lr_antialiased)
    summary = summarise(rows)
    assert summary["psnr_gain"] < -1 and summary["ssim_gain"] < -0.1


def test_evaluate_folder_uses_bicubic_degrade_by_default(folder, monkeypatch):
    used = []

    def fake_degrade(hr, scale):
        used.append((tuple(hr.shape), scale))
        return _lr_antialiased(hr, scale)

    fake = types.ModuleType("training.common.degradations")
    fake.bicubic_degrade = fake_degrade
    monkeypatch.setitem(sys.modules, "training.common.degradations", fake)
    rows = evaluate_folder(_bicubic_up, folder)
    assert used == [((3, 48, 44), 4), ((3, 36, 52), 4)]
    assert len(rows) == 2
    with pytest.raises(ValueError, match="unknown degradation"):
        evaluate_folder(_bicubic_up, folder, degrade="realesrgan")


def test_evaluate_folder_errors(folder, tmp_path_factory):
    with pytest.raises(ValueError) as info:
        evaluate_folder(lambda lr: torch.zeros(3, 10, 10), folder, make_lr=_lr_antialiased)
    assert "(3, 10, 10)" in str(info.value) and "(3, 48, 44)" in str(info.value)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="no images"):
        evaluate_folder(_bicubic_up, empty, make_lr=_lr_antialiased)
    with pytest.raises(FileNotFoundError):
        evaluate_folder(_bicubic_up, empty / "missing", make_lr=_lr_antialiased)


def test_evaluate_folder_scale_two(folder):
    rows = evaluate_folder(lambda lr: _bicubic_up(lr, 2), folder, scale=2, make_lr=_lr_antialiased)
    assert [r["size"] for r in rows] == [(50, 44), (38, 52)]
    assert all(r["psnr_y"] == r["bicubic_psnr_y"] for r in rows)
    # Scale 2 bicubic is closer to HR than scale 4.
    rows4 = evaluate_folder(_bicubic_up, folder, make_lr=_lr_antialiased)
    assert all(r2["bicubic_psnr_y"] > r4["bicubic_psnr_y"] for r2, r4 in zip(rows, rows4))


def test_real_bicubic_degrade_if_present(folder):
    degradations = pytest.importorskip("training.common.degradations")
    rows = evaluate_folder(_bicubic_up, folder)
    assert [r["size"] for r in rows] == [(48, 44), (36, 52)]
    hr = load_rgb(folder / "b_first.png", 4)
    lr = degradations.bicubic_degrade(hr, 4)
    assert tuple(lr.shape) == (3, 12, 11)
    assert all(r["psnr_y"] == r["bicubic_psnr_y"] for r in rows)
