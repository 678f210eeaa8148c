"""``nst_jax.stylize``: inputs, inits, history, output files, errors (64 px, random weights)."""

from __future__ import annotations

import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import api, images, objective, optim, vgg
from nst_jax.config import Settings
from nst_jax.objective import Objective, make_targets

from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"
CONTENT = EXAMPLES / "tubingen.jpg"
STYLE = EXAMPLES / "starry_night.jpg"

# Shallow layers keep each run (and its one-time compilation, shared by all tests here) cheap.
FAST = dict(weights="random", image_size=64, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
            progress=False)


def run(content=CONTENT, style=STYLE, **kw):
    return nst_jax.stylize(content, style, **{**FAST, **kw})


@pytest.fixture(scope="module")
def content_array():
    return images.resize_long_side(images.load_image(CONTENT), 64)


@pytest.fixture(scope="module")
def baseline():
    return run(num_iterations=4, print_every=2)


# --------------------------------------------------------------------------------------------------
# Inputs


def test_content_as_path_pil_or_array_gives_the_same_result(baseline):
    assert baseline.array.shape == (48, 64, 3) and baseline.array.dtype == np.float32
    pil = Image.open(CONTENT)
    arr = np.asarray(pil, np.float32) / 255.0
    for content in (pil, arr):
        r = run(content=content, num_iterations=4, print_every=2)
        np.testing.assert_allclose(r.array, baseline.array, atol=1e-6)
        assert [h.total for h in r.history] == pytest.approx([h.total for h in baseline.history], rel=1e-5)


def test_style_list_with_blend_weights():
    other = np.asarray(Image.open(CONTENT).resize((50, 60)), np.float32) / 255.0  # a second, different style
    single = run(num_iterations=3)
    # (1, 0): the second style does not count -> exactly the single-style problem
    blend_10 = run(style=[STYLE, other], style_blend_weights=(1, 0), num_iterations=3)
    assert [h.total for h in blend_10.history] == pytest.approx([h.total for h in single.history], rel=1e-5)
    # 3:7 is between the two styles and differs from both
    only_other = run(style=other, num_iterations=0).history[0].total
    blend_37 = run(style=[STYLE, other], style_blend_weights=(3, 7), num_iterations=0).history[0].total
    blend_037 = run(style=[STYLE, other], style_blend_weights=(0.3, 0.7), num_iterations=0).history[0].total
    assert blend_37 == pytest.approx(blend_037, rel=1e-5)  # normalized to sum 1
    assert blend_37 != pytest.approx(only_other, rel=1e-3)
    assert blend_37 != pytest.approx(single.history[0].total, rel=1e-3)


def test_history_starts_with_the_loss_of_the_initial_image(baseline, content_array):
    h0 = baseline.history[0]
    assert h0.iteration == 0
    assert [h.iteration for h in baseline.history] == [0, 2, 4]
    # the loss of the initial image, computed here from the pieces
    s = baseline.settings
    styles = api.prepare_styles(STYLE, s)
    obj = Objective.from_settings(s)
    params = api.get_params("random")
    targets = make_targets(obj, params, vgg.preprocess(jnp.asarray(content_array)),
                           [vgg.preprocess(jnp.asarray(st)) for st in styles], weights=s)
    terms = objective.loss(obj, params, api.initial_image(s, content_array, styles), targets)
    assert h0.total == pytest.approx(float(terms.total), rel=1e-5)
    assert h0.content == pytest.approx(float(terms.content), rel=1e-5)
    assert h0.style == pytest.approx(float(terms.style), rel=1e-5)
    assert h0.tv == pytest.approx(float(terms.tv), rel=1e-5)
    assert baseline.loss == baseline.history[-1].total < h0.total


# --------------------------------------------------------------------------------------------------
# Initial images


def test_zero_iterations_with_init_content_returns_the_content(content_array):
    r = run(init="content", num_iterations=0)
    assert len(r.history) == 1 and r.history[0].iteration == 0
    np.testing.assert_allclose(r.array, content_array, atol=1 / 255)


def test_zero_iterations_with_init_random_returns_the_noise_image():
    r = run(num_iterations=0)
    # 0.001 * N(0, 1) in Caffe space is the ImageNet mean color, within 1/255
    mean_rgb = np.array([123.68, 116.779, 103.939]) / 255.0
    np.testing.assert_allclose(r.array, np.broadcast_to(mean_rgb, r.array.shape), atol=1 / 255)


def test_random_init_is_seeded():
    a = run(num_iterations=2, seed=1)
    b = run(num_iterations=2, seed=1)
    c = run(num_iterations=2, seed=2)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.history[-1].total == b.history[-1].total
    assert not np.array_equal(a.array, c.array)
    assert a.history[0].total != c.history[0].total


def test_init_style_and_init_image(tmp_path, content_array):
    style = images.resize_long_side(images.load_image(STYLE), 64)  # the style image as used (64x40)
    r = run(init="style", num_iterations=0)
    np.testing.assert_allclose(r.array, images.resize(style, (48, 64)), atol=1 / 255)

    rng = np.random.default_rng(0)
    start = rng.uniform(0.1, 0.9, (30, 40, 3)).astype(np.float32)
    path = images.save_image(start, tmp_path / "start.png")
    r = run(init="image", init_image=str(path), num_iterations=0)
    np.testing.assert_allclose(r.array, images.resize(images.load_image(path), (48, 64)), atol=1 / 255)
    assert not np.allclose(r.array, content_array, atol=0.05)
    # and it optimizes from there
    moved = run(init="image", init_image=str(path), num_iterations=3, optimizer="adam")
    assert moved.history[0].total == pytest.approx(r.history[0].total, rel=1e-6)
    assert moved.loss < r.loss


def test_original_colors_keeps_the_content_chroma(content_array):
    plain = run(num_iterations=3, init="content", seed=0)
    kept = run(num_iterations=3, init="content", seed=0, original_colors=True)
    # same optimization (colors are transferred at the end), so the same history
    assert [h.total for h in kept.history] == [h.total for h in plain.history]
    yuv_out, yuv_content, yuv_plain = (images.rgb_to_yuv(a) for a in (kept.array, content_array, plain.array))
    unclipped = np.all((kept.array > 1e-6) & (kept.array < 1 - 1e-6), axis=-1)
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(yuv_out[unclipped][:, 1:], yuv_content[unclipped][:, 1:], atol=1e-4)
    np.testing.assert_allclose(yuv_out[unclipped][:, 0], yuv_plain[unclipped][:, 0], atol=1e-4)
    assert not np.allclose(yuv_plain[..., 1:], yuv_content[..., 1:], atol=1e-2)  # the test can fail


# --------------------------------------------------------------------------------------------------
# Output


def test_output_is_written_with_the_settings_as_metadata(tmp_path):
    out = tmp_path / "result.png"
    r = run(num_iterations=4, output=out)
    assert r.output == out and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]  # no temporary files left
    meta = images.read_metadata(out)
    assert meta["settings"] == json.loads(json.dumps(r.settings.to_dict()))
    assert meta["settings"]["image_size"] == 64 and meta["settings"]["weights"] == "random"
    assert meta["settings"]["style_layers"] == ["relu1_1", "relu2_1"]
    assert meta["iterations"] == 4 and meta["loss"] == pytest.approx(r.loss)
    np.testing.assert_allclose(images.load_image(out), r.array, atol=1 / 255 + 1e-6)
    # the settings in the file reproduce the run
    again = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["settings"].items()})
    assert again == r.settings


def test_snapshots_with_save_every(tmp_path):
    out = tmp_path / "out.png"
    r = run(num_iterations=6, save_every=2, print_every=0, output=out)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["out.png", "out_2.png", "out_4.png"]
    assert [p.name for p in r.snapshots] == ["out_2.png", "out_4.png"]
    assert images.read_metadata(tmp_path / "out_4.png")["iteration"] == 4
    assert [h.iteration for h in r.history] == [0, 2, 4, 6]
    assert not np.array_equal(images.load_image(tmp_path / "out_2.png"), images.load_image(out))


def test_non_finite_loss_raises_and_keeps_only_the_last_finite_image(tmp_path):
    out = tmp_path / "out.png"
    with pytest.raises(optim.NonFiniteLossError) as e:
        run(optimizer="adam", learning_rate=1e30, num_iterations=4, print_every=1, save_every=1, output=out)
    # No output and no snapshot of a non-finite state; the last finite iterate as a partial file, if any.
    expected = [] if e.value.last_good is None else [api.partial_path(out, e.value.last_good_iteration)]
    assert sorted(tmp_path.iterdir()) == expected and e.value.partial == (expected[0] if expected else None)
    if expected:
        np.testing.assert_array_equal(images.to_uint8(images.load_image(expected[0])),
                                      images.to_uint8(e.value.last_good))


def test_result_repr_png_and_image(baseline):
    data = baseline._repr_png_()
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    assert img.size == (64, 48) and img.mode == "RGB"
    assert baseline.image.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(img), images.to_uint8(baseline.array))


def test_callback_receives_the_history():
    seen = []
    r = run(num_iterations=4, print_every=2, callback=seen.append)
    assert [rec.iteration for rec in seen] == [0, 2, 4]
    assert [rec.total for rec in seen] == [h.total for h in r.history]


def test_image_callback_receives_each_record_with_the_image_at_that_iteration(content_array):
    seen = []
    r = run(num_iterations=4, print_every=2, init="content",
            image_callback=lambda rec, img: seen.append((rec, np.array(img))))
    assert [rec.iteration for rec, _ in seen] == [0, 2, 4]
    assert [rec.total for rec, _ in seen] == [h.total for h in r.history]
    assert all(img.shape == (48, 64, 3) and img.dtype == np.float32 for _, img in seen)
    np.testing.assert_allclose(seen[0][1], content_array, atol=1e-5)  # init='content': the start is the content
    assert np.abs(seen[1][1] - seen[0][1]).max() > 1e-3  # the image changes during the run
    np.testing.assert_array_equal(seen[-1][1], r.array)  # the last one is the output


def test_early_stop_at_the_optimum(content_array):
    r = run(init="content", style_weight=0, tv_weight=0, num_iterations=50, print_every=10)
    assert [h.iteration for h in r.history] == [0] and r.loss == 0.0
    np.testing.assert_allclose(r.array, content_array, atol=1 / 255)


# --------------------------------------------------------------------------------------------------
# Errors


def test_unknown_setting_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="not_a_setting"):
        nst_jax.stylize(CONTENT, STYLE, not_a_setting=1)
    with pytest.raises(TypeError, match="image_sise"):
        nst_jax.stylize(CONTENT, STYLE, image_sise=64)


def test_style_blend_weight_count_mismatch():
    with pytest.raises(ValueError, match="style_blend_weights"):
        run(style=[STYLE, CONTENT], style_blend_weights=(1,), num_iterations=0)
    with pytest.raises(ValueError, match="style_blend_weights"):
        run(style=STYLE, style_blend_weights=(1, 2), num_iterations=0)


def test_bad_inputs_name_the_input(tmp_path):
    with pytest.raises(images.ImageError, match="content image"):
        run(content=tmp_path / "missing.jpg", num_iterations=0)
    with pytest.raises(images.ImageError, match="style image 2"):
        run(style=[STYLE, tmp_path / "missing.jpg"], num_iterations=0)
    with pytest.raises(ValueError, match="image_size"):
        run(image_size=8, num_iterations=0)
