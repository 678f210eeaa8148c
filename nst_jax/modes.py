"""Practitioners' studies as one call each, thin over :func:`nst_jax.stylize`.

* :func:`reconstruct`: an image rebuilt from noise out of one layer's activations of a content image (no
  style term), to see what a layer keeps (Gatys et al., Fig. 1; Mahendran & Vedaldi).
* :func:`texture`: a texture synthesized from a style image's statistics (no content term; Gatys et al.,
  "Texture synthesis using convolutional neural networks").

A ``conv`` name reads the convolution's output *before* its ReLU, a ``relu`` name (or the Keras alias
``blockB_convI``, whose output includes the ReLU) the output after it: the network exposes both.
"""

from __future__ import annotations

import os

from nst_jax import api, canvas, vgg
from nst_jax.config import Settings

#: The layers a reconstruction can read: the 16 convolutions, before (``conv``) and after (``relu``) the ReLU.
RECONSTRUCTION_LAYERS: tuple[str, ...] = tuple(name for name in vgg.LAYERS if not name.startswith("pool"))


def reconstruction_layer(layer: str) -> str:
    """The canonical name of a layer to reconstruct from: one of :data:`RECONSTRUCTION_LAYERS`.

    Raises:
        ValueError: not a conv layer of VGG-19 (pooling layers included); the message lists the valid ones.
    """
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a VGG-19 layer name such as 'conv4_2' or 'relu4_2', got {layer!r}.")
    name = vgg.canonical_layer(layer.strip())
    if name not in RECONSTRUCTION_LAYERS:
        raise ValueError(f"layer {layer!r} is not a convolution layer: reconstruct from one of "
                         f"{', '.join(RECONSTRUCTION_LAYERS)} (or a Keras alias such as 'block4_conv2').")
    return name


def _settings(settings: Settings | None, defaults: dict, fixed: dict, overrides: dict, what: str) -> Settings:
    """``settings`` with ``overrides`` on top, ``defaults`` for the fields neither gives, and ``fixed`` (which
    neither may give)."""
    clash = sorted(set(fixed) & set(overrides))
    if clash:
        raise TypeError(f"{what} sets {', '.join(clash)} itself; do not pass {' or '.join(clash)}.")
    given = set(overrides) | (settings.explicit if settings is not None else set())
    return api.make_settings(settings, **{k: v for k, v in defaults.items() if k not in given}, **overrides,
                             **fixed)


def reconstruct(content, layer: str, settings: Settings | None = None, *, output: str | os.PathLike | None = None,
                **overrides) -> api.Result:
    """Reconstructs ``content`` from noise out of the activations of one layer (no style term).

    Args:
        content: the content image (path, ``PIL.Image`` or ``(H, W, 3)`` float array in [0, 1]).
        layer: one of the 16 conv layers: ``conv4_2`` (before the ReLU), ``relu4_2`` or ``block4_conv2``
            (after it).
        settings: a :class:`Settings`; ``overrides`` (field names) on top, as :func:`nst_jax.stylize`.
        output: where to write the result (see :func:`nst_jax.stylize`).
        **overrides: settings, and :func:`nst_jax.stylize`'s keyword arguments (``callback``, ``progress``,
            ...). Unless given: ``init="random"``, ``tv_weight=0`` (the reconstruction unregularized).

    Returns:
        The :class:`~nst_jax.api.Result` of ``stylize(content, None, content_layers=(layer,), style_weight=0)``.

    Raises:
        ValueError: not a conv layer, or a bad setting or input.
        TypeError: ``content_layers`` or ``style_weight`` given (the reconstruction sets them).
    """
    name = reconstruction_layer(layer)
    kwargs, overrides = _split(overrides)
    s = _settings(settings, {"init": "random", "tv_weight": 0.0}, {"content_layers": (name,), "style_weight": 0.0},
                  overrides, "reconstruct")
    return api.stylize(content, None, s, output=output, **kwargs)


def texture(style, *, layers=None, size: tuple[int, int] | None = None, settings: Settings | None = None,
            output: str | os.PathLike | None = None, **overrides) -> api.Result:
    """Synthesizes a texture from the statistics of ``style`` (no content image, ``content_weight=0``).

    Args:
        style: a style image, or a list of them (blended by ``style_blend_weights``).
        layers: the style layers (names, pairs or sets, as ``style_layers``; a comma-separated string too);
            default the settings'.
        size: ``(height, width)`` of the texture in pixels; default ``image_size`` by ``aspect``.
        settings: a :class:`Settings`; ``overrides`` on top.
        output: where to write the result (see :func:`nst_jax.stylize`).
        **overrides: settings, and :func:`nst_jax.stylize`'s keyword arguments.

    Returns:
        The :class:`~nst_jax.api.Result` of ``stylize(None, style, content_weight=0)``.

    Raises:
        ValueError: a bad size, setting or input.
        TypeError: ``content_weight`` given, or ``size`` with ``image_size`` or ``aspect``.
    """
    kwargs, overrides = _split(overrides)
    if layers is not None:
        if "style_layers" in overrides:
            raise TypeError("texture: give layers or style_layers, not both.")
        overrides["style_layers"] = layers
    s = _settings(settings, {}, {"content_weight": 0.0}, overrides, "texture")
    if size is not None:
        given = sorted({"image_size", "aspect"} & set(overrides))
        if given:
            raise TypeError(f"texture: size replaces {' and '.join(given)}: give size or {' and '.join(given)}.")
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be (height, width) in pixels, got {size!r}.") from None
        if min(h, w) < canvas.MIN_SIDE:
            raise ValueError(f"size must be at least {canvas.MIN_SIDE} px on each side, got {size!r}.")
        s = canvas.for_size(s, h, w)
    return api.stylize(None, style, s, output=output, **kwargs)


#: :func:`nst_jax.stylize`'s keyword arguments other than the settings.
_STYLIZE_KWARGS = ("overwrite", "callback", "progress", "hook", "preview_every", "image_callback")


def _split(overrides: dict) -> tuple[dict, dict]:
    """``(stylize's keyword arguments, settings)`` of ``overrides``."""
    return ({k: v for k, v in overrides.items() if k in _STYLIZE_KWARGS},
            {k: v for k, v in overrides.items() if k not in _STYLIZE_KWARGS})


__all__ = ["RECONSTRUCTION_LAYERS", "reconstruct", "reconstruction_layer", "texture"]
