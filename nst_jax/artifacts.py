"""Measures of the artifacts practitioners report in style transfer outputs (neural-style wiki, "Artifacts"):
lines along the borders, gray spots, grid patterns. Pure numpy functions of an RGB image in [0, 1].

Each measure is a number whose direction is fixed (higher: more of the artifact), made to compare runs that
differ in one setting on the same content and style (zero vs reflect padding, Adam's constants, the TV
weight); none of them is a quality score across different pictures. The README's "Artifacts and how to avoid
them" says which setting answers which artifact; ``nst-jax study artifacts`` measures them.
"""

from __future__ import annotations

import numpy as np

#: Saturation and value of the ImageNet mean colour (RGB 0.485, 0.456, 0.406), the colour a pixel takes where
#: its Caffe-space value is 0, which is what Adam's gray spots collapse to: S = (0.485 - 0.406) / 0.485, V = 0.485.
MEAN_SATURATION = (0.485 - 0.406) / 0.485
MEAN_VALUE = 0.485


def _as_image(image, name: str = "image") -> np.ndarray:
    """``image`` as float64 ``(H, W, C)``; a ValueError naming it if it is not a finite 2-D or 3-D array."""
    a = np.asarray(image)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be a numeric array (H, W) or (H, W, C) in [0, 1], got dtype {a.dtype}.")
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be an array (H, W) or (H, W, C) in [0, 1], got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or infinite values; pass a finite image in [0, 1].")
    return a


def gradient_magnitude(image) -> np.ndarray:
    """Per-pixel gradient magnitude by forward differences, ``(H-1, W-1)``.

    At ``(i, j)``: ``sqrt(sum_c (x[i, j+1, c] - x[i, j, c])^2 + (x[i+1, j, c] - x[i, j, c])^2)``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, values in [0, 1].
    """
    a = _as_image(image)
    dx = a[:-1, 1:] - a[:-1, :-1]
    dy = a[1:, :-1] - a[:-1, :-1]
    return np.sqrt(np.sum(dx * dx + dy * dy, axis=-1))


def border_energy(image, width: int = 4) -> float:
    """How much more the image changes along its borders than inside: lines parallel to the borders (from
    zero padding) make it larger than 1.

    The mean :func:`gradient_magnitude` over the outer ``width`` rows and columns of the gradient map, divided
    by its mean over the rest. 1: borders like the interior; a flat image gives 1, a flat interior with
    changing borders ``inf``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, values in [0, 1].
        width: the border's thickness in pixels; the interior must keep at least one pixel.
    """
    g = gradient_magnitude(image)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer >= 1 (pixels), got {width!r}.")
    if 2 * width >= min(g.shape):
        raise ValueError(f"width={width} leaves no interior in a {g.shape[0] + 1}x{g.shape[1] + 1} image; use a "
                         f"width below {min(g.shape) // 2} or a larger image.")
    border = np.ones(g.shape, bool)
    border[width:-width, width:-width] = False
    inner, outer = g[~border].mean(), g[border].mean()
    if inner == 0:
        return 1.0 if outer == 0 else float("inf")
    return float(outer / inner)


def saturation_value(image) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB image: ``V = max(r, g, b)``, ``S = (V - min(r, g, b)) / V`` (0 where
    V is 0). Each ``(H, W)``."""
    a = _as_image(image)
    if a.shape[-1] != 3:
        raise ValueError(f"image must be RGB (H, W, 3), got shape {np.shape(image)}.")
    hi, lo = a.max(axis=-1), a.min(axis=-1)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return sat, hi


def label_components(mask) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (4-neighbourhood) of a boolean mask.

    Returns:
        ``(labels, sizes)``: ``labels`` is int ``(H, W)``, -1 outside the mask and ``0..n-1`` inside (numbered
        by their first pixel in row-major order); ``sizes[k]`` is the pixel count of component ``k``.
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D boolean array, got shape {m.shape}.")
    h, w = m.shape
    # Union-find over the mask's edges, vectorized: every round links each root that an edge joins to another
    # root to the smallest such root, then compresses every path, until no edge joins two roots. A parent is
    # never larger than its child, so each component's root is its first pixel in row-major order.
    flat = m.ravel()
    index = np.arange(h * w).reshape(h, w)
    right = (m[:, :-1] & m[:, 1:]).ravel()
    down = (m[:-1] & m[1:]).ravel()
    a = np.concatenate([index[:, :-1].ravel()[right], index[:-1].ravel()[down]])
    b = np.concatenate([index[:, 1:].ravel()[right], index[1:].ravel()[down]])
    parent = np.arange(h * w)
    while True:
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        np.minimum.at(parent, np.maximum(ra[apart], rb[apart]), np.minimum(ra[apart], rb[apart]))
    _, labels, sizes = np.unique(parent[flat], return_inverse=True, return_counts=True)
    out = np.full((h, w), -1, np.int64)
    out[m] = labels
    return out, sizes


def gray_mask(image, saturation: float = 0.2, value: float = 0.2) -> np.ndarray:
    """The gray pixels: HSV saturation below ``saturation`` and value within ``value`` of the ImageNet mean's
    (:data:`MEAN_VALUE`), so mid grays, not black or white. ``(H, W)`` bool."""
    sat, val = saturation_value(image)
    return (sat < saturation) & (np.abs(val - MEAN_VALUE) < value)


def gray_spots(image, saturation: float = 0.2, value: float = 0.2, min_size: int = 4,
               max_size: int | None = None) -> int:
    """The number of gray spots: connected components (4-neighbourhood) of :func:`gray_mask` with at least
    ``min_size`` pixels (and at most ``max_size``, if given).

    The defaults take in the ImageNet mean colour (saturation :data:`MEAN_SATURATION`, value
    :data:`MEAN_VALUE`), which a region takes when its pixels collapse to 0 in Caffe space, as Adam's gray
    spots do. Gray regions of the content itself are counted too: compare runs on the same content.

    Args:
        image: ``(H, W, 3)`` RGB in [0, 1].
        saturation: the largest HSV saturation (exclusive) of a gray pixel.
        value: the largest distance (exclusive) of its HSV value from :data:`MEAN_VALUE`.
        min_size, max_size: the pixel counts of a spot (inclusive); smaller components are noise.
    """
    for name, v in (("saturation", saturation), ("value", value)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not 0 < v <= 1:
            raise ValueError(f"{name} must be a number in (0, 1], got {v!r}.")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be an integer >= 1 (pixels), got {min_size!r}.")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer))
                                 or max_size < min_size):
        raise ValueError(f"max_size must be None or an integer >= min_size ({min_size}), got {max_size!r}.")
    _, sizes = label_components(gray_mask(image, saturation, value))
    keep = sizes >= min_size
    if max_size is not None:
        keep &= sizes <= max_size
    return int(np.count_nonzero(keep))


def luminance(image) -> np.ndarray:
    """Rec. 601 luma ``0.299 r + 0.587 g + 0.114 b`` of an RGB image (a gray image as it is), ``(H, W)``."""
    a = _as_image(image)
    if a.shape[-1] == 1:
        return a[:, :, 0]
    if a.shape[-1] != 3:
        raise ValueError(f"image must be gray (H, W) or RGB (H, W, 3), got shape {np.shape(image)}.")
    return a @ np.array([0.299, 0.587, 0.114])


def _power_spectrum(image) -> np.ndarray:
    """``|FFT2|^2`` of the luminance, mean removed, under a separable Hann window (so that the image's
    borders, which the DFT sees as edges, do not leak over the spectrum; a bin's power leaks to its
    immediate neighbours only)."""
    y = luminance(image)
    y = y - y.mean()
    h, w = y.shape
    win = np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1])
    return np.abs(np.fft.fft2(y * win)) ** 2


def grid_energy(image, period: int = 16) -> float:
    """How much a periodic grid of period ``period`` pixels (or a divisor of it) stands out of the image's
    spectrum: VGG-19's pooling strides are 2, 4, 8 and 16, and grid-like dot patterns repeat at them.

    For each frequency ``(i/period, j/period)`` cycles per pixel, ``(i, j) != (0, 0)`` (the harmonics of every
    divisor of ``period``), the power spectrum of the luminance (mean removed, Hann window) there divided by
    its mean over the 16 bins two steps away (out of the window's leakage, which reaches one bin); the result
    is the geometric mean of these ratios over all the frequencies, times ``e^0.5772`` (Euler's constant: a
    bin of noise is exponentially distributed, and an exponential's geometric mean is ``e^-0.5772`` times its
    mean). About 1 for noise and smooth spectra; a grid makes it large. The geometric mean lets a grid at a
    divisor of ``period`` (peaks at some of the frequencies only) count, without one strong bin deciding alone.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)``, values in [0, 1]; each side at least ``4 * period``.
        period: the grid's period in pixels (>= 2).
    """
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 2:
        raise ValueError(f"period must be an integer >= 2 (pixels), got {period!r}.")
    p = _power_spectrum(image)
    h, w = p.shape
    if min(h, w) < 4 * period:
        raise ValueError(f"grid_energy with period={period} needs an image of at least {4 * period} px a side "
                         f"(grid frequencies 4 bins apart), got {h}x{w}; use a smaller period or a larger image.")
    rows = np.round(np.arange(period) * h / period).astype(int)[:, None]
    cols = np.round(np.arange(period) * w / period).astype(int)[None, :]
    ring = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if max(abs(dy), abs(dx)) == 2]
    ref = np.mean([p[(rows + dy) % h, (cols + dx) % w] for dy, dx in ring], axis=0)
    peak = p[rows, cols]
    tiny = np.finfo(np.float64).tiny * 1e6  # a flat image: ratios 0/0 count as 1
    ratio = (peak + tiny) / (ref + tiny)
    ratio[0, 0] = 1.0  # the mean, removed
    return float(np.exp(np.log(ratio).sum() / (ratio.size - 1) + np.euler_gamma))


def high_frequency(image) -> float:
    """The fraction of the luminance's spectral power (mean removed, Hann window) above half the Nyquist
    frequency (``max(|fy|, |fx|) > 1/4`` cycles per pixel): fine noise and pixel-scale patterns raise it, the
    TV regularizer lowers it. 0 for a flat image."""
    p = _power_spectrum(image)
    fy = np.abs(np.fft.fftfreq(p.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(p.shape[1]))[None, :]
    total = p.sum()
    return 0.0 if total == 0 else float(p[np.maximum(fy, fx) > 0.25].sum() / total)
