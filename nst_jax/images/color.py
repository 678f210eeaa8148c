"""Color conversions: RGB <-> YUV (BT.601, neural-style's coefficients), original-colors luminance transfer, and
colour transfer of a style image to a content image's colours (histogram or mean/covariance matching)."""

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


#: The ways a style image's colours can be matched to the content's (``Settings.color_transfer``).
COLOR_TRANSFERS = ("none", "histogram", "stats")

#: Added to the diagonal of the style's RGB covariance before its inverse square root (:func:`match_stats`), so
#: that a flat or gray style image (a singular covariance) still maps to finite values.
STATS_EPS = 1e-8


def match_histograms(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel histogram matching by exact CDF matching: each channel of ``source`` takes the values of
    ``reference``'s channel at the same quantiles (its pixels ranked, ties broken by position).

    The ``k``-th smallest of ``n`` source values becomes the reference's quantile ``(k + 1/2) / n``, linearly
    interpolated between the reference's sorted values; with as many pixels as ``reference`` a channel gets
    exactly the reference's values (equal histograms), otherwise their quantiles.

    Args:
      source: float (H, W, 3) RGB (the style image).
      reference: float (H', W', 3) RGB (the content image); any size.

    Returns:
      float32 (H, W, 3), within the range of ``reference``.
    """
    src = _rgb_array(source, "style image").astype(np.float64).reshape(-1, 3)
    ref = _rgb_array(reference, "content image").astype(np.float64).reshape(-1, 3)
    n, m = len(src), len(ref)
    out = np.empty_like(src)
    q_src = (np.arange(n) + 0.5) / n
    q_ref = (np.arange(m) + 0.5) / m
    for c in range(3):
        order = np.argsort(src[:, c], kind="stable")
        out[order, c] = np.interp(q_src, q_ref, np.sort(ref[:, c]))
    return out.reshape(np.shape(source)).astype(np.float32)


def match_stats(source: np.ndarray, reference: np.ndarray, *, eps: float = STATS_EPS) -> np.ndarray:
    """Mean and covariance matching of RGB: ``source``'s pixels mapped affinely, ``x -> A (x - mu_s) + mu_r``,
    so that they have ``reference``'s mean and covariance.

    ``A = C_r^(1/2) C_s^(-1/2)`` with the symmetric positive square roots (eigendecompositions, float64): then
    ``A C_s A^T = C_r``. (Any ``A = R_r Q R_s^-1`` with ``R R^T = C`` and ``Q`` orthogonal gives the same
    statistics, e.g. Cholesky factors; the symmetric roots are the choice that does not depend on the order
    of the channels.) ``eps`` is added to ``C_s``'s
    diagonal (a gray style image has a singular covariance). Not clipped: the caller clips to [0, 1] (which
    moves the statistics where values leave the range).

    Args:
      source: float (H, W, 3) RGB (the style image).
      reference: float (H', W', 3) RGB (the content image); any size.
      eps: regularization of the style's covariance.

    Returns:
      float64 (H, W, 3).
    """
    src = _rgb_array(source, "style image").astype(np.float64).reshape(-1, 3)
    ref = _rgb_array(reference, "content image").astype(np.float64).reshape(-1, 3)
    mu_s, mu_r = src.mean(0), ref.mean(0)
    cov_s = np.cov(src, rowvar=False, bias=True) + eps * np.eye(3)
    cov_r = np.cov(ref, rowvar=False, bias=True)
    a = _sym_power(cov_r, 0.5) @ _sym_power(cov_s, -0.5)
    return ((src - mu_s) @ a.T + mu_r).reshape(np.shape(source))


def _sym_power(cov: np.ndarray, p: float) -> np.ndarray:
    """``cov ** p`` of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding taken as 0)."""
    w, v = np.linalg.eigh(cov)
    w = np.maximum(w, 0.0)
    return (v * (w ** p if p > 0 else np.where(w > 0, w, np.inf) ** p)) @ v.T


def transfer_colors(style: np.ndarray, content: np.ndarray, mode: str) -> np.ndarray:
    """``style`` with ``content``'s colours (:data:`COLOR_TRANSFERS`): ``"histogram"`` (:func:`match_histograms`),
    ``"stats"`` (:func:`match_stats`) or ``"none"`` (unchanged); float32 RGB clipped to [0, 1]."""
    if mode == "none":
        return style
    if mode == "histogram":
        out = match_histograms(style, content)
    elif mode == "stats":
        out = match_stats(style, content)
    else:
        raise ValueError(f"color transfer must be one of {', '.join(map(repr, COLOR_TRANSFERS))}, got {mode!r}.")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _rgb_array(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ImageError(f"{name} has shape {arr.shape}; expected (H, W, 3) RGB")
    return arr
