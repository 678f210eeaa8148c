"""Coarse-to-fine stylization (``Settings.scales``): settings, stage chaining, batch parity, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import api, batch, images, vgg
from nst_jax.config import Settings, stages
from nst_jax.objective import Objective, loss, make_targets

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FAST = dict(weights="random", content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1", "relu3_1"),
            progress=False, print_every=1)


@pytest.fixture(scope="module")
def inputs():
    """Content and style already at 64 px, so that the library's resize to image_size=64 is the identity."""
    content = images.resize_long_side(images.load_image(EXAMPLES / "tubingen.jpg"), 64)
    style = images.resize_long_side(images.load_image(EXAMPLES / "starry_night.jpg"), 64)
    assert np.array_equal(images.resize_long_side(content, 64), content)
    return content, style


def test_stages_and_validation():
    assert stages(Settings(image_size=256, num_iterations=50)) == [(256, 50)]
    s = Settings(image_size=512, num_iterations=50, scales=[128, 256], scale_iterations=200)
    assert s.scales == (128, 256)
    assert stages(s) == [(128, 200), (256, 200), (512, 50)]
    assert stages(Settings(image_size=512, num_iterations=30, scales=(256,))) == [(256, 30), (512, 30)]
    assert Settings(image_size=512, scales=256).scales == (256,)
    for bad, match in [((256, 128), "increase"), ((512,), "below image_size"), ((16,), ">= 32"),
                       ((100.5,), "integers"), (("big",), "integers")]:
        with pytest.raises(ValueError, match=match):
            Settings(image_size=512, scales=bad)
    with pytest.raises(ValueError, match="scale_iterations"):
        Settings(image_size=512, scales=(256,), scale_iterations=-1)
    assert "scales" in Settings(scales=(256,)).to_dict()


def test_upsample_shapes_and_constant_image():
    x = jnp.full((6, 8, 3), 7.0)
    up = api.upsample(x, (12, 16))
    assert up.shape == (12, 16, 3)
    np.testing.assert_allclose(np.asarray(up), 7.0, rtol=1e-6)
    xb = jnp.stack([x, x + 1])
    upb = api.upsample(xb, (12, 16))
    assert upb.shape == (2, 12, 16, 3)
    np.testing.assert_array_equal(np.asarray(upb[0]), np.asarray(up))


def test_each_stage_starts_from_the_previous_result_upsampled(inputs, monkeypatch):
    content, style = inputs
    calls = []
    real = api.upsample

    def spy(x, size_hw):
        out = real(x, size_hw)
        calls.append((np.asarray(x), np.asarray(out)))
        return out

    monkeypatch.setattr(api, "upsample", spy)
    r = nst_jax.stylize(content, style, image_size=64, scales=(48,), scale_iterations=3, num_iterations=4,
                        init="content", **FAST)
    assert [(h.iteration, h.size) for h in r.history] == (
        [(i, 48) for i in range(4)] + [(i, 64) for i in range(3, 8)])
    assert r.array.shape == (48, 64, 3)
    assert r.loss == r.history[-1].total

    # Stage 1 is exactly a 48 px stylization of the 48 px images.
    c48, (s48,) = api.stage_images(content, [style], 48, Settings(image_size=64))
    alone = nst_jax.stylize(c48, s48, image_size=48, num_iterations=3, init="content", **FAST)
    assert [h.total for h in r.history[:4]] == [h.total for h in alone.history]

    # Stage 2 starts from the upsampled stage-1 image: its first record is that image's loss.
    (x_in, x_out), = calls
    assert x_in.shape == (36, 48, 3) and x_out.shape == (48, 64, 3)
    s = Settings(image_size=64, **{k: v for k, v in FAST.items() if k not in ("progress", "print_every")})
    obj = Objective.from_settings(s)
    params = api.get_params("random")
    targets = make_targets(obj, params, vgg.preprocess(jnp.asarray(content)), [vgg.preprocess(jnp.asarray(style))],
                           weights=s)
    assert r.history[4].total == pytest.approx(float(loss(obj, params, jnp.asarray(x_out), targets).total), rel=1e-5)
    targets48 = make_targets(obj, params, vgg.preprocess(jnp.asarray(c48)), [vgg.preprocess(jnp.asarray(s48))],
                             weights=s)
    assert r.history[3].total == pytest.approx(float(loss(obj, params, jnp.asarray(x_in), targets48).total), rel=1e-5)


def test_snapshots_come_from_the_last_stage(inputs, tmp_path):
    content, style = inputs
    r = nst_jax.stylize(content, style, image_size=64, scales=(32,), scale_iterations=4, num_iterations=4,
                        save_every=2, output=tmp_path / "out.png", **FAST)
    assert [p.name for p in r.snapshots] == ["out_2.png"]
    assert images.load_image(r.snapshots[0]).shape == (48, 64, 3)
    assert images.load_image(r.output).shape == (48, 64, 3)


def test_batch_with_scales_equals_single_calls(inputs):
    content, style = inputs
    contents = [content, np.ascontiguousarray(content[:, ::-1])]
    kw = dict(image_size=64, scales=(48,), scale_iterations=3, num_iterations=3, init="content", **FAST)
    singles = [nst_jax.stylize(c, style, **kw) for c in contents]
    batched = batch.stylize_batch(contents, style, **kw)
    for s, b in zip(singles, batched):
        assert [(h.iteration, h.size) for h in b.history] == [(h.iteration, h.size) for h in s.history]
        np.testing.assert_allclose([h.total for h in b.history], [h.total for h in s.history], rtol=1e-3)
        assert float(np.abs(s.array - b.array).max()) <= 1 / 255


def test_cli_scales(tmp_path):
    out = tmp_path / "o.png"
    p = subprocess.run([sys.executable, "-m", "nst_jax", "--content", str(EXAMPLES / "tubingen.jpg"),
                        "--style", str(EXAMPLES / "starry_night.jpg"), "--output", str(out), "--weights", "random",
                        "--image-size", "64", "--scales", "32", "48", "--scale-iterations", "2",
                        "--num-iterations", "2", "--content-layers", "relu2_1", "--style-layers", "relu1_1",
                        "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "6 iterations" in p.stdout
    assert images.load_image(out).shape == (48, 64, 3)
    bad = subprocess.run([sys.executable, "-m", "nst_jax", "--content", "a.jpg", "--style", "b.jpg",
                          "--output", str(out), "--image-size", "64", "--scales", "64"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--scales must increase and stay below --image-size 64" in bad.stderr
    assert "Traceback" not in bad.stderr
