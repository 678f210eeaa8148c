"""How style images are prepared: ``color_transfer`` (histogram and mean/covariance matching to the content's
colours) and ``style_tile`` (repeating the style image before it is resized). Small images, random weights."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import nst_jax
from nst_jax import api, images, objective, vgg
from nst_jax.config import SettingError, Settings

EXAMPLES = Path(__file__).parents[1] / "examples"
CONTENT = EXAMPLES / "tubingen.jpg"
STYLE = EXAMPLES / "starry_night.jpg"
FAST = dict(weights="random", image_size=48, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
            num_iterations=0, progress=False)


def _w1(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 distance between two equally sized samples: the mean gap between their sorted values."""
    return float(np.abs(np.sort(a.ravel().astype(np.float64)) - np.sort(b.ravel().astype(np.float64))).mean())


def _pixels(shape, seed):
    rng = np.random.default_rng(seed)
    mix = rng.uniform(0.2, 1.0, (3, 3))  # correlated channels
    return np.clip(rng.uniform(0, 1, shape) @ mix.T / mix.sum(1) * rng.uniform(0.5, 1, 3), 0, 1).astype(np.float32)


def test_histogram_matching_gives_each_channel_the_contents_histogram():
    style, content = _pixels((20, 30, 3), 0), _pixels((24, 25, 3), 1)  # 600 pixels each
    out = images.match_histograms(style, content)
    for c in range(3):
        assert _w1(style[..., c], content[..., c]) > 0.02
        assert _w1(out[..., c], content[..., c]) < 1e-7
        # the ranks of the style's pixels are kept (a monotone map per channel)
        assert np.array_equal(np.argsort(style[..., c].ravel(), kind="stable"),
                              np.argsort(out[..., c].ravel(), kind="stable"))


def test_histogram_matching_other_sizes_takes_the_contents_quantiles():
    style, content = _pixels((30, 40, 3), 2), _pixels((17, 23, 3), 3)
    out = images.match_histograms(style, content)
    q = (np.arange(out[..., 0].size) + 0.5) / out[..., 0].size
    for c in range(3):
        # the content's quantiles at the style's pixel positions, by hand (linear between sorted values)
        ref = np.sort(content[..., c].ravel().astype(np.float64))
        expected = np.interp(q, (np.arange(ref.size) + 0.5) / ref.size, ref)
        np.testing.assert_allclose(np.sort(out[..., c].ravel()), expected, atol=1e-6)
        assert out[..., c].min() >= ref.min() and out[..., c].max() <= ref.max()


def test_stats_matching_gives_the_contents_mean_and_covariance():
    style, content = _pixels((20, 30, 3), 4), _pixels((16, 21, 3), 5)
    out = images.match_stats(style, content, eps=0.0)
    flat = out.reshape(-1, 3)
    ref = content.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.mean(0), ref.mean(0), atol=1e-6)
    np.testing.assert_allclose(np.cov(flat, rowvar=False, bias=True), np.cov(ref, rowvar=False, bias=True),
                               atol=1e-6)
    # an affine map of the style's pixels: x -> A x + b fitted by least squares leaves no residual
    x = np.c_[style.reshape(-1, 3).astype(np.float64), np.ones(style[..., 0].size)]
    coef, *_ = np.linalg.lstsq(x, flat, rcond=None)
    np.testing.assert_allclose(x @ coef, flat, atol=1e-9)
    # A = C_r^(1/2) C_s^(-1/2), the symmetric square roots (scipy's, by another algorithm)
    cs = np.cov(style.reshape(-1, 3).astype(np.float64), rowvar=False, bias=True)
    cr = np.cov(ref, rowvar=False, bias=True)
    expected = np.real(scipy.linalg.sqrtm(cr) @ np.linalg.inv(scipy.linalg.sqrtm(cs)))
    np.testing.assert_allclose(coef[:3].T, expected, atol=1e-8)


def test_stats_matching_of_a_gray_style_is_finite_and_transfer_clips():
    gray = np.repeat(_pixels((16, 16, 3), 6)[..., :1], 3, axis=2)  # singular covariance
    out = images.transfer_colors(gray, _pixels((16, 16, 3), 7), "stats")
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert images.transfer_colors(gray, gray, "none") is gray
    with pytest.raises(ValueError, match="color transfer must be one of"):
        images.transfer_colors(gray, gray, "lab")


@pytest.mark.parametrize("mode", ["histogram", "stats"])
def test_stylize_takes_the_style_targets_of_the_colour_matched_style(mode):
    s = Settings(**{k: v for k, v in FAST.items() if k != "progress"})
    content = images.resize_long_side(images.load_image(CONTENT), 48)
    style = images.resize_long_side(images.load_image(STYLE), 48)
    matched = images.transfer_colors(style, content, mode)  # by hand
    assert not np.allclose(matched, style, atol=0.05)
    got = nst_jax.stylize(CONTENT, STYLE, s, color_transfer=mode, progress=False).history[0]
    expected = nst_jax.stylize(CONTENT, matched, s, progress=False).history[0]
    plain = nst_jax.stylize(CONTENT, STYLE, s, progress=False).history[0]
    assert got.terms["style"] == pytest.approx(expected.terms["style"], rel=1e-6)
    assert got.terms["style"] != pytest.approx(plain.terms["style"], rel=1e-3)
    # a batch matches each image's style to its own content
    batch = nst_jax.stylize_batch([CONTENT, matched], STYLE, s, color_transfer=mode, progress=False)
    assert batch[0].history[0].terms["style"] == pytest.approx(got.terms["style"], rel=1e-5)
    own = nst_jax.stylize(matched, STYLE, s, color_transfer=mode, progress=False).history[0]
    assert batch[1].history[0].terms["style"] == pytest.approx(own.terms["style"], rel=1e-5)


def test_color_transfer_needs_a_content_image():
    with pytest.raises(SettingError, match="color_transfer='histogram' needs a content image"):
        nst_jax.texture(STYLE, color_transfer="histogram", **FAST)
    with pytest.raises(SettingError, match="color_transfer"):
        api.match_style_colors([np.zeros((16, 16, 3), np.float32)], None, Settings(color_transfer="stats"))
    with pytest.raises(SettingError, match="color_transfer must be one of"):
        Settings(color_transfer="lab")


def _gram(features: np.ndarray) -> np.ndarray:
    """neural-style's normalized Gram matrix F^T F / (C H W), float64."""
    f = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    return f.T @ f / f.size


def test_style_tile_repeats_the_style_before_resizing():
    s = Settings(weights="random", image_size=48, style_scale=1.5, style_layers=("relu1_1", "relu2_1"),
                 style_tile=(2, 3))
    prepared, = api.prepare_styles(STYLE, s)
    by_hand = images.resize_long_side(np.tile(images.load_image(STYLE), (2, 3, 1)), 72)
    np.testing.assert_array_equal(prepared, by_hand)
    params = api.get_params("random")
    obj = objective.Objective.from_settings(s)
    targets = objective.style_targets(obj, params, [vgg.preprocess(jnp.asarray(prepared))])
    feats = vgg.FeatureExtractor(params).apply(params, vgg.preprocess(jnp.asarray(by_hand))[None],
                                                    ["relu1_1", "relu2_1"])
    for layer in ("relu1_1", "relu2_1"):
        np.testing.assert_allclose(np.asarray(targets["style"][layer]), _gram(np.asarray(feats[layer][0])),
                                   rtol=1e-4, atol=1e-6)
    # 1x1 changes nothing
    one, = api.prepare_styles(STYLE, s.replace(style_tile=(1, 1)))
    np.testing.assert_array_equal(one, images.resize_long_side(images.load_image(STYLE), 72))
    assert api.tile(one, (1, 1)) is one


@pytest.mark.parametrize("bad", [(0, 1), (1, 17), (2,), "2x2", (1.5, 2)])
def test_style_tile_bad_values_name_the_setting(bad):
    with pytest.raises(SettingError, match="style_tile must be (a list of )?two integers"):
        Settings(style_tile=bad)


def test_cli_flags():
    from nst_jax import cli

    ns = cli.build_parser().parse_args(["--content", "c.jpg", "--style", "s.jpg", "--output", "o.png",
                                        "--style-tile", "2x3", "--color-transfer", "stats"])
    s = cli.settings_from_args(ns)
    assert (s.style_tile, s.color_transfer) == ((2, 3), "stats")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--style-tile", "2by3"])
