"""onestep_sr.imageio: every image kind in, the same kind out; files read and written safely."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from onestep_sr import imageio
from onestep_sr.imageio import (ImageInputError, Prepared, from_unit_float, prepare, read_image,
                                resize_array, to_unit_float, write_image_atomic)

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------ helpers
def upsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the first two axes."""
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def fake_engine(items: list[Prepared], restore, factor: int = 2):
    """Stand-in for the engine: nearest x``factor`` upsampling in float, mapped to ``out_dtype``."""
    outputs = []
    for item in items:
        rgb = upsample(item.rgb[0].permute(1, 2, 0).numpy(), factor)
        alpha = None if item.alpha is None else upsample(item.alpha[0, 0].numpy(), factor)
        outputs.append((from_unit_float(rgb, item.out_dtype),
                        None if alpha is None else from_unit_float(alpha, item.out_dtype)))
    return restore(outputs)


def random_array(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)
    return RNG.random(shape, dtype=np.float32).astype(dtype)  # float32-representable values


def check_prepared(item: Prepared, height: int, width: int, alpha: bool, out_dtype) -> None:
    assert item.rgb.shape == (1, 3, height, width) and item.rgb.dtype == torch.float32
    assert item.rgb.device.type == "cpu" and item.rgb.is_contiguous()
    assert float(item.rgb.min()) >= 0.0 and float(item.rgb.max()) <= 1.0
    if alpha:
        assert item.alpha.shape == (1, 1, height, width) and item.alpha.dtype == torch.float32
    else:
        assert item.alpha is None
    assert item.out_dtype == np.dtype(out_dtype)


def open_fds_to(path: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                found.append(fd)
        except OSError:
            pass
    return found


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ value mapping
def test_uint8_mapping_is_float32_division_and_round_trips():
    u8 = np.arange(256, dtype=np.uint8)
    unit = to_unit_float(u8)
    assert isinstance(unit, np.ndarray) and unit.dtype == np.float32
    reference = torch.from_numpy(u8.copy()).float().div(255.0).numpy()
    assert np.array_equal(unit.view(np.uint32), reference.view(np.uint32))
    back = from_unit_float(unit, np.uint8)
    assert back.dtype == np.uint8 and np.array_equal(back, u8)


def test_uint16_mapping_round_trips_every_value():
    u16 = np.arange(65536, dtype=np.uint16)
    unit = to_unit_float(u16)
    assert unit.dtype == np.float32
    assert np.array_equal(unit, u16.astype(np.float32) / np.float32(65535.0))
    back = from_unit_float(unit, np.uint16)
    assert back.dtype == np.uint16 and np.array_equal(back, u16)
    assert np.array_equal(to_unit_float(u16.astype(">u2")), unit)  # big-endian input


def test_float_inputs_are_clamped_to_float32():
    x = np.array([-0.5, 0.0, 0.25, 1.0, 7.0], dtype=np.float64)
    unit = to_unit_float(x)
    assert unit.dtype == np.float32 and unit.tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]
    t = to_unit_float(torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float16, requires_grad=True))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.tolist() == [0.0, 0.5, 1.0]
    u8 = to_unit_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
    assert u8.dtype == torch.float32 and u8.tolist() == [0.0, float(np.float32(0.2)), 1.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_rejected(bad):
    x = np.full((2, 2, 3), 0.5, dtype=np.float32)
    x[1, 1, 2] = bad
    with pytest.raises(ImageInputError, match=r"\(2, 2, 3\).*float32.*1 NaN or infinite"):
        to_unit_float(x)
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        prepare(x)
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        prepare(torch.from_numpy(x).permute(2, 0, 1))


def test_from_unit_float_clamps_and_rounds_half_to_even():
    x = np.array([-3.0, 0.0, 1.0, 5.0], dtype=np.float32)
    assert from_unit_float(x, np.uint8).tolist() == [0, 0, 255, 255]
    assert from_unit_float(x, np.uint16).tolist() == [0, 0, 65535, 65535]
    assert from_unit_float(x, np.float32).tolist() == [0.0, 0.0, 1.0, 1.0]
    # float32 inputs whose float32 product with 255 is exactly k + 0.5: ties go to the even integer
    candidates = np.float32(np.arange(255) + 0.5) / np.float32(255.0)
    ties = candidates[candidates * np.float32(255.0) == np.arange(255) + 0.5]
    assert ties.size > 10
    expected = np.rint(ties * np.float32(255.0)).astype(np.uint8)
    assert np.all(expected % 2 == 0)
    assert np.array_equal(from_unit_float(ties, np.uint8), expected)
    out = from_unit_float(torch.tensor([[0.5, 1.5]], dtype=torch.float64), np.uint8)
    assert isinstance(out, np.ndarray) and out.tolist() == [[128, 255]]


def test_from_unit_float_rejects_nan_integers_and_unknown_dtypes():
    with pytest.raises(ValueError, match="NaN"):
        from_unit_float(np.array([np.nan], dtype=np.float32), np.uint8)
    with pytest.raises(ValueError, match="float array, got dtype uint8"):
        from_unit_float(np.zeros(3, np.uint8), np.uint8)
    with pytest.raises(ValueError, match="int32"):
        from_unit_float(np.zeros(3, np.float32), np.int32)


# -------------------------------------------------------------------------------------------- numpy
NUMPY_SHAPES = [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4)]
NUMPY_DTYPES = [np.uint8, np.uint16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("shape", NUMPY_SHAPES)
def test_numpy_layouts_round_trip(shape, dtype):
    channels = shape[2] if len(shape) == 3 else 1
    array = random_array(shape, dtype)
    items, restore = prepare(array)
    out_dtype = np.float32 if np.dtype(dtype).kind == "f" else dtype
    check_prepared(items[0], 5, 7, alpha=channels in (2, 4), out_dtype=out_dtype)
    grey = array if array.ndim == 2 else array[..., 0]
    if channels <= 2:  # grey repeated three times
        for c in range(3):
            assert np.array_equal(items[0].rgb[0, c].numpy(), to_unit_float(grey))
    out = fake_engine(items, restore)
    assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
    assert out.shape == (10, 14) + shape[2:]
    assert np.array_equal(out, upsample(array, 2))


def test_numpy_float_inputs_are_clamped_and_keep_their_dtype():
    array = np.array([[[-0.5, 0.5, 1.5]]], dtype=np.float16)
    items, restore = prepare(array)
    assert items[0].rgb.flatten().tolist() == [0.0, 0.5, 1.0]
    out = fake_engine(items, restore, factor=1)
    assert out.dtype == np.float16 and out.tolist() == [[[0.0, 0.5, 1.0]]]


def test_numpy_grey_output_is_luma_of_rgb_result():
    items, restore = prepare(np.zeros((2, 2), dtype=np.uint8))
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299
    out = restore([(rgb, None)])
    assert out.shape == (4, 4) and out.dtype == np.uint8 and np.all(out == round(0.299 * 255))
    items, restore = prepare(np.zeros((2, 2, 2), dtype=np.float32))
    rgb = np.zeros((3, 3, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    out = restore([(rgb, np.full((3, 3), 0.25, np.float32))])
    assert out.shape == (3, 3, 2)
    assert np.allclose(out[..., 0], 0.587, atol=1e-7) and np.all(out[..., 1] == 0.25)


def test_numpy_non_contiguous_and_big_endian_inputs():
    base = random_array((6, 8, 3), np.uint8)
    items, restore = prepare(base[::-1, ::2])
    assert np.array_equal(fake_engine(items, restore, 1), base[::-1, ::2])
    big = random_array((3, 4), np.uint16).astype(">u2")
    items, restore = prepare(big)
    assert items[0].out_dtype == np.uint16
    assert np.array_equal(fake_engine(items, restore, 1), big)


@pytest.mark.parametrize("array, pattern", [
    (np.zeros((4, 4, 3), np.int64), r"dtype int64 .*uint8, uint16, float16, float32 or float64"),
    (np.zeros((4, 4), np.int32), "dtype int32"),
    (np.zeros((4, 4), np.complex64), "dtype complex64"),
    (np.zeros((4, 4), object), "dtype object"),
    (np.zeros((4, 4, 3), bool), r"bool array of shape \(4, 4, 3\)"),
    (np.zeros((4, 4, 5), np.uint8), r"shape \(4, 4, 5\)"),
    (np.zeros((0, 4, 3), np.uint8), r"shape \(0, 4, 3\) is empty"),
    (np.zeros((4, 0), np.float32), r"shape \(4, 0\) is empty"),
    (np.zeros((1, 4, 4, 3), np.uint8), r"shape \(1, 4, 4, 3\) is not an image"),
    (np.zeros((16,), np.uint8), r"shape \(16,\) is not an image"),
])
def test_numpy_bad_inputs(array, pattern):
    with pytest.raises(ImageInputError, match=pattern):
        prepare(array)


def test_unsupported_type():
    with pytest.raises(ImageInputError, match="unsupported image type builtins.list"):
        prepare([[0, 1], [2, 3]])


def test_restore_checks_engine_outputs():
    items, restore = prepare(np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError, match="expects 1 output"):
        restore([])
    with pytest.raises(ValueError, match="uint8"):
        restore([(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8))])
    with pytest.raises(ValueError, match="alpha"):
        restore([(np.zeros((4, 4, 3), np.uint8), None)])


# -------------------------------------------------------------------------------------------- torch
def test_torch_chw_float32():
    tensor = torch.from_numpy(random_array((3, 5, 6), np.float32))
    items, restore = prepare(tensor)
    assert len(items) == 1
    check_prepared(items[0], 5, 6, alpha=False, out_dtype=np.float32)
    assert torch.equal(items[0].rgb[0], tensor)
    out = fake_engine(items, restore)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 10, 12)
    assert out.device == tensor.device
    assert torch.equal(out, tensor.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_torch_batch_float16():
    tensor = torch.rand(2, 3, 4, 5).half()
    items, restore = prepare(tensor)
    assert len(items) == 2
    for b, item in enumerate(items):
        check_prepared(item, 4, 5, alpha=False, out_dtype=np.float32)
        assert torch.equal(item.rgb[0], tensor[b].float())
    out = fake_engine(items, restore)
    assert out.dtype == torch.float16 and out.shape == (2, 3, 8, 10)
    assert torch.equal(out, tensor.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_torch_uint8_rgba_batch():
    tensor = torch.from_numpy(random_array((1, 4, 3, 3), np.uint8))
    items, restore = prepare(tensor)
    check_prepared(items[0], 3, 3, alpha=True, out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert out.dtype == torch.uint8 and out.shape == (1, 4, 6, 6)
    assert torch.equal(out, tensor.repeat_interleave(2, 2).repeat_interleave(2, 3))


@pytest.mark.parametrize("channels", [1, 2])
def test_torch_grey_and_grey_alpha(channels):
    tensor = torch.from_numpy(random_array((channels, 4, 4), np.float32)).to(torch.float64)
    tensor.requires_grad_(True)
    items, restore = prepare(tensor)
    check_prepared(items[0], 4, 4, alpha=channels == 2, out_dtype=np.float32)
    out = fake_engine(items, restore)
    assert out.dtype == torch.float64 and out.shape == (channels, 8, 8) and not out.requires_grad
    assert torch.equal(out, tensor.detach().repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_torch_bfloat16_and_ambiguous_small_layout():
    tensor = torch.rand(4, 4, 3).to(torch.bfloat16)  # first dim 4: read as C=4 (RGBA), H=4, W=3
    items, restore = prepare(tensor)
    check_prepared(items[0], 4, 3, alpha=True, out_dtype=np.float32)
    out = fake_engine(items, restore, factor=1)
    assert out.dtype == torch.bfloat16 and torch.equal(out, tensor)


@pytest.mark.parametrize("tensor, pattern", [
    (torch.zeros(8, 8, 3), r"shape \(8, 8, 3\) is not a channels-first image"),
    (torch.zeros(2, 6, 8, 8), r"shape \(2, 6, 8, 8\)"),
    (torch.zeros(8, 8), r"shape \(8, 8\)"),
    (torch.zeros(1, 1, 3, 4, 4), r"shape \(1, 1, 3, 4, 4\)"),
    (torch.zeros(0, 3, 4, 4), r"shape \(0, 3, 4, 4\) is empty"),
    (torch.zeros(3, 0, 4), r"shape \(3, 0, 4\) is empty"),
    (torch.zeros(3, 4, 4, dtype=torch.int32), "dtype int32 is not supported"),
    (torch.zeros(3, 4, 4, dtype=torch.bool), "dtype bool is not supported"),
])
def test_torch_bad_inputs(tensor, pattern):
    with pytest.raises(ImageInputError, match=pattern):
        prepare(tensor)


# ---------------------------------------------------------------------------------------------- PIL
def rgb_pixels(size=(7, 5)) -> np.ndarray:
    return random_array((size[1], size[0], 3), np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
@pytest.mark.parametrize("size", [(1, 1), (8, 8), (7, 5)])
def test_pil_native_modes_round_trip_exactly(mode, size):
    pixels = random_array((size[1], size[0], len(mode)), np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels)
    assert image.mode == mode
    items, restore = prepare(image)
    check_prepared(items[0], size[1], size[0], alpha=mode in ("RGBA", "LA"), out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == (2 * size[0], 2 * size[1])
    assert np.array_equal(np.asarray(out), np.asarray(image.resize(out.size, Image.Resampling.NEAREST)))


def test_pil_grey_output_uses_pil_luma():
    items, restore = prepare(Image.new("L", (2, 2)))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    out = restore([(rgb, None)])
    assert out.mode == "L"
    assert np.all(np.asarray(out) == Image.fromarray(rgb).convert("L").getpixel((0, 0)))


def image_in_mode(mode: str, size=(6, 4)) -> Image.Image:
    """Random pixels in ``mode`` (raw bytes for multi-band modes)."""
    if mode == "1":
        return Image.fromarray(rgb_pixels(size)).convert("1")
    if mode == "PA":
        return Image.fromarray(random_array((size[1], size[0], 4), np.uint8)).convert("PA")
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, size, random_array((size[1], size[0], bands), np.uint8).tobytes())


@pytest.mark.parametrize("mode, out_mode", [
    ("CMYK", "RGB"), ("YCbCr", "RGB"), ("LAB", "RGB"), ("HSV", "RGB"), ("RGBX", "RGB"),
    ("RGBa", "RGBA"), ("PA", "RGBA"), ("La", "LA"), ("1", "L"),
])
def test_pil_converted_modes(mode, out_mode):
    image = image_in_mode(mode)
    assert image.mode == mode
    items, restore = prepare(image)
    check_prepared(items[0], 4, 6, alpha=out_mode in ("RGBA", "LA"), out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert out.mode == out_mode and out.size == (12, 8)
    assert np.array_equal(np.asarray(out), upsample(np.asarray(image.convert(out_mode)), 2))
    if mode == "1":
        assert set(np.unique(np.asarray(out)).tolist()) == {0, 255}


def test_pil_palette_without_and_with_transparency():
    plain = Image.fromarray(rgb_pixels((6, 4))).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    items, restore = prepare(plain)
    check_prepared(items[0], 4, 6, alpha=False, out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert out.mode == "RGB" and out.size == (12, 8)
    assert np.array_equal(np.asarray(out), upsample(np.asarray(plain.convert("RGB")), 2))

    transparent = plain.copy()
    transparent.info["transparency"] = int(np.asarray(plain)[0, 0])
    items, restore = prepare(transparent)
    check_prepared(items[0], 4, 6, alpha=True, out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert out.mode == "RGBA"
    alpha = np.asarray(out)[..., 3]
    assert alpha[0, 0] == 0 and alpha[0:2, 0:2].max() == 0
    assert np.array_equal(alpha, upsample(np.asarray(transparent.convert("RGBA"))[..., 3], 2))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_pil_16_bit_grey(mode):
    values = random_array((4, 5), np.uint16)
    image = Image.fromarray(values)  # "I;16"
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (5, 4), values.astype(">u2").tobytes())
    elif mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    assert image.mode == mode
    items, restore = prepare(image)
    check_prepared(items[0], 4, 5, alpha=False, out_dtype=np.uint16)
    out = fake_engine(items, restore)
    assert out.mode == "I;16" and out.size == (10, 8)
    assert np.array_equal(np.asarray(out), upsample(values, 2))


@pytest.mark.parametrize("low, high", [(0, 70000), (-5, 100)])
def test_pil_32_bit_int_beyond_16_bit_is_rejected(low, high):
    image = Image.fromarray(np.array([[low, high]], dtype=np.int32))
    with pytest.raises(ImageInputError, match=rf"mode 'I' holds values {low}\.\.{high}, beyond 16 bit"):
        prepare(image)


def test_pil_float_mode_is_clamped():
    image = Image.fromarray(np.array([[-1.0, 0.25], [0.75, 3.0]], dtype=np.float32))
    assert image.mode == "F"
    items, restore = prepare(image)
    check_prepared(items[0], 2, 2, alpha=False, out_dtype=np.float32)
    assert items[0].rgb[0, 1].tolist() == [[0.0, 0.25], [0.75, 1.0]]
    out = fake_engine(items, restore, factor=1)
    assert out.mode == "F" and np.allclose(np.asarray(out), [[0.0, 0.25], [0.75, 1.0]], atol=1e-7)


@pytest.mark.parametrize("mode", ["RGB", "I"])
def test_pil_empty_image_is_rejected(mode):
    with pytest.raises(ImageInputError, match=rf"PIL image \(mode '{mode}'\) of shape \(4, 0\) is empty"):
        prepare(Image.new(mode, (0, 4)))


def test_pil_unknown_mode_is_named(monkeypatch):
    monkeypatch.delitem(imageio._NATIVE, "F")  # every mode Pillow can make is supported otherwise
    with pytest.raises(ImageInputError, match="unsupported mode 'F'; supported modes are .*RGB"):
        prepare(Image.new("F", (2, 2)))


def test_pil_icc_profile_is_kept_unless_colour_space_changes():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (2, 2))
    image.info["icc_profile"] = icc
    assert fake_engine(*prepare(image)).info["icc_profile"] == icc
    cmyk = Image.new("CMYK", (2, 2))
    cmyk.info["icc_profile"] = b"not for RGB"
    assert "icc_profile" not in fake_engine(*prepare(cmyk)).info


# --------------------------------------------------------------------------------------- EXIF, JPEG
def exif_jpeg(path: Path, orientation: int) -> None:
    """64 x 32 stored pixels, dark with a bright red 16 x 16 block in the stored top-left corner."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def red_at(image_or_rgb, x: int, y: int) -> bool:
    pixel = np.asarray(image_or_rgb)[y, x]
    return pixel[0] > 200 and pixel[1] < 60


@pytest.mark.parametrize("orientation, corner", [(6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_applied_exactly_once(tmp_path, orientation, corner):
    path = tmp_path / "rotated.jpg"
    exif_jpeg(path, orientation)
    with Image.open(path) as raw:
        assert raw.size == (64, 32)
        items, _ = prepare(raw)  # a user's PIL image: prepare rotates it
    image = read_image(path)
    assert image.size == (32, 64)  # width and height swapped
    for candidate in (items, prepare(image)[0]):  # and prepare does not rotate it a second time
        assert candidate[0].rgb.shape == (1, 3, 64, 32)
        rgb = from_unit_float(candidate[0].rgb[0].permute(1, 2, 0), np.uint8)
        corners = {"top-left": (8, 8), "top-right": (24, 8), "bottom-left": (8, 56),
                   "bottom-right": (24, 56)}
        assert [name for name, (x, y) in corners.items() if red_at(rgb, x, y)] == [corner]


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (9, 6), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)  # red ink
    image = read_image(path)
    assert image.mode == "CMYK"
    items, restore = prepare(image)
    check_prepared(items[0], 6, 9, alpha=False, out_dtype=np.uint8)
    out = fake_engine(items, restore)
    assert out.mode == "RGB" and out.size == (18, 12)
    assert red_at(out, 9, 6)


def test_16_bit_png_is_read_back_exactly(tmp_path):
    values = random_array((6, 5), np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = read_image(path)
    assert image.mode == "I;16"
    items, restore = prepare(image)
    assert items[0].out_dtype == np.uint16
    out = fake_engine(items, restore, factor=1)
    assert out.mode == "I;16" and np.array_equal(np.asarray(out), values)
    write_image_atomic(out, tmp_path / "copy.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "copy.png")), values)


# -------------------------------------------------------------------------------------- read_image
def test_read_image_loads_and_closes_the_file(tmp_path):
    path = tmp_path / "palette.png"
    source = Image.fromarray(rgb_pixels((5, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    source.save(path)
    image = read_image(path)
    assert image.mode == "P" and image.size == (5, 3)
    assert open_fds_to(path) == []
    path.unlink()  # pixels are already decoded
    assert np.array_equal(np.asarray(image), np.asarray(source))


def test_read_image_bad_input_corpus(tmp_path):
    real = png_bytes(Image.fromarray(random_array((64, 64, 3), np.uint8)))
    buffer = io.BytesIO()
    Image.fromarray(random_array((64, 64, 3), np.uint8)).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    corpus = {
        "text.png": b"hello, I am not a picture\n",
        "empty.png": b"",
        "half.png": real[: len(real) // 2],
        "half.jpg": jpeg[: len(jpeg) // 2],
    }
    for name, data in corpus.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.png").mkdir()
    cases = [
        ("missing.png", f"input not found: {tmp_path / 'missing.png'}"),
        ("folder.png", "is a folder"),
        ("text.png", r"not an image \(unrecognised image format\)"),
        ("empty.png", r"not an image \(the file is empty\)"),
        ("half.png", r"truncated or corrupt image \("),
        ("half.jpg", r"truncated or corrupt image \("),
    ]
    for name, pattern in cases:
        with pytest.raises(ImageInputError, match=pattern) as caught:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
        assert open_fds_to(tmp_path / name) == []


@pytest.mark.parametrize("limit", [1000, 3000])  # 64*64 = 4096 pixels: error (> 2x) and warning range
def test_read_image_decompression_bomb(tmp_path, monkeypatch, limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageInputError, match=rf"big.png: image too large .*MAX_IMAGE_PIXELS = {limit}"):
        read_image(path)


def test_read_image_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    real = png_bytes(Image.fromarray(random_array((40, 50, 3), np.uint8)))
    path.write_bytes(real[: len(real) // 2])  # truncated: a decode would fail with another message
    with pytest.raises(ImageInputError, match=r"wide.png: 50x40 is 2,000 pixels, over the limit of 1,999"):
        read_image(path, max_pixels=1999)
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        read_image(path, max_pixels=2000)
    assert open_fds_to(path) == []


def test_prepare_reports_a_truncated_lazy_pil_image(tmp_path):
    path = tmp_path / "half.png"
    real = png_bytes(Image.fromarray(random_array((64, 64, 3), np.uint8)))
    path.write_bytes(real[: len(real) // 2])
    with Image.open(path) as lazy, pytest.raises(ImageInputError, match="truncated or corrupt"):
        prepare(lazy)


# ------------------------------------------------------------------------------ write_image_atomic
def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix, exact", [(".png", True), (".tif", True), (".tiff", True),
                                           (".bmp", True), (".jpg", False), (".JPEG", False),
                                           (".webp", False)])
def test_write_and_read_back(tmp_path, suffix, exact):
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:8] = (200, 40, 90)
    path = tmp_path / "sub" / "deeper" / f"out{suffix}"  # parent folders are created
    write_image_atomic(Image.fromarray(pixels), path)
    back = np.asarray(read_image(path).convert("RGB"))
    assert back.shape == (16, 16, 3)
    if exact:
        assert np.array_equal(back, pixels)
    else:
        interior = np.r_[0:4, 12:16]  # lossy formats: compare away from the colour edge
        assert np.abs(back[interior].astype(int) - pixels[interior]).max() <= 3
    assert listing(path.parent) == [f"out{suffix}"]


def test_written_file_permissions_follow_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "out.png"
    write_image_atomic(Image.new("RGB", (2, 2)), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("suffix, mode", [(".jpg", "RGBA"), (".jpeg", "LA"), (".bmp", "RGBA"),
                                          (".bmp", "PA")])
def test_alpha_cannot_go_to_jpeg_or_bmp(tmp_path, suffix, mode):
    (tmp_path / f"keep{suffix}").write_bytes(b"old")
    before = listing(tmp_path)
    path = tmp_path / f"keep{suffix}"
    with pytest.raises(ImageInputError, match=rf"{path.name}: .*alpha.*\.png"):
        write_image_atomic(Image.new(mode, (4, 4)), path)
    assert listing(tmp_path) == before and path.read_bytes() == b"old"


def test_palette_transparency_counts_as_alpha(tmp_path):
    image = Image.new("P", (4, 4))
    image.info["transparency"] = 0
    with pytest.raises(ImageInputError, match="alpha"):
        write_image_atomic(image, tmp_path / "x.jpg")
    write_image_atomic(Image.new("P", (4, 4), 3), tmp_path / "plain.jpg")  # no alpha: RGB JPEG
    assert read_image(tmp_path / "plain.jpg").mode == "RGB"


def test_failed_save_leaves_no_part_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous")

    def broken_save(self, fp, format=None, **params):
        fp.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_image_atomic(Image.new("RGB", (4, 4)), path)
    assert listing(tmp_path) == ["out.png"] and path.read_bytes() == b"previous"


def test_overwrite_guard(tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (2, 2)).save(source)
    original = source.read_bytes()
    for target in (source, tmp_path / "." / "sub" / ".." / "in.png"):
        with pytest.raises(ImageInputError, match="refusing to overwrite the input"):
            write_image_atomic(Image.new("RGB", (4, 4), "red"), target, overwrite_guard=source)
    link = tmp_path / "link.png"
    link.symlink_to(source)
    with pytest.raises(ImageInputError, match="refusing to overwrite the input"):
        write_image_atomic(Image.new("RGB", (4, 4)), link, overwrite_guard=source)
    assert source.read_bytes() == original
    write_image_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.png", overwrite_guard=source)
    assert read_image(tmp_path / "out.png").size == (4, 4)


def test_unknown_extension(tmp_path):
    with pytest.raises(ImageInputError, match=r"out\.gif: unsupported output extension '\.gif'; "
                                               r"use one of \.png, \.jpg"):
        write_image_atomic(Image.new("RGB", (2, 2)), tmp_path / "out.gif")
    with pytest.raises(ImageInputError, match="extension ''"):
        write_image_atomic(Image.new("RGB", (2, 2)), tmp_path / "noext")
    assert listing(tmp_path) == []


def test_deep_grey_to_each_format(tmp_path):
    values = np.array([[0, 128, 257, 65535], [1000, 30000, 40000, 65534]], dtype=np.uint16)
    deep = Image.fromarray(values)
    write_image_atomic(deep, tmp_path / "d.tif")
    assert np.array_equal(np.asarray(read_image(tmp_path / "d.tif")), values)
    write_image_atomic(deep, tmp_path / "d.webp")  # 8-bit format: stored as round(v / 257)
    assert read_image(tmp_path / "d.webp").size == (4, 2)
    write_image_atomic(deep, tmp_path / "d.bmp")
    stored = read_image(tmp_path / "d.bmp")
    assert stored.mode == "L"
    assert np.array_equal(np.asarray(stored), np.rint(values / 257).astype(np.uint8))
    floats = Image.fromarray((values / 65535).astype(np.float32))
    write_image_atomic(floats, tmp_path / "f.tiff")
    assert np.array_equal(np.asarray(read_image(tmp_path / "f.tiff")), np.asarray(floats))
    write_image_atomic(floats, tmp_path / "f.png")  # PNG keeps 16 bit
    assert np.array_equal(np.asarray(read_image(tmp_path / "f.png")), values)


# ------------------------------------------------------------------------------------ resize_array
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(6, 9), (6, 9, 1), (6, 9, 2), (6, 9, 3), (6, 9, 4)])
def test_resize_array_shapes_dtypes_and_constants(shape, dtype):
    level = {np.uint8: 173, np.uint16: 40001, np.float32: 0.3}[dtype]
    array = np.full(shape, level, dtype=dtype)
    out = resize_array(array, (14, 5))  # (width, height)
    assert out.dtype == np.dtype(dtype) and out.shape == (5, 14) + shape[2:]
    tolerance = 1e-6 if dtype == np.float32 else 1
    assert np.abs(out.astype(np.float64) - level).max() <= tolerance


def test_resize_array_float_is_clamped_and_uint16_matches_float_path():
    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 1.0
    out = resize_array(step, (20, 20))
    assert out.min() >= 0.0 and out.max() == 1.0  # Lanczos overshoot is clipped
    assert 0.0 < out[0, 10] < 1.0  # a real interpolation happened at the edge
    deep = (step * 65535).astype(np.uint16)
    assert np.array_equal(resize_array(deep, (20, 20)), from_unit_float(out, np.uint16))
    rgb = random_array((8, 8, 3), np.uint8)
    assert np.array_equal(resize_array(rgb, (8, 8)), rgb)  # same size: identity


@pytest.mark.parametrize("array, size, pattern", [
    (np.zeros((4, 4), np.int32), (8, 8), r"shape \(4, 4\) and dtype int32"),
    (np.zeros((4, 4), np.float64), (8, 8), "dtype float64"),
    (np.zeros((0, 4), np.uint8), (8, 8), r"shape \(0, 4\)"),
    (np.zeros((4, 4), np.uint8), (0, 8), r"size \(0, 8\)"),
])
def test_resize_array_bad_inputs(array, size, pattern):
    with pytest.raises(ImageInputError, match=pattern):
        resize_array(array, size)
