"""The seam score (nst_jax.seams) against gradients computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nst_jax import seams

# 96x128, tiles of 64: rows of tiles at 0 and 32 (overlap [32, 64), centre line 48), columns at 0 and 64 (no
# overlap: the line is the tile edge, 64)
H, W, TILE = 96, 128, 64
BOXES = [(t, l) for t in (0, 32) for l in (0, 64)]


def ramp(a: float = 0.003, b: float = 0.002) -> np.ndarray:
    """Every channel ``a y + b x``: vertical differences a (norm a sqrt 3), horizontal b (b sqrt 3)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.repeat((a * y + b * x)[..., None], 3, axis=-1)


def test_boundary_lines_are_the_overlap_centres():
    assert seams.boundary_lines(BOXES, (H, W)) == ([48], [64])
    assert seams.boundary_lines(BOXES, (H, W), tile=64) == ([48], [64])
    # 3 x 3 tiles of 48 overlapping by 16 on 112 x 112: overlaps [32, 48) and [64, 80)
    assert seams.boundary_lines([(t, l) for t in (0, 32, 64) for l in (0, 32, 64)], (112, 112)) == ([40, 72],
                                                                                                  [40, 72])
    with pytest.raises(ValueError, match="inside the 128x96 image"):
        seams.boundary_lines([(0, 0), (96, 0)], (H, W))


def test_smooth_image_scores_one():
    assert seams.seam_score(ramp(), BOXES) == pytest.approx(1.0, abs=1e-12)
    y, x = np.mgrid[0:H, 0:W] / 40.0
    smooth = np.stack([np.sin(y + c) * np.cos(0.7 * x - c) for c in range(3)], axis=-1) * 0.3 + 0.5
    assert seams.seam_score(smooth, BOXES) == pytest.approx(1.0, abs=0.05)


def test_step_along_a_boundary_scores_by_hand():
    a, b, step = 0.003, 0.002, 0.05
    image = ramp(a, b)
    image[48:] += step  # a step between rows 47 and 48, all channels
    # across the lines: row 48's W vertical differences (a + step) sqrt 3, each over the mean vertical difference
    # elsewhere, a sqrt 3; column 64's H horizontal ones b sqrt 3 over the mean horizontal one elsewhere, b sqrt 3
    want = (W * (a + step) / a + H * 1.0) / (W + H)
    assert seams.seam_score(image, BOXES) == pytest.approx(want, rel=1e-12)
    assert seams.seam_score(image, BOXES) > 3
    # the same step off the lines is not a seam there (it only raises the gradient elsewhere)
    shifted = ramp(a, b)
    shifted[40:] += step
    assert seams.seam_score(shifted, BOXES) < 1


def test_worst_seam_crop_finds_the_stepped_segment():
    image = ramp()
    image[48:, 80:] += 0.05  # a step along row line 48 in columns 80.. only, and along nothing else
    crop = seams.worst_seam_crop(image.astype(np.float32), BOXES, 32)
    assert crop.line == ("row", 48)
    assert crop.array.shape == (32, 32, 3) and crop.array.dtype == np.float32
    assert crop.top <= 47 and crop.top + 32 >= 49 and crop.left >= 64  # the segment of columns 96..127 or 64..95
    np.testing.assert_array_equal(crop.array, image[crop.top:crop.top + 32, crop.left:crop.left + 32]
                                  .astype(np.float32))
    assert crop.ratio > seams.seam_score(image, BOXES) > 1
    with pytest.raises(ValueError, match="single tile"):
        seams.worst_seam_crop(image, [(0, 0)], 32, tile=128)
    with pytest.raises(ValueError, match="size must be a positive"):
        seams.worst_seam_crop(image, BOXES, 0)
