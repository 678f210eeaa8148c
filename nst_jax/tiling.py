"""Tiled stylization: outputs of any size, refined as batches of equal tiles.

An output too large for one pass (activations and the L-BFGS history grow with its pixels) is made in
two steps (``tile``):

1. the base stage: the whole image is stylized at a size that fits (:func:`nst_jax.config.tile_base`,
   default the tile side) through the normal pipeline (its own coarse-to-fine ``scales``);
2. its result, upsampled to the full size, is cut into overlapping tiles of one shape (:func:`tile_boxes`),
   and every tile is refined from its crop, with its own region's content targets and the *whole* style
   image's targets (those of the untiled run at the output size, computed once by :func:`style_targets`
   and shared by all tiles), through the batch engine (:func:`nst_jax.batch.optimize_batch`: one compiled
   program for every tile, sharded over the devices when there are several);
3. the tiles are blended back with linear cross-fades over their overlaps (:class:`Blender`, weights
   summing to 1).

Every tile has the same shape and the same target structure, so the step compiles once per run, however
many tiles there are: they run in batches of ``tile_batch`` (the last one padded with copies of its last
tile), one after the other, each tile independent of the others.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import api, batch, canvas, images, optim, pipeline, provenance, stall, tiled_targets, vgg
from nst_jax import objective as objective_mod
from nst_jax.config import SettingError, Settings, tile_base
from nst_jax.objective import Objective

__all__ = ["Blender", "blend", "base_settings", "refine", "style_targets", "stylize_tiled", "tile_boxes",
           "tile_shape"]

#: A style image of more pixels than this many tiles has its targets computed tile by tile
#: (:func:`style_targets`); one forward pass over four tiles' pixels takes less memory than a batch of tiles' steps.
STYLE_PASS_TILES = 4

#: The settings only tiling reads; the base stage runs untiled, with these at their defaults.
TILE_SETTINGS = ("tile", "tile_overlap", "tile_base_size", "tile_iterations", "tile_batch")


def tile_shape(height: int, width: int, tile: int) -> tuple[int, int]:
    """The shape ``(h, w)`` of every tile of a ``height x width`` image: ``tile`` square, each side at most the
    image's."""
    return min(tile, height), min(tile, width)


def _starts(n: int, t: int, overlap: int) -> list[int]:
    """Tile starts along one axis of ``n`` pixels: the fewest tiles of ``t`` pixels that overlap by at least
    ``overlap``, evenly spread, the first at 0 and the last flush with the end."""
    if n <= t:
        return [0]
    count = math.ceil((n - overlap) / (t - overlap))
    # Evenly spaced by (n - t) / (count - 1) <= t - overlap; rounding moves a start by less than a pixel, so
    # consecutive starts differ by at most ceil of that, still <= t - overlap.
    return [round(i * (n - t) / (count - 1)) for i in range(count)]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The ``(top, left)`` corners of the tiles covering a ``height x width`` image, row by row.

    Every tile has the shape :func:`tile_shape`; neighbours overlap by at least ``overlap`` pixels; the first
    row and column start at 0, the last are flush with the bottom and right edges.

    Raises:
        ValueError: ``tile`` below 1 or ``overlap`` outside ``0..tile-1``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tiles need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}.")
    th, tw = tile_shape(height, width, tile)
    return [(top, left) for top in _starts(height, th, overlap) for left in _starts(width, tw, overlap)]


def _ramps(starts: Sequence[int], t: int) -> np.ndarray:
    """Per tile along one axis, its weight at each of its ``t`` pixels: 1, falling linearly to 0 over the
    overlap with the next tile and rising from 0 over the overlap with the previous one, at pixel centres, so
    that in an overlap of two tiles the two weights sum to 1. Shape ``(len(starts), t)``, float64."""
    x = np.arange(t) + 0.5
    out = np.ones((len(starts), t))
    for i, start in enumerate(starts):
        if i > 0 and (ov := starts[i - 1] + t - start) > 0:
            out[i] *= np.clip(x / ov, 0.0, 1.0)
        if i + 1 < len(starts) and (ov := start + t - starts[i + 1]) > 0:
            out[i] *= np.clip((t - x) / ov, 0.0, 1.0)
    return out


class Blender:
    """Blends tiles into one image with feathered overlaps, tile by tile (only the image and one weight
    plane are held).

    A pixel's value is the average of the tiles covering it, weighted by the product of their row and
    column ramps (linear over each overlap, see :func:`tile_boxes`): the weights sum to 1. It is kept as
    a running weighted mean ``out += w / (W + w) * (tile - out)``, so that a tile equal to what is already
    there changes nothing: blending untouched crops of an image returns the image bit for bit.

    Args:
        shape_hw: the image's ``(height, width)``.
        boxes: the tiles' ``(top, left)`` (:func:`tile_boxes`: a grid of rows and columns).
        tile_hw: the tiles' shape (:func:`tile_shape`).
        channels: channels of the image.
    """

    def __init__(self, shape_hw: tuple[int, int], boxes: Sequence[tuple[int, int]], tile_hw: tuple[int, int],
                 channels: int = 3):
        self.boxes, self.tile_hw = list(boxes), tuple(tile_hw)
        tops, lefts = sorted({t for t, _ in self.boxes}), sorted({left for _, left in self.boxes})
        rows, cols = _ramps(tops, self.tile_hw[0]), _ramps(lefts, self.tile_hw[1])
        self._row = {t: rows[i] for i, t in enumerate(tops)}
        self._col = {c: cols[i] for i, c in enumerate(lefts)}
        self.image = np.zeros((*shape_hw, channels), np.float32)
        self._weight = np.zeros(tuple(shape_hw), np.float64)

    def add(self, k: int, crop) -> None:
        """Blends in tile ``k`` (``crop``: ``(h, w, channels)`` at ``boxes[k]``)."""
        top, left = self.boxes[k]
        h, w = self.tile_hw
        crop = np.asarray(crop, np.float32)
        if crop.shape[:2] != (h, w):
            raise ValueError(f"tile {k} has shape {crop.shape[:2]}, the tiles are {h}x{w}.")
        tw = np.outer(self._row[top], self._col[left])
        acc = self._weight[top:top + h, left:left + w]
        total = acc + tw
        share = np.divide(tw, total, out=np.zeros_like(tw), where=total > 0).astype(np.float32)[..., None]
        region = self.image[top:top + h, left:left + w]
        region += share * (crop - region)
        self._weight[top:top + h, left:left + w] = total


def blend(crops: Sequence, boxes: Sequence[tuple[int, int]], shape_hw: tuple[int, int]) -> np.ndarray:
    """The image ``shape_hw`` made of the tiles ``crops`` at ``boxes`` (:class:`Blender`), float32."""
    crops = [np.asarray(c) for c in crops]
    blender = Blender(shape_hw, boxes, crops[0].shape[:2], crops[0].shape[2])
    for k, c in enumerate(crops):
        blender.add(k, c)
    return blender.image


def style_targets(objective: Objective, params, styles: Sequence[np.ndarray], s: Settings) -> dict:
    """The style targets shared by every tile: those the untiled run at the output size takes of ``styles``
    (prepared, :func:`nst_jax.api.prepare_styles`, at ``image_size * style_scale``), blended.

    A style image of more than :data:`STYLE_PASS_TILES` tiles' pixels has its statistics computed tile by tile
    (:func:`nst_jax.tiled_targets.style_targets`: exact for statistics that are means over positions, with a
    fraction of one pass's memory), so that a large output's style targets need no more memory than its tiles;
    objectives with other statistics (e.g. ``mrf``) take the whole image in one pass.
    """
    prepared = [vgg.preprocess(jnp.asarray(st)) for st in styles]
    if tiled_targets.unsupported(objective):
        return objective_mod.style_targets(objective, params, prepared, s.style_blend_weights)
    return tiled_targets.style_targets(objective, params, prepared, s.style_blend_weights,
                                       max_pixels=STYLE_PASS_TILES * s.tile ** 2, tile=s.tile)


def base_settings(s: Settings) -> Settings:
    """The settings of the base stage: untiled at :func:`nst_jax.config.tile_base`, on style images already
    prepared at the full size (so without ``style_tile`` and ``color_transfer``, done there), and without
    ``original_colors`` (applied once to the blended result)."""
    defaults = Settings()
    return s.replace(**{name: getattr(defaults, name) for name in TILE_SETTINGS}, image_size=tile_base(s),
                     style_tile=(1, 1), color_transfer="none", original_colors=False)


def refine(content_img: np.ndarray, styles: list[np.ndarray], s: Settings, params, *,
           hook: optim.Hook | None = None, progress: bool = True,
           callback: Callable[[optim.Record], None] | None = None, devices: Sequence | None = None,
           shared_targets: dict | None = None) -> tuple[np.ndarray, list[optim.Record]]:
    """A tiled stylization of a prepared content image: the base stage, then the tiles, then the blend.

    Args:
        content_img: the content image at its output size, RGB float ``(H, W, 3)`` in [0, 1].
        styles: the style images prepared for that size (:func:`nst_jax.api.prepare_styles`, colours matched).
        s: the settings, with ``tile``.
        params: VGG-19 params.
        hook: a caller's in-step hook (``blur_on_stall`` adds its own, as in :func:`nst_jax.stylize`).
        progress: progress bars: the base stage's, then one over the tiles.
        callback: called with each progress record of the base stage, then with the tile stage's start and
            end records.
        devices: devices the tiles are sharded over (default ``jax.local_devices()``).
        shared_targets: the style targets of ``styles`` if already made (:func:`style_targets`).

    Returns:
        ``(image, history)``: the output (float32 RGB in [0, 1]) and the base stage's records followed by two
        of the tile stage (its start and end, iterations counted on): the sums of the tiles' weighted losses.

    Raises:
        nst_jax.optim.NonFiniteLossError: a tile's loss became NaN/inf (the error names the tile).
    """
    if s.tile is None:
        raise SettingError("refine makes a tiled stylization, but {tile} is unset: set it (e.g. {tile=}).",
                           "tile", tile=512)
    t0 = time.perf_counter()
    base = api.stylize(content_img, styles, base_settings(s), progress=progress, callback=callback, hook=hook)
    history = list(base.history)
    done = history[-1].iteration if history else 0
    h, w = content_img.shape[:2]
    start = np.asarray(pipeline.upsample(vgg.preprocess(jnp.asarray(base.array)), (h, w)))
    del base
    objective = Objective.from_settings(s)
    spec = optim.SolverSpec.from_settings(s)
    if shared_targets is None:
        shared_targets = style_targets(objective, params, styles, s)
    params = objective.prepare(params)  # once for all tiles (each batch would otherwise redo it)
    devices = list(devices) if devices is not None else jax.local_devices()
    weights = objective.weights(s)
    boxes = tile_boxes(h, w, s.tile, s.tile_overlap)
    th, tw = tile_shape(h, w, s.tile)
    size = s.tile_batch or batch.default_batch_size((th, tw), objective, spec, devices=devices)
    size = min(size, len(boxes))
    iterations = s.num_iterations if s.tile_iterations is None else s.tile_iterations
    step_hook = stall.settings_hook(s, hook)
    blender = Blender((h, w), boxes, (th, tw))
    first = [None] * len(boxes)
    last = [None] * len(boxes)
    bar = _tiles_bar(len(boxes)) if progress else None

    def targets_of(k: int, copy: bool = False) -> dict:
        top, left = boxes[k]
        crop = vgg.preprocess(jnp.asarray(content_img[top:top + th, left:left + tw]))
        content = objective_mod.content_targets(objective, params, crop)
        if copy:  # a padding member: leaves of its own, so that the content targets stay per tile
            content = jax.tree.map(jnp.copy, content)
        return objective_mod.with_weights(objective, weights, shared_targets, content,
                                          masks=objective_mod.content_masks(objective, params, crop))

    try:
        for lo in range(0, len(boxes), size):
            members = list(range(lo, min(lo + size, len(boxes))))
            padded = members + [members[-1]] * (size - len(members))
            tree = [targets_of(k, copy=j >= len(members)) for j, k in enumerate(padded)]
            batched, shared = batch.split_targets(tree)
            x0 = jnp.stack([jnp.asarray(start[t:t + th, c:c + tw]) for t, c in (boxes[k] for k in padded)])
            if bar is not None:
                bar.set_description_str(f"tile {members[0] + 1}-{members[-1] + 1}/{len(boxes)}")
            run = batch.optimize_batch(objective, spec, params, x0, batched, shared=shared,
                                       num_iterations=iterations, chunk_size=s.chunk_size,
                                       print_every=s.print_every, loop=s.loop, devices=devices,
                                       labels=[f"tile {k + 1}/{len(boxes)} at (top, left) {boxes[k]}"
                                               for k in padded],
                                       on_stop=_postfix(bar) if bar is not None else None, hook=step_hook)
            for j, k in enumerate(members):
                if run.errors[j] is not None:
                    raise run.errors[j]
            out = run.images()
            for j, k in enumerate(members):
                blender.add(k, out[j])
                first[k], last[k] = run.histories[j][0], run.histories[j][-1]
            del run, out, x0, tree, batched
            if bar is not None:
                bar.update(len(members))
    finally:
        if bar is not None:
            bar.close()
    del start
    elapsed = history[-1].elapsed if history else 0.0
    for recs, it in ((first, done), (last, done + max(r.iteration for r in last))):
        rec = _summed(recs, it, elapsed + time.perf_counter() - t0, s.image_size)
        history.append(rec)
        if callback is not None:
            callback(rec)
    image = pipeline.finish_image(blender.image, content_img, s)
    return image, history


def _summed(records: Sequence[optim.Record], iteration: int, elapsed: float, size: int) -> optim.Record:
    """One record of the tile stage: every weighted term summed over the tiles."""
    names = records[0].terms.keys()
    terms = {name: sum(r.terms[name] for r in records) for name in names}
    return optim.Record.from_terms(iteration, {**terms, "total": sum(r.total for r in records)}, elapsed, size)


def _tiles_bar(total: int):
    """A progress bar over the tiles (``tqdm.auto``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tile", dynamic_ncols=True, desc="tiles")


def _postfix(bar):
    def on_stop(state, _elapsed):
        its, totals = jax.device_get((state.iteration, state.terms.total))
        bar.set_postfix(it=int(np.max(its)), loss=f"{float(np.nanmean(totals)):.4g}")
    return on_stop


def stylize_tiled(content, style, s: Settings, *, output: str | os.PathLike | None = None, overwrite: bool = False,
                  callback: Callable[[optim.Record], None] | None = None, progress: bool = True,
                  hook: optim.Hook | None = None) -> api.Result:
    """:func:`nst_jax.stylize` with ``tile`` set (it calls this): loads and prepares the images as an untiled
    run at ``image_size`` would, makes the output by :func:`refine` and writes it atomically to ``output``.

    Raises:
        SettingError: no content image (a tiled run refines a content image's regions).
        ValueError, nst_jax.optim.NonFiniteLossError: as :func:`nst_jax.stylize`.
    """
    if content is None:
        raise SettingError("{tile} refines the regions of a content image; none is given (texture synthesis): "
                           "leave {tile} unset.", "tile")
    inputs = api.input_paths(content, style, s)
    out_path = None
    if output is not None:
        out_path = images.check_output_path(output)
        images.check_overwrite(out_path, inputs, overwrite=overwrite)
    canvas.check_inputs(s, content, style)
    content_img = images.resize_long_side(images.load_image(content, label="content image"), s.image_size,
                                          label="content image")
    styles = api.prepare_styles(style, s, content_img)
    params = api.get_params(s.weights)
    array, history = refine(content_img, styles, s, params, hook=hook, progress=progress, callback=callback)
    result = api.Result(array, history, s, weights=api.weights_used(s.weights),
                        inputs=provenance.describe_inputs(inputs))
    if out_path is not None:
        result.output = result.save(out_path)
    return result
