"""Weight sweeps: one content image and style, every combination of some loss weights, in one vmapped call.

The weights are traced leaves of the objective, so all the combinations share one compiled batch
(:func:`nst_jax.batch.stylize_batch` with ``loss_weights``). The results are laid out as a labelled grid:
one swept weight gives a row, two give rows x columns; with three, the columns are the combinations of the
second and third.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nst_jax import api, images
from nst_jax.config import SettingError, Settings

#: The weights a sweep can vary (one number each; the order of the grid's axes).
SWEEPABLE = ("content_weight", "style_weight", "tv_weight")

_LABEL_NAMES = {"content_weight": "content", "style_weight": "style", "tv_weight": "tv"}
_GAP = 4  # pixels between cells and around the grid
_BACKGROUND = 1.0  # white


@dataclasses.dataclass
class SweepResult:
    """The outcome of :func:`stylize_sweep`.

    Attributes:
        axes: the swept settings and their values, in grid order.
        cells: per combination (row-major), its weights.
        results: per combination, its :class:`nst_jax.Result` (``settings`` are its own).
        rows, cols: the grid's shape.
        grid: the labelled grid, float32 ``(H, W, 3)`` in [0, 1].
        boxes: per combination, ``(x, y, width, height)`` of its image in ``grid``.
        output: where the grid was written (and ``json_path`` the losses), or None.
    """

    axes: dict[str, tuple[float, ...]]
    cells: list[dict[str, float]]
    results: list[api.Result]
    rows: int
    cols: int
    grid: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    output: Path | None = None
    json_path: Path | None = None

    def to_dict(self) -> dict:
        """The weights, final losses and iterations of every cell, and where each cell is in the grid."""
        cells = []
        for k, (weights, r, box) in enumerate(zip(self.cells, self.results, self.boxes)):
            last = r.history[-1]
            loss = {"total": last.total, "content": last.content, "style": last.style, "tv": last.tv,
                    **dict(last.terms)}
            cells.append({"row": k // self.cols, "col": k % self.cols, "weights": weights,
                          "iterations": last.iteration, "loss": loss, "box": list(box)})
        first = self.results[0]
        return {"software": images.software_name(), "axes": {k: list(v) for k, v in self.axes.items()},
                "rows": self.rows, "cols": self.cols, "cells": cells,
                "settings": {k: v for k, v in first.settings.to_dict().items() if k not in self.axes},
                "weights": first.weights}


def combinations(axes: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the axes' values (cartesian product, the first axis slowest)."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def grid_shape(axes: Mapping[str, Sequence[float]]) -> tuple[int, int]:
    """``(rows, cols)``: the first axis with several values gives the rows, the others the columns (one
    such axis: a single row)."""
    counts = [len(v) for v in axes.values() if len(v) > 1]
    if len(counts) < 2:
        return 1, math.prod(counts)
    return counts[0], math.prod(counts[1:])


def label(weights: Mapping[str, float]) -> list[str]:
    """A cell's label lines, e.g. ``["style 100", "tv 0.001"]``."""
    return [f"{_LABEL_NAMES.get(k, k)} {v:g}" for k, v in weights.items()]


def labelled_grid(cells: Sequence[np.ndarray], labels: Sequence[Sequence[str]], rows: int, cols: int
                  ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Lays images out row-major in a ``rows`` x ``cols`` grid, each with its label lines above it (black on
    white, Pillow's default font, larger for large images); a cell is as wide as its widest image or label.

    Returns:
        The grid (float32 ``(H, W, 3)`` in [0, 1]) and per image its ``(x, y, width, height)`` in the grid.
    """
    from PIL import Image, ImageDraw, ImageFont

    size = max(10, min((c.shape[1] for c in cells), default=0) // 24)  # legible beside large cells too
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    line_h = max(font.getbbox("Ag0")[3], 1) + 2
    text_w = [max((int(font.getlength(line)) for line in lines), default=0) + 2 for lines in labels]
    label_h = line_h * max((len(lines) for lines in labels), default=0)
    col_w = [max(max(cells[k].shape[1], text_w[k]) for k in range(c, len(cells), cols)) for c in range(cols)]
    row_h = [label_h + max(cells[k].shape[0] for k in range(r * cols, min((r + 1) * cols, len(cells))))
             for r in range(rows)]
    width = _GAP + sum(w + _GAP for w in col_w)
    height = _GAP + sum(h + _GAP for h in row_h)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    boxes = []
    for k, (img, lines) in enumerate(zip(cells, labels)):
        r, c = divmod(k, cols)
        x0 = _GAP + sum(w + _GAP for w in col_w[:c])
        y0 = _GAP + sum(h + _GAP for h in row_h[:r])
        for n, line in enumerate(lines):
            draw.text((x0 + 1, y0 + n * line_h), line, fill="black", font=font)
        h, w = img.shape[:2]
        x = x0 + (col_w[c] - w) // 2
        boxes.append((x, y0 + label_h, w, h))
    grid = np.asarray(canvas, dtype=np.float32) / 255.0
    for (x, y, w, h), img in zip(boxes, cells):
        grid[y:y + h, x:x + w] = np.clip(img[..., :3], 0.0, 1.0)
    return grid, boxes


def json_path_for(output: str | os.PathLike) -> Path:
    """Where a sweep's losses go: ``<stem>.json`` next to the grid."""
    output = Path(output).expanduser()
    return output.with_name(output.stem + ".json")


def stylize_sweep(content, style, axes: Mapping[str, Sequence[float]], settings: Settings | None = None, *,
                  output: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                  **overrides) -> SweepResult:
    """Stylizes ``content`` with every combination of the ``axes`` weights in one vmapped call.

    Args:
        content: the content image (as for :func:`nst_jax.stylize`).
        style: one style image or a list to blend.
        axes: swept settings (any of :data:`SWEEPABLE`) -> their values, e.g. ``{"style_weight": [10, 100,
            1000]}``; every combination is one cell.
        settings, overrides: every other setting, as for :func:`nst_jax.stylize` (the same for all cells).
        output: if given, the labelled grid is written there atomically and the final losses of every cell
            to :func:`json_path_for` (``<stem>.json``); both are checked before the run, under the rules of
            ``nst_jax.stylize``'s output (never an input; an existing file only if nst_jax wrote it, or with
            ``overwrite``).
        overwrite: replace existing files at those paths that nst_jax did not write.
        progress: a progress bar.

    Returns:
        A :class:`SweepResult`.

    Raises:
        SettingError: a bad setting or axis, naming it.
        ValueError / images.ImageError: a bad image or output path.
    """
    from nst_jax import batch, jobfiles  # heavy: JAX

    s = api.make_settings(settings, **overrides)
    unknown = sorted(set(axes) - set(SWEEPABLE))
    axes = {name: _axis_values(name, axes[name]) for name in SWEEPABLE if name in axes}
    if not axes or unknown:
        raise SettingError("a sweep needs values for at least one of {0}, {1}, {2}" +
                           (f"; {', '.join(unknown)} cannot be swept" if unknown else "") + ".", *SWEEPABLE)
    if s.save_every:
        raise SettingError("{save_every} writes snapshots of one image; a sweep writes only its grid: leave "
                           "{save_every} at 0.", "save_every")
    inputs = api.input_paths(content, style, s)
    paths = None
    if output is not None:
        paths = (images.check_output_path(output), json_path_for(output))
        images.check_overwrite(paths[0], inputs, overwrite=overwrite)
        images.check_overwrite(paths[1], inputs, overwrite=overwrite)
    base = s.replace(**{name: max(values) for name, values in axes.items()})  # every term in the objective
    cells = combinations(axes)
    results = batch.stylize_batch([content] * len(cells), style, base, batch_size=len(cells), progress=progress,
                                  loss_weights=cells)
    rows, cols = grid_shape(axes)
    grid, boxes = labelled_grid([r.array for r in results], [label(c) for c in cells], rows, cols)
    sweep = SweepResult(axes, cells, results, rows, cols, grid, boxes)
    if paths is not None:
        record = sweep.to_dict()
        sweep.output = images.save_image(grid, paths[0], metadata={"sweep": record})
        record["output"] = str(sweep.output)
        jobfiles.write_json_atomic(paths[1], record)
        sweep.json_path = paths[1]
    return sweep


def _axis_values(name: str, values) -> tuple[float, ...]:
    items = [values] if isinstance(values, (int, float)) else list(values)
    if not items:
        raise SettingError("{0} has no values to sweep: give at least one.", name)
    return tuple(getattr(Settings(**{name: v}), name) for v in items)  # validated as the setting itself
