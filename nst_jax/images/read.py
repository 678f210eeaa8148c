"""Reading images: any file, PIL image or array a user may hand us -> float32 RGB ``(H, W, 3)`` in [0, 1],
or an :class:`~nst_jax.images.ImageError` naming the input and the fix.

Size: one concern, every way an input image can be bad (formats, modes, bit depths, EXIF orientation,
frames, pixel limits, truncation, files that are not images) and the message that says how to fix it.
"""

from __future__ import annotations

import contextlib
import io
import operator
import os
import re
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.images.base import MIN_SIZE, ImageError, ImageSource, ImageWarning, count_nonfinite


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
        if bad := count_nonfinite(arr):
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
