"""Color conversions: RGB <-> YUV (BT.601, neural-style's coefficients) and original-colors luminance transfer."""

from __future__ import annotations


import numpy as np

from nst_jax.images.base import ImageError
from nst_jax.images.convert import resize


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
