"""Image I/O, resizing and color conversions; every bad-image check lives here.

The parts: :mod:`~nst_jax.images.read` (decoding anything a user hands us), :mod:`~nst_jax.images.convert`
(sizes, resizing, 8-bit conversion), :mod:`~nst_jax.images.write` (output-path checks, atomic writes,
metadata), :mod:`~nst_jax.images.color` (YUV, original colors, colour transfer), :mod:`~nst_jax.images.listing`
(the inputs of a batch job). Everything public is importable from ``nst_jax.images``.

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

from nst_jax.images.base import IMAGE_EXTENSIONS, MIN_SIZE, SAVE_FORMATS, ImageError, ImageSource, ImageWarning
from nst_jax.images.color import (COLOR_TRANSFERS, match_histograms, match_stats, original_colors, rgb_to_yuv,
                                  transfer_colors, yuv_to_rgb)
from nst_jax.images.convert import resize, resize_long_side, target_size, to_pil, to_uint8
from nst_jax.images.listing import list_images
from nst_jax.images.read import MAX_PIXELS_ENV, load_image
from nst_jax.images.write import (
    METADATA_KEY,
    check_output_path,
    check_overwrite,
    create_temp,
    is_own_output,
    read_metadata,
    same_file,
    save_image,
    save_text,
    software_name,
    text_tag,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "METADATA_KEY",
    "MIN_SIZE",
    "SAVE_FORMATS",
    "ImageError",
    "ImageSource",
    "ImageWarning",
    "check_output_path",
    "check_overwrite",
    "create_temp",
    "is_own_output",
    "list_images",
    "load_image",
    "original_colors",
    "COLOR_TRANSFERS",
    "match_histograms",
    "match_stats",
    "transfer_colors",
    "read_metadata",
    "resize",
    "resize_long_side",
    "rgb_to_yuv",
    "same_file",
    "save_image",
    "save_text",
    "software_name",
    "target_size",
    "text_tag",
    "to_pil",
    "to_uint8",
    "yuv_to_rgb",
]
