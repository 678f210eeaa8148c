"""Tests for nst_jax.images: loading, resizing, saving, colors, listing."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nst_jax import images
from nst_jax.images import ImageError

SAMPLES = Path(os.environ.get("NST_JAX_SAMPLE_IMAGES", "/work/shared/images"))
needs_samples = pytest.mark.skipif(
    not (SAMPLES / "tubingen.jpg").is_file(), reason=f"sample images not found in {SAMPLES}"
)
is_root = hasattr(os, "geteuid") and os.geteuid() == 0


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _ramp(h: int, w: int) -> np.ndarray:
    """A smooth float image whose values are mostly off the 1/255 grid."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], axis=-1) * 0.9 + 0.05


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------
# load_image: real samples and pixel modes
# --------------------------------------------------------------------------


@needs_samples
def test_load_sample_is_float_rgb_in_unit_range():
    img = images.load_image(SAMPLES / "tubingen.jpg")
    assert img.dtype == np.float32
    assert img.shape == (768, 1024, 3)  # PIL size is (width, height) = (1024, 768)
    assert 0.0 <= img.min() < 0.1 and 0.9 < img.max() <= 1.0


@needs_samples
def test_load_grayscale_sample_has_three_equal_channels():
    with Image.open(SAMPLES / "escher_sphere.jpg") as raw:
        assert raw.mode == "L"
        gray = np.asarray(raw, dtype=np.float32) / 255
    img = images.load_image(str(SAMPLES / "escher_sphere.jpg"))
    assert img.shape == gray.shape + (3,)
    np.testing.assert_array_equal(img[..., 0], gray)
    np.testing.assert_array_equal(img[..., 1], img[..., 0])
    np.testing.assert_array_equal(img[..., 2], img[..., 0])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_alpha_is_composited_over_white(tmp_path, mode):
    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[...] = (200, 100, 0, 51)  # alpha = 51 / 255 = 0.2
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
    if mode == "LA":
        rgba[..., :3] = rgba[..., :1]  # gray: keep the red channel value
    pil = Image.fromarray(rgba)  # mode RGBA
    if mode != "RGBA":
        pil = pil.convert(mode)
    # Pillow cannot write PA files; that mode is loaded from memory.
    img = images.load_image(pil if mode == "PA" else _save(pil, tmp_path / "a.png"))
    # color * alpha + 1 * (1 - alpha), by hand:
    expected = {
        "RGBA": (200 / 255 * 0.2 + 0.8, 100 / 255 * 0.2 + 0.8, 0.8),
        "LA": (200 / 255 * 0.2 + 0.8,) * 3,
    }
    if mode in expected:
        np.testing.assert_allclose(img[5, 5], expected[mode], atol=1e-6)
    else:  # PA goes through an adaptive palette; colors are approximate
        np.testing.assert_allclose(img[5, 5], expected["RGBA"], atol=0.02)
    np.testing.assert_allclose(img[0, 0], 1.0, atol=1e-6)
    if mode == "RGBA":
        np.testing.assert_allclose(img[0, 1], np.array([10, 20, 30]) / 255, atol=1e-6)


def test_16bit_png_keeps_precision(tmp_path):
    values = np.full((16, 16), 1000, np.uint16)
    values[0, 0], values[0, 1] = 300, 65535  # 300 would clip to 255 in 8 bits
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    img = images.load_image(path)
    assert img.dtype == np.float32
    np.testing.assert_allclose(img[5, 5], 1000 / 65535, atol=1e-4)
    np.testing.assert_allclose(img[0, 0], 300 / 65535, rtol=1e-6)
    np.testing.assert_allclose(img[0, 1], 1.0)


@pytest.mark.parametrize("mode, dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16N", "=u2")])
def test_16bit_byte_orders(mode, dtype):
    raw = np.full((16, 16), 1000, np.uint16).astype(dtype).tobytes()
    img = images.load_image(Image.frombytes(mode, (16, 16), raw))
    np.testing.assert_allclose(img, 1000 / 65535, rtol=1e-6)


def test_32bit_int_and_float_modes_are_scaled_not_clipped():
    as_int = Image.fromarray(np.full((16, 16), 30000, np.int32))
    assert as_int.mode == "I"
    np.testing.assert_allclose(images.load_image(as_int), 30000 / 65535, rtol=1e-6)
    as_float = Image.fromarray(np.full((16, 16), 0.3, np.float32))
    assert as_float.mode == "F"
    np.testing.assert_allclose(images.load_image(as_float), 0.3, rtol=1e-6)


def test_float_mode_outside_unit_range_is_an_error():
    pil = Image.fromarray(np.full((16, 16), 200.0, np.float32))
    with pytest.raises(ImageError, match=r"style image.*\[0, 1\].*divide by 255"):
        images.load_image(pil, label="style image")


def test_palette_image(tmp_path):
    pil = Image.new("P", (16, 16), 1)
    pil.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pil.putpixel((0, 0), 0)
    img = images.load_image(_save(pil, tmp_path / "p.png"))
    np.testing.assert_array_equal(img[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(img[5, 5], [0, 0, 1])


def test_palette_transparency_is_composited_over_white(tmp_path):
    pil = Image.new("P", (16, 16), 1)
    pil.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    path = _save(pil, tmp_path / "t.png", transparency=1)
    np.testing.assert_array_equal(images.load_image(path)[5, 5], [1, 1, 1])


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "RGBX"])
def test_other_color_modes_convert_to_rgb(mode):
    color = np.array([200, 100, 50])
    pil = Image.new("RGB", (16, 16), tuple(int(c) for c in color)).convert(mode)
    img = images.load_image(pil)
    assert img.shape == (16, 16, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[3, 3], color / 255, atol=4 / 255)


def test_cmyk_jpeg_converts_through_pillow(tmp_path):
    # Pillow writes (and reads back) Adobe-inverted CMYK JPEGs.
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    np.testing.assert_allclose(images.load_image(path)[8, 8], [1, 0, 0], atol=2 / 255)
    # Pillow's formula: channel = (255 - C) * (255 - K) / 255
    gray = images.load_image(Image.new("CMYK", (16, 16), (0, 0, 0, 128)))
    np.testing.assert_allclose(gray[0, 0], 127 / 255, atol=1 / 255)


def test_cmyk_with_icc_profile_warns(tmp_path):
    cmyk = Image.new("CMYK", (16, 16))
    path = _save(cmyk, tmp_path / "icc.jpg", icc_profile=b"not a real profile")
    with pytest.warns(UserWarning, match=r"icc\.jpg.*ICC profile"):
        images.load_image(path)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((32, 48, 3), np.uint8)  # 48 wide, 32 high as stored
    stored[:16, :16] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = _save(Image.fromarray(stored), tmp_path / "rot.jpg", exif=exif, quality=100)
    img = images.load_image(path)
    assert img.shape == (48, 32, 3)
    # After a clockwise quarter turn the top-left corner is at the top-right.
    np.testing.assert_allclose(img[2:14, -14:-2].mean(axis=(0, 1)), [1, 0, 0], atol=0.05)
    np.testing.assert_allclose(img[2:14, 2:14].mean(axis=(0, 1)), [0, 0, 0], atol=0.05)


# --------------------------------------------------------------------------
# load_image: arrays
# --------------------------------------------------------------------------


def test_uint8_and_uint16_arrays_are_scaled():
    u8 = np.full((16, 17, 3), 51, np.uint8)
    np.testing.assert_allclose(images.load_image(u8), 0.2, rtol=1e-6)
    u16 = np.full((16, 17, 3), 13107, np.uint16)
    np.testing.assert_allclose(images.load_image(u16), 0.2, rtol=1e-6)


@pytest.mark.parametrize("shape", [(16, 17), (16, 17, 1)])
def test_grayscale_arrays_are_replicated(shape):
    gray = np.linspace(0, 1, 16 * 17, dtype=np.float64).reshape(shape)
    img = images.load_image(gray)
    assert img.shape == (16, 17, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 2], gray.reshape(16, 17), rtol=1e-6)


def test_float_array_is_copied_and_tiny_overshoot_clipped():
    arr = np.full((16, 16, 3), 0.5, np.float32)
    arr[0, 0, 0] = 1.0 + 1e-5
    img = images.load_image(arr)
    assert img is not arr and img.max() == 1.0


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((16, 16, 4)), r"shape \(16, 16, 4\).*alpha"),
        (np.zeros((3, 16, 16)), r"channels-first.*transpose"),
        (np.zeros((2, 16, 16, 3)), r"shape \(2, 16, 16, 3\)"),
        (np.full((16, 16, 3), np.nan), r"1?768 NaN or infinite"),
        (np.full((16, 16, 3), 128.0), r"\[128, 128\].*divide by 255"),
        (np.full((16, 16, 3), -0.5), r"\[-0.5, -0.5\]"),
        (np.zeros((16, 16, 3), np.int64), r"dtype int64.*uint8"),
        (np.zeros((16, 16, 3), bool), r"dtype bool"),
        (np.zeros((1, 1, 3)), r"1x1 pixels.*at least 16"),
        (np.zeros((0, 20, 3)), r"0x20 pixels"),
    ],
)
def test_bad_arrays_raise_with_label(array, match):
    with pytest.raises(ImageError, match=r"^style image 2 .*" + match):
        images.load_image(array, label="style image 2")


def test_unsupported_source_type():
    with pytest.raises(ImageError, match="content image has unsupported type list"):
        images.load_image([[0.0]], label="content image")


def test_array_with_array_protocol_is_accepted():
    class Wrapped:  # stands in for a jax.Array
        def __array__(self, dtype=None, copy=None):
            return np.full((16, 16, 3), 0.25, np.float32)

    np.testing.assert_allclose(images.load_image(Wrapped()), 0.25)


# --------------------------------------------------------------------------
# load_image: bad files
# --------------------------------------------------------------------------


def _assert_error_names(path: Path, match: str, label: str = "content image") -> None:
    with pytest.raises(ImageError, match=match) as info:
        images.load_image(path, label=label)
    assert f"{label} '{path}'" in str(info.value)


def test_missing_file(tmp_path):
    _assert_error_names(tmp_path / "nope.jpg", "not found; check the path")


def test_directory(tmp_path):
    _assert_error_names(tmp_path, "is a directory")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n")
    _assert_error_names(path, "not an image file Pillow can read")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_error_names(path, "not an image file")


@needs_samples
def test_truncated_jpeg(tmp_path):
    data = (SAMPLES / "tubingen.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_error_names(path, "truncated or corrupt")


def test_one_pixel_image(tmp_path):
    path = _save(Image.new("RGB", (1, 1)), tmp_path / "dot.png")
    _assert_error_names(path, r"1x1 pixels.*VGG-19.*at least 16")


def test_thin_image_is_too_small(tmp_path):
    path = _save(Image.new("RGB", (300, 15)), tmp_path / "strip.png")
    _assert_error_names(path, r"15x300 pixels")


@pytest.mark.parametrize("limit", [3000, 1000])  # Pillow warns above 1x, errors above 2x
def test_decompression_bomb(tmp_path, monkeypatch, limit):
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "big.png")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    _assert_error_names(path, r"too large to open safely.*MAX_IMAGE_PIXELS")


# --------------------------------------------------------------------------
# target_size
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, size, expected",
    [
        (480, 640, 512, (384, 512)),
        (640, 480, 512, (512, 384)),
        (333, 500, 100, (66, 100)),  # 66.6 truncates to 66
        (500, 333, 100, (100, 66)),
        (300, 300, 64, (64, 64)),
        (768, 1024, 512, (384, 512)),
        (10, 1000, 50, (1, 50)),  # 0.5 -> at least 1
        (100, 200, 400, (200, 400)),  # upscaling
    ],
)
def test_target_size_examples(h, w, size, expected):
    assert images.target_size(h, w, size) == expected


def _neural_style_pt(h: int, w: int, image_size: int) -> tuple[int, int]:
    # ProGamerGov/neural-style-pt: preprocess()
    return tuple(int((float(image_size) / max(w, h)) * x) for x in (h, w))


def test_target_size_long_side_is_exact_where_the_float_formula_is_not():
    # float(256) / 161 * 161 == 255.99999999999997, so neural-style-pt gives 255.
    assert _neural_style_pt(161, 100, 256) == (255, 159)
    assert images.target_size(161, 100, 256) == (256, 159)
    assert images.target_size(100, 161, 256) == (159, 256)


@given(
    h=st.integers(1, 20_000),
    w=st.integers(1, 20_000),
    size=st.integers(1, 8192),
)
def test_target_size_properties(h, w, size):
    new_h, new_w = images.target_size(h, w, size)
    ref_h, ref_w = _neural_style_pt(h, w, size)
    if h >= w:
        assert new_h == size and new_w == max(1, ref_w)
    else:
        assert new_w == size and new_h == max(1, ref_h)
    assert 1 <= min(new_h, new_w) <= max(new_h, new_w) == size


@pytest.mark.parametrize("size", [0, -5, 1.5, "512"])
def test_target_size_rejects_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        images.target_size(100, 100, size)


# --------------------------------------------------------------------------
# resize
# --------------------------------------------------------------------------


def test_resize_does_not_quantize_to_8_bits():
    out = images.resize(_ramp(40, 50), (23, 31))
    assert out.dtype == np.float32 and out.shape == (23, 31, 3)
    off_grid = np.abs(out * 255 - np.rint(out * 255)) > 1e-3
    assert off_grid.mean() > 0.9


@pytest.mark.parametrize("size", [(20, 30), (80, 100), (37, 20), (16, 16)])
def test_resize_matches_pillow_bilinear_on_uint8(size):
    u8 = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(u8).resize(size[::-1], Image.Resampling.BILINEAR)) / 255
    out = images.resize(u8.astype(np.float32) / 255, size)
    # Pillow's 8-bit path rounds after each of its two passes; ours never does.
    np.testing.assert_allclose(out, ref, atol=1 / 255 + 1e-6)


def test_resize_keeps_values_outside_unit_range_and_2d_shape():
    arr = np.linspace(-120, 150, 30 * 40, dtype=np.float32).reshape(30, 40)
    out = images.resize(arr, (15, 20))
    assert out.shape == (15, 20)
    assert -120 <= out.min() < -100 and 130 < out.max() <= 150


def test_resize_to_same_size_is_identity():
    arr = _ramp(20, 30)
    np.testing.assert_array_equal(images.resize(arr, (20, 30)), arr)


def test_resize_rejects_bad_input():
    with pytest.raises(ImageError, match=r"shape \(5,\)"):
        images.resize(np.zeros(5), (4, 4))
    with pytest.raises(ValueError, match="size_hw must be a positive integer"):
        images.resize(np.zeros((8, 8)), (0, 4))


def test_resize_long_side():
    out = images.resize_long_side(_ramp(333, 500), 100)
    assert out.shape == (66, 100, 3)


def test_resize_long_side_refuses_too_small_results():
    with pytest.raises(ImageError, match=r"style image.*would become 4x64.*at least 16"):
        images.resize_long_side(np.zeros((20, 320, 3), np.float32), 64, label="style image")


# --------------------------------------------------------------------------
# to_uint8 / to_pil
# --------------------------------------------------------------------------


def test_to_uint8_rounds_and_clips():
    k = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(images.to_uint8(k.astype(np.float32) / 255), k)
    np.testing.assert_array_equal(images.to_uint8(np.array([-1.0, 0.5, 2.0])), [0, 128, 255])
    assert images.to_uint8(k) is k


def test_to_uint8_refuses_nan():
    with pytest.raises(ImageError, match="1 NaN or infinite"):
        images.to_uint8(np.array([0.5, np.nan]))


def test_to_pil_modes():
    assert images.to_pil(np.zeros((16, 16, 3))).mode == "RGB"
    assert images.to_pil(np.zeros((16, 16))).mode == "L"
    with pytest.raises(ImageError, match=r"shape \(16, 16, 4\)"):
        images.to_pil(np.zeros((16, 16, 4)))


# --------------------------------------------------------------------------
# save_image / read_metadata / check_output_path
# --------------------------------------------------------------------------


def _random_image(h: int = 24, w: int = 32) -> np.ndarray:
    u8 = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return u8.astype(np.float32) / 255


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".PNG"])
def test_lossless_round_trip_is_exact(tmp_path, ext):
    img = _random_image()
    path = images.save_image(img, tmp_path / f"out{ext}")
    assert path == tmp_path / f"out{ext}"
    np.testing.assert_array_equal(images.load_image(path), img)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_lossy_formats_round_trip_closely(tmp_path, ext):
    img = images.resize(_ramp(24, 32), (48, 64))  # smooth: lossy codecs do well
    out = images.load_image(images.save_image(img, tmp_path / f"out{ext}"))
    assert np.abs(out - img).mean() < 0.01


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_metadata_round_trip(tmp_path, ext):
    meta = {"content": "tübingen.jpg", "style_weights": [1.0, 0.5], "nested": {"seed": 0}}
    path = images.save_image(_random_image(), tmp_path / f"m{ext}", metadata=meta)
    assert images.read_metadata(path) == meta


def test_png_metadata_is_a_text_chunk_with_software(tmp_path):
    path = images.save_image(_random_image(), tmp_path / "m.png", metadata={"a": Path("x")})
    with Image.open(path) as img:
        assert json.loads(img.text["nst_jax"]) == {"a": "x"}  # non-JSON values via str
        assert img.text["Software"].startswith("nst_jax ")


@needs_samples
def test_read_metadata_none_when_absent(tmp_path):
    assert images.read_metadata(images.save_image(_random_image(), tmp_path / "n.png")) is None
    assert images.read_metadata(images.save_image(_random_image(), tmp_path / "n.jpg")) is None
    assert images.read_metadata(SAMPLES / "tubingen.jpg") is None


def test_read_metadata_errors(tmp_path):
    with pytest.raises(ImageError, match="nope.png' not found"):
        images.read_metadata(tmp_path / "nope.png")
    fake = tmp_path / "fake.png"
    fake.write_text("text")
    with pytest.raises(ImageError, match="fake.png' could not be read"):
        images.read_metadata(fake)


def test_save_creates_a_missing_last_directory_level(tmp_path):
    path = images.save_image(_random_image(), tmp_path / "a" / "out.png")
    assert path.is_file()
    with pytest.raises(ImageError, match=r"its parent '.*b' does not exist"):  # only the last level
        images.save_image(_random_image(), tmp_path / "b" / "c" / "out.png")
    assert not (tmp_path / "b").exists()


def test_saved_file_gets_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = images.save_image(_random_image(), tmp_path / "perm.png")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_save_refuses_nan(tmp_path, bad):
    img = _random_image()
    img[3, 4, 1] = bad
    with pytest.raises(ImageError, match=r"refusing to write NaN pixels to '.*out\.png': 1 values"):
        images.save_image(img, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["out.bmp", "out", "out.png.txt"])
def test_unsupported_extension(tmp_path, name):
    for call in (lambda p: images.save_image(_random_image(), p), images.check_output_path):
        with pytest.raises(ImageError, match=r"unsupported extension.*\.jpeg, \.jpg, \.png"):
            call(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_failed_rename_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    old = tmp_path / "out.png"
    old.write_bytes(b"previous result")
    monkeypatch.setattr(os, "replace", _fail)
    with pytest.raises(ImageError, match=r"could not write '.*out\.png'.*No space left"):
        images.save_image(_random_image(), old)
    assert old.read_bytes() == b"previous result"
    assert _temp_files(tmp_path) == []


def test_failure_during_encoding_leaves_no_partial_output(tmp_path, monkeypatch):
    def half_write(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(ImageError, match="Input/output error"):
        images.save_image(_random_image(), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_write_cleans_up_and_propagates(tmp_path, monkeypatch):
    def interrupted(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        images.save_image(_random_image(), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_output_path_is_a_directory(tmp_path):
    target = tmp_path / "dir.png"
    target.mkdir()
    for call in (lambda p: images.save_image(_random_image(), p), images.check_output_path):
        with pytest.raises(ImageError, match=r"dir\.png' is a directory; add a file name"):
            call(target)


def test_parent_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "out.png"
    for call in (lambda p: images.save_image(_random_image(), p), images.check_output_path):
        with pytest.raises(ImageError, match=rf"'{blocker}' is a file, not a directory"):
            call(target)
    assert blocker.read_text() == "x"


@pytest.mark.skipif(is_root or os.name != "posix", reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for call in (lambda p: images.save_image(_random_image(), p), images.check_output_path):
            with pytest.raises(ImageError, match=rf"'{locked}' is not writable"):
                call(locked / "out.png")
    finally:
        locked.chmod(0o700)


def test_unwritable_directory_simulated(tmp_path, monkeypatch):
    # The same path as above, for runs as root (as in containers).
    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.write, "create_temp", denied)
    for call in (lambda p: images.save_image(_random_image(), p), images.check_output_path):
        with pytest.raises(ImageError, match=rf"'{tmp_path}' is not writable"):
            call(tmp_path / "out.png")


def test_check_output_path_has_no_side_effects(tmp_path):
    target = tmp_path / "new" / "out.jpg"
    assert images.check_output_path(str(target)) == target
    assert list(tmp_path.iterdir()) == []  # neither directories nor probe files
    assert images.check_output_path(tmp_path / "out.webp") == tmp_path / "out.webp"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# colors
# --------------------------------------------------------------------------


def test_yuv_coefficients_match_torch_image():
    red = images.rgb_to_yuv(np.array([1.0, 0, 0]))
    np.testing.assert_allclose(red, [0.299, -0.14713, 0.615], rtol=1e-6)
    # torch's image.yuv2rgb: r = y + 1.13983 v; g = y - 0.39465 u - 0.58060 v; b = y + 2.03211 u
    torch_inverse = np.array([[1, 0, 1.13983], [1, -0.39465, -0.58060], [1, 2.03211, 0]])
    yuv = np.random.default_rng(2).uniform(-0.5, 1, (100, 3))
    np.testing.assert_allclose(images.yuv_to_rgb(yuv), yuv @ torch_inverse.T, atol=1e-3)


def test_yuv_round_trips():
    rgb = np.random.default_rng(3).uniform(0, 1, (8, 9, 3))
    np.testing.assert_allclose(images.yuv_to_rgb(images.rgb_to_yuv(rgb)), rgb, atol=1e-6)
    yuv = images.rgb_to_yuv(rgb)
    np.testing.assert_allclose(images.rgb_to_yuv(images.yuv_to_rgb(yuv)), yuv, atol=1e-6)


def test_original_colors_takes_luminance_from_generated_and_chroma_from_content():
    rng = np.random.default_rng(4)
    generated = rng.uniform(0.4, 0.6, (16, 20, 3)).astype(np.float32)
    content = rng.uniform(0.45, 0.55, (16, 20, 3)).astype(np.float32)
    out = images.original_colors(content, generated)
    assert out.shape == generated.shape and out.dtype == np.float32
    assert 0 < out.min() and out.max() < 1  # in gamut: clipping played no part
    got, gen, con = (images.rgb_to_yuv(x) for x in (out, generated, content))
    np.testing.assert_allclose(got[..., 0], gen[..., 0], atol=1e-5)
    np.testing.assert_allclose(got[..., 1:], con[..., 1:], atol=1e-5)


def test_original_colors_resizes_content_and_clips():
    content = np.zeros((32, 40, 3), np.float32)
    content[..., 0] = 1.0  # saturated red: chroma pushes the result out of gamut
    generated = np.full((16, 20, 3), 0.9, np.float32)
    out = images.original_colors(content, generated)
    assert out.shape == (16, 20, 3)
    assert out.min() >= 0 and out.max() == 1.0
    assert np.all(out[..., 0] > out[..., 1])  # red content stays red


def test_original_colors_rejects_bad_shapes():
    with pytest.raises(ImageError, match=r"content image has shape \(16, 16\)"):
        images.original_colors(np.zeros((16, 16)), np.zeros((16, 16, 3)))


# --------------------------------------------------------------------------
# list_images
# --------------------------------------------------------------------------


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png", "sub/d.png"]:
        (folder / name).write_bytes(b"")  # list_images looks at names only
    return folder


def test_list_images_directory(image_dir):
    assert images.list_images(image_dir) == [image_dir / n for n in ("a.JPG", "b.png", "c.webp")]


def test_list_images_glob(image_dir):
    assert images.list_images(str(image_dir / "*.png")) == [image_dir / "b.png"]
    assert images.list_images(str(image_dir / "**" / "*.png")) == [
        image_dir / "b.png",
        image_dir / "sub" / "d.png",
    ]


def test_list_images_manifest(image_dir, tmp_path):
    manifest = tmp_path / "jobs.txt"
    manifest.write_text(f"# batch 1\n\nimgs/b.png\n  {image_dir / 'a.JPG'}  \nimgs/sub/d.png\n")
    expected = [image_dir / "b.png", image_dir / "a.JPG", image_dir / "sub" / "d.png"]
    assert images.list_images(manifest) == expected


def test_list_images_single_file(image_dir):
    assert images.list_images(image_dir / "b.png") == [image_dir / "b.png"]


def test_list_images_manifest_with_missing_files(image_dir, tmp_path):
    manifest = tmp_path / "jobs.txt"
    manifest.write_text("imgs/b.png\n# ok\nimgs/gone.png\n")
    match = r"jobs\.txt' lists 1 missing file\(s\): line 3: '.*gone\.png'"
    with pytest.raises(ImageError, match=match):
        images.list_images(manifest)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("sub", r"no images found for directory '.*sub'"),
        ("*.gif", r"no images found for glob pattern '.*\*\.gif'"),
        ("missing_dir", r"'.*missing_dir' is not an existing directory, image, manifest"),
        ("notes.txt", r"no images found for manifest '.*notes\.txt'"),
    ],
)
def test_list_images_errors(image_dir, spec, match):
    (image_dir / "sub" / "d.png").unlink()  # make "sub" empty
    with pytest.raises(ImageError, match=match):
        images.list_images(str(image_dir / spec))


def test_list_images_binary_manifest(tmp_path):
    manifest = tmp_path / "list.dat"
    manifest.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ImageError, match=r"list\.dat' is not a UTF-8 text file"):
        images.list_images(manifest)


def test_png_bytes_in_memory_round_trip():
    # PIL images opened from bytes (e.g. uploads) load like files, minus EXIF rotation.
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 51, 255)).save(buffer, format="PNG")
    buffer.seek(0)
    with Image.open(buffer) as pil:
        np.testing.assert_allclose(images.load_image(pil)[0, 0], [0, 0.2, 1], rtol=1e-6)
