"""What every part of :mod:`nst_jax.images` shares: the error and warning types, size limits and file
formats.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image


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


ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageError(ValueError):
    """A bad image input or output path; the message names it and the fix."""


class ImageWarning(UserWarning):
    """An image was loaded, but not all of it or not exactly: the message names it and why."""


def count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/inf values (0 for non-float arrays)."""
    if not np.issubdtype(arr.dtype, np.inexact):
        return 0
    return int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
