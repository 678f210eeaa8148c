"""The CNN-MRF style loss (Li & Wand 2016) against a float64 NumPy brute force written here from the paper.

Reference: every 3x3 patch of a layer's activations (CNNMRF's ``computegrid``: every ``stride``-th position
plus the last); an image patch ``x`` is matched to the style patch ``t`` maximizing ``<x, t> / (|x| |t|)``
(an all-zero ``x``: the ``t`` of least norm); the loss is the mean over patches and entries of
``(x - t_match)^2``. Several style images, and the rotated and scaled copies of one, pool their patches.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import batch, images, mrf, objective, terms, weights
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective
from nst_jax.terms import Term

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
CONTENT = EXAMPLES / "tubingen.jpg"

# --------------------------------------------------------------------------------------------------
# Float64 reference


def np_grid(n: int, stride: int) -> list[int]:
    found = list(range(0, n - 2, stride))
    return found + [n - 3] if found[-1] != n - 3 else found


def np_patches(f, stride: int = 1) -> np.ndarray:
    """``(N, 3, 3, C)``: the patches at every grid position, row by row."""
    f = np.asarray(f, np.float64)
    h, w, _ = f.shape
    return np.array([f[y:y + 3, x:x + 3] for y in np_grid(h, stride) for x in np_grid(w, stride)])


def np_scores(f, bank) -> np.ndarray:
    """``(n_image_patches, N)`` normalized cross-correlations (0 where a patch is all zero)."""
    x = np_patches(f).reshape(-1, np.asarray(bank[0]).size)
    t = np.asarray(bank, np.float64).reshape(len(bank), -1)
    nx, nt = np.linalg.norm(x, axis=1), np.linalg.norm(t, axis=1)
    return (x @ t.T) / np.maximum(np.outer(nx, nt), 1e-300)


def np_nearest(f, bank) -> np.ndarray:
    """Index of the nearest style patch of each image patch, ``(H - 2, W - 2)``."""
    h, w, _ = np.shape(f)
    idx = np.argmax(np_scores(f, bank), axis=1)
    zero = np.linalg.norm(np_patches(f).reshape(len(idx), -1), axis=1) == 0
    idx[zero] = np.argmin(np.linalg.norm(np.asarray(bank, np.float64).reshape(len(bank), -1), axis=1))
    return idx.reshape(h - 2, w - 2)


def np_loss(f, bank, idx) -> float:
    x = np_patches(f)
    return float(np.mean((x - np.asarray(bank, np.float64)[np.ravel(idx)]) ** 2))


# Jitted once per shape (eager dispatch of the chunked scan op by op is slower than compiling it).
_loss = jax.jit(mrf.loss, static_argnames=("chunk", "precision"))
_nearest = jax.jit(mrf.nearest, static_argnames=("chunk", "precision"))


def _relu_features(rng, shape) -> np.ndarray:
    """Nonnegative activations, a quarter of them 0 (as after a ReLU)."""
    return np.maximum(rng.normal(size=shape) + 0.3, 0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Patches and matching


@pytest.mark.parametrize("shape, stride", [((7, 9, 4), 1), ((8, 5, 3), 2), ((9, 10, 2), 2), ((3, 11, 5), 3)])
def test_patches_match_a_brute_force(shape, stride):
    f = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    bank = mrf.target(jnp.asarray(f), stride)
    want = np_patches(f, stride)
    assert bank.shape == want.shape and bank.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(bank, np.float64), want)


def test_patches_of_a_map_smaller_than_a_patch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"2x9 pixels are smaller than the 3x3 patches.*image_size"):
        mrf.target(jnp.zeros((2, 9, 4)))


def test_nearest_matches_a_float64_brute_force():
    rng = np.random.default_rng(1)
    f, style = _relu_features(rng, (9, 7, 6)), _relu_features(rng, (8, 11, 6))
    f[2:5, 1:4] = 0  # one all-zero image patch: its match is the style patch of least norm
    style[4:7, 0:3] = 0  # which is an all-zero one
    bank = np_patches(style)
    with jax.enable_x64(True):  # in float64 the indices are the reference's exactly
        got = np.asarray(mrf.nearest(jnp.asarray(f, jnp.float64), jnp.asarray(bank)))
    np.testing.assert_array_equal(got, np_nearest(f, bank))
    assert np.all(bank[got[2, 1]] == 0)
    # in float32, each chosen patch scores the float64 maximum up to rounding
    got32 = np.asarray(_nearest(jnp.asarray(f), jnp.asarray(bank, jnp.float32)))
    scores = np_scores(f, bank)
    chosen = scores[np.arange(len(scores)), got32.ravel()]
    assert np.all(chosen >= scores.max(axis=1) - 1e-6)
    assert got32.dtype == np.int32


def test_chunked_matching_equals_one_convolution():
    rng = np.random.default_rng(2)
    fs, style = _relu_features(rng, (2, 9, 8, 5)), _relu_features(rng, (10, 9, 5))
    bank = mrf.target(jnp.asarray(style))  # 56 patches
    batched = jax.jit(jax.vmap(mrf.nearest, (0, None, None)), static_argnums=2)
    whole = batched(jnp.asarray(fs), bank, mrf.CHUNK)
    for chunk in (7, 10, 55):  # 8 full chunks; a padded last chunk; one patch in the last chunk
        np.testing.assert_array_equal(batched(jnp.asarray(fs), bank, chunk), whole)
    for f, idx in zip(fs, np.asarray(whole)):
        np.testing.assert_array_equal(idx, np_nearest(f, np.asarray(bank)))
        assert float(_loss(jnp.asarray(f), bank, chunk=7)) == pytest.approx(np_loss(f, bank, idx), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# The loss


def test_loss_matches_the_reference_and_is_zero_at_the_style():
    rng = np.random.default_rng(3)
    f, style = _relu_features(rng, (7, 8, 4)), _relu_features(rng, (9, 6, 4))
    bank = mrf.target(jnp.asarray(style))
    want = np_loss(f, bank, np_nearest(f, np.asarray(bank)))
    assert want > 0.1
    assert float(_loss(jnp.asarray(f), bank)) == pytest.approx(want, rel=1e-5)
    style[0:3, 3:6] = 0  # an all-zero patch too
    own = mrf.target(jnp.asarray(style))
    assert float(_loss(jnp.asarray(style), own)) == 0.0
    # the style's own patches, among another style's or for a part of the style, are still found
    assert float(_loss(jnp.asarray(style), terms.concatenate([bank, own], None))) == 0.0
    assert float(_loss(jnp.asarray(style[:5, :5]), own)) == 0.0


def test_gradient_matches_finite_differences_with_the_match_fixed():
    rng = np.random.default_rng(4)
    x = _relu_features(rng, (5, 6, 3)).astype(np.float64) + 0.1
    bank = np_patches(_relu_features(rng, (6, 5, 3)) + 0.1)
    idx = np_nearest(x, bank)
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(mrf.loss)(jnp.asarray(x), jnp.asarray(bank))
        grad = np.asarray(grad)
    assert grad.dtype == np.float64
    assert float(value) == pytest.approx(np_loss(x, bank, idx), rel=1e-12)
    h = 1e-3  # the loss is quadratic with the match fixed: central differences are exact up to rounding
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        fd[i] = (np_loss(x + e, bank, idx) - np_loss(x - e, bank, idx)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())


def test_vmapped_loss_and_gradient_equal_single_images():
    rng = np.random.default_rng(5)
    fs, style = _relu_features(rng, (3, 8, 7, 4)), _relu_features(rng, (12, 9, 4))
    bank = mrf.target(jnp.asarray(style))
    fn = jax.value_and_grad(lambda f, b: mrf.loss(f, b, chunk=16))  # 5 chunks of the 70 patches
    values, grads = jax.jit(jax.vmap(fn, (0, None)))(jnp.asarray(fs), bank)
    single = jax.jit(fn)
    for f, v, g in zip(fs, values, grads):
        v1, g1 = single(jnp.asarray(f), bank)
        assert float(v) == pytest.approx(float(v1), rel=1e-6)
        np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Targets: several styles, augmented copies


@pytest.fixture(scope="module")
def params():
    return weights.random_params(0)


def test_two_styles_blend_to_their_concatenated_banks(params):
    obj = Objective((Term.make("mrf", "style", ("relu1_1", "relu2_1"), stride=2),))
    rng = np.random.default_rng(6)
    s1 = jnp.asarray(rng.uniform(-100, 100, (20, 18, 3)), jnp.float32)
    s2 = jnp.asarray(rng.uniform(-100, 100, (16, 23, 3)), jnp.float32)
    got = objective.style_targets(obj, params, [s1, s2], [0.3, 0.7])["style"]  # blend weights: not used
    f1, f2 = obj.features(params, s1), obj.features(params, s2)
    for layer in ("relu1_1", "relu2_1"):
        want = np.concatenate([np_patches(f1[layer], 2), np_patches(f2[layer], 2)])
        assert got[layer].shape == want.shape
        np.testing.assert_allclose(got[layer], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    single = objective.style_targets(obj, params, [s2])["style"]["relu2_1"]
    np.testing.assert_array_equal(single, got["relu2_1"][-len(single):])


def test_augmented_bank_pools_the_patches_of_rotated_and_scaled_copies(params):
    rotations, scales = (-7.5, 0.0, 7.5), (0.9, 1.0)
    obj = Objective((Term.make("mrf", "style", ("relu2_1",), rotations=rotations, scales=scales),))
    style = jnp.asarray(np.random.default_rng(7).uniform(-100, 100, (40, 36, 3)), jnp.float32)
    bank = objective.style_targets(obj, params, [style])["style"]["relu2_1"]
    copies = mrf.views(style, rotations, scales)
    assert [c.shape[:2] for c in copies] == [(31, 27), (35, 31), (36, 32), (40, 36), (31, 27), (35, 31)]
    assert copies[3] is style  # angle 0, scale 1: the image itself
    want = np.concatenate([np_patches(obj.features(params, c)["relu2_1"]) for c in copies])
    assert bank.shape == want.shape
    np.testing.assert_allclose(bank, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_rotation_is_bilinear_counter_clockwise_and_cropped_inside():
    h, w, degrees = 30, 40, 10.0  # a 24 x 32 crop: centered on whole pixels, as Pillow's rotation
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = np.stack([0.7 * xx - 0.2 * yy + 3, 0.1 * xx + 0.9 * yy, -xx], axis=-1)  # bilinear is exact on it
    with jax.enable_x64(True):
        got = np.asarray(mrf.rotate(jnp.asarray(ramp), degrees))
    t = math.radians(degrees)
    k = min(w / (w * math.cos(t) + h * math.sin(t)), h / (w * math.sin(t) + h * math.cos(t)))
    assert got.shape == (int(h * k), int(w * k), 3)
    oh, ow = got.shape[:2]
    oy, ox = np.mgrid[0:oh, 0:ow] - np.array([(oh - 1) / 2, (ow - 1) / 2])[:, None, None]
    sx = math.cos(t) * ox - math.sin(t) * oy + (w - 1) / 2  # the output's offset turned back by -t
    sy = math.sin(t) * ox + math.cos(t) * oy + (h - 1) / 2
    assert sx.min() >= 0 and sx.max() <= w - 1 and sy.min() >= 0 and sy.max() <= h - 1  # no empty corners
    want = np.stack([0.7 * sx - 0.2 * sy + 3, 0.1 * sx + 0.9 * sy, -sx], axis=-1)
    np.testing.assert_allclose(got, want, atol=1e-9)
    # the direction, from Pillow (counter-clockwise): a smooth picture rotated both ways, centers compared
    pic = np.sin(xx / 5.0) * np.cos(yy / 7.0) + xx / 40
    pil = np.asarray(Image.fromarray(pic.astype(np.float32)).rotate(degrees, resample=Image.Resampling.BILINEAR))
    top, left = (h - oh) // 2, (w - ow) // 2
    pil = pil[top:top + oh, left:left + ow][2:-2, 2:-2]
    ours, other = (np.asarray(mrf.rotate(jnp.asarray(pic[..., None], jnp.float32), a))[2:-2, 2:-2, 0]
                   for a in (degrees, -degrees))
    assert np.abs(ours - pil).max() < 0.02 < 0.2 < np.abs(other - pil).max()


# --------------------------------------------------------------------------------------------------
# Settings, flags and end to end


def test_mrf_settings():
    s = Settings(style_loss="mrf", mrf_stride=2, mrf_rotations=(-7.5, 0, 7.5), mrf_scales=1.05)
    assert s.mrf_rotations == (-7.5, 0.0, 7.5) and s.mrf_scales == (1.05,)
    t = Objective.from_settings(s).term("style")
    assert (t.kind, t.opts["stride"], t.opts["rotations"], t.opts["scales"]) == ("mrf", 2, (-7.5, 0.0, 7.5),
                                                                                  (1.05,))
    with pytest.raises(SettingError, match="mrf_rotations is only used with style_loss='mrf'"):
        Settings(mrf_rotations=(5.0,))
    with pytest.raises(SettingError, match="mrf_scales must be one or more scales"):
        Settings(style_loss="mrf", mrf_scales=())
    with pytest.raises(SettingError, match="mrf_rotations must be one or more angles"):
        Settings(style_loss="mrf", mrf_rotations=(60,))
    with pytest.raises(SettingError, match="mrf_stride must be an integer >= 1"):
        Settings(style_loss="mrf", mrf_stride=0)
    recommended = Settings(**mrf.RECOMMENDED)
    assert recommended.style_layers == ("relu3_1", "relu4_1") and recommended.content_layers == ("relu4_2",)
    assert mrf.KIND in terms.kinds("style")


def test_end_to_end_reduces_its_loss_and_a_batch_equals_single_runs():
    kw = dict(style_loss="mrf", style_layers=("relu3_1", "relu4_1"), weights="random", image_size=64,
              num_iterations=10, print_every=5, progress=False, conv_algorithm="direct")  # compiles faster
    first = nst_jax.stylize(CONTENT, STYLE, **kw)
    styles = [rec.style for rec in first.history]
    assert np.all(np.isfinite(styles)) and styles[-1] < 0.7 * styles[0], styles
    assert first.history[-1].total < first.history[0].total
    flipped = np.ascontiguousarray(images.load_image(CONTENT)[:, ::-1])
    second = nst_jax.stylize(flipped, STYLE, **kw)
    both = batch.stylize_batch([CONTENT, flipped], STYLE, **kw)
    for single, batched in zip((first, second), both):
        assert np.abs(batched.array - single.array).max() <= 1 / 255
        assert batched.loss == pytest.approx(single.loss, rel=1e-3)
