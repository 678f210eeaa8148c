"""How visible the seams of a tiled image are: the gradient across the tiles' boundary lines against elsewhere.

A tiled stylization refines overlapping tiles and blends them with feathered overlaps. Where neighbouring tiles
disagree, the picture changes abruptly along a line; :func:`seam_score` measures that as the mean gradient
magnitude (finite differences between neighbouring pixels, the norm over the colour channels) across the
boundary lines, divided by the mean gradient magnitude of the same direction everywhere else: about 1 means no
visible seam, above 1 a seam. Below 1 means the lines are smoother than the rest (two different textures
averaged into a washed-out band).

The boundary lines are the **centre lines of the overlaps**, not the tile edges. With feathered blending each
tile's weight falls to 0 at its own edge, so no step can appear at a tile edge; the two tiles weigh the same
at the centre of their overlap, which is where a disagreement between them (two strokes half-faded, a colour
shift) shows most, and where a hard cut would be made. Without overlap the centre line is the tile edge.

Tile boxes are ``(top, left)`` corners of equal tiles whose last row and column are flush with the image's
bottom and right edges (as ``nst_jax.tiling.tile_boxes`` makes them), so the tile size is found from the image
size unless given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["SeamCrop", "boundary_lines", "seam_score", "worst_seam_crop"]


def _check_image(image) -> np.ndarray:
    image = np.asarray(image, np.float64)
    if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"image must be (H, W, 3) with H, W >= 2, got shape {image.shape}.")
    return image


def _centres(starts: Sequence[int], extent: int) -> list[int]:
    """Centre lines of the overlaps of consecutive tiles starting at ``starts``, each ``extent`` long."""
    ordered = sorted(set(starts))
    return [(b + a + extent) // 2 if a + extent > b else b for a, b in zip(ordered, ordered[1:])]


def boundary_lines(boxes: Sequence[tuple[int, int]], shape_hw: tuple[int, int],
                   tile: int | None = None) -> tuple[list[int], list[int]]:
    """The boundary lines of tiles: ``(rows, columns)``; a row ``c`` is the line between pixel rows ``c - 1`` and
    ``c`` (the centre of the overlap of two consecutive rows of tiles), likewise a column.

    Args:
        boxes: the tiles' ``(top, left)`` corners.
        shape_hw: the image's ``(H, W)``.
        tile: the tiles' side; default ``H - max(top)`` along rows and ``W - max(left)`` along columns (the last
            tiles are flush with the image's edges).

    Raises:
        ValueError: no boxes, or a box outside the image.
    """
    if not boxes:
        raise ValueError("no tile boxes given: pass the (top, left) corners of the tiles.")
    h, w = shape_hw
    tops, lefts = [int(b[0]) for b in boxes], [int(b[1]) for b in boxes]
    if min(tops) < 0 or min(lefts) < 0 or max(tops) >= h or max(lefts) >= w:
        raise ValueError(f"tile boxes must have their corners inside the {w}x{h} image, got tops {sorted(set(tops))} "
                         f"and lefts {sorted(set(lefts))}: pass the boxes of this image's tiles.")
    rows = _centres(tops, tile if tile is not None else h - max(tops))
    columns = _centres(lefts, tile if tile is not None else w - max(lefts))
    return [c for c in rows if 0 < c < h], [c for c in columns if 0 < c < w]


def _differences(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient magnitudes ``(dy, dx)``: ``dy[i, j] = |image[i + 1, j] - image[i, j]|`` (colour norm), ``(H-1, W)``;
    ``dx`` likewise along rows, ``(H, W-1)``."""
    dy = np.sqrt(np.sum(np.square(np.diff(image, axis=0)), axis=-1))
    dx = np.sqrt(np.sum(np.square(np.diff(image, axis=1)), axis=-1))
    return dy, dx


def _elsewhere_means(dy: np.ndarray, dx: np.ndarray, rows: list[int], columns: list[int]) -> tuple[float, float]:
    """Mean vertical difference off the row lines, mean horizontal difference off the column lines."""
    keep_y = np.ones(dy.shape[0], bool)
    keep_y[[c - 1 for c in rows]] = False
    keep_x = np.ones(dx.shape[1], bool)
    keep_x[[c - 1 for c in columns]] = False
    return (float(dy[keep_y].mean()) if keep_y.any() else float("nan"),
            float(dx[:, keep_x].mean()) if keep_x.any() else float("nan"))


def seam_score(image, boxes: Sequence[tuple[int, int]], tile: int | None = None) -> float:
    """Mean gradient magnitude across the tiles' boundary lines (:func:`boundary_lines`), each difference divided
    by the mean of the same direction everywhere else (vertical differences for row lines, horizontal ones for
    column lines, so that an image smoother in one direction than the other still scores 1): about 1 means no
    visible seams, above 1 seams (see the module docstring).

    Args:
        image: ``(H, W, 3)`` float array (any range; RGB in [0, 1] for outputs).
        boxes: the tiles' ``(top, left)`` corners.
        tile: the tiles' side (default: from the image size, see :func:`boundary_lines`).

    Returns:
        The ratio; nan without boundary lines (a single tile); inf or nan if the image is constant elsewhere.
    """
    image = _check_image(image)
    rows, columns = boundary_lines(boxes, image.shape[:2], tile)
    if not rows and not columns:
        return float("nan")
    dy, dx = _differences(image)
    rest_y, rest_x = _elsewhere_means(dy, dx, rows, columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        across = np.concatenate([dy[[c - 1 for c in rows]].ravel() / rest_y,
                                 dx[:, [c - 1 for c in columns]].ravel() / rest_x])
    return float(across.mean())


class SeamCrop(NamedTuple):
    """The crop around the most visible boundary segment (:func:`worst_seam_crop`)."""

    array: np.ndarray  #: ``(size, size, 3)`` (smaller if the image is), of the image's dtype
    top: int  #: where the crop starts in the image
    left: int
    ratio: float  #: the segment's mean gradient across the line over the mean elsewhere (as :func:`seam_score`)
    line: tuple[str, int]  #: ``("row", c)`` or ``("column", c)``: the boundary line the segment is on


def worst_seam_crop(image, boxes: Sequence[tuple[int, int]], size: int, tile: int | None = None) -> SeamCrop:
    """The ``size`` x ``size`` crop centred on the boundary segment with the highest ratio: each boundary line is
    cut into segments of ``size`` pixels, each scored as :func:`seam_score` scores the whole (its mean gradient
    across the line over the mean gradient of that direction elsewhere in the image); for a picture of the worst
    seam in a report.

    Raises:
        ValueError: ``size`` not positive, or no boundary lines (a single tile).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}.")
    original = np.asarray(image)
    image = _check_image(image)
    h, w = image.shape[:2]
    rows, columns = boundary_lines(boxes, (h, w), tile)
    if not rows and not columns:
        raise ValueError("the tiles have no boundary lines (a single tile): there is no seam to show.")
    dy, dx = _differences(image)
    rest_y, rest_x = _elsewhere_means(dy, dx, rows, columns)
    best = None
    for axis, lines, diffs, length, rest in (("row", rows, dy, w, rest_y), ("column", columns, dx.T, h, rest_x)):
        for c in lines:
            for start in range(0, length, size):
                segment = diffs[c - 1, start:start + size]
                ratio = float(segment.mean() / rest) if rest > 0 else float("inf")
                if best is None or ratio > best[0]:
                    best = (ratio, axis, c, start + len(segment) // 2)
    ratio, axis, c, along = best
    centre_y, centre_x = (c, along) if axis == "row" else (along, c)
    top = int(np.clip(centre_y - size // 2, 0, max(0, h - size)))
    left = int(np.clip(centre_x - size // 2, 0, max(0, w - size)))
    return SeamCrop(original[top:top + size, left:left + size], top, left, ratio, (axis, c))
