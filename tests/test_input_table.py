"""Every kind of input a user may hand nst_jax, and what happens to it: one table, checked twice.

Each row is an input case and its expected behaviour: ``ok`` (loads; shape and colours checked),
``warning`` (loads, with a warning that names the file) or ``error`` (a message that names the bad
input and the fix). Image rows are image files given to ``load_image`` and to ``nst-jax --content``;
settings rows are ``Settings`` fields given in Python and as flags on the command line.

``python tests/test_input_table.py`` prints the table as markdown, with the messages the code
gives today (``pytest -s -k markdown`` prints it too).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from nst_jax import cli, images

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
H, W = 40, 48  # most test images: small, and both sides >= 16 after resizing to 32 px

# The command line of every CLI row: random weights, 32 px, no iterations, one shallow layer.
FAST = ["--weights", "random", "--image-size", "32", "--num-iterations", "0", "--content-layers", "relu1_1",
        "--style-layers", "relu1_1", "--quiet"]


# --------------------------------------------------------------------------------------------------
# How inputs are made


def _rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h: int = H, w: int = W) -> np.ndarray:
    """A smooth colour ramp (lossy codecs keep it well)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([255 * x // (w - 1), 255 * y // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


def _quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """Four coloured quadrants, no two alike: any rotation or mirroring shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 255)
    return a


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def saved(name: str, make_image: Callable[[], Image.Image], **save_kw) -> Callable[[Path], Path]:
    """A maker that saves ``make_image()`` as ``name`` (format from the extension or ``format=``)."""

    def make(d: Path) -> Path:
        path = d / name
        make_image().save(path, **save_kw)
        return path

    return make


def written(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Path]:
    """A maker that writes raw bytes as ``name``."""

    def make(d: Path) -> Path:
        path = d / name
        path.write_bytes(data() if callable(data) else data)
        return path

    return make


def _frames(fmt: str) -> bytes:
    frames = [Image.new("RGB", (W, H), c) for c in ("red", "blue", "lime")]
    return _encoded(frames[0], fmt, save_all=True, append_images=frames[1:], **({"lossless": True}
                                                                               if fmt == "WEBP" else {}))


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(Image.fromarray(_quadrants()), "JPEG", quality=100, subsampling=0, exif=exif)


def _cmyk_patches() -> Image.Image:
    """Cyan, magenta, yellow, black and white (no ink) columns, no ICC profile."""
    inks = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)]
    a = np.zeros((H, 50, 4), np.uint8)
    for i, ink in enumerate(inks):
        a[:, 10 * i:10 * i + 10] = ink
    return Image.fromarray(a, "CMYK")


CMYK_RGB = [(0, 1, 1), (1, 0, 1), (1, 1, 0), (0, 0, 0), (1, 1, 1)]  # what those inks look like


def _png_chunks_without_iend() -> bytes:
    data = _encoded(Image.fromarray(_rgb()), "PNG")
    assert data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND"
    return data[:-12]


def _png_with_bad_crc() -> bytes:
    data = bytearray(_encoded(Image.fromarray(_rgb()), "PNG"))
    i = data.index(b"IDAT") + 20
    data[i] ^= 0xFF
    return bytes(data)


def _png_48bit() -> bytes:
    """An RGB PNG with 16 bits per channel (Pillow cannot write one): red 300, green and blue 1000."""
    import struct
    import zlib

    a = np.full((H, W, 3), 1000, ">u2")
    a[..., 0] = 300
    raw = b"".join(b"\x00" + row.tobytes() for row in a)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _truncated(fmt: str, keep: float | int) -> Callable[[], bytes]:
    def make() -> bytes:
        data = _encoded(Image.fromarray(_rgb()), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        return data[:keep] if isinstance(keep, int) else data[: int(len(data) * keep)]

    return make


def _heic_header() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


def _fifo(d: Path) -> Path:
    path = d / "pipe.png"
    os.mkfifo(path)
    return path


def _missing(d: Path) -> Path:
    return d / "nope.jpg"


def _directory(d: Path) -> Path:
    path = d / "folder.png"
    path.mkdir()
    return path


def _png_rgb(d: Path) -> Path:
    path = d / "rgb.png"
    Image.fromarray(_rgb()).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# Patches some rows need (applied in the Python and in the command-line checks alike)


def _patch_open(mp: pytest.MonkeyPatch, path: Path, replacement: Callable[[], object]) -> None:
    """Opening ``path`` for reading gives ``replacement()`` instead of the file."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == os.fspath(path) and "r" in mode:
            return replacement()
        return real_open(file, mode, *args, **kwargs)

    mp.setattr(builtins, "open", fake_open)
    mp.setattr(io, "open", fake_open)


def _deny_reading(mp: pytest.MonkeyPatch, path: Path) -> None:
    if IS_ROOT or os.name != "posix":  # root reads anything: simulate the error instead
        def denied():
            raise PermissionError(13, "Permission denied", os.fspath(path))

        _patch_open(mp, path, denied)
    else:
        path.chmod(0)


class _ChangingFile(io.BytesIO):
    """A file that another program rewrites right after our first read from it."""

    def __init__(self, before: bytes, after: bytes):
        super().__init__(before)
        self._after = after
        self._reads = 0

    def read(self, size=-1):
        data = super().read(size)
        self._reads += 1
        if self._reads == 1:  # the writer replaces the contents; the read position stays
            pos = self.tell()
            self.seek(0)
            self.truncate()
            self.write(self._after)
            self.seek(pos)
        return data


def _rewritten_while_read(mp: pytest.MonkeyPatch, path: Path) -> None:
    before = path.read_bytes()
    after = _encoded(Image.new("RGB", (W, H), "blue"), "PNG")
    _patch_open(mp, path, lambda: _ChangingFile(before, after))


def _pillow_limit(pixels: int) -> Callable[[pytest.MonkeyPatch, Path], None]:
    def patch(mp: pytest.MonkeyPatch, path: Path) -> None:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
        mp.delenv("NST_JAX_MAX_IMAGE_PIXELS", raising=False)

    return patch


def _env_limit(value: str, pillow: int | None = None) -> Callable[[pytest.MonkeyPatch, Path], None]:
    def patch(mp: pytest.MonkeyPatch, path: Path) -> None:
        mp.setenv("NST_JAX_MAX_IMAGE_PIXELS", value)
        if pillow is not None:
            mp.setattr(Image, "MAX_IMAGE_PIXELS", pillow)

    return patch


# --------------------------------------------------------------------------------------------------
# Checks of loaded images


def equals(expected: np.ndarray | Callable[[], np.ndarray], atol: float = 1e-6) -> Callable[[np.ndarray], None]:
    def check(img: np.ndarray) -> None:
        want = np.asarray(expected() if callable(expected) else expected, np.float32)
        assert img.shape == want.shape, (img.shape, want.shape)
        np.testing.assert_allclose(img, want, atol=atol)

    return check


def close_on_average(expected: Callable[[], np.ndarray], mean_err: float) -> Callable[[np.ndarray], None]:
    def check(img: np.ndarray) -> None:
        want = expected().astype(np.float32) / 255
        assert img.shape == want.shape, (img.shape, want.shape)
        assert np.abs(img - want).mean() < mean_err

    return check


def solid(color, shape=(H, W, 3), atol: float = 0.02) -> Callable[[np.ndarray], None]:
    return equals(lambda: np.broadcast_to(np.asarray(color, np.float32), shape), atol=atol)


def _gray_equal_channels(img: np.ndarray) -> None:
    assert img.shape == (H, W, 3)
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    np.testing.assert_allclose(img[..., 0], _rgb()[..., 0] / 255, atol=1e-6)


def _cmyk_check(atol: float) -> Callable[[np.ndarray], None]:
    def check(img: np.ndarray) -> None:
        assert img.shape == (H, 50, 3)
        for i, rgb in enumerate(CMYK_RGB):
            np.testing.assert_allclose(img[5:-5, 10 * i + 3:10 * i + 7].mean(axis=(0, 1)), rgb, atol=atol,
                                       err_msg=f"ink {i}")

    return check


def _displayed(orientation: int) -> np.ndarray:
    """How a viewer shows ``_quadrants()`` stored with this EXIF orientation (the EXIF 2.3 table)."""
    s = _quadrants()
    return {
        1: s,
        2: s[:, ::-1],  # mirrored left-right
        3: s[::-1, ::-1],  # rotated 180
        4: s[::-1],  # mirrored top-bottom
        5: np.rot90(s[:, ::-1], 1),  # mirrored, then rotated 270 clockwise
        6: np.rot90(s, -1),  # rotated 90 clockwise
        7: np.rot90(s[:, ::-1], -1),  # mirrored, then rotated 90 clockwise
        8: np.rot90(s, 1),  # rotated 270 clockwise
    }[orientation]


def _alpha_image(mode: str, alpha: int) -> Callable[[], Image.Image]:
    def make() -> Image.Image:
        a = np.zeros((H, W, 4), np.uint8)
        a[...] = (200, 100, 0, alpha)
        img = Image.fromarray(a, "RGBA")
        return img if mode == "RGBA" else img.convert(mode)

    return make


def _over_white(color, alpha: float) -> np.ndarray:
    return np.asarray(color, np.float32) / 255 * alpha + (1 - alpha)


def _palette_image(transparent: bool) -> Callable[[], Image.Image]:
    def make() -> Image.Image:
        img = Image.new("P", (W, H), 1)
        img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        for x in range(W // 2):
            for y in range(H):
                img.putpixel((x, y), 0)
        return img

    return make


def _palette_expected(transparent: bool) -> np.ndarray:
    a = np.zeros((H, W, 3), np.float32)
    a[:, : W // 2] = (1, 0, 0)
    a[:, W // 2:] = (1, 1, 1) if transparent else (0, 0, 1)
    return a


# --------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Row:
    """One input case and what must happen.

    Attributes:
        id: short name (the pytest id).
        case: the input, in words.
        expect: "ok", "warning" or "error".
        make: image rows: writes the input into a directory and returns its path.
        check: ok/warning rows: checks the loaded (H, W, 3) array.
        says: warning/error rows: fragments the message must contain (Python names for settings).
        cli_says: settings rows: fragments the command line's message must contain (flag names).
        patch: applied around both checks (simulated conditions: permissions, limits, writers).
        kwargs, flags: settings rows: the setting in Python, and as command-line flags.
        styles: settings rows: number of style images.
        posix: only where the OS has FIFOs and byte file names.
    """

    id: str
    case: str
    expect: str
    make: Callable[[Path], Path] | None = None
    check: Callable[[np.ndarray], None] | None = None
    says: tuple[str, ...] = ()
    cli_says: tuple[str, ...] = ()
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    kwargs: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    styles: int = 1
    posix: bool = False

    @property
    def is_image(self) -> bool:
        return self.make is not None


def image(id, case, make, expect="ok", check=None, says=(), patch=None, posix=False) -> Row:
    return Row(id, case, expect, make=make, check=check, says=tuple(says), patch=patch, posix=posix)


def setting(id, case, kwargs, flags, says, cli_says, styles=1) -> Row:
    return Row(id, case, "error", kwargs=kwargs, flags=tuple(flags), says=tuple(says), cli_says=tuple(cli_says),
               styles=styles)


FIX_CORRUPT = ("truncated or corrupt", "re-download or re-export it")
NOT_IMAGE = ("not an image file",)

ROWS: list[Row] = [
    # ---- files that load
    image("rgb_png", "RGB PNG", saved("rgb.png", lambda: Image.fromarray(_rgb())),
          check=equals(lambda: _rgb() / 255)),
    image("rgb_jpeg", "RGB JPEG", saved("smooth.jpg", lambda: Image.fromarray(_smooth()), quality=95),
          check=close_on_average(_smooth, 0.01)),
    image("grayscale", "grayscale (L) PNG: replicated to 3 equal channels",
          saved("gray.png", lambda: Image.fromarray(_rgb()[..., 0])), check=_gray_equal_channels),
    image("bilevel", "1-bit PNG", saved("bw.png", lambda: Image.new("1", (W, H), 1)), check=solid((1, 1, 1), atol=0)),
    image("png_16bit", "16-bit grayscale PNG (I;16): 0..65535 -> 0..1, no 8-bit rounding",
          saved("deep.png", lambda: Image.fromarray(np.full((H, W), 300, np.uint16))),
          check=solid((300 / 65535,) * 3, atol=1e-7)),
    image("png_48bit", "48-bit RGB PNG: Pillow reads it with 8 bits per channel",
          written("rgb48.png", _png_48bit), check=solid((1 / 255, 3 / 255, 3 / 255), atol=1e-6)),
    image("tiff_int32", "32-bit integer TIFF (I) with 16-bit data",
          saved("int.tif", lambda: Image.fromarray(np.full((H, W), 30000, np.int32))),
          check=solid((30000 / 65535,) * 3, atol=1e-6)),
    image("tiff_float", "32-bit float TIFF (F) in [0, 1]",
          saved("float.tif", lambda: Image.fromarray(np.full((H, W), 0.25, np.float32))),
          check=solid((0.25,) * 3, atol=1e-7)),
    image("rgba", "RGBA PNG, alpha 0.2: composited over white", saved("rgba.png", _alpha_image("RGBA", 51)),
          check=solid(_over_white((200, 100, 0), 0.2), atol=1e-6)),
    image("rgba_transparent", "fully transparent RGBA PNG: white", saved("clear.png", _alpha_image("RGBA", 0)),
          check=solid((1, 1, 1), atol=0)),
    image("la", "gray + alpha (LA) PNG: composited over white", saved("la.png", _alpha_image("LA", 51)),
          check=solid(_over_white((200 * 0.299 + 100 * 0.587,) * 3, 0.2), atol=0.01)),
    image("palette", "palette (P) PNG", saved("p.png", _palette_image(False)), check=equals(_palette_expected(False))),
    image("palette_trns", "palette PNG with a transparent index (tRNS): over white",
          saved("ptrns.png", _palette_image(True), transparency=1), check=equals(_palette_expected(True))),
    image("gray_trns", "grayscale PNG with a transparent gray level: over white",
          saved("ltrns.png", lambda: Image.new("L", (W, H), 7), transparency=7), check=solid((1, 1, 1), atol=0)),
    image("cmyk_jpeg", "CMYK JPEG without ICC profile: Pillow's conversion (C, M, Y, K, paper)",
          saved("cmyk.jpg", _cmyk_patches, quality=100), check=_cmyk_check(0.03)),
    image("cmyk_tiff", "CMYK TIFF without ICC profile", saved("cmyk.tif", _cmyk_patches), check=_cmyk_check(1e-6)),
    *[image(f"exif_{o}", f"JPEG with EXIF orientation {o}: shown as a viewer shows it",
            written(f"exif{o}.jpg", lambda o=o: _exif_jpeg(o)),
            check=close_on_average(lambda o=o: _displayed(o), 0.02)) for o in range(1, 9)],
    image("non_ascii_name", "file name with non-ASCII characters",
          saved("Tübingen 日本 é.png", lambda: Image.fromarray(_rgb())), check=equals(lambda: _rgb() / 255)),
    image("non_utf8_name", "file name that is not valid UTF-8 (bytes 0xff 0xfe)",
          saved(os.fsdecode(b"\xff\xfe.png"), lambda: Image.fromarray(_rgb())),
          check=equals(lambda: _rgb() / 255), posix=True),
    image("no_extension", "PNG without a file extension", saved("photo", lambda: Image.fromarray(_rgb()),
                                                                format="PNG"), check=equals(lambda: _rgb() / 255)),
    image("wrong_extension", "JPEG named .png (the content decides)",
          written("really_jpeg.png", lambda: _encoded(Image.fromarray(_smooth()), "JPEG", quality=95)),
          check=close_on_average(_smooth, 0.01)),
    image("bmp", "BMP", saved("a.bmp", lambda: Image.fromarray(_rgb())), check=equals(lambda: _rgb() / 255)),
    image("webp", "lossless WebP", saved("a.webp", lambda: Image.fromarray(_rgb()), lossless=True),
          check=equals(lambda: _rgb() / 255)),
    image("gif_still", "single-frame GIF", saved("still.gif", lambda: Image.new("RGB", (W, H), "red")),
          check=solid((1, 0, 0), atol=0)),
    image("mpo", "camera JPEG with a second (preview) image (MPO): the photo, no warning",
          written("camera.jpg", lambda: _encoded(Image.new("RGB", (W, H), "red"), "MPO", save_all=True,
                                                 append_images=[Image.new("RGB", (W, H), "blue")])),
          check=solid((1, 0, 0), atol=0.01)),
    image("ppm", "PPM", saved("a.ppm", lambda: Image.fromarray(_rgb())), check=equals(lambda: _rgb() / 255)),
    image("png_no_iend", "PNG whose end marker (IEND) is missing but whose pixels are complete",
          written("noend.png", _png_chunks_without_iend), check=equals(lambda: _rgb() / 255)),
    image("min_size", "16x16 image (the smallest VGG-19 accepts)",
          saved("tiny16.png", lambda: Image.new("RGB", (16, 16), "red")), check=solid((1, 0, 0), (16, 16, 3), 0)),
    image("rewritten_while_read", "file rewritten by another program while being read: the bytes read first",
          saved("changing.png", lambda: Image.new("RGB", (W, H), "red")), patch=_rewritten_while_read,
          check=solid((1, 0, 0), atol=0)),
    image("pixel_limit_raised", "image above Pillow's pixel limit, NST_JAX_MAX_IMAGE_PIXELS raised",
          _png_rgb, patch=_env_limit("100000", pillow=1000), check=equals(lambda: _rgb() / 255)),
    # ---- files that load with a warning
    image("animated_gif", "animated GIF: the first frame, with a warning", written("anim.gif", lambda: _frames("GIF")),
          expect="warning", says=("3 frames", "only the first"), check=solid((1, 0, 0), atol=0)),
    image("animated_webp", "animated WebP: the first frame, with a warning",
          written("anim.webp", lambda: _frames("WEBP")), expect="warning", says=("3 frames", "only the first"),
          check=solid((1, 0, 0), atol=0)),
    image("apng", "animated PNG: the first frame, with a warning", written("anim.png", lambda: _frames("PNG")),
          expect="warning", says=("3 frames", "only the first"), check=solid((1, 0, 0), atol=0)),
    image("multipage_tiff", "multi-page TIFF: the first page, with a warning",
          written("pages.tif", lambda: _frames("TIFF")), expect="warning", says=("3 frames", "only the first"),
          check=solid((1, 0, 0), atol=0)),
    image("cmyk_icc", "CMYK JPEG with an ICC profile: Pillow's conversion, with a warning",
          saved("icc.jpg", _cmyk_patches, quality=100, icc_profile=b"not a real profile"), expect="warning",
          says=("ICC profile", "Convert it to sRGB"), check=_cmyk_check(0.03)),
    # ---- files that do not load
    image("missing", "path that does not exist", _missing, "error", says=("not found", "check the path")),
    image("directory", "a directory", _directory, "error", says=("is a directory", "pass the path of an image")),
    image("permission_denied", "file without read permission", _png_rgb, "error", patch=_deny_reading,
          says=("permission denied", "fix its permissions")),
    image("fifo", "a named pipe (FIFO)", _fifo, "error", says=("not a regular file", "pass the path of an image"),
          posix=True),
    image("empty", "empty file (0 bytes)", written("empty.jpg", b""), "error",
          says=("is empty (0 bytes)", "re-download or re-export it")),
    image("truncated_jpeg", "JPEG cut in half", written("half.jpg", _truncated("JPEG", 0.5)), "error",
          says=FIX_CORRUPT),
    image("truncated_png", "PNG cut in half", written("half.png", _truncated("PNG", 0.5)), "error", says=FIX_CORRUPT),
    image("jpeg_no_eoi", "JPEG missing its last 2 bytes (end marker)", written("cut.jpg", _truncated("JPEG", -2)),
          "error", says=FIX_CORRUPT),
    image("jpeg_header_only", "JPEG header only (first 200 bytes)", written("head.jpg", _truncated("JPEG", 200)),
          "error", says=FIX_CORRUPT),
    image("png_bad_crc", "PNG with a corrupted pixel chunk (bad CRC)", written("crc.png", _png_with_bad_crc), "error",
          says=FIX_CORRUPT),
    image("text", "text file named .png", written("notes.png", b"shopping list:\n- milk\n"), "error",
          says=(*NOT_IMAGE, "a text file")),
    image("html", "HTML page saved as .jpg (a failed download)",
          written("download.jpg", b"<!DOCTYPE html>\n<html><body>Not found</body></html>\n"), "error",
          says=(*NOT_IMAGE, "an HTML page", "download the image itself")),
    image("pdf", "PDF document", written("scan.pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n%%EOF\n"), "error",
          says=(*NOT_IMAGE, "a PDF document", "export the page as PNG or JPEG")),
    image("zip", "ZIP archive named .jpg", written("archive.jpg", _zip_bytes), "error",
          says=(*NOT_IMAGE, "a ZIP archive")),
    image("svg", "SVG vector image", written("logo.svg", b'<?xml version="1.0"?>\n<svg xmlns="x"></svg>\n'), "error",
          says=(*NOT_IMAGE, "SVG", "export it as PNG")),
    image("eps", "EPS/PostScript (Ghostscript is never run on inputs)",
          written("fig.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"), "error",
          says=(*NOT_IMAGE, "PostScript", "export it as PNG")),
    image("heic", "HEIC photo", written("IMG_0001.HEIC", _heic_header), "error",
          says=(*NOT_IMAGE, "HEIC", "convert it to JPEG")),
    image("random_bytes", "random bytes named .jpg",
          written("noise.jpg", lambda: np.random.default_rng(5).integers(0, 256, 512, np.uint8).tobytes()), "error",
          says=(*NOT_IMAGE, "re-save it as PNG or JPEG")),
    image("one_pixel", "1x1 image", saved("dot.png", lambda: Image.new("RGB", (1, 1))), "error",
          says=("1x1 pixels", "at least 16", "use a larger image")),
    image("thin_strip", "300x15 image (one side below 16)", saved("strip.png", lambda: Image.new("RGB", (300, 15))),
          "error", says=("15x300 pixels", "at least 16")),
    image("pixel_limit_pillow", "image above Pillow's pixel limit (a decompression bomb guard)", _png_rgb, "error",
          patch=_pillow_limit(1000), says=("1,920 pixels", "limit of 1,000", "NST_JAX_MAX_IMAGE_PIXELS")),
    image("pixel_limit_env", "image above the limit set by NST_JAX_MAX_IMAGE_PIXELS", _png_rgb, "error",
          patch=_env_limit("1000"), says=("1,920 pixels", "limit of 1,000", "NST_JAX_MAX_IMAGE_PIXELS")),
    image("pixel_limit_bad_env", "NST_JAX_MAX_IMAGE_PIXELS that is not a number", _png_rgb, "error",
          patch=_env_limit("lots"), says=("NST_JAX_MAX_IMAGE_PIXELS='lots'", "whole number")),
    # ---- settings
    setting("image_size_small", "image size below 32", {"image_size": 8}, ["--image-size", "8"],
            ["image_size must be an integer >= 32, got 8"], ["--image-size must be an integer >= 32, got 8"]),
    setting("image_size_huge", "image size above 65535", {"image_size": 10 ** 6}, ["--image-size", "1000000"],
            ["image_size must be an integer <= 65535"], ["--image-size must be an integer <= 65535"]),
    setting("image_size_float", "image size not an integer", {"image_size": 64.5}, ["--image-size", "64.5"],
            ["image_size must be an integer"], ["--image-size", "invalid int value: '64.5'"]),
    setting("num_iterations_negative", "negative iterations", {"num_iterations": -1}, ["--num-iterations", "-1"],
            ["num_iterations must be an integer >= 0, got -1"], ["--num-iterations must be an integer >= 0, got -1"]),
    setting("num_iterations_huge", "iterations beyond int32", {"num_iterations": 2 ** 31},
            ["--num-iterations", str(2 ** 31)], ["num_iterations must be an integer <= 2147483647"],
            ["--num-iterations must be an integer <= 2147483647"]),
    setting("chunk_size_zero", "chunk size 0", {"chunk_size": 0}, ["--chunk-size", "0"],
            ["chunk_size must be an integer >= 1, got 0"], ["--chunk-size must be an integer >= 1, got 0"]),
    setting("print_every_negative", "negative print interval", {"print_every": -1}, ["--print-every", "-1"],
            ["print_every must be an integer >= 0"], ["--print-every must be an integer >= 0"]),
    setting("save_every_negative", "negative snapshot interval", {"save_every": -5}, ["--save-every", "-5"],
            ["save_every must be an integer >= 0"], ["--save-every must be an integer >= 0"]),
    setting("lbfgs_history_zero", "L-BFGS history 0", {"lbfgs_history": 0}, ["--lbfgs-history", "0"],
            ["lbfgs_history must be an integer >= 1"], ["--lbfgs-history must be an integer >= 1"]),
    setting("seed_negative", "negative seed", {"seed": -1}, ["--seed", "-1"], ["seed must be an integer >= 0"],
            ["--seed must be an integer >= 0"]),
    setting("scale_iterations_negative", "negative coarse-to-fine iterations",
            {"image_size": 64, "scales": (32,), "scale_iterations": -1},
            ["--image-size", "64", "--scales", "32", "--scale-iterations", "-1"],
            ["scale_iterations must be an integer >= 0"], ["--scale-iterations must be an integer >= 0"]),
    setting("style_scale_zero", "style scale 0", {"style_scale": 0}, ["--style-scale", "0"],
            ["style_scale must be > 0"], ["--style-scale must be > 0"]),
    setting("style_scale_tiny", "style scale that makes the style images smaller than 16 px",
            {"image_size": 32, "style_scale": 0.25}, ["--style-scale", "0.25"],
            ["style_scale=0.25 makes the style images 8 px", "image_size=32", "at least 16"],
            ["--style-scale 0.25 makes the style images 8 px", "--image-size 32"]),
    setting("learning_rate_zero", "learning rate 0", {"learning_rate": 0}, ["--learning-rate", "0"],
            ["learning_rate must be > 0"], ["--learning-rate must be > 0"]),
    setting("learning_rate_nan", "learning rate NaN", {"learning_rate": float("nan")}, ["--learning-rate", "nan"],
            ["learning_rate must be a finite number", "nan"], ["--learning-rate must be a finite number"]),
    setting("beta1_one", "Adam beta1 = 1", {"beta1": 1.0}, ["--beta1", "1"], ["beta1 must be in [0, 1)"],
            ["--beta1 must be in [0, 1)"]),
    setting("beta2_negative", "Adam beta2 < 0", {"beta2": -0.1}, ["--beta2", "-0.1"],
            ["beta2 must be a finite number >= 0"], ["--beta2 must be a finite number >= 0"]),
    setting("epsilon_zero", "Adam epsilon 0", {"epsilon": 0}, ["--epsilon", "0"], ["epsilon must be > 0"],
            ["--epsilon must be > 0"]),
    setting("content_weight_negative", "negative content weight", {"content_weight": -1}, ["--content-weight", "-1"],
            ["content_weight must be a finite number >= 0, got -1"],
            ["--content-weight must be a finite number >= 0, got -1"]),
    setting("style_weight_inf", "infinite style weight", {"style_weight": float("inf")}, ["--style-weight", "inf"],
            ["style_weight must be a finite number >= 0", "inf"], ["--style-weight must be a finite number >= 0"]),
    setting("style_weight_float32", "style weight beyond float32", {"style_weight": 1e39}, ["--style-weight", "1e39"],
            ["style_weight must be at most 3.4e+38"], ["--style-weight must be at most 3.4e+38"]),
    setting("tv_weight_nan", "NaN total-variation weight", {"tv_weight": float("nan")}, ["--tv-weight", "nan"],
            ["tv_weight must be a finite number >= 0"], ["--tv-weight must be a finite number >= 0"]),
    setting("tolerance_grad_negative", "negative gradient tolerance", {"tolerance_grad": -1e-5},
            ["--tolerance-grad=-1e-5"], ["tolerance_grad must be a finite number >= 0"],
            ["--tolerance-grad must be a finite number >= 0"]),
    setting("activation_shift_inf", "infinite activation shift", {"activation_shift": float("-inf")},
            ["--activation-shift=-inf"], ["activation_shift must be a finite number"],
            ["--activation-shift must be a finite number"]),
    setting("style_layers_unknown", "unknown style layer", {"style_layers": ("relu9_9",)},
            ["--style-layers", "relu9_9"], ["style_layers: unknown VGG-19 layer 'relu9_9'", "Valid layers:", "relu5_1"],
            ["--style-layers: unknown VGG-19 layer 'relu9_9'", "Valid layers:", "relu5_1"]),
    setting("content_layers_unknown", "unknown content layer", {"content_layers": ("fc7",)},
            ["--content-layers", "fc7"], ["content_layers: unknown VGG-19 layer 'fc7'", "block4_conv2"],
            ["--content-layers: unknown VGG-19 layer 'fc7'"]),
    setting("style_layer_weights_count", "one weight per style layer, counts differ",
            {"style_layers": ("relu1_1",), "style_layer_weights": (1, 2)}, ["--style-layer-weights", "1", "2"],
            ["style_layer_weights has 2 value(s) but there are 1 style layers"],
            ["--style-layer-weights has 2 value(s) but there are 1 style layers"]),
    setting("style_blend_weights_count", "two style images, one blend weight", {"style_blend_weights": (1,)},
            ["--style-blend-weights", "1"], ["style_blend_weights has 1 value(s) for 2 style image(s)"],
            ["--style-blend-weights has 1 value(s) for 2 style image(s)"], styles=2),
    setting("init_image_missing", "init='image' without an init image", {"init": "image"}, ["--init", "image"],
            ["init='image' needs init_image"], ["--init image needs --init-image"]),
    setting("init_image_unused", "an init image with init other than 'image'",
            {"init": "content", "init_image": "start.png"}, ["--init", "content", "--init-image", "start.png"],
            ["init_image is only used with init='image'", "got init='content'"],
            ["--init-image is only used with --init image", "got --init content"]),
    setting("scales_not_below", "coarse-to-fine scale not below the image size", {"image_size": 64, "scales": (64,)},
            ["--image-size", "64", "--scales", "64"], ["scales must increase and stay below image_size=64"],
            ["--scales must increase and stay below --image-size 64"]),
    setting("scale_iterations_without_scales", "coarse-to-fine iterations without scales",
            {"scale_iterations": 10}, ["--scale-iterations", "10"], ["scale_iterations is only used with scales"],
            ["--scale-iterations is only used with --scales"]),
    setting("linesearch_with_adam", "an L-BFGS line search with Adam",
            {"optimizer": "adam", "lbfgs_linesearch": "zoom"}, ["--optimizer", "adam", "--lbfgs-linesearch", "zoom"],
            ["lbfgs_linesearch='zoom' is only used with optimizer='lbfgs'"],
            ["--lbfgs-linesearch zoom is only used with --optimizer lbfgs"]),
    setting("optimizer_unknown", "unknown optimizer", {"optimizer": "sgd"}, ["--optimizer", "sgd"],
            ["optimizer must be one of 'lbfgs', 'adam'; got 'sgd'"], ["--optimizer", "invalid choice: 'sgd'"]),
]

ROWS_BY_ID = {r.id: r for r in ROWS}
assert len(ROWS_BY_ID) == len(ROWS), "row ids must be unique"


def _params(rows):
    marks = lambda r: [pytest.mark.skipif(os.name != "posix", reason="needs POSIX files")] if r.posix else []  # noqa
    return [pytest.param(r, id=r.id, marks=marks(r)) for r in rows]


IMAGE_ROWS = [r for r in ROWS if r.is_image]
SETTING_ROWS = [r for r in ROWS if not r.is_image]


def test_table_has_the_promised_size():
    assert len(ROWS) >= 40
    assert {r.expect for r in ROWS} == {"ok", "warning", "error"}


# --------------------------------------------------------------------------------------------------
# The Python API


def _load(row: Row, path: Path) -> tuple[np.ndarray | None, Exception | None, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return images.load_image(path, label="content image"), None, caught
        except Exception as e:  # noqa: BLE001 - the caller checks the type
            return None, e, caught


def _check_outcome(row: Row, path: Path, img, error, caught) -> None:
    warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if row.expect == "error":
        assert img is None, f"{row.id}: expected an error, got an image"
        assert isinstance(error, images.ImageError), f"{row.id}: {type(error).__name__}: {error}"
        message = str(error)
        assert f"content image '{path}'" in message, message
        for fragment in row.says:
            assert fragment in message, f"{row.id}: {fragment!r} not in {message!r}"
        return
    assert error is None, f"{row.id}: {type(error).__name__}: {error}"
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[-1] == 3
    assert 0.0 <= img.min() and img.max() <= 1.0
    row.check(img)
    if row.expect == "warning":
        assert len(warned) == 1, warned
        assert str(path) in warned[0], warned[0]
        for fragment in row.says:
            assert fragment in warned[0], f"{row.id}: {fragment!r} not in {warned[0]!r}"
        assert all(issubclass(w.category, images.ImageWarning) for w in caught)
    else:
        assert warned == [], warned


@pytest.mark.parametrize("row", _params(IMAGE_ROWS))
def test_load_image(row: Row, tmp_path, monkeypatch):
    path = row.make(tmp_path)
    if row.patch:
        row.patch(monkeypatch, path)
    _check_outcome(row, path, *_load(row, path))


@pytest.fixture(scope="module")
def arrays():
    return _rgb() / 255, _rgb(seed=1) / 255


@pytest.mark.parametrize("row", _params(SETTING_ROWS))
def test_setting_in_python(row: Row, arrays):
    import nst_jax
    from nst_jax.config import SettingError

    content, style = arrays
    with pytest.raises(SettingError) as info:
        nst_jax.stylize(content, [style] * row.styles, **{"weights": "random", "num_iterations": 0, "progress": False,
                                                         **row.kwargs})
    message = str(info.value)
    for fragment in row.says:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert " --" not in message  # Python names, not flags


# --------------------------------------------------------------------------------------------------
# The command line: every row, in-process


@pytest.fixture(scope="module")
def style_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(_rgb(seed=1)).save(path)
    return path


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(err: str, fragments) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("nst-jax: error: ")]
    assert len(errors) == 1, err
    usage = [line for line in lines if line.startswith("usage:") or line.startswith("  ")]
    assert len(lines) == 1 or len(errors) + len(usage) == len(lines), err  # argparse adds its usage lines
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


@pytest.mark.parametrize("row", _params(ROWS))
def test_command_line(row: Row, tmp_path, monkeypatch, capsys, style_file):
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out" / "result.png"
    if row.is_image:
        path = row.make(inputs)
        argv = ["--content", str(path), "--style", str(style_file), "--output", str(out), *FAST]
        if row.patch:
            row.patch(monkeypatch, path)
    else:
        argv = ["--content", str(style_file), *["--style", str(style_file)] * row.styles, "--output", str(out),
                *FAST, *row.flags]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, stdout, err = _run_cli(argv, capsys)
    assert "Traceback" not in err + stdout
    if row.expect == "error":
        assert code == 2, (code, err)
        _assert_one_line_error(err, row.cli_says if not row.is_image else (*row.says, str(path)))
        assert not out.parent.exists()
        return
    assert code == 0, err
    assert out.is_file() and f"wrote {out}" in stdout
    # The command line shows warnings as one 'nst-jax: warning: ...' line each on stderr.
    ours = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    ours += [line for line in err.splitlines() if line.startswith("nst-jax: warning: ")]
    if row.expect == "warning":
        assert len(ours) == 1 and str(path) in ours[0] and all(f in ours[0] for f in row.says), ours
    else:
        assert ours == [], ours


# A few rows through a real process: what a user sees in the terminal.
@pytest.mark.parametrize("row_id", ["truncated_jpeg", "animated_gif", "image_size_small"])
def test_command_line_subprocess(row_id, tmp_path, style_file):
    row = ROWS_BY_ID[row_id]
    out = tmp_path / "out" / "result.png"
    content = row.make(tmp_path) if row.is_image else style_file
    argv = [sys.executable, "-m", "nst_jax", "--content", str(content), "--style", str(style_file),
            "--output", str(out), *FAST, *row.flags]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "default"})
    assert "Traceback" not in proc.stderr + proc.stdout
    if row.expect == "error":
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("nst-jax: error: ")
        assert all(f in proc.stderr for f in (row.cli_says or row.says))
        assert not out.parent.exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert out.is_file()
        assert str(content) in proc.stderr and all(f in proc.stderr for f in row.says)


# --------------------------------------------------------------------------------------------------
# Details of the rows above


def test_max_pixels_argument(tmp_path, monkeypatch):
    path = _png_rgb(tmp_path)  # 1,920 pixels
    monkeypatch.setenv("NST_JAX_MAX_IMAGE_PIXELS", "1000")  # the argument wins over the environment
    assert images.load_image(path, max_pixels=1920).shape == (H, W, 3)
    assert images.load_image(path, max_pixels=0).shape == (H, W, 3)  # 0: no limit
    with pytest.raises(images.ImageError, match=r"1,920 pixels, more than the limit of 1,919"):
        images.load_image(path, max_pixels=1919)
    for bad in (-1, 1.5, "many", True):
        with pytest.raises(images.ImageError, match=rf"max_pixels={bad!r} is not a whole number"):
            images.load_image(path, max_pixels=bad)


def test_pillow_limit_is_left_as_it_was(tmp_path, monkeypatch):
    path = _png_rgb(tmp_path)
    before = Image.MAX_IMAGE_PIXELS
    images.load_image(path, max_pixels=5000)
    with pytest.raises(images.ImageError):
        images.load_image(path, max_pixels=100)
    assert Image.MAX_IMAGE_PIXELS == before


def test_file_is_opened_and_read_once(tmp_path, monkeypatch):
    path = _png_rgb(tmp_path)
    opened = []
    real_open = builtins.open

    class Counting(io.BytesIO):
        def read(self, size=-1):
            opened.append(size)
            return super().read(size)

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == os.fspath(path):
            with real_open(file, mode, *args, **kwargs) as f:
                return Counting(f.read())
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    images.load_image(path)
    assert opened == [-1]  # one open, one read of the whole file


def test_snapshots_without_output_are_an_error(arrays):
    import nst_jax
    from nst_jax.config import SettingError

    content, style = arrays
    with pytest.raises(SettingError, match=r"save_every=5 writes snapshots next to the output, but no output"):
        nst_jax.stylize(content, style, weights="random", num_iterations=0, progress=False, save_every=5)


def test_pillow_warnings_name_the_file(tmp_path):
    # A TIFF whose compression tag has too many entries: Pillow warns, the pixels are fine.
    data = bytearray(_encoded(Image.fromarray(_rgb()), "TIFF"))
    tag = data.index(b"\x03\x01\x03\x00\x01\x00\x00\x00")  # Compression (259), SHORT, count 1
    data[tag + 4] = 2
    path = tmp_path / "odd.tif"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            images.load_image(path)
        except images.ImageError as e:
            assert str(path) in str(e)
    assert caught and all(issubclass(w.category, images.ImageWarning) and str(path) in str(w.message)
                          for w in caught)


# --------------------------------------------------------------------------------------------------
# The table as markdown


def _outcome_text(row: Row, d: Path) -> str:
    """What happens today for ``row``, in one line (paths shown as <file>)."""
    if row.is_image:
        with pytest.MonkeyPatch.context() as mp:
            path = row.make(d)
            if row.patch:
                row.patch(mp, path)
            img, error, caught = _load(row, path)
        scrub = lambda s: s.replace(f"'{path}'", "<file>").replace(str(path), "<file>")  # noqa: E731
        if error is not None:
            return f"error: {scrub(str(error))}"
        warned = [scrub(str(w.message)) for w in caught if issubclass(w.category, UserWarning)]
        shape = "x".join(map(str, img.shape))
        return f"ok ({shape})" + "".join(f"; warning: {w}" for w in warned)
    from nst_jax import api

    try:
        api.prepare_styles([np.zeros((32, 32, 3), np.float32)] * row.styles, api.make_settings(**row.kwargs))
        python = "ok"
    except ValueError as e:
        python = f"error: {e}"
    style = d / "style.png"
    Image.fromarray(_rgb()).save(style)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(["--content", str(style), *["--style", str(style)] * row.styles,
                             "--output", str(d / "out" / "o.png"), *FAST, *row.flags])
        except SystemExit as e:
            code = e.code
    said = [line for line in err.getvalue().splitlines() if line.startswith("nst-jax: error: ")]
    return f"{python} (command line, exit {code}: {said[0] if said else 'no error'})"


def markdown_table() -> str:
    """The table as markdown: case -> expected behaviour -> what the code says today."""
    lines = ["| case | expected | behaviour (message) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(ROWS):
            if row.posix and os.name != "posix":
                continue
            d = Path(tmp) / str(i)
            d.mkdir()
            text = _outcome_text(row, d).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {row.case} | {row.expect} | {text} |")
    return "\n".join(lines)


def test_markdown_table():
    table = markdown_table()
    assert table.count("\n") == len(ROWS) + 1 - (0 if os.name == "posix" else sum(r.posix for r in ROWS))
    print("\n" + table)


if __name__ == "__main__":
    print(markdown_table())
