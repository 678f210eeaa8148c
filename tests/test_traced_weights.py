"""Weights are traced, not compiled in: changing them reuses the compiled step (one image and a batch), a batch
can give every image its own weights (a weight sweep is one vmapped call), and the content or style image can
be left out (texture synthesis, content reconstruction)."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
import pytest

import nst_jax
from nst_jax import batch, images, optim
from nst_jax.config import SettingError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
CONTENT = EXAMPLES / "tubingen.jpg"
SMALL = dict(weights="random", image_size=32, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
             num_iterations=3, print_every=3, loop="step", progress=False)


def _compiles(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]


def test_changing_weights_does_not_recompile_the_step(caplog):
    first = nst_jax.stylize(CONTENT, STYLE, **SMALL)
    jitted = [optim._init_jit, optim._step_jit]
    before = [f._cache_size() for f in jitted]
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        other = nst_jax.stylize(CONTENT, STYLE, **{**SMALL, "content_weight": 1.0, "style_weight": 1e3,
                                                  "tv_weight": 0.1, "style_layer_weights": (2.0, 0.5),
                                                  "content_layer_weights": (3.0,)})
    assert [f._cache_size() for f in jitted] == before
    assert not [m for m in _compiles(caplog) if "_init_jit" in m or "_step_jit" in m], _compiles(caplog)
    # the new weights were used (the same initial image: the initial terms scale with them)
    assert other.history[0].tv == pytest.approx(100 * first.history[0].tv, rel=1e-5)
    assert other.history[0].content == pytest.approx(0.6 * first.history[0].content, rel=1e-5)  # 1 x 3 vs 5
    # ...and a structural change does compile (the counter can move)
    nst_jax.stylize(CONTENT, STYLE, **{**SMALL, "tv_weight": 0.0})
    assert [f._cache_size() for f in jitted] != before


KW = dict(weights="random", image_size=64, num_iterations=10, print_every=5,
          style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"), conv_algorithm="direct", progress=False)
SWEEP = (10.0, 100.0, 1e3, 1e4)


@pytest.fixture(scope="module")
def content():
    return images.resize_long_side(images.load_image(CONTENT), 64)


def test_style_weight_sweep_in_one_batch_equals_single_runs(content):
    before = batch.trace_counts.copy()
    swept = batch.stylize_batch([content] * 4, STYLE, loss_weights=[{"style_weight": w} for w in SWEEP], **KW)
    # One batch of 4, traced at most once (not at all if an earlier test compiled the same program).
    traced = batch.trace_counts - before
    assert set(traced) <= {("init", (4, 48, 64, 3)), ("step", (4, 48, 64, 3))} and max(traced.values(), default=0) <= 1
    singles = [nst_jax.stylize(content, STYLE, style_weight=w, **KW) for w in SWEEP]
    for w, s, b in zip(SWEEP, singles, swept):
        assert b.settings.style_weight == w == s.settings.style_weight
        assert abs(b.loss - s.loss) <= 1e-3 * abs(s.loss)
        assert np.abs(b.array - s.array).max() <= 1 / 255
        assert b.history[0].style == pytest.approx(s.history[0].style, rel=1e-5)
    assert len({round(b.loss) for b in swept}) == 4  # four different problems
    # another sweep (other weights, per-layer weights too): the same compiled batch
    again = batch.trace_counts.copy()
    batch.stylize_batch([content] * 4, STYLE, loss_weights=[{"style_weight": 5.0, "tv_weight": 0.1},
                                                            {"style_layer_weights": (1, 2, 3, 4)}, None,
                                                            {"content_weight": 50.0}], **KW)
    assert batch.trace_counts == again


def test_loss_weights_are_checked(content):
    with pytest.raises(ValueError, match="loss_weights can set"):
        batch.stylize_batch([content], STYLE, loss_weights=[{"image_size": 32}], **KW)
    with pytest.raises(ValueError, match="one per image"):
        batch.stylize_batch([content], STYLE, loss_weights=[None, None], **KW)
    with pytest.raises(ValueError, match="no style term"):
        batch.stylize_batch([content], STYLE, loss_weights=[{"style_weight": 1.0}], **{**KW, "style_weight": 0.0})


TEXTURE = dict(weights="random", image_size=64, style_layers=("relu1_1", "relu2_1"), num_iterations=10,
               print_every=5, progress=False)


def test_texture_synthesis_without_a_content_image():
    # From neural-style's 0.001 * noise, its L-BFGS starts slowly on random weights (see test_optim.py): Adam
    r = nst_jax.stylize(None, STYLE, content_weight=0, optimizer="adam", learning_rate=10.0, **TEXTURE)
    assert r.array.shape == (64, 64, 3)
    assert r.history[0].content == 0.0 and "content" not in r.history[0].terms
    assert r.history[-1].total < 0.5 * r.history[0].total, [h.total for h in r.history]
    wide = nst_jax.stylize(None, STYLE, content_weight=0, aspect=2.0, **{**TEXTURE, "num_iterations": 1})
    assert wide.array.shape == (32, 64, 3)
    tall = nst_jax.stylize(None, STYLE, content_weight=0, aspect=0.5, **{**TEXTURE, "num_iterations": 0})
    assert tall.array.shape == (64, 32, 3)


def test_missing_images_and_canvas_settings_are_named():
    with pytest.raises(SettingError, match="content_weight"):
        nst_jax.stylize(None, STYLE, **TEXTURE)
    with pytest.raises(SettingError, match="style_weight"):
        nst_jax.stylize(CONTENT, None, **TEXTURE)
    with pytest.raises(SettingError, match="init='content' needs a content image"):
        nst_jax.stylize(None, STYLE, content_weight=0, init="content", **TEXTURE)
    with pytest.raises(SettingError, match="aspect"):
        nst_jax.stylize(CONTENT, STYLE, aspect=2.0, **TEXTURE)
    with pytest.raises(SettingError, match="short side"):
        nst_jax.stylize(None, STYLE, content_weight=0, aspect=10.0, **TEXTURE)
    with pytest.raises(SettingError, match="nothing to optimize"):
        nst_jax.stylize(None, None, content_weight=0, style_weight=0, tv_weight=0, **TEXTURE)


def test_content_reconstruction_without_a_style_image():
    r = nst_jax.stylize(CONTENT, None, style_weight=0, content_layers=("relu3_1",), **TEXTURE)
    assert r.array.shape == (48, 64, 3)
    assert r.history[0].style == 0.0 and set(r.history[0].terms) == {"content", "tv"}
    assert r.history[-1].content < 0.5 * r.history[0].content, [h.content for h in r.history]
