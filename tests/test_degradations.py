"""training.common.degradations: kernels, building blocks and the Real-ESRGAN two-stage pipeline."""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import SHARED
from training.common.degradations import (
    DegradationConfig,
    add_gaussian_noise,
    add_poisson_noise,
    bicubic_degrade,
    degrade,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    jpeg,
    plateau_kernel,
    pulse_kernel,
    random_mixed_kernel,
    random_resize,
    random_scale,
    random_sinc_kernel,
    sinc_kernel,
)

ASTRONAUT = SHARED / "images" / "train" / "astronaut.png"

# A config under which every random step is (close to) the identity, except the final resize.
CLEAN = DegradationConfig(
    kernel_list=("iso",), kernel_prob=(1.0,), kernel_list2=("iso",), kernel_prob2=(1.0,),
    blur_sigma=(0.1, 0.1), blur_sigma2=(0.1, 0.1), sinc_prob=0.0, sinc_prob2=0.0, final_sinc_prob=0.0,
    resize_prob=(0.0, 0.0, 1.0), resize_prob2=(0.0, 0.0, 1.0),
    gaussian_noise_prob=1.0, noise_range=(0.0, 0.0), gaussian_noise_prob2=1.0, noise_range2=(0.0, 0.0),
    jpeg_range=(100, 100), jpeg_range2=(100, 100), second_order_prob=0.0, resize_modes=("area",),
)


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    """A 128x128 crop of astronaut.png, (3, H, W) float32 in [0, 1]."""
    if not ASTRONAUT.exists():
        pytest.skip(f"missing test image {ASTRONAUT}")
    arr = np.array(Image.open(ASTRONAUT).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[:, 60:188, 160:288].contiguous()


def _frequency_response(kernel: np.ndarray, w1: float, w2: float) -> float:
    m = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    phase = np.exp(-1j * (w1 * m[None, :] + w2 * m[:, None]))
    return float(np.sum(kernel * phase).real)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, size", [(1, 21), (2, 15)])
def test_random_kernels_normalised_padded_and_centred(stage, size):
    cfg = DegradationConfig()
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = random_mixed_kernel(rng, cfg, stage)
        assert k.shape == (size, size) and k.dtype == np.float64
        assert k.sum() == pytest.approx(1.0, abs=1e-12)
        # Every family here is point-symmetric about the centre => centred, correlation == convolution.
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)
        assert np.argmax(k) == (size * size) // 2  # peak at the centre


def test_random_kernel_sizes_follow_the_ranges():
    cfg = DegradationConfig(sinc_prob=0.0, sinc_prob2=0.0, blur_sigma=(3.0, 3.0), blur_sigma2=(1.5, 1.5))
    rng = np.random.default_rng(1)
    support = {1: set(), 2: set()}
    for stage in (1, 2):
        for _ in range(300):
            k = random_mixed_kernel(rng, cfg, stage)
            rows = np.nonzero(k.sum(1))[0]
            support[stage].add(int(rows[-1] - rows[0] + 1))
    assert support[1] == set(range(3, 21, 2))
    assert support[2] == set(range(3, 15, 2))


def test_config_defaults_match_spec():
    c = DegradationConfig()
    assert c.kernel_range == tuple(range(3, 21, 2)) and c.kernel_range2 == tuple(range(3, 15, 2))
    assert c.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and len(c.kernel_list) == 6
    assert (c.sinc_prob, c.sinc_prob2, c.final_sinc_prob) == (0.1, 0.1, 0.8)
    assert (c.blur_sigma, c.blur_sigma2) == ((0.2, 3.0), (0.2, 1.5))
    assert (c.betag_range, c.betap_range) == ((0.5, 4.0), (1.0, 2.0))
    assert (c.resize_prob, c.resize_range) == ((0.2, 0.7, 0.1), (0.15, 1.5))
    assert (c.resize_prob2, c.resize_range2) == ((0.3, 0.4, 0.3), (0.3, 1.2))
    assert (c.noise_range, c.noise_range2) == ((1.0, 30.0), (1.0, 25.0))
    assert (c.poisson_scale_range, c.poisson_scale_range2) == ((0.05, 3.0), (0.05, 2.5))
    assert (c.gaussian_noise_prob, c.gray_noise_prob, c.second_order_prob, c.second_blur_prob) == (0.5, 0.4, 0.5, 0.8)
    assert c.jpeg_range == c.jpeg_range2 == (30.0, 95.0) and c.gt_size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.sinc_prob = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("make", [
    lambda: gaussian_kernel(15, 2.0),
    lambda: generalized_gaussian_kernel(15, 2.0, beta=0.6),
    lambda: plateau_kernel(15, 2.0, beta=1.5),
    lambda: sinc_kernel(15, math.pi / 4),
])
def test_isotropic_kernels_are_symmetric(make):
    k = make()
    assert k.shape == (15, 15) and k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, np.rot90(k), atol=1e-15)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)


def test_kernel_shapes_differ_by_family():
    g, gg, p = gaussian_kernel(21, 3.0), generalized_gaussian_kernel(21, 3.0, beta=4.0), plateau_kernel(21, 3.0, beta=1.0)
    expected = np.exp(-0.5 * (np.arange(21) - 10.0) ** 2 / 9.0)
    np.testing.assert_allclose(g[10] / g[10, 10], expected, rtol=1e-12)
    assert gg[10, 10 + 6] / gg[10, 10] < g[10, 10 + 6] / g[10, 10]  # beta > 1: lighter tails
    assert p[10, 10 + 6] / p[10, 10] > g[10, 10 + 6] / g[10, 10]  # plateau: heavier tails
    assert p[10, 10 + 3] / p[10, 10] == pytest.approx(1 / (1 + 1.0))  # d = 1 at x = sigma


def test_anisotropic_gaussian_is_oriented():
    k = gaussian_kernel(21, 4.0, 1.0, theta=0.0)  # long along x (columns)
    assert not np.allclose(k, np.rot90(k), atol=1e-4)
    assert k[10, 14] > 10 * k[14, 10]
    np.testing.assert_allclose(gaussian_kernel(21, 4.0, 1.0, theta=math.pi / 2), np.rot90(k), atol=1e-12)
    diagonal = gaussian_kernel(21, 4.0, 1.0, theta=math.pi / 4)
    assert diagonal[13, 13] > 10 * diagonal[7, 13]  # (row, col) = (y, x) + 10: long axis along y = x
    # Against the covariance form: Sigma = R diag(sx^2, sy^2) R^T, k ~ exp(-p^T Sigma^-1 p / 2).
    theta, sx, sy = 0.3, 3.0, 1.2
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx ** 2, sy ** 2]) @ rot.T)
    ref = np.array([[math.exp(-0.5 * np.array([x, y]) @ inv @ np.array([x, y])) for x in range(-7, 8)]
                    for y in range(-7, 8)])
    np.testing.assert_allclose(gaussian_kernel(15, sx, sy, theta), ref / ref.sum(), rtol=1e-10)


def test_sinc_kernel_is_low_pass():
    for size in (7, 13, 21):
        k = sinc_kernel(size, math.pi / 3)
        assert _frequency_response(k, 0, 0) == pytest.approx(1.0, abs=1e-12)
        assert abs(_frequency_response(k, math.pi, math.pi)) < 0.02
        assert abs(_frequency_response(k, math.pi, 0)) < 0.06
    # Lower cut-off => wider main lobe => smaller centre tap.
    assert sinc_kernel(21, math.pi / 5)[10, 10] < sinc_kernel(21, math.pi / 2)[10, 10]
    # Taps follow omega J1(omega r) / (2 pi r), centre omega^2 / (4 pi): at r = 1 the ratio is 2 J1(w) / w.
    w = math.pi / 3
    j1 = sum((-1) ** m * (w / 2) ** (2 * m + 1) / (math.factorial(m) * math.factorial(m + 1)) for m in range(12))
    k = sinc_kernel(21, w)
    assert k[10, 11] / k[10, 10] == pytest.approx(2 * j1 / w, rel=1e-9)


def test_random_sinc_kernel_padding_and_range():
    rng = np.random.default_rng(3)
    k = random_sinc_kernel(rng, 7, (math.pi / 3, math.pi / 3), pad_to=21)
    assert k.shape == (21, 21)
    np.testing.assert_allclose(k[7:14, 7:14], sinc_kernel(7, math.pi / 3), atol=1e-15)
    assert np.count_nonzero(k) == 49
    assert random_sinc_kernel(rng, 9, (1.0, 2.0)).shape == (9, 9)
    with pytest.raises(ValueError):
        sinc_kernel(8, 1.0)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def test_filter2d_delta_is_identity():
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(filter2d(x, pulse_kernel(5)), x, rtol=0, atol=0)
    torch.testing.assert_close(filter2d(x[0], pulse_kernel(21)), x[0], rtol=0, atol=0)


def test_filter2d_box_kernel_by_hand():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4).expand(3, 4, 4) / 16
    out = filter2d(x, np.full((3, 3), 1 / 9))
    assert out.shape == (3, 4, 4)
    padded = np.pad(np.arange(16.0).reshape(4, 4), 1, mode="reflect")  # reflect: edge not repeated
    expected = np.array([[padded[i:i + 3, j:j + 3].mean() for j in range(4)] for i in range(4)]) / 16
    for ch in range(3):
        np.testing.assert_allclose(out[ch].numpy(), expected, atol=1e-6)
    # Corner (0, 0): rows {1, 0, 1} x cols {1, 0, 1} of [[0,1],[4,5]] => (4*5 + 2*4 + 2*1 + 0) / 9.
    assert out[0, 0, 0].item() == pytest.approx((4 * 5 + 2 * 4 + 2 * 1 + 0) / 9 / 16, abs=1e-6)


def test_random_resize_modes_and_sizes():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    area = random_resize(x, 0.5, "area")
    torch.testing.assert_close(area[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert random_resize(x[0], (3, 5), "bicubic").shape == (3, 3, 5)
    assert random_resize(x, 1.5, "bilinear").shape == (1, 3, 6, 6)
    assert random_resize(x, 0.1, "area").shape == (1, 3, 1, 1)  # never shrinks to nothing
    with pytest.raises(ValueError):
        random_resize(x, 0.5, "nearest")


def test_random_scale_distribution():
    rng = np.random.default_rng(0)
    draws = np.array([random_scale(rng, (0.2, 0.7, 0.1), (0.15, 1.5)) for _ in range(4000)])
    assert draws.min() >= 0.15 and draws.max() <= 1.5
    assert np.mean(draws > 1) == pytest.approx(0.2, abs=0.03)
    assert np.mean(draws < 1) == pytest.approx(0.7, abs=0.03)
    assert np.mean(draws == 1) == pytest.approx(0.1, abs=0.02)
    assert draws.max() > 1.45 and draws.min() < 0.2  # the whole range is reached


def test_gaussian_noise_statistics_and_gray():
    x = torch.full((3, 64, 64), 0.5)
    noisy = add_gaussian_noise(x, 10 / 255, gray=False, rng=np.random.default_rng(0))
    noise = noisy - x
    assert noise.std().item() == pytest.approx(10 / 255, rel=0.05)
    assert abs(noise.mean().item()) < 1e-3
    assert not torch.equal(noise[0], noise[1])
    gray = add_gaussian_noise(x, 10 / 255, gray=True, rng=np.random.default_rng(0)) - x
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    clipped = add_gaussian_noise(torch.zeros(3, 16, 16), 0.5, gray=False, rng=np.random.default_rng(0))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_poisson_noise_variance_follows_levels():
    ramp = torch.arange(256, dtype=torch.float32) / 255  # 256 levels => vals = 256
    x = ramp.repeat(3, 64, 1)  # (3, 64, 256)
    scale = 1.0
    noise = add_poisson_noise(x, scale, gray=False, rng=np.random.default_rng(0), clip=False) - x
    mid = (x > 0.3) & (x < 0.7)
    expected_var = (x[mid] / 256 * scale ** 2).mean().item()
    assert noise[mid].var().item() == pytest.approx(expected_var, rel=0.1)
    assert abs(noise[mid].mean().item()) < 2e-3
    quiet = add_poisson_noise(x, 0.1, gray=False, rng=np.random.default_rng(0), clip=False) - x
    assert quiet[mid].std().item() == pytest.approx(0.1 * noise[mid].std().item(), rel=0.1)
    # Three distinct levels => vals = 2 ** ceil(log2(3)) = 4: much stronger noise, variance x / 4.
    levels = torch.tensor([0.2, 0.5, 0.8])[torch.arange(3 * 64 * 64) % 3].reshape(3, 64, 64)
    coarse = add_poisson_noise(levels, 1.0, gray=False, rng=np.random.default_rng(0), clip=False) - levels
    assert coarse.var().item() == pytest.approx((levels.round(decimals=6) / 4).mean().item(), rel=0.1)
    gray = add_poisson_noise(x, 1.0, gray=True, rng=np.random.default_rng(0), clip=False) - x
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2]) and gray.abs().max() > 0


def test_jpeg_round_trip(astronaut):
    low, high = jpeg(astronaut, 30), jpeg(astronaut, 95)
    assert low.shape == astronaut.shape and low.dtype == torch.float32
    np.testing.assert_allclose((high * 255).numpy(), np.round((high * 255).numpy()), atol=1e-4)
    err_low, err_high = (low - astronaut).abs().mean(), (high - astronaut).abs().mean()
    assert 0 < err_high < err_low
    batch = jpeg(torch.stack([astronaut, astronaut.flip(-1)]), 30)
    torch.testing.assert_close(batch[0], low, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

def _on_grid(x: torch.Tensor) -> bool:
    scaled = x.double() * 255
    return bool(((scaled - scaled.round()).abs() < 1e-4).all())


def test_degrade_shape_range_dtype_quantisation(astronaut):
    for seed in range(6):
        lr = degrade(astronaut, 4, np.random.default_rng(seed))
        assert lr.shape == (3, 32, 32) and lr.dtype == torch.float32
        assert lr.min() >= 0 and lr.max() <= 1 and _on_grid(lr)
    lr = degrade(astronaut[:, :64, :96], 2, np.random.default_rng(0))
    assert lr.shape == (3, 32, 48)
    with pytest.raises(ValueError):
        degrade(astronaut[:, :66], 4, np.random.default_rng(0))


def test_bicubic_degrade(astronaut):
    lr = bicubic_degrade(astronaut, 4)
    assert lr.shape == (3, 32, 32) and lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1 and _on_grid(lr)
    ref = F.interpolate(astronaut[None], size=(32, 32), mode="bicubic", antialias=True, align_corners=False)[0]
    assert (lr - ref.clamp(0, 1)).abs().max().item() <= 0.5 / 255 + 1e-6
    flat = torch.full((3, 16, 16), 0.4)
    torch.testing.assert_close(bicubic_degrade(flat, 4), torch.full((3, 4, 4), round(0.4 * 255) / 255))


def test_degrade_deterministic(astronaut):
    a = degrade(astronaut, 4, np.random.default_rng(123))
    b = degrade(astronaut, 4, np.random.default_rng(123))
    assert torch.equal(a, b)
    others = [degrade(astronaut, 4, np.random.default_rng(s)) for s in (124, 125)]
    assert all(not torch.equal(a, o) for o in others)


def test_degrade_leaves_global_rngs_alone(astronaut):
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    for seed in range(3):
        degrade(astronaut, 4, np.random.default_rng(seed))
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state


def test_clean_config_reduces_to_area_downscale(astronaut):
    ref = F.interpolate(astronaut[None], size=(32, 32), mode="area")[0]
    for seed in range(3):
        lr = degrade(astronaut, 4, np.random.default_rng(seed), CLEAN)
        diff = (lr - ref).abs()
        assert diff.mean().item() < 3 / 255 and diff.max().item() < 40 / 255  # only JPEG-100 (4:2:0) error


def test_second_stage_probability_is_honoured(astronaut):
    loud = dataclasses.replace(CLEAN, noise_range2=(40.0, 40.0), gray_noise_prob2=0.0)
    clean = degrade(astronaut, 4, np.random.default_rng(0), CLEAN)
    off = degrade(astronaut, 4, np.random.default_rng(0), dataclasses.replace(loud, second_order_prob=0.0))
    on = degrade(astronaut, 4, np.random.default_rng(0), dataclasses.replace(loud, second_order_prob=1.0))
    assert (off - clean).abs().mean().item() < 2 / 255
    assert (on - clean).std().item() > 10 / 255  # ~40/255 noise, attenuated by the final JPEG


def test_first_stage_noise_shows_when_forced(astronaut):
    noisy_cfg = dataclasses.replace(CLEAN, noise_range=(30.0, 30.0))
    clean = degrade(astronaut, 4, np.random.default_rng(0), CLEAN)
    noisy = degrade(astronaut, 4, np.random.default_rng(0), noisy_cfg)
    assert (noisy - clean).std().item() > 2 / 255  # 30/255 noise at HR, averaged by the x4 area resize


def test_first_stage_blur_shows_when_forced(astronaut):
    blurry_cfg = dataclasses.replace(CLEAN, blur_sigma=(3.0, 3.0), kernel_range=(19,))
    ref = F.interpolate(astronaut[None], size=(32, 32), mode="area")[0]
    clean = degrade(astronaut, 4, np.random.default_rng(0), CLEAN)
    blurry = degrade(astronaut, 4, np.random.default_rng(0), blurry_cfg)
    assert (blurry - ref).abs().mean() > 3 * (clean - ref).abs().mean()


@pytest.mark.parametrize("changes", [
    {"final_sinc_prob": 1.0, "final_sinc_omega": (math.pi / 5, math.pi / 5), "kernel_range2": (13,)},
    {"jpeg_range2": (10, 10)},
    {"jpeg_range": (10, 10)},
])
def test_final_stage_steps_show_when_forced(astronaut, changes):
    ref = F.interpolate(astronaut[None], size=(32, 32), mode="area")[0]
    for order in (0.0, 1.0):  # [JPEG -> resize -> sinc] and [resize -> sinc -> JPEG]
        base = dataclasses.replace(CLEAN, final_resize_first_prob=order)
        clean = degrade(astronaut, 4, np.random.default_rng(0), base)
        forced = degrade(astronaut, 4, np.random.default_rng(0), dataclasses.replace(base, **changes))
        assert (forced - ref).abs().mean() > 2 * (clean - ref).abs().mean()


def test_degradation_is_stronger_than_bicubic(astronaut):
    def error(lr: torch.Tensor) -> float:
        up = F.interpolate(lr[None], size=astronaut.shape[-2:], mode="bicubic", align_corners=False)[0]
        return (up.clamp(0, 1) - astronaut).pow(2).mean().item()

    bicubic = error(bicubic_degrade(astronaut, 4))
    real = np.mean([error(degrade(astronaut, 4, np.random.default_rng(s))) for s in range(6)])
    assert real > 1.2 * bicubic
