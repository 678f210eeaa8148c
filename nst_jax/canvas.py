"""Which inputs a stylization needs, and the size of its canvas without a content image.

The content image is optional when the objective has no content term (``content_weight=0``: texture
synthesis), the style images when it has no style term (``style_weight=0``: reconstruction of the
content from its activations). Without a content image the canvas has ``image_size`` as its long side and
the ``aspect`` ratio (width / height, default 1).
"""

from __future__ import annotations

from nst_jax.config import SettingError, Settings

#: Smallest side of a canvas (:data:`nst_jax.images.MIN_SIZE`: the smallest image VGG-19 accepts).
MIN_SIDE = 16


def shape(s: Settings, long_side: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of a canvas without a content image: long side ``long_side`` (default
    ``image_size``), ``width / height = aspect``; the short side truncated toward zero, as image sizes are.

    Raises:
        SettingError: the short side would be under :data:`MIN_SIDE` pixels.
    """
    long_side = s.image_size if long_side is None else long_side
    aspect = 1.0 if s.aspect is None else s.aspect
    hw = (long_side, int(long_side * aspect)) if aspect < 1 else (int(long_side / aspect), long_side)
    if min(hw) < MIN_SIDE:
        raise SettingError("{aspect=} makes the canvas {h}x{w} px (height x width) at long side {size}; its short "
                           "side must be at least {lo} px.", "aspect", "image_size", aspect=s.aspect, h=hw[0],
                           w=hw[1], size=long_side, lo=MIN_SIDE)
    return hw


def for_size(s: Settings, h: int, w: int) -> Settings:
    """``s`` with the canvas ``h`` x ``w`` pixels (height x width): ``image_size`` the long side, ``aspect``
    width / height (aimed so that :func:`shape` gives exactly ``(h, w)`` despite its truncation).

    Raises:
        SettingError: a side is too small (``image_size``, or :data:`MIN_SIDE` for the short side).
    """
    s = s.replace(image_size=max(h, w), aspect=w / h)
    if shape(s) != (h, w):  # the short side is truncated: aim at its middle so that it comes out exact
        s = s.replace(aspect=w / (h + 0.5) if w > h else (w + 0.5) / h)
    return s


def check_inputs(s: Settings, content, style) -> None:
    """Raises a :class:`SettingError` if the given images (``None``: not given) do not fit the settings: a
    term whose image is missing, an option that needs the missing content image, ``aspect`` with one, or
    no term at all."""
    if not (s.content_weight or s.style_weight or s.tv_weight):
        raise SettingError("{content_weight}, {style_weight} and {tv_weight} are all 0: nothing to optimize.",
                           "content_weight", "style_weight", "tv_weight")
    if content is None:
        if s.content_weight:
            raise SettingError("no content image is given, but {content_weight=} asks for a content loss: pass a "
                               "content image, or set {content_weight} to 0 (texture synthesis).",
                               "content_weight", content_weight=s.content_weight)
        for name, bad in (("init", s.init == "content"), ("original_colors", s.original_colors),
                          ("color_transfer", s.color_transfer != "none")):
            if bad:
                raise SettingError("{0}={got!r} needs a content image; none is given.", name, got=getattr(s, name))
        shape(s)
    elif s.aspect is not None:
        raise SettingError("{aspect} sets the canvas of a stylization without a content image; with one, the "
                           "content image's shape is used: leave {aspect} unset.", "aspect")
    if style is None:
        if s.style_weight:
            raise SettingError("no style image is given, but {style_weight=} asks for a style loss: pass a style "
                               "image, or set {style_weight} to 0 (reconstruction from the content).",
                               "style_weight", style_weight=s.style_weight)
        if s.init == "style":
            raise SettingError("{init='style'} needs a style image; none is given.", "init")
