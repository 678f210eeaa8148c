"""Sizes, resizing (Pillow's bilinear filter on float32 channels) and conversion back to 8 bits."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from PIL import Image

from nst_jax.images.base import MIN_SIZE, ImageError, count_nonfinite


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
    if bad := count_nonfinite(arr):
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
