"""Style targets of a large style image computed tile by tile, exactly.

The style statistics of an image take one forward pass of VGG-19 over the whole image; at a few thousand
pixels a side its activations no longer fit in memory. The statistics whose ``make_target`` is a mean over
positions (kinds registered with ``position_mean``: Gram matrices of single layers, Gram cubes, the W2
loss's moments) are the position-count-weighted mean of those of any partition of the layer's positions, so
they can be computed a tile at a time:

* the image is cut into tiles whose offsets are multiples of the stride of the deepest style layer
  (:func:`alignment`: 16 for relu5_1, after four 2x2 poolings), so that every pooling window of a tile is one
  of the whole image's;
* each tile runs through the network with a halo of at least the receptive-field radius of the deepest style
  layer around it (:func:`receptive_radius`, from the architecture: each 3x3 convolution adds one position of
  its own layer's stride), clipped to the image: inside the halo, the network's padding at the crop's edge
  no longer reaches the tile, and at the image's real border the crop's padding (zero or reflect) is the
  whole image's;
* each layer's activations are cropped to the tile's interior in that layer's coordinates (offsets divided
  by the layer's stride); the kind's statistic of the interior, times its number of positions, is summed
  over the tiles (in float64 on the host), and divided by the layer's number of positions at the end.

The result equals the whole-image pass's to float32 rounding (tests/test_tiled_targets.py). Statistics that
are not means over positions (the MRF loss's patch banks, cross-layer and blurred Gram matrices, ...) are
refused by :func:`style_statistics` when the image does not fit, naming the kind and the fix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import objective as objective_lib
from nst_jax import vgg
from nst_jax.objective import Objective
from nst_jax.terms import INPUT

__all__ = ["DEFAULT_TILE", "TileSpan", "alignment", "halo", "layer_scale", "receptive_radius", "style_statistics",
           "style_targets", "tile_spans", "tiled_statistics", "unsupported"]

#: Default tile side (input pixels, before the halo): a multiple of every layer's stride (32 for pool5).
DEFAULT_TILE = 512


def layer_scale(layer: str) -> int:
    """How many 2x2 poolings come before ``layer``'s output (its stride is ``2 ** scale``); 0 for the input."""
    if layer == INPUT:
        return 0
    index = vgg.layer_index(layer)
    return sum(1 for name in vgg.LAYERS[:index + 1] if name.startswith("pool"))


def receptive_radius(layer: str) -> int:
    """The receptive-field radius of ``layer`` in input pixels: position ``i`` of the layer (stride ``2**k``)
    reads the input rows ``[i 2^k - r, (i + 1) 2^k - 1 + r]``, ``r`` the sum of the strides of the 3x3
    convolutions up to it (each widens the region by one position of its own input on each side; a 2x2 pooling
    of stride 2 widens nothing). 0 for the input itself."""
    if layer == INPUT:
        return 0
    index = vgg.layer_index(layer)
    return sum(2 ** layer_scale(name) for name in vgg.LAYERS[:index + 1] if name.startswith("conv"))


def alignment(layers: Sequence[str]) -> int:
    """The stride of the deepest of ``layers``: tile offsets must be multiples of it."""
    return 2 ** max((layer_scale(l) for l in layers), default=0)


def halo(layers: Sequence[str]) -> int:
    """The margin read around a tile: the largest receptive-field radius of ``layers``, rounded up to a multiple
    of their :func:`alignment` (so that a tile's crop starts on a pooling window of every layer)."""
    step = alignment(layers)
    return step * math.ceil(max((receptive_radius(l) for l in layers), default=0) / step)


@dataclass(frozen=True)
class TileSpan:
    """One tile along one axis: its interior ``[start, stop)`` and the crop read for it ``[read_start, read_stop)``
    (the interior plus the halo, clipped to the image), in input pixels."""

    start: int
    stop: int
    read_start: int
    read_stop: int

    def window(self, scale: int) -> tuple[int, int]:
        """The interior in the coordinates of the crop's activations at a layer of stride ``2 ** scale``."""
        origin = self.read_start >> scale  # read_start is a multiple of the stride
        return (self.start >> scale) - origin, (self.stop >> scale) - origin


def tile_spans(size: int, tile: int, margin: int, step: int = 1) -> list[TileSpan]:
    """The tiles covering ``size`` pixels: interiors of ``tile`` pixels (the last one shorter), each read with at
    least ``margin`` pixels around it where the image has them.

    The crops read are all ``tile + 2 margin`` long (clipped to the image), except those that reach the image's
    end, which start at the same multiple of ``step`` (the stride) and end at ``size``: so a large image's tiles
    take few shapes, i.e. few compiled programs."""
    length = tile + 2 * margin
    last = max(0, size - length) // step * step  # where the crops that reach the end start
    spans = []
    for start in range(0, size, tile):
        read = min(max(0, start - margin), last)
        spans.append(TileSpan(start, min(start + tile, size), read, size if read == last else read + length))
    return spans


def unsupported(objective: Objective) -> list[str]:
    """The style entries whose statistic is not a mean over positions, as ``"kind (entry)"``: they cannot be
    computed tile by tile."""
    return [f"{t.kind!r} ({entry})" for t in objective.terms if t.source == "style" for entry in t.layers
            if not t.spec.is_position_mean(t.entry_opts(entry))]


def tiled_statistics(objective: Objective, params, style: jax.Array, *, tile: int = DEFAULT_TILE,
                     margin: int | None = None) -> dict[str, dict]:
    """The statistics ``{term name: {entry: statistic}}`` of one Caffe-space style image ``(H, W, 3)``, computed
    tile by tile (see the module docstring): equal to :func:`nst_jax.objective.style_statistics`'s to float32
    rounding.

    Args:
        objective: the loss description; every style entry must be a mean over positions.
        params: VGG-19 params.
        style: the Caffe-space style image.
        tile: the side of a tile's interior in pixels, a multiple of the deepest style layer's stride.
        margin: the halo around each tile in pixels; default (and at least, for exact results) :func:`halo` of
            the style layers. Smaller values are accepted (they show what the halo is for) if they are
            multiples of the stride.

    Raises:
        ValueError: an entry that is not a mean over positions, or a tile or margin that is not a multiple of
            the stride.
    """
    bad = unsupported(objective)
    if bad:
        raise ValueError(f"style statistic {bad[0]} is not a mean over positions, so it cannot be computed tile by "
                         "tile; use a style loss registered with position_mean (e.g. 'gram' of single layers).")
    layers = objective.source_layers("style")
    step = alignment(layers)
    margin = halo(layers) if margin is None else margin
    for name, value, least in (("tile", tile, 1), ("margin", margin, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least or value % step:
            deepest = max(layers, key=layer_scale)
            raise ValueError(f"{name} must be a {'positive ' if least else ''}multiple of {step} (the stride of style "
                             f"layer {deepest}), got {value!r}; e.g. {name}={step * (32 if least else 8)}.")
    h, w = style.shape[:2]
    sums: dict[str, dict] = {}
    for rows in tile_spans(h, tile, margin, step):
        for cols in tile_spans(w, tile, margin, step):
            windows = {l: (rows.window(layer_scale(l)), cols.window(layer_scale(l))) for l in layers}
            crop = style[rows.read_start:rows.read_stop, cols.read_start:cols.read_stop]
            # Sizes are static, offsets traced: the tiles of one crop shape and interior shape share one program.
            sizes = tuple((l, r1 - r0, c1 - c0) for l, ((r0, r1), (c0, c1)) in windows.items())
            offsets = {l: jnp.asarray([r0, c0], jnp.int32) for l, ((r0, _), (c0, _)) in windows.items()}
            stats = _interior_statistics(objective, params, crop, offsets, sizes)
            counts = {l: rows_n * cols_n for l, rows_n, cols_n in sizes}
            for name, entries in stats.items():
                for entry, stat in entries.items():
                    n = counts[entry]
                    if n == 0:  # a tile past the layer's last (floored) position: nothing of it here
                        continue
                    part = jax.tree.map(lambda s, n=n: np.asarray(s, np.float64) * n, stat)
                    acc = sums.setdefault(name, {}).get(entry)
                    sums[name][entry] = part if acc is None else jax.tree.map(np.add, acc, part)
    dims = {l: (h >> layer_scale(l)) * (w >> layer_scale(l)) for l in layers}
    dtype = jnp.result_type(float)
    return {name: {entry: jax.tree.map(lambda s, n=dims[entry]: jnp.asarray(s / n, dtype), total)
                   for entry, total in entries.items()}
            for name, entries in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _interior_statistics(objective: Objective, params, crop: jax.Array, offsets, sizes) -> dict[str, dict]:
    """Each style entry's statistic of the activations of ``crop`` cropped to a tile's interior: ``sizes``
    ``((layer, rows, columns), ...)`` (static), ``offsets`` ``{layer: [row, column]}`` in each layer's
    coordinates (traced)."""
    feats = objective.features(params, crop, objective.source_layers("style"))
    inner = {l: jax.lax.dynamic_slice(feats[l], (offsets[l][0], offsets[l][1], 0), (n, m, feats[l].shape[-1]))
             for l, n, m in sizes}
    return {t.name: {e: t.spec.make_target(t.entry_features(inner, e), t.entry_opts(e)) for e in t.layers}
            for t in objective.terms if t.source == "style"}


def style_statistics(objective: Objective, params, style: jax.Array, *, max_pixels: int | None = None,
                     tile: int = DEFAULT_TILE) -> dict[str, dict]:
    """One Caffe-space style image's statistics: in one forward pass (:func:`nst_jax.objective.style_statistics`)
    when it has at most ``max_pixels`` pixels (or ``max_pixels`` is None), else tile by tile
    (:func:`tiled_statistics`, tiles of ``tile`` pixels).

    Raises:
        ValueError: the image has more than ``max_pixels`` pixels and a style statistic is not a mean over
            positions (e.g. the MRF loss); the message names it and the fix (a smaller style image).
    """
    h, w = style.shape[:2]
    if max_pixels is None or h * w <= max_pixels:
        return objective_lib.style_statistics(objective, params, style)
    bad = unsupported(objective)
    if bad:
        raise ValueError(f"the style image ({w}x{h}, {h * w} pixels) is larger than max_pixels={max_pixels}, and "
                         f"style statistic {bad[0]} is not a mean over positions, so it cannot be computed tile by "
                         f"tile: use a smaller style_scale (at most {math.sqrt(max_pixels / (h * w)):.3g} times "
                         "the current one), or a Gram-type style loss of single layers.")
    return tiled_statistics(objective, params, style, tile=tile)


def style_targets(objective: Objective, params, styles: Sequence[jax.Array], blend_weights=None, *,
                  max_pixels: int | None = None, tile: int = DEFAULT_TILE) -> dict:
    """:func:`nst_jax.objective.style_targets` with each style image's statistics from :func:`style_statistics`:
    tile by tile for the images of more than ``max_pixels`` pixels."""
    stats = functools.partial(style_statistics, max_pixels=max_pixels, tile=tile)
    return objective_lib.style_targets(objective, params, styles, blend_weights, statistics=stats)
