"""Image I/O, resizing and color conversions; every bad-image check lives here.

Images inside nst_jax are float32 numpy arrays of shape (H, W, 3), RGB, with
values in [0, 1]. This module turns anything a user may hand us (a path, a PIL
image, an array) into that form, and turns results back into files. Every bad
input raises :class:`ImageError`, whose message names the input and says what
to do about it.

Choices that differ from, or pin down, the reference implementations
(jcjohnson/neural-style in Lua, ProGamerGov/neural-style-pt in PyTorch):

* Transparent images are composited over white. neural-style-pt calls
  ``.convert('RGB')``, which drops the alpha channel and exposes whatever color
  the transparent pixels happen to store (often black).
* 16-bit images (PNG/TIFF "I;16" and "I" modes) are scaled by 1/65535 instead
  of being clipped at 255 by Pillow's ``convert('RGB')``. Pillow itself reduces
  48-bit RGB PNGs to 8 bits per channel on open; that precision is lost before
  we see it.
* CMYK goes through Pillow's own conversion. Pillow already undoes the
  inverted ("Adobe") CMYK that Photoshop writes in JPEGs; it does not apply
  embedded ICC profiles, so a warning is issued when a CMYK image carries one.
  ICC profiles of RGB images are ignored, as in neural-style and torchvision.
* Resizing uses Pillow's BILINEAR filter (with its antialiasing when
  downscaling): the filter torchvision's ``transforms.Resize`` applies to PIL
  images, which is what neural-style-pt uses. We resize float32 channels ("F"
  mode) rather than 8-bit images, so there is no 8-bit rounding.
* Only the first frame of multi-frame files (animated GIF, WebP and PNG,
  multi-page TIFF) is read, with an :class:`ImageWarning` that names the file.
* Files are rotated upright by their EXIF Orientation tag, as viewers show them.
* A file's bytes are read once and decoded from memory, so a program rewriting
  the file meanwhile cannot make us decode half the old and half the new file.
* Images with more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89
  million) are refused as possible decompression bombs; the environment
  variable ``NST_JAX_MAX_IMAGE_PIXELS`` (or ``load_image(max_pixels=...)``)
  sets another limit, 0 none. EPS files are never opened: Pillow would run
  Ghostscript on them.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import operator
import os
import re
import secrets
import stat
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "MIN_SIZE",
    "SAVE_FORMATS",
    "ImageError",
    "ImageWarning",
    "check_output_path",
    "check_overwrite",
    "is_own_output",
    "list_images",
    "load_image",
    "original_colors",
    "read_metadata",
    "resize",
    "resize_long_side",
    "rgb_to_yuv",
    "same_file",
    "save_image",
    "target_size",
    "to_pil",
    "to_uint8",
    "yuv_to_rgb",
]

# VGG-19 halves the resolution at each of the 4 pooling layers before conv5_1:
# 16 px is the smallest side that still leaves conv5_1 one pixel.
MIN_SIZE = 16

# Output formats, chosen by file extension.
SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

# Extensions list_images() treats as images when scanning a directory or glob.
IMAGE_EXTENSIONS = frozenset(SAVE_FORMATS) | {".bmp", ".gif", ".ppm", ".pgm", ".pnm"}

_GLOB_CHARS = re.compile(r"[*?[]")

# Key of the PNG text chunk (and EXIF Software prefix) that carries our metadata.
METADATA_KEY = "nst_jax"
_EXIF_DESCRIPTION = 0x010E  # ImageDescription: our JSON in non-PNG files
_EXIF_SOFTWARE = 0x0131  # Software

# Lossy formats are written at high quality: stylized textures are fine detail.
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

# Float inputs may overshoot [0, 1] by rounding error; more than this is an error.
_RANGE_TOLERANCE = 1e-3

#: Environment variable with the largest image, in pixels (width x height),
#: that ``load_image`` decodes; 0 disables the check. Unset: Pillow's
#: ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million).
MAX_PIXELS_ENV = "NST_JAX_MAX_IMAGE_PIXELS"

# Formats never opened: Pillow's EPS reader runs Ghostscript on the file, and
# inputs may come from anywhere.
_UNSAFE_FORMATS = frozenset({"EPS"})

# Pillow reads its decompression-bomb limit from a module global; a decode with
# another limit sets the global for its duration, under this lock.
_PIXEL_LIMIT_LOCK = threading.Lock()

# What files Pillow cannot read often are, by their first bytes, and the fix.
_SIGNATURES = (
    (b"%PDF", "a PDF document; export the page as PNG or JPEG (e.g. from a PDF viewer)"),
    (b"%!PS", "a PostScript/EPS file, which nst_jax does not open (Pillow would run "
              "Ghostscript on it); export it as PNG"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file, which nst_jax does not open (Pillow would run "
                          "Ghostscript on it); export it as PNG"),
    (b"PK\x03\x04", "a ZIP archive (Office documents are ZIP archives too); take the image "
                    "out of it"),
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

# BT.601 RGB -> YUV, the coefficients of torch's image.rgb2yuv that
# neural-style's -original_colors uses. torch's yuv2rgb uses rounded inverse
# coefficients (differences ~1e-4); we use the exact inverse so that
# rgb -> yuv -> rgb is the identity.
_RGB_TO_YUV = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.14713, -0.28886, 0.436],
        [0.615, -0.51499, -0.10001],
    ]
)
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageError(ValueError):
    """A bad image input or output path; the message names it and the fix."""


class ImageWarning(UserWarning):
    """An image was loaded, but not all of it or not exactly: the message names it and why."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_image(
    source: ImageSource, *, label: str = "image", max_pixels: int | None = None
) -> np.ndarray:
    """Loads an image as a float32 (H, W, 3) RGB array in [0, 1].

    Files are read once into memory and decoded from there, rotated upright
    by their EXIF Orientation tag (all 8 orientations, as viewers do). Pixel
    formats: grayscale is replicated to 3 channels; transparency (RGBA, LA,
    palette or grayscale with a transparent color) is composited over white;
    16-bit images map 0..65535 to 0..1 without 8-bit rounding (48-bit RGB
    PNGs are reduced to 8 bits by Pillow); CMYK goes through Pillow's
    conversion (a warning if an ICC profile is embedded, which is not
    applied). Of animated or multi-page files (GIF, WebP, PNG, TIFF) the first
    frame is used, with an :class:`ImageWarning`.

    Args:
      source: a file path; a ``PIL.Image.Image``; or an array of shape
        (H, W, 3) or (H, W) (grayscale, replicated to 3 channels) that is
        float in [0, 1], uint8 (0..255) or uint16 (0..65535). PIL images and
        arrays are taken as they are (no EXIF rotation, no pixel limit).
      label: how error messages refer to this input, e.g. "content image" or
        "style image 2".
      max_pixels: the largest file accepted, in pixels (width x height), a
        guard against decompression bombs; 0 accepts any size. Default: the
        environment variable ``NST_JAX_MAX_IMAGE_PIXELS`` if set, else
        ``PIL.Image.MAX_IMAGE_PIXELS`` (about 89 million pixels).

    Returns:
      A new float32 array of shape (H, W, 3) with values in [0, 1].

    Raises:
      ImageError: the file is missing, a directory or not a regular file,
        unreadable, empty, not an image (the message says what it seems to be:
        PDF, ZIP, HTML, SVG, HEIC, text...), truncated or corrupt, or larger
        than the pixel limit; the array has the wrong shape, dtype, NaNs or
        out-of-range values; or either side is smaller than ``MIN_SIZE``
        pixels.

    Warns:
      ImageWarning: only the first of several frames was used; a CMYK ICC
        profile was not applied; EXIF metadata was unreadable (orientation
        not applied); Pillow warned while decoding (repeated with the name).
    """
    name = label
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        name = f"{label} '{path}'"
        image = _pil_to_array(_open_file(path, name, max_pixels), name)
    elif isinstance(source, Image.Image):
        image = _pil_to_array(source, name)
    elif isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        image = _array_to_float(np.asarray(source), name)
    else:
        raise ImageError(
            f"{label} has unsupported type {type(source).__name__}; pass a file "
            "path, a PIL image, or an (H, W, 3) array"
        )
    _check_size(image.shape[0], image.shape[1], name)
    return image


def _open_file(path: Path, name: str, max_pixels: int | None) -> Image.Image:
    """Reads, fully decodes and EXIF-rotates an image file (its first frame)."""
    data = _read_file(path, name)
    limit = _pixel_limit(max_pixels, name)
    img, frames = _decode(data, name, limit)
    if frames != 1:
        count = f"{frames} frames" if frames else "several frames"
        warnings.warn(
            f"{name} has {count} (an animation or a multi-page file); only the first "
            "is used. To use another frame, save it as an image of its own.",
            ImageWarning,
            stacklevel=3,
        )
    return img


def _read_file(path: Path, name: str) -> bytes:
    """The bytes of a regular file, read once.

    Decoding from memory means that a program rewriting the file meanwhile
    cannot make us decode part of the old and part of the new contents; a file
    a writer has cut short reads as truncated.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(
                f"{name} is a symbolic link to '{os.readlink(path)}', which does not exist; "
                "fix the link or pass the image's own path"
            ) from None
        raise ImageError(
            f"{name} not found; check the path (relative paths start at {os.getcwd()})"
        ) from None
    except PermissionError as e:
        raise ImageError(
            f"{name} cannot be read: permission denied on a directory in its path; "
            "fix its permissions"
        ) from e
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        reason = getattr(e, "strerror", None) or e
        raise ImageError(f"{name} cannot be read ({reason}); check the path") from e
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{name} is a directory, not an image file; pass the path of an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(
            f"{name} is not a regular file (a device, named pipe or socket); pass the path of "
            "an image file"
        )
    try:
        with open(path, "rb") as f:
            data = f.read()
    except PermissionError as e:
        raise ImageError(f"{name} cannot be read: permission denied; fix its permissions") from e
    except OSError as e:
        raise ImageError(
            f"{name} could not be read ({e.strerror or e}); check the file and its disk"
        ) from e
    if not data:
        raise ImageError(
            f"{name} is empty (0 bytes), not an image file; re-download or re-export it"
        )
    return data


def _pixel_limit(max_pixels: int | None, name: str) -> int | None:
    """The pixel limit in effect (None: none): the argument, else the environment, else Pillow's."""
    origin = f"max_pixels={max_pixels!r}"
    if max_pixels is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return Image.MAX_IMAGE_PIXELS
        origin = f"{MAX_PIXELS_ENV}={text!r}"
        try:
            max_pixels = int(text.replace(",", "").replace("_", ""))
        except ValueError:
            max_pixels = -1
    try:
        limit = operator.index(max_pixels)
    except TypeError:
        limit = -1
    if isinstance(max_pixels, bool) or limit < 0:
        raise ImageError(
            f"cannot open {name}: {origin} is not a whole number of pixels; set it to the "
            "largest width x height to accept, e.g. 200000000, or 0 to accept any size"
        )
    return limit or None


@contextlib.contextmanager
def _pillow_pixel_limit(limit: int | None):
    """Pillow's decompression-bomb check with ``limit``; its warning (1x to 2x) is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if limit == Image.MAX_IMAGE_PIXELS:
            yield
            return
        with _PIXEL_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _decode(data: bytes, name: str, limit: int | None) -> tuple[Image.Image, int]:
    """Decodes a file's bytes.

    Returns:
      (the first frame, upright and fully loaded; the number of frames, 0 if
      they cannot be counted).
    """
    Image.init()
    formats = [f for f in Image.ID if f not in _UNSAFE_FORMATS]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _pillow_pixel_limit(limit), Image.open(io.BytesIO(data), formats=formats) as img:
                frames = _frame_count(img)
                img.load()  # a full decode: truncation and corruption show up here
                img = _upright(img, name)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(name, limit, e) from e
    except UnidentifiedImageError as e:
        what = _what_it_is(data)
        if what:
            raise ImageError(
                f"{name} is not an image file Pillow can read: it looks like {what}"
            ) from e
        raise ImageError(
            f"{name} is not an image file Pillow can read; check that it is really "
            "an image (e.g. open it in a viewer) or re-save it as PNG or JPEG"
        ) from e
    except MemoryError as e:
        raise ImageError(
            f"{name} is too large to decode in the memory available; downscale it first"
        ) from e
    except Exception as e:  # noqa: BLE001 - whatever a decoder raises on these bytes: a bad file
        raise ImageError(
            f"{name} is truncated or corrupt and could not be decoded ({e or type(e).__name__}); "
            "re-download or re-export it"
        ) from e
    for w in caught:  # Pillow's own warnings (corrupt metadata...), with the file's name
        category = w.category if issubclass(w.category, ImageWarning) else ImageWarning
        text = str(w.message) if category is w.category else f"{name}: {w.message}"
        warnings.warn(text, category, stacklevel=4)
    return img, frames


def _frame_count(img: Image.Image) -> int:
    """Frames of an animated or multi-page image (1 if still, 0 if they cannot be counted)."""
    if img.format == "MPO":  # cameras store previews or depth maps after the photo: not frames
        return 1
    try:
        return img.n_frames if getattr(img, "is_animated", False) else 1
    except Exception:  # noqa: BLE001 - a later frame is corrupt; the first may be fine
        img.seek(0)
        return 0


def _upright(img: Image.Image, name: str) -> Image.Image:
    """A copy of ``img`` turned as its EXIF Orientation tag says."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - bad metadata must not lose good pixels
        warnings.warn(
            f"{name} has unreadable EXIF metadata ({e}); its orientation is not applied, "
            "so it may appear rotated or mirrored",
            ImageWarning,
            stacklevel=5,
        )
        return img.copy()


def _too_large(name: str, limit: int | None, error: Exception) -> ImageError:
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found[1]) if found else None
    size = f"{pixels:,} pixels" if pixels else "too many pixels"
    limit_text = f"the limit of {limit:,}" if limit else "the limit"
    example = pixels or 4 * (limit or Image.MAX_IMAGE_PIXELS or 1)
    return ImageError(
        f"{name} is too large to open safely: {size}, more than {limit_text} that guards "
        "against decompression bombs; downscale it first, or if you trust the file raise the "
        f"limit with the environment variable {MAX_PIXELS_ENV} (e.g. {MAX_PIXELS_ENV}={example}; "
        "0 accepts any size) or load_image(..., max_pixels=...)"
    )


def _what_it_is(data: bytes) -> str | None:
    """What a file Pillow cannot read seems to be, with the fix (None if nothing is recognized)."""
    head = data[:2048]
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "a HEIC/HEIF photo, which this Pillow build cannot read; convert it to JPEG or PNG"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return ("an HTML page (a download that got a web page instead of the image?); "
                "download the image itself")
    if b"<svg" in text and text.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg")):
        return "an SVG vector image; export it as PNG (e.g. with Inkscape or a web browser)"
    if _is_text(head):
        return "a text file; check the path (is it the image you meant?)"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of ``head``
            return False
        text = head[: e.start].decode("utf-8")
    return bool(text.strip()) and all(c.isprintable() or c in "\t\r\n\f" for c in text)


def _pil_to_array(img: Image.Image, name: str) -> np.ndarray:
    """Converts any PIL image mode to float32 (H, W, 3) RGB in [0, 1]."""
    try:
        img.load()
        return _convert_mode(img, name)
    except ImageError:
        raise
    except MemoryError as e:
        raise ImageError(
            f"{name} is too large to convert in the memory available; downscale it first"
        ) from e
    except Exception as e:  # noqa: BLE001 - any failure of Pillow's loading or conversion
        raise ImageError(
            f"{name} (mode {img.mode!r}) could not be converted to RGB ({e}); "
            "re-save it as an 8-bit RGB PNG or JPEG"
        ) from e


def _convert_mode(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):  # 16-bit grayscale, any byte order
        return _gray_to_rgb(np.asarray(img, dtype=np.float32) / 65535.0)
    if mode == "I":
        return _gray_to_rgb(_int32_to_unit(np.asarray(img), name))
    if mode == "F":
        return _gray_to_rgb(_float_to_unit(np.asarray(img), name))
    if mode == "CMYK" and img.info.get("icc_profile"):
        warnings.warn(
            f"{name} is CMYK with an embedded ICC profile, which nst_jax does not "
            "apply (it uses Pillow's plain CMYK->RGB formula); colors may be off. "
            "Convert it to sRGB in an image editor for exact colors.",
            ImageWarning,
            stacklevel=4,
        )
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        if mode == "La":  # premultiplied; Pillow only converts it to LA
            img = img.convert("LA")
        return _composite_over_white(np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0)
    # L, 1, P, RGB, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's conversions are exact
    # or the documented standard ones.
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    # out = color * alpha + white * (1 - alpha)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return (rgb * alpha + (1.0 - alpha)).astype(np.float32)


def _int32_to_unit(values: np.ndarray, name: str) -> np.ndarray:
    # Pillow's 32-bit integer mode "I" holds 16-bit PNG/TIFF data (0..65535).
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(
            f"{name} has 32-bit integer pixels in [{values.min()}, {values.max()}], "
            "outside the 16-bit range 0..65535 we can interpret; re-save it as an "
            "8- or 16-bit PNG"
        )
    return values.astype(np.float32) / 65535.0


def _float_to_unit(values: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ImageError(f"{name} contains NaN or infinite pixels; fix or re-export the image")
    return _check_unit_range(values.astype(np.float32), name)


def _check_unit_range(values: np.ndarray, name: str) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        looks_8bit = lo >= 0.0 and 1.0 < hi <= 255.0
        hint = "; it looks like 0..255 data, so divide by 255" if looks_8bit else ""
        raise ImageError(
            f"{name} has float values in [{lo:g}, {hi:g}]; float images must be in "
            f"[0, 1]{hint}"
        )
    return np.clip(values, 0.0, 1.0)


def _array_to_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Validates an array image and converts it to float32 (H, W, 3) in [0, 1]."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            hint = "; it looks channels-first, so transpose it with arr.transpose(1, 2, 0)"
        elif arr.ndim == 3 and arr.shape[-1] == 4:
            hint = "; drop or composite the alpha channel (or pass a PIL image)"
        raise ImageError(
            f"{name} has shape {arr.shape}; expected (H, W, 3) RGB or (H, W) grayscale{hint}"
        )
    _check_size(arr.shape[0], arr.shape[1], name)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        if bad := _count_nonfinite(arr):
            raise ImageError(
                f"{name} contains {bad} NaN or infinite values; fix the array before loading it"
            )
        return _check_unit_range(arr.astype(np.float32), name)
    raise ImageError(
        f"{name} has dtype {arr.dtype}; expected float in [0, 1], uint8 (0..255) or "
        "uint16 (0..65535); convert it, e.g. arr.astype(np.uint8)"
    )


def _check_size(h: int, w: int, name: str) -> None:
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ImageError(
            f"{name} is {h}x{w} pixels (HxW), too small: VGG-19 halves the resolution "
            f"at each of the 4 pooling layers before conv5_1, so both sides must be at "
            f"least {MIN_SIZE} pixels; use a larger image"
        )


def _count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/inf values (0 for non-float arrays)."""
    if not np.issubdtype(arr.dtype, np.inexact):
        return 0
    return int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))


# --------------------------------------------------------------------------
# Sizes and resizing
# --------------------------------------------------------------------------


def target_size(h: int, w: int, image_size: int) -> tuple[int, int]:
    """Size after scaling so that the long side is ``image_size`` pixels.

    This is the rule of jcjohnson/neural-style (torch's ``image.scale(img,
    size)``) and neural-style-pt, which computes
    ``int((float(image_size) / max(image.size)) * x)`` for x in (height, width),
    truncating toward zero. In floating point that product can fall just below
    an integer and make the long side ``image_size - 1`` (256 / 161 * 161 =
    255.99999999999997); torch's ``side * size / max`` (multiply first) never
    does. So the long side is set to ``image_size`` exactly and only the short
    side uses neural-style-pt's formula.

    Args:
      h: image height in pixels.
      w: image width in pixels.
      image_size: desired length of the longer side in pixels.

    Returns:
      (new_h, new_w), each at least 1.
    """
    h, w = _positive_int(h, "h"), _positive_int(w, "w")
    image_size = _positive_int(image_size, "image_size")
    scale = float(image_size) / max(h, w)
    if h >= w:
        return image_size, max(1, int(scale * w))
    return max(1, int(scale * h)), image_size


def resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resizes a float image with Pillow's BILINEAR filter, channel by channel.

    BILINEAR is what torchvision's ``transforms.Resize`` (and so neural-style-pt)
    uses on PIL images; like it, it antialiases when downscaling. Each channel
    is resized as a 32-bit float ("F" mode) image, so values are not rounded to
    8 bits and need not lie in [0, 1]. The filter is fixed on purpose: results
    depend on it.

    Args:
      img: array of shape (H, W) or (H, W, C).
      size_hw: output (height, width).

    Returns:
      A new float32 array of shape (height, width) or (height, width, C).
    """
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ImageError(
            f"resize: expected a non-empty (H, W) or (H, W, C) array, got shape {arr.shape}"
        )
    h, w = (_positive_int(s, "size_hw") for s in size_hw)
    channels = arr[..., None] if arr.ndim == 2 else arr
    planes = [_resize_channel(channels[..., c], h, w) for c in range(channels.shape[-1])]
    out = np.stack(planes, axis=-1)
    return out[..., 0] if arr.ndim == 2 else out


def _resize_channel(channel: np.ndarray, h: int, w: int) -> np.ndarray:
    pil = Image.fromarray(np.ascontiguousarray(channel))  # float32 2-D -> mode "F"
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_long_side(img: np.ndarray, image_size: int, *, label: str = "image") -> np.ndarray:
    """Resizes so that the long side is ``image_size`` (see ``target_size``).

    Args:
      img: array of shape (H, W) or (H, W, C).
      image_size: desired length of the longer side in pixels.
      label: how an error message refers to the image.

    Returns:
      The resized float32 array.

    Raises:
      ImageError: the result would have a side shorter than ``MIN_SIZE``.
    """
    arr = np.asarray(img)
    h, w = target_size(arr.shape[0], arr.shape[1], image_size)
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ImageError(
            f"{label} ({arr.shape[0]}x{arr.shape[1]} HxW) would become {h}x{w} at "
            f"image_size={image_size}, but both sides must be at least {MIN_SIZE} "
            "pixels for VGG-19; use a larger size or a less elongated image"
        )
    return resize(arr, (h, w))


def _positive_int(value: Any, what: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{what} must be a positive integer, got {number}")
    return number


# --------------------------------------------------------------------------
# Conversion back to 8 bits
# --------------------------------------------------------------------------


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Converts a float image in [0, 1] to uint8: clip, scale by 255, round.

    Rounding (rather than torchvision's truncation) makes k/255 -> k exact.
    uint8 input is returned unchanged.

    Args:
      img: float array of shape (H, W, 3) or (H, W).

    Returns:
      A uint8 array of the same shape.
    """
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if bad := _count_nonfinite(arr):
        raise ImageError(
            f"image has {bad} NaN or infinite values and cannot be converted to 8 bits"
        )
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(img: np.ndarray) -> Image.Image:
    """Converts a float (H, W, 3) or (H, W) image in [0, 1] to an RGB or L PIL image.

    Args:
      img: float array of shape (H, W, 3) or (H, W).

    Returns:
      A ``PIL.Image.Image`` in mode "RGB" (or "L" for 2-D input).
    """
    arr = np.asarray(img)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or 0 in arr.shape:
        raise ImageError(f"image has shape {arr.shape}; expected (H, W, 3) RGB or (H, W) grayscale")
    return Image.fromarray(to_uint8(arr))


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def save_image(
    img: np.ndarray, path: str | os.PathLike[str], *, metadata: dict | None = None
) -> Path:
    """Writes an image atomically; the format comes from the file extension.

    The file is written to a temporary file in the same directory, fsynced and
    renamed over ``path``, so a crash or error never leaves a partial output,
    and an existing file is either fully replaced or untouched. A missing
    output directory is created if its own parent exists (only the last level:
    a deeper missing path is more often a typo than a wish for a new tree).
    JPEG and WebP are written at quality 95. Whether ``path`` may be replaced
    is the caller's decision (see ``check_overwrite``).

    Args:
      img: float array (H, W, 3) or (H, W) in [0, 1] (values are clipped);
        uint8 arrays are written as they are.
      path: output file; extension one of ``SAVE_FORMATS``.
      metadata: JSON-serializable settings to embed (non-JSON values are
        stored with ``str``). PNG stores them as a tEXt chunk ``nst_jax``;
        JPEG, WebP and TIFF as the EXIF ImageDescription. ``read_metadata``
        reads either back.

    Returns:
      The output path.

    Raises:
      ImageError: unsupported extension, NaN/inf pixels, an output directory
        that cannot be created (also: whose parent is missing) or written, or
        a failed write.
    """
    path = Path(path).expanduser()
    fmt = _format_for(path)
    arr = np.asarray(img)
    if bad := _count_nonfinite(arr):
        raise ImageError(
            f"refusing to write NaN pixels to '{path}': {bad} values are NaN or infinite, "
            "so the optimization probably diverged; lower the learning rate or loss weights"
        )
    pil = to_pil(arr)
    options = {**_SAVE_OPTIONS.get(fmt, {}), **_metadata_options(fmt, metadata)}
    _make_parent_dir(path)
    try:
        _atomic_write(path, lambda f: pil.save(f, format=fmt, **options))
    except (OSError, ValueError) as e:
        raise ImageError(
            f"could not write '{path}' ({e}); check free disk space and permissions"
        ) from e
    return path


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Checks up front that ``save_image(..., path)`` can succeed.

    Call it before a long optimization so that a typo fails in a second rather
    than after an hour. Nothing is left behind: a directory that does not exist
    yet is not created (``save_image`` does that), but the closest existing
    one is tested by creating and removing a temporary file in it.

    Args:
      path: the intended output file.

    Returns:
      The path as a ``Path``.

    Raises:
      ImageError: unsupported extension, a path that is a directory, a parent
        "directory" that is a file, a missing output directory whose parent is
        missing too (only the last level is created), or a directory that is
        not writable.
    """
    path = Path(path).expanduser()
    _format_for(path)
    _reject_directory(path)
    directory = _closest_existing(path.parent)
    if not directory.is_dir():
        raise ImageError(
            f"cannot create output directory '{path.parent}': '{directory}' is a file, "
            "not a directory; choose another output path"
        )
    _check_missing_depth(path.parent)
    try:
        fd, probe = create_temp(directory / path.name)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise ImageError(
            f"output directory '{directory}' is not writable ({e.strerror or e}); "
            "choose another output path or fix its permissions"
        ) from e
    return path


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: also through symlinks, ``..``, other
    spellings and hard links (``os.path.samefile``); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file nst_jax wrote (a previous output).

    ``save_image`` tags every image with its Software name, ``nst_jax <version>``:
    a PNG text chunk, the EXIF Software tag in JPEG, WebP and TIFF; only the
    header is read. A ``.json`` file (e.g. a sweep's losses) is ours if its
    top-level ``"software"`` holds that name, a ``.md`` file (a comparison's
    table) if its first line is :func:`text_tag`. A missing, unreadable or untagged
    file (including every format we cannot tag) is not ours, so it is replaced
    only when the user says so (``check_overwrite``).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        try:
            software = json.loads(path.read_text(encoding="utf-8")).get("software", "")
        except (OSError, ValueError, AttributeError):
            return False
        return str(software).startswith(METADATA_KEY + " ")
    if path.suffix.lower() == ".md":
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, ValueError):
            return False
        return first.startswith("<!-- " + METADATA_KEY + " ")
    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                software = img.info.get("Software", "")  # our chunks precede the pixels
            else:
                software = img.getexif().get(_EXIF_SOFTWARE, "")
    except (OSError, SyntaxError, ValueError, EOFError):
        return False
    return str(software).startswith(METADATA_KEY + " ")


def check_overwrite(
    path: str | os.PathLike[str],
    inputs: Sequence[tuple[str, Any]] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Checks that writing ``path`` destroys nothing the user did not ask to replace.

    An output is never one of the inputs (whatever the spelling, symlink or hard
    link), not even with ``overwrite``. An existing file is replaced only if
    nst_jax wrote it (``is_own_output``: a previous output) or ``overwrite``.

    Args:
      path: the intended output file.
      inputs: ``(label, source)`` of each image the run reads, e.g.
        ``("content image", "photo.jpg")``; sources that are not paths
        (arrays, PIL images) are ignored.
      overwrite: replace an existing file that nst_jax did not write.

    Returns:
      The path as a ``Path``.

    Raises:
      ImageError: ``path`` is an input, or an existing file that is not ours
        and ``overwrite`` is false.
    """
    path = Path(path).expanduser()
    for label, source in inputs:
        if isinstance(source, (str, os.PathLike)) and same_file(path, Path(source).expanduser()):
            raise ImageError(
                f"output '{path}' is also the {label} '{source}'; writing it would replace an input "
                "(even with --overwrite / overwrite=True): choose another output path"
            )
    if path.exists() and not overwrite and not is_own_output(path):
        raise ImageError(
            f"output '{path}' already exists and was not written by nst_jax; refusing to replace it: "
            "choose another output path, or pass --overwrite (Python: overwrite=True) to replace it"
        )
    return path


def _format_for(path: Path) -> str:
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    supported = ", ".join(sorted(SAVE_FORMATS))
    if fmt is None:
        raise ImageError(
            f"cannot save '{path}': unsupported extension {path.suffix or '(none)'!r}; "
            f"use one of {supported}"
        )
    Image.init()
    if fmt not in Image.SAVE:
        raise ImageError(f"cannot save '{path}': this Pillow build cannot write {fmt}; use .png")
    return fmt


def _metadata_options(fmt: str, metadata: dict | None) -> dict:
    """Pillow save() keyword arguments that embed our metadata and name."""
    software = software_name()
    text = None if metadata is None else json.dumps(metadata, sort_keys=True, default=str)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", software)
        if text is not None:
            info.add_text(METADATA_KEY, text)
        return {"pnginfo": info}
    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = software
    if text is not None:
        exif[_EXIF_DESCRIPTION] = text  # ASCII: json.dumps escapes non-ASCII
    return {"exif": exif}


def text_tag() -> str:
    """The first line of the text files nst_jax writes (:func:`save_text`): an HTML comment naming it, which
    markdown viewers do not show and :func:`is_own_output` recognizes."""
    return f"<!-- {software_name()} -->"


def save_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Writes a text file atomically (as :func:`save_image`: temporary file, fsync, rename; only the last level
    of a missing directory is created), :func:`text_tag` as its first line.

    Raises:
      ImageError: a directory that cannot be created or written, or a failed write.
    """
    path = Path(path).expanduser()
    data = (text_tag() + "\n" + text).encode("utf-8")
    _make_parent_dir(path)
    try:
        _atomic_write(path, lambda f: f.write(data))
    except (OSError, ValueError) as e:
        raise ImageError(f"could not write '{path}' ({e}); check free disk space and permissions") from e
    return path


def software_name() -> str:
    from nst_jax import __version__  # deferred: the package imports this module

    return f"{METADATA_KEY} {__version__}"


def _reject_directory(path: Path) -> None:
    if path.is_dir():
        raise ImageError(
            f"output path '{path}' is a directory; add a file name, e.g. '{path / 'out.png'}'"
        )


def _closest_existing(directory: Path) -> Path:
    """The nearest ancestor of ``directory`` (itself included) that exists."""
    directory = directory.absolute()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _check_missing_depth(parent: Path) -> None:
    """Only the last level of an output directory is ever created: a missing
    grandparent is far more often a typo than a wish for a new tree."""
    if parent.is_dir() or parent.parent.is_dir() or not _closest_existing(parent).is_dir():
        return  # (a file in the way is reported by the callers)
    raise ImageError(
        f"cannot create output directory '{parent}': its parent '{parent.parent}' does "
        f"not exist either (the closest existing directory is "
        f"'{_closest_existing(parent)}'); only the last level of an output directory is "
        "created, so check the path for a typo or create the directories first"
    )


def _make_parent_dir(path: Path) -> None:
    _reject_directory(path)
    parent = path.parent
    _check_missing_depth(parent)
    try:
        parent.mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        blocker = _closest_existing(parent)
        raise ImageError(
            f"cannot create output directory '{parent}': '{blocker}' is a file, not a "
            "directory; choose another output path"
        ) from e
    except OSError as e:
        raise ImageError(
            f"cannot create output directory '{parent}' ({e.strerror or e}); choose "
            "another output path or fix the permissions"
        ) from e


def create_temp(path: Path) -> tuple[int, Path]:
    """Creates ``.<name>.<random>.tmp`` next to ``path``; returns (fd, temp path).

    Unlike tempfile.NamedTemporaryFile (mode 0600), the file gets the usual
    permissions (0666 minus the umask), which the final output then keeps.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to '{path}'")


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Writes via ``write(file)`` to a temp file, fsyncs it, renames it to ``path``."""
    try:
        fd, temp = create_temp(path)
    except PermissionError as e:
        raise ImageError(
            f"output directory '{path.parent}' is not writable; choose another output "
            "path or fix its permissions"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable. Best effort: some platforms (Windows) and
    # filesystems cannot fsync a directory; the file contents are synced anyway.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_metadata(path: str | os.PathLike[str]) -> dict | None:
    """Reads the metadata ``save_image`` embedded in a file.

    Args:
      path: an image written by ``save_image``.

    Returns:
      The metadata dict, or None if the file carries none.

    Raises:
      ImageError: the file is missing, not an image, or its metadata is not
        valid JSON.
    """
    path = Path(path).expanduser()
    name = f"image '{path}'"
    if not path.is_file():
        raise ImageError(f"{name} not found or not a file; check the path")
    try:
        with Image.open(path) as img:
            text = _metadata_text(img)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name} could not be read ({e}); check that it is an image file") from e
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ImageError(f"{name} has {METADATA_KEY} metadata that is not valid JSON ({e})") from e


def _metadata_text(img: Image.Image) -> str | None:
    if img.format == "PNG":
        return img.text.get(METADATA_KEY)  # reads text chunks after IDAT too
    exif = img.getexif()
    if str(exif.get(_EXIF_SOFTWARE, "")).startswith(METADATA_KEY):
        return exif.get(_EXIF_DESCRIPTION)
    return None  # some other program's ImageDescription is not ours


# --------------------------------------------------------------------------
# Colors
# --------------------------------------------------------------------------


def rgb_to_yuv(img: np.ndarray) -> np.ndarray:
    """RGB -> YUV with torch's image.rgb2yuv (BT.601) coefficients.

    Args:
      img: float array (..., 3), RGB.

    Returns:
      float32 array (..., 3): Y, U, V.
    """
    return (np.asarray(img, dtype=np.float64) @ _RGB_TO_YUV.T).astype(np.float32)


def yuv_to_rgb(img: np.ndarray) -> np.ndarray:
    """YUV -> RGB, the exact inverse of ``rgb_to_yuv`` (no clipping).

    Args:
      img: float array (..., 3): Y, U, V.

    Returns:
      float32 array (..., 3), RGB.
    """
    return (np.asarray(img, dtype=np.float64) @ _YUV_TO_RGB.T).astype(np.float32)


def original_colors(content: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """neural-style's ``-original_colors 1``: generated luminance, content colors.

    Takes Y from the generated image and U, V from the content image (resized
    to the generated size if needed) in YUV, converts back to RGB and clips.

    Args:
      content: float (H, W, 3) RGB content image in [0, 1].
      generated: float (H', W', 3) RGB stylized image.

    Returns:
      float32 (H', W', 3) RGB in [0, 1].
    """
    content = _rgb_array(content, "content image")
    generated = _rgb_array(generated, "generated image")
    if content.shape != generated.shape:
        content = resize(content, generated.shape[:2])
    yuv = np.concatenate([rgb_to_yuv(generated)[..., :1], rgb_to_yuv(content)[..., 1:]], axis=-1)
    return np.clip(yuv_to_rgb(yuv), 0.0, 1.0)


def _rgb_array(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ImageError(f"{name} has shape {arr.shape}; expected (H, W, 3) RGB")
    return arr


# --------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------


def list_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Expands a directory, glob pattern, manifest file or image path to image paths.

    Args:
      spec: one of
        * a directory: its image files (by extension, see ``IMAGE_EXTENSIONS``;
          not recursive; hidden files skipped), sorted by name;
        * a glob pattern (``**`` recurses): matching image files, sorted;
        * a manifest: a text file with one image path per line; blank lines
          and lines starting with ``#`` are ignored; relative paths are
          relative to the manifest's directory; order is kept;
        * a single image file.

    Returns:
      A non-empty list of paths.

    Raises:
      ImageError: nothing matches, the spec does not exist, or a manifest
        lists files that do not exist.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _is_image_name(p))
        where = f"directory '{path}'"
    elif path.is_file():
        if _is_image_name(path):
            return [path]
        found = _read_manifest(path)
        where = f"manifest '{path}'"
    elif _GLOB_CHARS.search(text):
        matches = glob.glob(os.path.expanduser(text), recursive=True)
        found = sorted(Path(p) for p in matches if Path(p).is_file() and _is_image_name(Path(p)))
        where = f"glob pattern '{text}'"
    else:
        raise ImageError(
            f"'{text}' is not an existing directory, image, manifest file or glob "
            "pattern; check the path"
        )
    if not found:
        raise ImageError(
            f"no images found for {where}; image files must end in one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return found


def _is_image_name(path: Path) -> bool:
    # Hidden files include macOS "._x.jpg" resource forks and our own temp files.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _read_manifest(manifest: Path) -> list[Path]:
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise ImageError(
            f"manifest '{manifest}' is not a UTF-8 text file; list one image path per line"
        ) from e
    except OSError as e:
        raise ImageError(f"manifest '{manifest}' cannot be read ({e.strerror or e})") from e
    found, missing = [], []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(entry).expanduser()
        image = image if image.is_absolute() else manifest.parent / image
        (found if image.is_file() else missing).append((number, image))
    if missing:
        shown = "; ".join(f"line {n}: '{p}'" for n, p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ImageError(
            f"manifest '{manifest}' lists {len(missing)} missing file(s): {shown}{more}; "
            f"fix or remove those lines (relative paths start at '{manifest.parent}')"
        )
    return [p for _, p in found]
