"""The CNN-MRF style loss of Li & Wand (2016), as small pure functions.

C. Li and M. Wand, "Combining Markov Random Fields and Convolutional Neural Networks for Image Synthesis"
(CVPR 2016); their Torch code is chuanli11/CNNMRF. The style statistic of a layer is not a summary but a
bank of samples: every 3x3 patch of the style image's activations. An image's activations ``F`` (one layer,
``(H, W, C)``) are scored patch by patch: each of its 3x3 patches ``x_p`` (stride 1, no padding) is matched
to the style patch ``t_q`` of highest normalized cross-correlation, and the loss is the squared distance to
the matches::

    NN(p) = argmax_q <x_p, t_q> / (|x_p| |t_q|)
    E(F)  = mean over p and the 9 C entries of (x_p - t_NN(p))^2

The scores of all pairs are one convolution of ``F`` with the L2-normalized style patches as filters
(:func:`nearest`); ``|x_p|`` is the same for every ``q`` at a position, so it does not change the argmax
and is left out. The match is recomputed at every evaluation and held fixed in the gradient
(``stop_gradient``), as CNNMRF does; the distance is differentiated.

Departures from CNNMRF, each a choice:

* the loss is a mean over the image's patches and their entries (like the content loss's mean over
  activations), not CNNMRF's unnormalized sum, so its scale does not grow with the image; the weights that
  reproduce CNNMRF's balance are :data:`STYLE_WEIGHT` and :data:`STYLE_LAYER_WEIGHTS` (derivation there);
* the image's patches are taken at stride 1 (CNNMRF's synthesis stride is 2); the style bank's stride is an
  option (``stride``, CNNMRF's 2 in :data:`RECOMMENDED`);
* no confidence threshold (CNNMRF's default, 0, keeps every match).

Several style images blend by concatenating their banks (``nst_jax.terms.concatenate``): the image then
matches patches of any of them. Augmentation (CNNMRF's rotated and scaled copies of the style image) is
applied to the style *image*, before the network: :func:`views` gives the copies, and the bank of one style
image is the concatenation of its copies' banks (the ``views`` of the ``"mrf"`` kind in
:mod:`nst_jax.terms`).

Memory: the scores of one layer are ``(H - 2) x (W - 2) x N`` for a bank of ``N`` patches. :func:`nearest`
takes the bank ``chunk`` patches at a time (a ``lax.scan`` keeping the running best score and its index),
so the scores held at once are ``(H - 2) x (W - 2) x chunk``. The gradient needs the image's patches,
9 times the layer's activations. Every function works on one image; batches are ``jax.vmap`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np

#: The registered kind's name: ``Settings(style_loss=KIND)``, ``--style-loss mrf``.
KIND = "mrf"
#: Side of the patches, in activations (CNNMRF's ``mrf_patch_size``).
PATCH = 3
#: Style patches per matching convolution (:func:`nearest`): bounds the scores held at once.
CHUNK = 1024

#: CNNMRF's MRF layers (its Caffe layer indices 12 and 21).
STYLE_LAYERS = ("relu3_1", "relu4_1")
#: CNNMRF's content layer (its index 23).
CONTENT_LAYERS = ("relu4_2",)
#: CNNMRF's content weight; nst_jax's content loss is the same mean squared error (neural-style's
#: ``ContentLoss``), so the number carries over.
CONTENT_WEIGHT = 20.0
#: Style weight and per-layer weights (relu3_1, relu4_1) that give CNNMRF's balance against
#: :data:`CONTENT_WEIGHT` at its default size (384 px long side). CNNMRF's gradient at an activation is
#: ``1e-4 * (x - t)`` averaged over the patches covering it; this mean's is ``2 w (x - t) / (H W C)``
#: (9 patches of 9 C entries cover each activation), so ``w = 1e-4 H W C / 2``: 118 at relu3_1
#: (96 x 96 x 256) and 59 at relu4_1 (48 x 48 x 512), i.e. 60 with layer weights (2, 1). CNNMRF's own
#: weight is per pixel, not per image, so at other sizes its balance differs from this one.
STYLE_WEIGHT = 60.0
STYLE_LAYER_WEIGHTS = (2.0, 1.0)
#: CNNMRF's augmentation in its examples: one step each way of its rotation step (pi / 24) and scale
#: step (1.05). The default (no augmentation) is ``(0.0,)`` and ``(1.0,)``.
ROTATIONS = (-7.5, 0.0, 7.5)
SCALES = (1 / 1.05, 1.0, 1.05)
#: CNNMRF's stride of the patches sampled from the style (its ``mrf_sample_stride``).
STRIDE = 2
#: CNNMRF starts from the content image.
INIT = "content"

#: The settings of CNNMRF's defaults (``nst_jax.Settings(**RECOMMENDED)``). CNNMRF also works coarse to
#: fine (3 resolutions, each half the next: ``scales``) with 100 L-BFGS iterations each.
RECOMMENDED = MappingProxyType(dict(
    style_loss=KIND, style_layers=STYLE_LAYERS, style_layer_weights=STYLE_LAYER_WEIGHTS, style_weight=STYLE_WEIGHT,
    content_layers=CONTENT_LAYERS, content_weight=CONTENT_WEIGHT, mrf_rotations=ROTATIONS, mrf_scales=SCALES,
    mrf_stride=STRIDE, init=INIT))


def positions(n: int, stride: int = 1) -> np.ndarray:
    """Top (or left) offsets of the 3x3 patches along an axis of ``n`` activations: every ``stride``-th, plus
    the last one if the stride skips it (so the patches cover the whole map, as CNNMRF's ``computegrid``)."""
    last = n - PATCH
    found = list(range(0, last + 1, stride))
    if found[-1] != last:
        found.append(last)
    return np.asarray(found)


def patches(features: jax.Array, stride: int = 1) -> jax.Array:
    """The 3x3 patches of one layer's activations.

    Args:
        features: ``(H, W, C)`` activations, ``H, W >= 3``.
        stride: keep every ``stride``-th patch along each axis (and the last one: :func:`positions`).

    Returns:
        ``(H', W', 3, 3, C)``; ``[i, j]`` is ``features[y_i : y_i + 3, x_j : x_j + 3]``
        (``H' = H - 2`` at stride 1).

    Raises:
        ValueError: a map smaller than a patch, naming its size and what to change.
    """
    h, w, c = features.shape
    if h < PATCH or w < PATCH:
        raise ValueError(f"activations of {h}x{w} pixels are smaller than the {PATCH}x{PATCH} patches of the MRF "
                         "style loss: use larger images (image_size, style_scale; with mrf_rotations or mrf_scales "
                         "< 1 the style image shrinks too) or earlier style layers.")
    rows = [jnp.stack([features[dy:dy + h - PATCH + 1, dx:dx + w - PATCH + 1] for dx in range(PATCH)], axis=2)
            for dy in range(PATCH)]
    out = jnp.stack(rows, axis=2)  # (H - 2, W - 2, dy, dx, C)
    if stride == 1:
        return out
    return out[positions(h, stride)][:, positions(w, stride)]


def target(features: jax.Array, stride: int = 1) -> jax.Array:
    """The style bank of one image at one layer: its 3x3 patches ``(N, 3, 3, C)``, in at least float32.

    Args:
        features: the style image's ``(H, W, C)`` activations.
        stride: patch stride (:func:`patches`); 2 keeps about a quarter of them, for large style images.
    """
    f = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    return patches(f, stride).reshape(-1, PATCH, PATCH, f.shape[-1])


def nearest(features: jax.Array, bank: jax.Array, chunk: int = CHUNK, precision=None) -> jax.Array:
    """For each 3x3 patch of ``features`` (stride 1), the index of its nearest style patch by normalized
    cross-correlation; for an all-zero patch (no correlation defined) the style patch of least norm, its
    nearest by distance. Not differentiable (an argmax).

    Args:
        features: ``(H, W, C)`` activations.
        bank: ``(N, 3, 3, C)`` style patches (:func:`target`).
        chunk: style patches per convolution; the scores held at once are ``(H - 2, W - 2, chunk)``. The
            result does not depend on it (ties go to the lowest index, as ``argmax``).
        precision: the convolution's precision (``jax.lax.Precision``, a string, or None).

    Returns:
        ``(H - 2, W - 2)`` int32 indices into ``bank``.
    """
    index = _best_scores(features, bank, chunk, precision)
    # An all-zero image patch (every activation ReLU'd away) correlates with nothing: its nearest patch by
    # distance is the style patch of least norm (an all-zero one, if the style has one).
    energy = jax.lax.reduce_window(jnp.sum(jnp.square(features), axis=-1),
                                   jnp.zeros((), features.dtype), jax.lax.add, (PATCH, PATCH), (1, 1), "VALID")
    norm = jnp.sum(jnp.square(bank), axis=(1, 2, 3))
    return jnp.where(energy > 0, index, jnp.argmin(norm).astype(jnp.int32))


def _best_scores(features, bank, chunk, precision):
    """argmax_q <x_p, t_q / |t_q|> at every position p, ``chunk`` style patches at a time."""
    n = bank.shape[0]
    norm = jnp.sqrt(jnp.sum(jnp.square(bank), axis=(1, 2, 3), keepdims=True))
    # An all-zero style patch scores 0 everywhere.
    filters = jnp.where(norm > 0, bank / jnp.where(norm > 0, norm, 1), 0).astype(features.dtype)
    filters = jnp.transpose(filters, (1, 2, 3, 0))  # (N, 3, 3, C) -> HWIO (3, 3, C, N)

    def scores(kernel):  # (3, 3, C, n) -> (H - 2, W - 2, n): <x_p, t_q / |t_q|> for every position p
        return jax.lax.conv_general_dilated(features[None], kernel, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)[0]

    if n <= chunk:
        return jnp.argmax(scores(filters), axis=-1).astype(jnp.int32)
    count = -(-n // chunk)
    filters = jnp.pad(filters, ((0, 0), (0, 0), (0, 0), (0, count * chunk - n)))
    filters = jnp.moveaxis(filters.reshape(*filters.shape[:3], count, chunk), 3, 0)  # (count, 3, 3, C, chunk)
    h, w = features.shape[0] - PATCH + 1, features.shape[1] - PATCH + 1

    def step(carry, xs):
        best, index = carry
        kernel, start = xs
        s = jnp.where(start + jnp.arange(chunk) < n, scores(kernel), -jnp.inf)  # the padding never wins
        top = jnp.max(s, axis=-1)
        better = top > best  # strict: on a tie the earlier chunk's (lower) index stays, as argmax
        return (jnp.where(better, top, best),
                jnp.where(better, jnp.argmax(s, axis=-1).astype(jnp.int32) + start, index)), None

    init = (jnp.full((h, w), -jnp.inf, features.dtype), jnp.zeros((h, w), jnp.int32))
    (_, index), _ = jax.lax.scan(step, init, (filters, jnp.arange(count, dtype=jnp.int32) * chunk))
    return index


def loss(features: jax.Array, bank: jax.Array, chunk: int = CHUNK, precision=None) -> jax.Array:
    """The MRF style loss of one layer of one image (unweighted): the mean squared difference between its
    3x3 patches and their nearest style patches (:func:`nearest`, held fixed in the gradient).

    Args:
        features: ``(H, W, C)`` activations, ``H, W >= 3``.
        bank: ``(N, 3, 3, C)`` style patches (:func:`target`, or several concatenated).
        chunk: style patches per matching convolution (memory; see :func:`nearest`).
        precision: the matching convolution's precision.

    Returns:
        ``mean over (H - 2) (W - 2) 9 C entries of (x_p - t_NN(p))^2``, in at least float32.
    """
    dtype = jnp.promote_types(jnp.promote_types(features.dtype, bank.dtype), jnp.float32)
    f, bank = features.astype(dtype), bank.astype(dtype)
    index = nearest(jax.lax.stop_gradient(f), bank, chunk, precision)
    return jnp.mean(jnp.square(patches(f) - bank[index]))


# --------------------------------------------------------------------------
# Augmentation of the style image (before the network)
# --------------------------------------------------------------------------


def rotate(image: jax.Array, degrees: float) -> jax.Array:
    """``image`` rotated counter-clockwise by ``degrees`` about its center (bilinear), cropped to the largest
    centered rectangle of its aspect ratio that lies inside the rotated image (no empty corners; CNNMRF crops
    to the inner box too).

    Args:
        image: ``(H, W, C)``, any values (e.g. Caffe space).
        degrees: the angle, ``|degrees| < 90``.

    Returns:
        ``(floor(k H), floor(k W), C)`` with ``k = min(W / (W cos + H sin), H / (W sin + H cos))``.
    """
    h, w = image.shape[:2]
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    k = min(w / (w * cos + h * abs(sin)), h / (w * abs(sin) + h * cos))
    oh, ow = max(1, int(h * k)), max(1, int(w * k))
    y, x = np.meshgrid(np.arange(oh) - (oh - 1) / 2, np.arange(ow) - (ow - 1) / 2, indexing="ij")
    # Rows grow downwards: the output pixel at offset (x, y) from the center shows the input at the offset
    # rotated back, (cos x - sin y, sin x + cos y).
    coords = [jnp.asarray(sin * x + cos * y + (h - 1) / 2), jnp.asarray(cos * x - sin * y + (w - 1) / 2)]

    def channel(plane):  # "nearest" only guards rounding at the border: the crop lies inside the image
        return jax.scipy.ndimage.map_coordinates(plane, coords, order=1, mode="nearest")

    return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def rescale(image: jax.Array, scale: float) -> jax.Array:
    """``image`` resized by ``scale`` (bilinear, antialiased when shrinking): long side
    ``floor(scale * long side)``, as CNNMRF, the short side in proportion (rounded)."""
    h, w, c = image.shape
    long = max(h, w)
    new_long = max(1, int(long * scale))
    size = (max(1, round(h * new_long / long)), max(1, round(w * new_long / long)))
    return jax.image.resize(image, (*size, c), method="linear", antialias=True).astype(image.dtype)


def views(image: jax.Array, rotations: Sequence[float] = (0.0,), scales: Sequence[float] = (1.0,)) -> list:
    """The copies of a style image whose patches make its bank: every rotation (:func:`rotate`), each at
    every scale (:func:`rescale`), in that order (CNNMRF's). The angle 0 and the scale 1 are the image itself
    (the same array, not a copy)."""
    out = []
    for angle in rotations:
        turned = image if angle == 0 else rotate(image, angle)
        out.extend(turned if s == 1 else rescale(turned, s) for s in scales)
    return out
