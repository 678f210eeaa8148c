"""The style-transfer objective: settings + precomputed targets -> one pure loss.

``Objective`` is a frozen, hashable description of the loss (layers, weights,
network options). It is a static argument of the jitted functions below, so
the same settings reuse the same compiled code. Targets (content activations
and style Gram matrices) are computed once, outside the optimization loop, and
passed in as a pytree::

    targets = {"content": {layer: (H_l, W_l, C_l)}, "style": {layer: (C_l, C_l)}}

All functions take one image; batches are ``jax.vmap`` of the same functions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nst_jax import conv, losses, vgg
from nst_jax.config import Settings


class Terms(NamedTuple):
    """The weighted loss terms of one image (each a scalar)."""

    total: jax.Array
    content: jax.Array
    style: jax.Array
    tv: jax.Array


@dataclass(frozen=True)
class Objective:
    """What the loss is made of; hashable (a static ``jit`` argument).

    Build it with :meth:`from_settings`.
    """

    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    content_weights: tuple[float, ...]  # content_weight * per-layer weight
    style_weights: tuple[float, ...]  # style_weight * per-layer weight
    tv_weight: float
    activation_shift: float = 0.0
    pooling: str = "max"
    padding: str = "zero"
    precision: str | None = None
    remat: bool = False
    dtype: str = "float32"
    conv_algorithm: str = "direct"

    @classmethod
    def from_settings(cls, s: Settings) -> "Objective":
        cw = s.content_layer_weights or (1.0,) * len(s.content_layers)
        sw = s.style_layer_weights or (1.0,) * len(s.style_layers)
        return cls(
            content_layers=s.content_layers,
            style_layers=s.style_layers,
            content_weights=tuple(s.content_weight * w for w in cw),
            style_weights=tuple(s.style_weight * w for w in sw),
            tv_weight=s.tv_weight,
            activation_shift=s.activation_shift,
            pooling=s.pooling,
            padding=s.padding,
            precision=s.precision,
            remat=s.remat,
            dtype=s.dtype,
            conv_algorithm=conv.resolve_algorithm(s.conv_algorithm),
        )

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the loss reads, in network order."""
        return tuple(sorted(set(self.content_layers) | set(self.style_layers), key=vgg.layer_index))

    def prepare(self, params):
        """``params`` with what every evaluation would otherwise recompute from them (the Winograd kernel
        transforms with ``conv_algorithm="winograd"``), computed once: see :func:`nst_jax.vgg.prepare_params`."""
        return vgg.prepare_params(params, conv_algorithm=self.conv_algorithm, layers=self.layers)

    def features(self, params, x: jax.Array, layers: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
        """Activations of one Caffe-space image ``(H, W, 3)`` -> ``{layer: (H_l, W_l, C_l)}``."""
        feats = vgg.apply(params, x[None], layers or self.layers, pooling=self.pooling, padding=self.padding,
                          precision=self.precision, remat=self.remat,
                          dtype=None if self.dtype == "float32" else self.dtype,
                          conv_algorithm=self.conv_algorithm)
        return {k: v[0] for k, v in feats.items()}

    def gram(self, f: jax.Array) -> jax.Array:
        return losses.gram(f, self.activation_shift, precision=vgg._PRECISIONS[self.precision])

    def content_targets(self, params, content: jax.Array) -> dict[str, jax.Array]:
        """Content activations of a Caffe-space content image."""
        return self.features(params, content, self.content_layers)

    def style_grams(self, params, style: jax.Array) -> dict[str, jax.Array]:
        """Gram matrices of one Caffe-space style image at the style layers."""
        feats = self.features(params, style, self.style_layers)
        return {k: self.gram(v) for k, v in feats.items()}

    def loss(self, params, x: jax.Array, targets) -> Terms:
        """The weighted loss terms of one Caffe-space image ``x`` ``(H, W, 3)``."""
        feats = self.features(params, x)
        content = sum((w * losses.content_loss(feats[l], targets["content"][l])
                       for l, w in zip(self.content_layers, self.content_weights)), jnp.zeros((), x.dtype))
        style = sum((w * losses.style_loss(self.gram(feats[l]), targets["style"][l])
                     for l, w in zip(self.style_layers, self.style_weights)), jnp.zeros((), x.dtype))
        tv = self.tv_weight * losses.tv_loss(x) if self.tv_weight else jnp.zeros((), x.dtype)
        return Terms(content + style + tv, content, style, tv)

    def value_and_grad(self, params, x: jax.Array, targets) -> tuple[Terms, jax.Array]:
        """Loss terms and the gradient of the total w.r.t. the image."""
        def total(x):
            t = self.loss(params, x, targets)
            return t.total, t
        (_, terms), g = jax.value_and_grad(total, has_aux=True)(x)
        return terms, g


@functools.partial(jax.jit, static_argnums=0)
def content_targets(objective: Objective, params, content: jax.Array):
    """Jitted :meth:`Objective.content_targets`."""
    return objective.content_targets(params, content)


@functools.partial(jax.jit, static_argnums=0)
def style_grams(objective: Objective, params, style: jax.Array):
    """Jitted :meth:`Objective.style_grams`."""
    return objective.style_grams(params, style)


@functools.partial(jax.jit, static_argnums=0)
def loss(objective: Objective, params, x: jax.Array, targets) -> Terms:
    """Jitted :meth:`Objective.loss`."""
    return objective.loss(params, x, targets)


def style_targets(objective: Objective, params, styles: list[jax.Array], blend_weights=None) -> dict:
    """Blended style Gram matrices ``{layer: (C, C)}`` of Caffe-space style images (any sizes).

    Args:
        objective: the loss description.
        params: VGG-19 params.
        styles: Caffe-space style images ``(H, W, 3)``.
        blend_weights: one weight per style image (normalized here); default equal.
    """
    if blend_weights is None:
        blend_weights = [1.0] * len(styles)
    if len(blend_weights) != len(styles):
        raise ValueError(f"{len(blend_weights)} style blend weights for {len(styles)} style images; "
                         "give one weight per style image.")
    total = float(sum(blend_weights))
    if total <= 0:
        raise ValueError("style blend weights must not all be 0.")
    b = [float(w) / total for w in blend_weights]
    grams = [style_grams(objective, params, s) for s in styles]
    return {l: losses.blend_grams([g[l] for g in grams], b) for l in objective.style_layers}


def make_targets(objective: Objective, params, content: jax.Array, styles: list[jax.Array],
                 blend_weights=None) -> dict:
    """Precomputes the targets pytree from a Caffe-space content image ``(H, W, 3)`` and style images
    (see :func:`style_targets`)."""
    return {"content": content_targets(objective, params, content),
            "style": style_targets(objective, params, styles, blend_weights)}
