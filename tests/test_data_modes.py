"""Every Pillow image mode becomes the right pixels in [0, 1] (or is refused in one line naming the
file and its mode). Expected values are computed here with numpy from the raw values the test wrote,
never with the Pillow conversion under test."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from gradmatch.data import load
from gradmatch.data.images import FULL_SCALE, pixels
from gradmatch.errors import GradmatchError
from tests.test_data import pixels_back

H, W = 5, 7
RNG = np.random.default_rng(7)
U8 = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)  # raw channel values shared by the cases
U16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)


def raw(mode: str, array: np.ndarray) -> Image.Image:
    """An image of ``mode`` holding exactly ``array``'s bytes (no conversion by Pillow)."""
    return Image.frombytes(mode, (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())


def read_back(tmp_path, image: Image.Image, filename: str, **save) -> np.ndarray:
    """Save ``image`` into a one-class folder, load it as a folder dataset: H x W x C pixels in [0, 1]."""
    path = tmp_path / "root" / "only" / filename
    path.parent.mkdir(parents=True)
    image.save(path, **save)
    ds = load(str(tmp_path / "root"))
    assert len(ds) == 1 and ds.images.dtype == torch.float32
    return pixels_back(ds)[0].permute(1, 2, 0).double().numpy()


def unit(image: Image.Image) -> np.ndarray:
    """``pixels`` of an in-memory image (modes no file format stores), scaled to [0, 1]."""
    array = pixels(image, "in memory")
    return array / FULL_SCALE[array.dtype]


def palette_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = U8[..., 0]
    if mode == "P":
        image = raw("P", index)
    else:  # PA: index and alpha
        image = raw("PA", U8[..., :2])
    image.putpalette(palette.reshape(-1).tolist())
    return image, palette[index] / 255


# ------------------------------------------------------------------------------------- modes in files

def test_mode_1_is_black_or_white(tmp_path):
    bits = U8[..., 0] > 127
    image = Image.fromarray(bits)
    assert image.mode == "1"
    got = read_back(tmp_path, image, "a.png")
    np.testing.assert_allclose(got[..., 0], bits.astype(float), atol=1e-6)


@pytest.mark.parametrize("mode,filename", [("L", "a.png"), ("LA", "a.png"), ("LA", "a.tif")])
def test_8bit_grey_and_alpha_dropped(tmp_path, mode, filename):
    image = raw(mode, U8[..., :len(mode)])
    got = read_back(tmp_path, image, filename)
    assert got.shape == (H, W, 1)  # grey stays one channel, alpha is dropped
    np.testing.assert_allclose(got[..., 0], U8[..., 0] / 255, atol=1e-6)


@pytest.mark.parametrize("mode,filename", [("I;16", "a.png"), ("I;16", "a.tif"), ("I;16B", "a.tif")])
def test_16bit_grey_scaled_by_65535(tmp_path, mode, filename):
    data = U16.astype(">u2") if mode == "I;16B" else U16
    image = raw(mode, data)
    assert Image.open(_saved(tmp_path, image, filename)).mode == mode  # the file really is that mode
    got = read_back(tmp_path, image, filename)
    np.testing.assert_allclose(got[..., 0], U16 / 65535, atol=1e-6)


def _saved(tmp_path, image, filename):
    path = tmp_path / "probe" / filename
    path.parent.mkdir(exist_ok=True)
    image.save(path)
    return path


def test_16bit_gradient_keeps_its_order_and_full_range(tmp_path):
    """All 65,536 levels in one 256 x 256 PNG: before, every pixel came back 0 or 1 (clipped at 255)."""
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    got = read_back(tmp_path, image, "ramp.png")[..., 0].reshape(-1)
    assert np.all(np.diff(got) > 0)  # strictly increasing: no two levels merged, order kept
    assert abs(got[0]) < 1e-6 and abs(got[-1] - 1) < 1e-6
    np.testing.assert_allclose(got, np.arange(65536) / 65535, atol=1e-6)


def test_mode_I_read_as_16bit_and_out_of_range_refused(tmp_path):
    values = U16.astype(np.int32)
    image = raw("I", values)
    got = read_back(tmp_path, image, "a.tif")
    np.testing.assert_allclose(got[..., 0], values / 65535, atol=1e-6)
    big = values.copy()
    big[0, 0] = 70000
    path = tmp_path / "big" / "c" / "big.tif"
    path.parent.mkdir(parents=True)
    raw("I", big).save(path)
    with pytest.raises(GradmatchError) as err:
        load(str(tmp_path / "big"))
    message = str(err.value)
    assert str(path) in message and "mode I" in message and "70000" in message and "\n" not in message


def test_mode_F_within_unit_range_as_given_else_refused(tmp_path):
    values = RNG.random((H, W), dtype=np.float32)
    got = read_back(tmp_path, raw("F", values), "a.tif")
    np.testing.assert_allclose(got[..., 0], values, atol=1e-6)
    path = tmp_path / "hot" / "c" / "hot.tif"
    path.parent.mkdir(parents=True)
    raw("F", values * 4).save(path)  # 0..4: not pixels in [0, 1]
    with pytest.raises(GradmatchError) as err:
        load(str(tmp_path / "hot"))
    message = str(err.value)
    assert str(path) in message and "mode F" in message and "[0, 1]" in message and "\n" not in message


@pytest.mark.parametrize("mode,filename", [("RGB", "a.png"), ("RGB", "a.bmp"), ("RGBA", "a.png"),
                                           ("RGBA", "a.tif"), ("RGBA", "a.webp")])
def test_rgb_and_rgba_alpha_dropped(tmp_path, mode, filename):
    data = U8[..., :len(mode)].copy()
    if mode == "RGBA":
        data[0, :, 3] = 0  # fully transparent pixels keep their stored colour
    image = raw(mode, data)
    save = {"lossless": True, "exact": True} if filename.endswith(".webp") else {}  # keep hidden colours
    got = read_back(tmp_path, image, filename, **save)
    np.testing.assert_allclose(got, data[..., :3] / 255, atol=1e-6)


@pytest.mark.parametrize("mode,filename", [("P", "a.png"), ("P", "a.gif"), ("PA", "a.tif")])
def test_palette_looked_up(tmp_path, mode, filename):
    image, expected = palette_image(mode)
    got = read_back(tmp_path, image, filename)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_palette_with_transparency_keeps_colours(tmp_path):
    image, expected = palette_image("P")
    image.info["transparency"] = int(U8[0, 0, 0])  # one palette entry is transparent
    got = read_back(tmp_path, image, "a.png")
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cmyk(tmp_path):
    cmyk = U8.astype(float)
    expected = (1 - cmyk[..., :3] / 255) * (1 - cmyk[..., 3:] / 255)
    got = read_back(tmp_path, raw("CMYK", U8), "a.tif")
    np.testing.assert_allclose(got, expected, atol=1 / 255 + 1e-6)  # 8-bit rounding


def test_ycbcr(tmp_path):
    y, cb, cr = (U8[..., i].astype(float) - (0 if i == 0 else 128) for i in range(3))
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    expected = np.clip(rgb, 0, 255) / 255  # JPEG's full-range BT.601
    got = read_back(tmp_path, raw("YCbCr", U8[..., :3]), "a.tif")
    np.testing.assert_allclose(got, expected, atol=1.5 / 255)  # integer arithmetic in Pillow


def test_lab_refused_naming_file_and_mode(tmp_path):
    path = tmp_path / "root" / "c" / "lab.tif"
    path.parent.mkdir(parents=True)
    raw("LAB", U8[..., :3]).save(path)
    assert Image.open(path).mode == "LAB"
    with pytest.raises(GradmatchError) as err:
        load(str(tmp_path / "root"))
    message = str(err.value)
    assert str(path) in message and "mode LAB" in message and "save it as RGB" in message
    assert "\n" not in message


def test_16bit_grey_among_colour_is_repeated_over_channels(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(U16).save(root / "a" / "deep.png")
    raw("RGB", U8[..., :3]).save(root / "b" / "colour.png")
    back = pixels_back(load(str(root))).double().numpy()
    assert back.shape == (2, 3, H, W)
    for c in range(3):
        np.testing.assert_allclose(back[0, c], U16 / 65535, atol=1e-6)
    np.testing.assert_allclose(back[1].transpose(1, 2, 0), U8[..., :3] / 255, atol=1e-6)


def test_colour_test_image_made_grey_by_luma_when_training_is_grey(tmp_path):
    root = tmp_path / "root"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
    Image.fromarray(U16).save(root / "train" / "a" / "deep.png")
    raw("RGB", U8[..., :3]).save(root / "test" / "a" / "colour.png")
    test = load(str(root), split="test")
    r, g, b = (U8[..., i].astype(float) for i in range(3))
    expected = (r * 299 + g * 587 + b * 114) / 1000 / 255  # ITU-R 601-2 luma
    assert test.channel == 1
    np.testing.assert_allclose(pixels_back(test)[0, 0].double().numpy(), expected, atol=1 / 255)


# ------------------------------------------------------------------------- modes only held in memory

def test_in_memory_modes_hsv():
    hsv = U8[..., :3]
    expected = np.array([[colorsys.hsv_to_rgb(*(px / 255)) for px in row] for row in hsv])
    np.testing.assert_allclose(unit(raw("HSV", hsv)), expected, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("mode", ["I;16L", "I;16N"])
def test_in_memory_16bit_variants(mode):
    np.testing.assert_allclose(unit(raw(mode, U16))[..., 0], U16 / 65535, atol=1e-9)


def test_in_memory_rgbx_and_premultiplied_alpha():
    np.testing.assert_allclose(unit(raw("RGBX", U8)), U8[..., :3] / 255, atol=1e-9)
    alpha = np.maximum(U8[..., 3:], 1).astype(np.uint8)
    colour = (U8[..., :3].astype(np.uint16) * alpha // 255).astype(np.uint8)  # premultiplied: colour <= alpha
    expected = np.clip(colour * 255.0 / alpha, 0, 255) / 255
    np.testing.assert_allclose(unit(raw("RGBa", np.concatenate([colour, alpha], -1))), expected,
                               atol=1 / 255 + 1e-6)
    grey = np.concatenate([colour[..., :1], alpha], -1)
    got = unit(raw("La", grey))
    assert got.shape == (H, W, 1)
    np.testing.assert_allclose(got[..., 0], expected[..., 0], atol=1 / 255 + 1e-6)


def test_every_pillow_mode_is_read_or_refused_in_one_line():
    """No mode slips through as something else: each gives 1 or 3 channels in [0, 1] or one error line."""
    modes = getattr(Image, "MODES", ["1", "CMYK", "F", "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "L",
                                     "LA", "LAB", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "YCbCr"])
    refused = []
    for mode in modes:
        image = Image.new(mode, (3, 2))
        try:
            got = unit(image)
        except GradmatchError as e:
            assert "\n" not in str(e) and f"mode {mode}" in str(e)
            refused.append(mode)
            continue
        assert got.shape[:2] == (2, 3) and got.shape[2] in (1, 3), mode
        assert 0 <= got.min() and got.max() <= 1, mode
    assert refused == ["LAB"]
