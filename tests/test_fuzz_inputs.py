"""Fuzzing the inputs: broken image files and arbitrary setting values.

* ``load_image`` on random bytes and on valid images (JPEG, PNG, WebP, TIFF, GIF, BMP written by
  Pillow) with bytes flipped, overwritten, inserted, deleted or cut off: it returns a float32
  (H, W, 3) image in [0, 1] or raises ``ImageError`` naming the file; never another exception,
  never a hang; any warning is an ``ImageWarning`` naming the file.
* Every ``Settings`` field given ints (huge, negative), floats (NaN, inf), strings, bytes, None,
  lists: it is accepted (and the settings stay hashable) or rejected with a ``SettingError``
  naming the field, never another exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import threading
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nst_jax import cli, images
from nst_jax.config import SettingError, Settings

# Mutated headers can declare large images: a low pixel limit keeps every decode small and fast.
MAX_PIXELS = 1 << 18
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _valid_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (18, 16, 4), dtype=np.uint8))
    frames = [Image.new("RGB", (16, 20), c) for c in ("red", "blue")]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg": _encoded(rgb, "JPEG", quality=80),
        "jpeg_exif": _encoded(rgb, "JPEG", quality=80, exif=exif),
        "jpeg_cmyk": _encoded(rgb.convert("CMYK"), "JPEG"),
        "png": _encoded(rgb, "PNG"),
        "png_rgba": _encoded(rgba, "PNG"),
        "png_16bit": _encoded(Image.fromarray(rng.integers(0, 65536, (16, 20), dtype=np.uint16)), "PNG"),
        "png_palette": _encoded(rgb.convert("P"), "PNG", transparency=3),
        "apng": _encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "webp": _encoded(rgb, "WEBP", quality=80),
        "webp_lossless": _encoded(rgba, "WEBP", lossless=True),
        "tiff": _encoded(rgb, "TIFF"),
        "tiff_deflate": _encoded(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_pages": _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "gif": _encoded(rgb.convert("P"), "GIF"),
        "gif_animated": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _encoded(rgb, "BMP"),
    }


VALID = _valid_files()

# (kind, position, bytes): position is taken modulo the file's length
MUTATION = st.tuples(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]),
                     st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16))


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, pos, chunk in mutations:
        if not out:
            break
        i = pos % len(out)
        if kind == "flip":
            out[i] ^= chunk[0] or 0xFF
        elif kind == "overwrite":
            out[i:i + len(chunk)] = chunk
        elif kind == "insert":
            out[i:i] = chunk
        elif kind == "delete":
            del out[i:i + len(chunk)]
        else:
            del out[i:]
    return bytes(out)


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Fails (rather than hangs) if the block runs longer than ``seconds`` (POSIX main thread only)."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"load_image ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check_load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with _time_limit(10), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            img = images.load_image(path, label="fuzzed image", max_pixels=MAX_PIXELS)
        except images.ImageError as e:
            assert f"fuzzed image '{path}'" in str(e), str(e)
            img = None
    for w in caught:
        assert issubclass(w.category, images.ImageWarning), (w.category, str(w.message))
        assert str(path) in str(w.message), str(w.message)
    if img is not None:
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
        assert min(img.shape[:2]) >= images.MIN_SIZE
        assert np.all(np.isfinite(img)) and img.min() >= 0.0 and img.max() <= 1.0


@FUZZ
@given(data=st.binary(max_size=4096), ext=st.sampled_from([".jpg", ".png", ".webp", ".tif", ".gif", ""]))
def test_random_bytes(fuzz_dir, data, ext):
    _check_load(fuzz_dir / f"random{ext}", data)


@FUZZ
@given(head=st.sampled_from(sorted(VALID)), n=st.integers(0, 64), tail=st.binary(max_size=512))
def test_valid_header_then_random_bytes(fuzz_dir, head, n, tail):
    _check_load(fuzz_dir / "header.img", VALID[head][:n] + tail)


@FUZZ
@given(name=st.sampled_from(sorted(VALID)), mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_images(fuzz_dir, name, mutations):
    _check_load(fuzz_dir / f"mutated_{name}", _mutate(VALID[name], mutations))


def test_valid_fuzz_seeds_load():
    # The seeds themselves load (so the mutations start from real images).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", images.ImageWarning)
        for name, data in VALID.items():
            img = images.load_image(Image.open(io.BytesIO(data)))
            assert img.shape[-1] == 3, name


# --------------------------------------------------------------------------------------------------
# Settings

FIELDS = [f.name for f in dataclasses.fields(Settings)]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 600),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2.0, 2.0),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.sampled_from(["relu1_1", "relu4_2,relu5_1", "lbfgs", "adam", "image", "random", "zoom", "max", "1e3",
                     "nan", "", "start.png", "\x00"]),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(st.one_of(st.integers(-5, 700), st.floats(), st.text(max_size=8), st.none()), max_size=5),
    st.lists(st.integers(32, 511), max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sets(st.integers(0, 3), max_size=2),
)


def _check_settings(given: dict) -> None:
    try:
        s = Settings(**given)
    except SettingError as e:
        assert set(e.fields) & set(given), (e.fields, given)
        message, flags = str(e), e.render(cli._flag)
        assert any(name in message for name in given), message
        assert any(cli._flag(name) in flags for name in given), flags
        return
    # accepted: hashable (a static argument to jax.jit), equal to itself re-validated, JSON-able
    hash(s)
    assert dataclasses.replace(s) == s
    json.dumps(s.to_dict())


@pytest.mark.parametrize("name", FIELDS)
@settings(max_examples=100, deadline=None)
@given(value=VALUES)
def test_any_value_of_a_setting(name, value):
    _check_settings({name: value})


@settings(max_examples=200, deadline=None)
@given(given=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=2, max_size=4))
def test_any_values_of_several_settings(given):
    _check_settings(given)


def test_setting_errors_survive_pickling():
    import pickle

    try:
        Settings(image_size=8)
    except SettingError as e:
        again = pickle.loads(pickle.dumps(e))
    assert str(again) == "image_size must be an integer >= 32, got 8."
    assert again.render(cli._flag) == "--image-size must be an integer >= 32, got 8."
    assert again.fields == ("image_size",)
