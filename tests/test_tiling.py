"""Tiled stylization (``tile``): the tile grid, the feathered blend, and a small run end to end.

Runs are 64x128 px with 64 px tiles (3 tiles, in batches of 2), random weights and two shallow style layers, so
that the base stage and the tiles each compile a small program.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import api, batch, batch_cli, images, objective, tiling, vgg
from nst_jax.config import SettingError, Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
KW = dict(weights="random", image_size=128, style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",),
          conv_algorithm="direct", num_iterations=2, tile=64, tile_overlap=16, tile_iterations=2, tile_batch=2,
          print_every=0, progress=False)


@pytest.mark.parametrize("h, w, tile, overlap", [(96, 128, 64, 16), (3072, 4096, 512, 64), (100, 70, 64, 10),
                                                 (50, 300, 64, 0), (40, 33, 64, 8), (257, 129, 128, 127)])
def test_tile_boxes_cover_the_image_with_equal_overlapping_tiles(h, w, tile, overlap):
    boxes = tiling.tile_boxes(h, w, tile, overlap)
    th, tw = tiling.tile_shape(h, w, tile)
    assert (th, tw) == (min(tile, h), min(tile, w))
    covered = np.zeros((h, w), int)
    for top, left in boxes:
        assert 0 <= top <= h - th and 0 <= left <= w - tw  # inside, so every tile has the full shape
        covered[top:top + th, left:left + tw] += 1
    assert covered.min() >= 1
    tops, lefts = sorted({t for t, _ in boxes}), sorted({c for _, c in boxes})
    assert len(boxes) == len(tops) * len(lefts)  # a grid
    for starts, n, t in ((tops, h, th), (lefts, w, tw)):
        assert starts[0] == 0 and starts[-1] == n - t  # the last row / column flush with the edge
        if len(starts) > 1:
            assert min(a + t - b for a, b in zip(starts, starts[1:])) >= overlap
            assert (len(starts) - 1) * (t - overlap) + overlap < n  # one tile fewer would not do
    if (h, w, tile, overlap) == (3072, 4096, 512, 64):
        assert (len(tops), len(lefts)) == (7, 9)  # ceil((3072 - 64) / 448), ceil((4096 - 64) / 448)


def test_tile_boxes_refuse_an_overlap_as_large_as_the_tile():
    with pytest.raises(ValueError, match="overlap < tile"):
        tiling.tile_boxes(100, 100, 32, 32)


def test_blending_untouched_crops_returns_the_image_exactly():
    rng = np.random.default_rng(0)
    image = rng.random((96, 128, 3)).astype(np.float32)
    boxes = tiling.tile_boxes(96, 128, 40, 12)
    crops = [image[t:t + 40, c:c + 40] for t, c in boxes]
    np.testing.assert_array_equal(tiling.blend(crops, boxes, (96, 128)), image)
    constant = [np.full((40, 40, 3), 0.37, np.float32) for _ in boxes]  # weights sum to 1 everywhere
    np.testing.assert_array_equal(tiling.blend(constant, boxes, (96, 128)), np.full((96, 128, 3), 0.37, np.float32))


def test_overlaps_are_cross_faded_linearly():
    # two tiles of 8 px side by side in a 12 px wide strip: they overlap in columns 4..7
    boxes = tiling.tile_boxes(8, 12, 8, 4)
    assert boxes == [(0, 0), (0, 4)]
    out = tiling.blend([np.zeros((8, 8, 1)), np.ones((8, 8, 1))], boxes, (8, 12))
    expected = [0, 0, 0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1, 1]  # (k + 0.5) / 4 at pixel centres
    np.testing.assert_allclose(out[:, :, 0], np.tile(expected, (8, 1)), atol=1e-7)
    # a 2x2 grid: at a corner overlap the four weights are products of the ramps, summing to 1
    boxes = tiling.tile_boxes(12, 12, 8, 4)
    tiles = [np.full((8, 8, 1), float(k)) for k in range(4)]
    out = tiling.blend(tiles, boxes, (12, 12))[:, :, 0]
    ramp = np.array([0.125, 0.375, 0.625, 0.875])
    wy, wx = ramp[:, None], ramp[None, :]  # weight of the lower row / right column in the overlap
    corner = 0 * (1 - wy) * (1 - wx) + 1 * (1 - wy) * wx + 2 * wy * (1 - wx) + 3 * wy * wx
    np.testing.assert_allclose(out[4:8, 4:8], corner, atol=1e-6)


def test_tile_settings_are_checked():
    with pytest.raises(SettingError, match="tile_overlap is only used with tile"):
        Settings(tile_overlap=8)
    with pytest.raises(SettingError, match="tile_overlap=64 must be smaller than tile=64"):
        Settings(tile=64)
    with pytest.raises(SettingError, match="stay below its long side 64"):
        Settings(tile=64, tile_overlap=8, image_size=256, scales=(64,))
    assert tiling.base_settings(Settings(tile=64, tile_overlap=8, image_size=256)).image_size == 64
    assert tiling.base_settings(Settings(tile=64, tile_overlap=8, image_size=256, tile_base_size=96)).tile is None


def test_tiled_run_compiles_the_step_once_and_shares_the_style_targets(tmp_path, monkeypatch):
    content = images.resize(images.load_image(EXAMPLES / "tubingen.jpg"), (64, 128))
    seen = []
    optimize = batch.optimize_batch

    def spy(objective_, spec, params, x0, targets, *, shared=None, **kw):
        seen.append((x0.shape, targets, shared))
        return optimize(objective_, spec, params, x0, targets, shared=shared, **kw)

    monkeypatch.setattr(batch, "optimize_batch", spy)
    before = batch.trace_counts.copy()
    result = nst_jax.stylize(content, STYLE, output=tmp_path / "out.png", **KW)
    # 3 tiles in batches of 2 (the second padded): one trace (one compilation) of the batched step
    assert batch.trace_counts - before == {("init", (2, 64, 64, 3)): 1, ("step", (2, 64, 64, 3)): 1}
    assert [shape for shape, _, _ in seen] == [(2, 64, 64, 3)] * 2
    # the style targets are those of the untiled run at the output size, shared (not per tile)
    s = api.make_settings(**{k: v for k, v in KW.items() if k != "progress"})
    obj = objective.Objective.from_settings(s)
    styles = api.prepare_styles(STYLE, s, content)
    assert styles[0].shape[:2] == (80, 128)  # image_size * style_scale, as untiled
    expected = objective.style_targets(obj, api.get_params("random"), [vgg.preprocess(styles[0])])
    for _, targets, shared in seen:
        assert "target" not in targets["style"]
        for layer, value in expected["style"].items():
            np.testing.assert_allclose(np.asarray(shared["style"]["target"][layer]), np.asarray(value), rtol=1e-6)
        assert targets["content"]["target"]["relu2_1"].shape[0] == 2  # per tile
    # the result: full size, refined from the base, written atomically with its settings
    assert result.array.shape == (64, 128, 3)
    assert [r.iteration for r in result.history] == [0, 2, 2, 4]
    assert [r.size for r in result.history] == [64, 64, 128, 128]
    assert result.output == tmp_path / "out.png" and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert images.read_metadata(result.output)["settings"]["tile"] == 64


def test_batch_job_tiles_each_image(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tub, night = Image.open(EXAMPLES / "tubingen.jpg"), Image.open(EXAMPLES / "starry_night.jpg")
    tub.resize((160, 120)).save(folder / "a.png")
    night.resize((120, 100)).save(folder / "b.png")
    out = tmp_path / "out"
    flags = ["--weights", "random", "--image-size", "128", "--num-iterations", "2", "--style-layers", "relu1_1,relu2_1",
             "--content-layers", "relu2_1", "--conv-algorithm", "direct", "--tile", "64", "--tile-overlap", "16",
             "--tile-iterations", "2", "--tile-batch", "2", "--print-every", "0", "--output-size", "64x128",
             "--quiet"]
    assert batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(out), *flags]) == 0
    for name in ("a", "b"):
        meta = images.read_metadata(out / f"{name}.png")
        assert meta["settings"]["tile"] == 64 and meta["iterations"] == 4  # base 2, then tiles 2
        # the same picture as nst_jax.stylize with the same settings makes of the same prepared image
        prepared = batch.fit_to_size(images.load_image(folder / f"{name}.png"), (64, 128))
        alone = nst_jax.stylize(prepared, STYLE, **KW)
        written = images.load_image(out / f"{name}.png")
        assert np.abs(written - images.to_uint8(alone.array) / 255.0).max() <= 1e-6


def test_large_style_images_get_their_targets_tile_by_tile(monkeypatch):
    s = Settings(weights="random", style_layers=("relu1_1", "relu2_1"), conv_algorithm="direct", tile=32,
                 tile_overlap=8, image_size=64)
    obj = objective.Objective.from_settings(s)
    params = api.get_params("random")
    rng = np.random.default_rng(5)
    style = rng.uniform(0, 1, (80, 96, 3)).astype(np.float32)  # 7680 px > 4 tiles of 32 x 32
    calls = []
    tiled = tiling.tiled_targets.tiled_statistics
    monkeypatch.setattr(tiling.tiled_targets, "tiled_statistics", lambda *a, **k: calls.append(1) or tiled(*a, **k))
    got = tiling.style_targets(obj, params, [style], s)
    assert calls  # went tile by tile
    whole = objective.style_targets(obj, params, [vgg.preprocess(style)])
    for layer in s.style_layers:
        ref = np.asarray(whole["style"][layer])
        np.testing.assert_allclose(np.asarray(got["style"][layer]), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # an objective whose statistics are not means over positions takes the whole image in one pass
    calls.clear()
    mrf = objective.Objective.from_settings(s.replace(style_loss="mrf"))
    tiling.style_targets(mrf, params, [style], s)
    assert not calls
