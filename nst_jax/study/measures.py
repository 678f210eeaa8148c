"""Numbers the studies measure on pictures: distances to a reference and the scale of a texture.

All take float RGB ``(H, W, 3)`` arrays in [0, 1] and compute in float64.
"""

from __future__ import annotations

import numpy as np

from nst_jax import artifacts


def _rgb(img) -> np.ndarray:
    a = np.asarray(img, np.float64)
    if a.ndim != 3 or a.shape[-1] < 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got an array of shape {a.shape}.")
    return a[..., :3]


def rmse(a, b) -> float:
    """Root mean square difference of two images of one shape (in [0, 1] units)."""
    a, b = _rgb(a), _rgb(b)
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes {a.shape} and {b.shape}: resize one to the other first.")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def color_distance(a, b) -> float:
    """Distance between the colour histograms of two images: per RGB channel the 1-D Wasserstein-1 distance of
    the two value distributions (the mean absolute difference of their quantiles, over 256 quantiles), averaged
    over the channels. 0: the same histograms; in [0, 1]. The images' sizes may differ."""
    a, b = _rgb(a), _rgb(b)
    q = (np.arange(256) + 0.5) / 256
    dist = [np.mean(np.abs(np.quantile(a[..., c].ravel(), q) - np.quantile(b[..., c].ravel(), q))) for c in range(3)]
    return float(np.mean(dist))


def luminance(img) -> np.ndarray:
    """Rec. 601 luma of an RGB image (:func:`nst_jax.artifacts.luminance`), ``(H, W)`` float64."""
    return artifacts.luminance(_rgb(img))


def mean_gradient(img) -> float:
    """Mean magnitude of the luminance gradient (forward differences, per pixel): how much fine structure."""
    y = luminance(img)
    gy, gx = np.diff(y, axis=0)[:, :-1], np.diff(y, axis=1)[:-1, :]
    return float(np.mean(np.sqrt(gx ** 2 + gy ** 2)))


def texture_scale(img) -> float:
    """The mean spatial frequency of the luminance, in cycles per pixel: its power spectrum's centroid over the
    radial frequency (the mean removed; no window). Finer texture, higher value (at most about 0.7)."""
    y = luminance(img)
    y = y - y.mean()
    power = np.abs(np.fft.fft2(y)) ** 2
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.fftfreq(y.shape[1])[None, :]
    radius = np.sqrt(fx ** 2 + fy ** 2)
    total = power.sum()
    return float((radius * power).sum() / total) if total > 0 else 0.0
