"""nst_jax.evaluate.image_loss: the objective stylize optimizes, of any image."""

from __future__ import annotations

import numpy as np
import pytest

import nst_jax
from nst_jax.evaluate import image_loss

_BGR_MEAN = np.array([103.939, 116.779, 123.68])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (24, 32, 3)).astype(np.float32), rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)


SETTINGS = dict(weights="random", image_size=32, style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",),
                tv_weight=1e-3, conv_algorithm="direct")


def test_equals_the_loss_stylize_records(images):
    content, style = images
    result = nst_jax.stylize(content, style, init="content", num_iterations=1, progress=False, **SETTINGS)
    first = result.history[0]  # the loss of the initial image, the content image itself
    got = image_loss(content, content, style, **SETTINGS)
    assert set(got) == {"total", "content", "style", "tv"}
    for name in ("total", "style", "tv"):
        assert got[name] == pytest.approx(first.total if name == "total" else first.terms[name], rel=1e-5), name
    # by hand: no content loss, and the L1 total variation of the Caffe-space image (BGR, 0..255, mean subtracted)
    assert got["content"] == 0.0
    x = content.astype(np.float64)[..., ::-1] * 255.0 - _BGR_MEAN
    tv = np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum()
    assert got["tv"] == pytest.approx(1e-3 * tv, rel=1e-5)
    # the style targets of a style image over max_style_pixels, tile by tile: the same loss
    tiled = image_loss(content, content, style, max_style_pixels=256, **SETTINGS)
    assert tiled["style"] == pytest.approx(got["style"], rel=1e-4)


def test_refuses_an_image_of_another_shape(images):
    content, style = images
    with pytest.raises(ValueError, match=r"image to evaluate is 20x16.*content image at image_size=32 is 32x24"):
        image_loss(content[:16, :20], content, style, **SETTINGS)
