"""The loss functions of nst_jax.losses against hand computations and their mathematical properties.

Conventions (neural-style-pt's): ``gram(F) = F^T F / (C H W)``, content and style
losses are means of squared differences, total variation is the L1 sum of
neighbour differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nst_jax import losses

# --------------------------------------------------------------------------------------------------
# Hand computations (numbers small enough to check on paper)

# One row, two pixels, two channels: pixel 1 = (1, 2), pixel 2 = (3, 4).
F = np.array([[[1.0, 2.0], [3.0, 4.0]]], np.float32)  # (H=1, W=2, C=2)


def test_gram_by_hand():
    # F^T F = [[1*1 + 3*3, 1*2 + 3*4], [2*1 + 4*3, 2*2 + 4*4]] = [[10, 14], [14, 20]]; C*H*W = 2*1*2 = 4.
    np.testing.assert_allclose(losses.gram(jnp.asarray(F)), [[2.5, 3.5], [3.5, 5.0]], rtol=1e-6)


def test_gram_normalizes_by_channels_times_pixels():
    # One pixel (1, 1, 3) = (1, 2, 3): F^T F = outer product; C*H*W = 3.
    f = jnp.asarray([[[1.0, 2.0, 3.0]]])
    np.testing.assert_allclose(losses.gram(f), np.outer([1, 2, 3], [1, 2, 3]) / 3.0, rtol=1e-6)
    # Doubling the pixels with the same values leaves the normalized Gram unchanged.
    np.testing.assert_allclose(losses.gram(jnp.concatenate([f, f], axis=1)), losses.gram(f), rtol=1e-6)


@pytest.mark.parametrize("shift, expected", [
    # F + 1: pixels (2, 3), (4, 5): [[4 + 16, 6 + 20], [6 + 20, 9 + 25]] / 4
    (1.0, [[5.0, 6.5], [6.5, 8.5]]),
    # F - 1 (Novak & Nikulin's s = -1): pixels (0, 1), (2, 3): [[0 + 4, 0 + 6], [0 + 6, 1 + 9]] / 4
    (-1.0, [[1.0, 1.5], [1.5, 2.5]]),
])
def test_gram_activation_shift_by_hand(shift, expected):
    np.testing.assert_allclose(losses.gram(jnp.asarray(F), shift), expected, rtol=1e-6)


def test_content_loss_by_hand():
    target = np.ones_like(F)
    # differences 0, 1, 2, 3 -> squares 0, 1, 4, 9 -> mean 14 / 4
    assert float(losses.content_loss(jnp.asarray(F), jnp.asarray(target))) == pytest.approx(3.5, rel=1e-6)
    assert float(losses.content_loss(jnp.asarray(F), jnp.asarray(F))) == 0.0


def test_style_loss_by_hand():
    g = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    a = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    # differences 0, 2, 3, 2 -> squares 0, 4, 9, 4 -> mean over the C x C = 4 entries: 17 / 4
    assert float(losses.style_loss(g, a)) == pytest.approx(4.25, rel=1e-6)
    assert float(losses.style_loss(g, g)) == 0.0


def test_tv_loss_by_hand():
    # One channel:            second channel (all equal):
    #   1 2 4                   5 5 5
    #   3 3 0                   5 5 5
    # vertical |3-1| + |3-2| + |0-4| = 7, horizontal |2-1| + |4-2| + |3-3| + |0-3| = 6; channel 2 adds 0.
    img = np.stack([np.array([[1, 2, 4], [3, 3, 0]], np.float32), np.full((2, 3), 5, np.float32)], axis=-1)
    assert float(losses.tv_loss(jnp.asarray(img))) == pytest.approx(13.0, rel=1e-6)
    # The L1 total variation, not a squared one: doubling the image doubles it.
    assert float(losses.tv_loss(jnp.asarray(2 * img))) == pytest.approx(26.0, rel=1e-6)


def test_tv_loss_sums_over_height_and_width_separately():
    # A single vertical edge in a 3x4 image: 3 rows each with one jump of 10 -> 30; no vertical change.
    img = np.zeros((3, 4, 3), np.float32)
    img[:, 2:, 0] = 10.0
    assert float(losses.tv_loss(jnp.asarray(img))) == pytest.approx(30.0)
    assert float(losses.tv_loss(jnp.asarray(img.transpose(1, 0, 2)))) == pytest.approx(30.0)


def test_blend_grams_by_hand():
    g1 = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    g2 = jnp.asarray([[2.0, 4.0], [4.0, 8.0]])
    np.testing.assert_allclose(losses.blend_grams([g1, g2], [0.3, 0.7]), [[1.7, 2.8], [2.8, 5.9]], rtol=1e-6)
    np.testing.assert_allclose(losses.blend_grams([g2], [1.0]), g2)


def test_losses_jit_and_vmap_agree_with_eager():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.normal(size=(3, 2, 4, 5)).astype(np.float32))
    batched = jax.vmap(losses.gram)(f)
    for i in range(3):
        np.testing.assert_allclose(batched[i], losses.gram(f[i]), rtol=1e-6)
        np.testing.assert_allclose(_tv(f[i]), losses.tv_loss(f[i]), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Properties

_values = st.floats(-100, 100, allow_nan=False, width=32)
# Few distinct shapes (each one is compiled once); the values are what the properties are about.
_shapes = st.tuples(st.sampled_from([1, 3]), st.sampled_from([2, 3]), st.sampled_from([1, 3]))
_features = _shapes.flatmap(lambda shape: arrays(np.float32, shape, elements=_values))
_images = _features

_gram = jax.jit(losses.gram, static_argnums=1)
_tv = jax.jit(losses.tv_loss)
_content = jax.jit(losses.content_loss)
_style = jax.jit(losses.style_loss)


def _gram_f64(f, shift=0.0):
    h, w, c = f.shape
    m = f.reshape(h * w, c).astype(np.float64) + shift
    return m.T @ m / (c * h * w)


@settings(max_examples=30, deadline=None)
@given(_features, st.sampled_from([0.0, -1.0, 0.5]))
def test_gram_is_symmetric_psd_and_matches_float64(f, shift):
    g = np.asarray(_gram(jnp.asarray(f), shift), np.float64)
    ref = _gram_f64(f, shift)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(g, ref, atol=1e-5 * scale, rtol=1e-5)
    np.testing.assert_allclose(g, g.T, atol=1e-6 * scale)
    assert np.linalg.eigvalsh((g + g.T) / 2).min() >= -1e-5 * scale
    assert np.all(np.diag(g) >= 0)


@settings(max_examples=30, deadline=None)
@given(_images, st.floats(-500, 500, allow_nan=False, width=32))
def test_tv_is_translation_invariant(img, c):
    tv = float(_tv(jnp.asarray(img)))
    shifted = float(_tv(jnp.asarray(img + np.float32(c))))
    # |(a + c) - (b + c)| = |a - b| up to float32 rounding of the (larger) shifted values
    assert shifted == pytest.approx(tv, rel=1e-4, abs=1e-4 * (abs(c) + 100) * img.size)
    assert tv >= 0
    # Reversing the image along an axis keeps every absolute difference.
    assert float(_tv(jnp.asarray(img[::-1, ::-1]))) == pytest.approx(tv, rel=1e-5, abs=1e-3)


@settings(max_examples=20, deadline=None)
@given(_shapes, _values)
def test_tv_is_zero_on_a_constant_image(shape, value):
    assert float(_tv(jnp.full(shape, value, jnp.float32))) == 0.0


@settings(max_examples=20, deadline=None)
@given(_features, st.floats(0.125, 8.0, width=32))
def test_content_and_style_losses_are_symmetric_and_scale_quadratically(f, a):
    f = jnp.asarray(f)
    p = jnp.flip(f, axis=-1)
    assert float(_content(f, p)) == pytest.approx(float(_content(p, f)), rel=1e-6)
    expected = float(np.mean((np.asarray(f, np.float64) - np.asarray(p, np.float64)) ** 2))
    assert float(_content(f, p)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    g, t = _gram(f, 0.0), _gram(p, 0.0)
    assert float(_style(a * g, a * t)) == pytest.approx(a * a * float(_style(g, t)),
                                                                   rel=1e-4, abs=1e-6)
