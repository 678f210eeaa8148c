"""Style targets computed tile by tile (nst_jax.tiled_targets) against the whole-image pass and a float64 NumPy
VGG-19 written here from the architecture (3x3 convolutions with zero or reflect padding, ReLU, 2x2 pooling
with floor), not from nst_jax's code."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import objective as objective_lib
from nst_jax import tiled_targets as tt
from nst_jax import weights
from nst_jax.config import Settings
from nst_jax.objective import Objective
from nst_jax.terms import Term

RTOL = 1e-4
_BLOCKS = [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]


def np_vgg19(params, x: np.ndarray, *, padding: str, pooling: str, last: str) -> dict[str, np.ndarray]:
    """Every named activation of VGG-19 up to ``last`` on one Caffe-space ``(H, W, 3)`` image, in float64."""
    out = {}
    for b, n in _BLOCKS:
        for i in range(1, n + 1):
            p = params["params"][f"conv{b}_{i}"]
            kernel, bias = np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)
            h, w, _ = x.shape
            xp = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="constant" if padding == "zero" else "reflect")
            y = sum(xp[dy:dy + h, dx:dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3)) + bias
            out[f"conv{b}_{i}"] = y
            x = out[f"relu{b}_{i}"] = np.maximum(y, 0.0)
            if last in (f"conv{b}_{i}", f"relu{b}_{i}"):
                return out
        h, w, c = x.shape
        windows = x[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
        x = out[f"pool{b}"] = windows.max(axis=(1, 3)) if pooling == "max" else windows.mean(axis=(1, 3))
        if last == f"pool{b}":
            return out
    return out


def np_gram(f: np.ndarray) -> np.ndarray:
    h, w, c = f.shape
    m = f.reshape(h * w, c)
    return m.T @ m / (c * h * w)


@pytest.fixture(scope="module")
def params():
    return weights.random_params(seed=0)


def _image(h: int, w: int, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).uniform(-110.0, 130.0, (h, w, 3)), jnp.float32)


@pytest.mark.parametrize("size,tile,margin,step", [(50, 24, 12, 4), (70, 24, 12, 4), (100, 16, 80, 16),
                                                   (2048, 512, 80, 16), (100, 48, 0, 16), (30, 64, 80, 16)])
def test_tile_spans_cover_with_margins_in_few_shapes(size, tile, margin, step):
    spans = tt.tile_spans(size, tile, margin, step)
    assert [(s.start, s.stop) for s in spans] == [(a, min(a + tile, size)) for a in range(0, size, tile)]
    for s in spans:
        assert s.read_start % step == 0 and s.read_start <= max(0, s.start - margin)
        assert s.read_stop >= min(size, s.stop + margin) and s.read_stop <= size
    assert len({s.read_stop - s.read_start for s in spans}) <= 2


def test_receptive_field_from_the_architecture():
    # by hand: relu2_1 = conv1_1, conv1_2 (stride 1: 1 + 1), pool1, conv2_1 (stride 2: 2) -> 4; pool5: the 16
    # convolutions, 2 x 1 + 2 x 2 + 4 x 4 + 4 x 8 + 4 x 16 = 118
    assert [tt.receptive_radius(l) for l in ("input", "conv1_1", "relu1_2", "pool1", "relu2_1", "relu3_1",
                                             "relu4_1", "relu5_1", "pool5")] == [0, 1, 2, 2, 4, 10, 30, 70, 118]
    assert [tt.layer_scale(l) for l in ("input", "relu1_2", "pool1", "relu2_1", "relu5_4", "pool5")] == \
        [0, 0, 1, 1, 4, 5]
    assert tt.alignment(("relu1_1", "relu5_1")) == 16 and tt.alignment(("pool5",)) == 32
    assert tt.halo(("relu1_1", "relu5_1")) == 80  # 70 up to a multiple of 16
    assert tt.halo(("relu1_1", "relu3_1")) == 12  # 10 up to a multiple of 4


@pytest.mark.parametrize("padding,pooling", [("zero", "max"), ("reflect", "avg")])
def test_tiled_gram_targets_equal_the_whole_image_pass(params, padding, pooling):
    """96x128, tiles of 48 (+ an 80 px halo), every default style layer: the whole-image pass's targets, and
    the float64 reference's Gram matrices."""
    s = Settings(weights="random", padding=padding, pooling=pooling, conv_algorithm="direct")
    obj = Objective.from_settings(s)
    style = _image(96, 128)
    whole = objective_lib.style_statistics(obj, params, style)["style"]
    tiled = tt.tiled_statistics(obj, params, style, tile=48)["style"]
    ref = np_vgg19(params, np.asarray(style, np.float64), padding=padding, pooling=pooling, last="relu5_1")
    assert set(tiled) == set(s.style_layers)
    for layer in s.style_layers:
        np.testing.assert_allclose(tiled[layer], whole[layer], rtol=RTOL, atol=RTOL * np.abs(whole[layer]).max(),
                                   err_msg=layer)
        want = np_gram(ref[layer])
        np.testing.assert_allclose(tiled[layer], want, rtol=RTOL, atol=RTOL * np.abs(want).max(), err_msg=layer)


def test_many_tiles_odd_sizes_and_other_position_means(params):
    """50x70 (not multiples of the stride: the floored last rows and columns), tiles of 24 with a 12 px halo (a
    tile with halos on both sides), shifted and amplified Grams, W2 moments and a Gram cube."""
    layers = ("relu1_1", "relu2_1", "relu3_1")
    obj = Objective((Term.make("gram", "style", layers, shift=-1.0, power=1.5),
                     Term.make("w2", "w2", layers), Term.make("gram_cube", "cube", ("relu1_1",))),
                    padding="reflect", conv_algorithm="direct")
    style = _image(50, 70, seed=1)
    whole = objective_lib.style_statistics(obj, params, style)
    tiled = tt.tiled_statistics(obj, params, style, tile=24)
    ref = np_vgg19(params, np.asarray(style, np.float64), padding="reflect", pooling="max", last="relu3_1")
    for name in ("style", "w2", "cube"):
        for layer, stat in whole[name].items():
            for key, want in (stat.items() if isinstance(stat, dict) else [("", stat)]):
                got = tiled[name][layer][key] if key else tiled[name][layer]
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max(),
                                           err_msg=f"{name} {layer} {key}")
    f = ref["relu2_1"].reshape(-1, 128)  # the W2 moments by hand: E[f] and E[f f^T] over the positions
    np.testing.assert_allclose(tiled["w2"]["relu2_1"]["mean"], f.mean(0), rtol=RTOL, atol=RTOL * np.abs(f).max())
    second = f.T @ f / len(f)
    np.testing.assert_allclose(tiled["w2"]["relu2_1"]["second"], second, rtol=RTOL, atol=RTOL * np.abs(second).max())


def test_a_halo_below_the_receptive_field_is_not_exact(params):
    """The check above can fail: with a 4 px halo (relu3_1's radius is 10) the deeper Grams differ."""
    obj = Objective((Term.make("gram", "style", ("relu1_1", "relu3_1")),), conv_algorithm="direct")
    style = _image(48, 64, seed=2)
    whole = objective_lib.style_statistics(obj, params, style)["style"]
    short = tt.tiled_statistics(obj, params, style, tile=16, margin=4)["style"]
    np.testing.assert_allclose(short["relu1_1"], whole["relu1_1"], rtol=RTOL, atol=RTOL * whole["relu1_1"].max())
    assert np.abs(short["relu3_1"] - whole["relu3_1"]).max() > 1e-2 * np.abs(whole["relu3_1"]).max()


def test_style_targets_dispatch_and_refusals(params):
    s = Settings(weights="random", style_layers=("relu1_1", "relu2_1"), conv_algorithm="direct")
    obj = Objective.from_settings(s)
    styles = [_image(40, 48, seed=3), _image(32, 32, seed=4)]
    whole = objective_lib.style_targets(obj, params, styles, [1.0, 3.0])
    # the first image (1920 px) goes tile by tile, the second (1024 px) in one pass
    tiled = tt.style_targets(obj, params, styles, [1.0, 3.0], max_pixels=1024, tile=16)
    for layer in s.style_layers:
        np.testing.assert_allclose(tiled["style"][layer], whole["style"][layer], rtol=RTOL,
                                   atol=RTOL * np.abs(whole["style"][layer]).max())
    with pytest.raises(ValueError, match=r"tile must be a positive multiple of 2 .*relu2_1.*got 15"):
        tt.tiled_statistics(obj, params, styles[0], tile=15)
    mrf = Objective((Term.make("mrf", "style", ("relu2_1",)),), conv_algorithm="direct")
    with pytest.raises(ValueError, match=r"larger than max_pixels=1000.*'mrf' \(relu2_1\).*smaller style_scale"):
        tt.style_statistics(mrf, params, styles[0], max_pixels=1000)
    assert set(tt.style_statistics(mrf, params, styles[1], max_pixels=1024)["style"]) == {"relu2_1"}  # fits
    pair = Objective((Term.make("gram", "style", ("relu1_1", "relu2_1:relu1_1")),), conv_algorithm="direct")
    with pytest.raises(ValueError, match=r"'gram' \(relu2_1:relu1_1\) is not a mean over positions"):
        tt.style_statistics(pair, params, styles[0], max_pixels=1000)
    assert tt.unsupported(Objective((Term.make("gram", "style", ("relu1_1",), blur=True),))) == ["'gram' (relu1_1)"]
