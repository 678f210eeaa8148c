"""The objective of a finished image: ``image_loss(image, content, style, **settings) -> {term: value}``.

:func:`nst_jax.stylize` records the loss of its iterates; comparing two outputs made differently (tiled and
untiled, two solvers, an outside program's) needs the loss of any image under one objective: the one
``stylize`` with the same settings optimizes at its last stage (full size), evaluated on the whole image in one
pass. The style targets of a style image larger than ``max_style_pixels`` are computed tile by tile, exactly
(:mod:`nst_jax.tiled_targets`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import api, canvas, images, tiled_targets, vgg
from nst_jax import objective as objective_lib
from nst_jax.config import Settings
from nst_jax.objective import Objective

__all__ = ["image_loss"]


def image_loss(image, content, style, settings: Settings | None = None, *, max_style_pixels: int | None = None,
               **overrides) -> dict[str, float]:
    """The weighted loss terms (and their sum, ``"total"``) of an RGB image under the objective that
    :func:`nst_jax.stylize` with the same settings optimizes at full size.

    The content image is resized to ``image_size`` and the style images prepared as ``stylize`` prepares them
    (``style_scale``, ``style_tile``, ``color_transfer``); the image must have the resized content's shape.

    Args:
        image: the image to evaluate: a path, a ``PIL.Image`` or an ``(H, W, 3)`` float array in [0, 1] (e.g.
            ``Result.array``).
        content: the content image (same kinds), or None without a content term.
        style: one style image or a list of them, or None without a style term.
        settings: a :class:`~nst_jax.config.Settings`; ``overrides`` (field names) are applied on top.
        max_style_pixels: style images with more pixels have their targets computed tile by tile
            (:func:`nst_jax.tiled_targets.style_statistics`); None: always in one pass.

    Returns:
        ``{"total": ..., "content": ..., "style": ..., "tv": ...}`` (the terms of the objective) as floats.

    Raises:
        ValueError: a bad setting or input, or an image whose shape is not the content's, naming it.
    """
    s = api.make_settings(settings, **overrides)
    canvas.check_inputs(s, content, style)
    img = images.load_image(image, label="image to evaluate")
    content_img = None
    if content is not None:
        content_img = images.resize_long_side(images.load_image(content, label="content image"), s.image_size,
                                              label="content image")
        if img.shape[:2] != content_img.shape[:2]:
            h, w = content_img.shape[:2]
            raise ValueError(f"the image to evaluate is {img.shape[1]}x{img.shape[0]}, but the content image at "
                             f"image_size={s.image_size} is {w}x{h}: pass an image of that size (an output of the "
                             "same image_size), or the image_size it was made at.")
    styles = api.prepare_styles(style, s, content_img)
    obj = Objective.from_settings(s)
    params = obj.prepare(api.get_params(s.weights))
    parts = [tiled_targets.style_targets(obj, params, [vgg.preprocess(jnp.asarray(st)) for st in styles],
                                         s.style_blend_weights, max_pixels=max_style_pixels)]
    masks = None
    if content_img is not None:
        caffe_content = vgg.preprocess(jnp.asarray(content_img))
        parts.append(objective_lib.content_targets(obj, params, caffe_content))
        masks = objective_lib.content_masks(obj, params, caffe_content)
    targets = objective_lib.with_weights(obj, s, *parts, masks=masks)
    terms = objective_lib.loss(obj, params, vgg.preprocess(jnp.asarray(img, jnp.float32)), targets)
    return {name: float(np.asarray(value)) for name, value in jax.device_get(dict(terms)).items()}
