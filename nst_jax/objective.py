"""The style-transfer objective: static structure + traced weights and targets -> one pure loss.

``Objective`` is a frozen, hashable description of the loss: the network options and a tuple of
:class:`nst_jax.terms.Term` (which statistic, which layers). It is a static argument of the jitted
functions, so the same structure reuses the same compiled code. Everything a user sweeps is traced: the
targets pytree holds, per term, its target statistics and its weights (global weight times per-entry
weights)::

    targets = {"content": {"target": {layer: (H_l, W_l, C_l)}, "weight": (n_layers,)},
               "style":   {"target": {entry: (C_a, C_b)},      "weight": (n_entries,)},
               "tv":      {"target": {},                       "weight": (1,)}}

so changing a weight or a target never recompiles, and ``vmap`` batches over them (weight sweeps).
Targets are computed once, outside the optimization loop (:func:`make_targets`). A term whose global
weight is 0 is left out of the structure (no content image is then needed for "content", no style image
for "style"). All functions take one image; batches are ``jax.vmap`` of the same functions.

An entry is a layer, or a pair of layers ``"deep:shallow"`` (a cross-layer statistic; see
:mod:`nst_jax.layersets`) whose kind receives the features ``(F_shallow, F_deep)``.

A term with gradient masks (the option :data:`nst_jax.terms.MASK_OPTION`; Novak & Nikulin §4.1,
experimental) has a third leaf group, made from the content image by :func:`content_masks`::

    targets["style"]["mask"] = {entry: {layer: (H_l, W_l, C_l) bool}}

and its kind sees ``losses.mask_gradient(F, mask)`` for each layer of the entry: the same values, its
gradient only where the content image's activations are among the layer's largest.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import conv, layersets, losses, vgg, weighting
from nst_jax.config import Settings
from nst_jax.terms import GRAM_KINDS, INPUT, MASK_OPTION, Term

#: The terms :meth:`Objective.from_settings` builds: name -> (global weight field, per-layer weights field).
SETTINGS_WEIGHTS = {"content": ("content_weight", "content_layer_weights"),
                    "style": ("style_weight", "style_layer_weights"),
                    "tv": ("tv_weight", None)}

#: The named terms that read as 0 when absent (``Terms.content`` etc.), as the history records them.
_CLASSIC = ("content", "style", "tv")


@jax.tree_util.register_pytree_node_class
class Terms(Mapping):
    """The weighted loss terms of one image (each a scalar) by name, plus their sum ``"total"``.

    A mapping and a pytree (it travels through ``jit``/``vmap`` and optimizer states). ``terms.total``,
    ``terms.content``, ``terms.style`` and ``terms.tv`` work as attributes (the last three are 0 when the
    objective has no such term), as does any other term's name.

    ``Terms(total, content, style, tv)`` (positional) or ``Terms(total, **named)``.
    """

    __slots__ = ("_values",)

    def __init__(self, total, content=None, style=None, tv=None, /, **named):
        values = {"total": total}
        values.update((k, v) for k, v in zip(_CLASSIC, (content, style, tv)) if v is not None)
        values.update(named)
        self._values = values

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        if name in _CLASSIC:
            return jnp.zeros_like(self._values["total"])
        raise AttributeError(f"no loss term {name!r}; terms: {', '.join(self._values)}")

    def __repr__(self):
        return "Terms(" + ", ".join(f"{k}={v}" for k, v in self._values.items()) + ")"

    def tree_flatten(self):
        return tuple(self._values.values()), tuple(self._values)

    @classmethod
    def tree_unflatten(cls, names, values):
        out = object.__new__(cls)
        out._values = dict(zip(names, values))
        return out


@dataclass(frozen=True)
class Objective:
    """What the loss is made of; hashable (a static ``jit`` argument). Weights and targets are not part of it.

    Build it with :meth:`from_settings`, or directly from :class:`~nst_jax.terms.Term` objects.
    """

    terms: tuple[Term, ...]
    pooling: str = "max"
    padding: str = "zero"
    precision: str | None = None
    remat: bool = False
    dtype: str = "float32"
    conv_algorithm: str = "direct"

    @classmethod
    def from_settings(cls, s: Settings) -> "Objective":
        """The terms of ``s``: content (MSE), style (``s.style_loss``) and total variation, each only if its
        weight is not 0. A Gram style term (or Gram cube) takes the activation shift, and ``blur``/``adjacent``/
        ``power``/``content_aware`` (the content layer :data:`nst_jax.layersets.CONTENT_LAYER`) when
        ``s.style_blur``/``s.style_adjacent``/``s.activation_power``/``s.style_content_aware`` are set (left out
        otherwise, so the classic term is unchanged); any style term the gradient masks' fractions
        ``s.style_mask_fractions``."""
        found = []
        if s.content_weight:
            found.append(Term.make("mse", "content", s.content_layers))
        if s.style_weight:
            # A Gram matrix's and the MRF loss's options; other statistics take none from the settings.
            opts = dict(shift=s.activation_shift, precision=s.precision) if s.style_loss in GRAM_KINDS else {}
            if s.style_loss == "mrf":
                opts = dict(stride=s.mrf_stride, rotations=s.mrf_rotations, scales=s.mrf_scales, precision=s.precision)
            opts.update((k, True) for k, on in (("blur", s.style_blur), ("adjacent", s.style_adjacent)) if on)
            if s.activation_power != 1:
                opts["power"] = s.activation_power
            if s.style_content_aware:
                opts["content_aware"] = layersets.CONTENT_LAYER
            if s.style_mask_fractions:
                opts[MASK_OPTION] = s.style_mask_fractions
            found.append(Term.make(s.style_loss, "style", s.style_layers, **opts))
        if s.tv_weight:
            found.append(Term.make("tv", "tv", (INPUT,)))
        return cls(tuple(found), pooling=s.pooling, padding=s.padding, precision=s.precision, remat=s.remat,
                   dtype=s.dtype, conv_algorithm=conv.resolve_algorithm(s.conv_algorithm))

    def weights(self, s: Settings) -> dict[str, np.ndarray]:
        """The traced weights of each term from settings: global weight times per-layer weights (explicit, or
        from ``s.layer_weighting``: :func:`nst_jax.weighting.settings_weights`).

        Returns:
            ``{term name: (n_layers,) array}`` (float64 on the host; float32 once traced, unless x64 is on).
        """
        out = {}
        for t in self.terms:
            if t.name not in SETTINGS_WEIGHTS:
                raise ValueError(f"term {t.name!r} has no weight among the settings; pass weights explicitly.")
            scale = SETTINGS_WEIGHTS[t.name][0]
            # explicit per-layer weights, else those of s.layer_weighting (uniform: 1 each)
            per_layer = weighting.settings_weights(s, t.name, t.layers)
            out[t.name] = np.asarray([getattr(s, scale) * w for w in per_layer], np.float64)
        return out

    def term(self, name: str) -> Term:
        """The term called ``name``."""
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term {name!r}; terms: {', '.join(t.name for t in self.terms)}")

    def replace(self, **changes) -> "Objective":
        """A copy with some fields changed (e.g. another ``dtype``: the same terms, another network)."""
        return dataclasses.replace(self, **changes)

    @property
    def layers(self) -> tuple[str, ...]:
        """Every VGG-19 layer the loss reads (both members of a pair entry, and a kind's context layers), in
        network order (the input image is not a layer)."""
        return _network_layers(m for t in self.terms for l in t.layers for m in t.reads(l))

    def source_layers(self, source: str) -> tuple[str, ...]:
        """The layers (in network order; :data:`~nst_jax.terms.INPUT` too) whose targets come from ``source``
        (both members of a pair entry, and a kind's context layers)."""
        found = {m for t in self.terms if t.source == source for l in t.layers for m in t.reads(l)}
        return _network_layers(found) + ((INPUT,) if INPUT in found else ())

    def prepare(self, params):
        """``params`` with what every evaluation would otherwise recompute from them (the Winograd kernel
        transforms with ``conv_algorithm="winograd"``), computed once: see :func:`nst_jax.vgg.prepare_params`."""
        return vgg.prepare_params(params, conv_algorithm=self.conv_algorithm, layers=self.layers)

    def features(self, params, x: jax.Array, layers: Sequence[str] | None = None) -> dict[str, jax.Array]:
        """Activations of one Caffe-space image ``(H, W, 3)`` -> ``{layer: (H_l, W_l, C_l)}``, plus the image
        itself under :data:`~nst_jax.terms.INPUT`."""
        net = _network_layers(self.layers if layers is None else layers)
        out = {}
        if net:
            feats = vgg.apply(params, x[None], net, pooling=self.pooling, padding=self.padding,
                              precision=self.precision, remat=self.remat,
                              dtype=None if self.dtype == "float32" else self.dtype,
                              conv_algorithm=self.conv_algorithm)
            out = {k: v[0] for k, v in feats.items()}
        out[INPUT] = x
        return out

    def statistics(self, params, image: jax.Array, source: str) -> dict[str, dict]:
        """``{term name: {entry: statistic}}`` of one Caffe-space image for the terms whose targets come from
        ``source`` ("content" or "style"): each kind's ``make_target`` of the image's features (of a pair
        entry: ``(F_shallow, F_deep)``)."""
        chosen = [t for t in self.terms if t.source == source]
        feats = self.features(params, image, self.source_layers(source)) if chosen else {}
        return {t.name: self._term_statistics(params, image, feats, t) for t in chosen}

    def _term_statistics(self, params, image: jax.Array, feats: dict, term: Term) -> dict:
        """``{entry: statistic}`` of one term from an image and its features; a kind with ``views`` (e.g. the
        MRF loss's rotated and scaled style images) blends the statistics of each view with equal weights."""
        kind = term.spec

        def stat(features, entry):
            return kind.make_target(term.entry_features(features, entry), term.entry_opts(entry))

        if kind.views is None:
            return {l: stat(feats, l) for l in term.layers}
        read = [m for l in term.layers for m in term.reads(l)]
        views = [feats if v is image else self.features(params, v, read) for v in kind.views(image, term.opts)]
        equal = jnp.full((len(views),), 1.0 / len(views))
        return {l: kind.blend([stat(f, l) for f in views], equal, term.entry_opts(l)) for l in term.layers}

    @property
    def masked(self) -> tuple[Term, ...]:
        """The terms whose gradient is masked by the content image (option :data:`~nst_jax.terms.MASK_OPTION`)."""
        return tuple(t for t in self.terms if t.mask_fractions)

    def masks(self, params, content: jax.Array) -> dict[str, dict]:
        """``{term name: {entry: {layer: mask}}}`` of a Caffe-space content image for the :attr:`masked` terms:
        per layer of each entry (both members of a pair, not context layers), the positions and channels
        where the content image's activations are among the layer's largest, the entry's fraction of them
        (:func:`nst_jax.losses.top_fraction_mask`; Novak & Nikulin §4.1)."""
        chosen = self.masked
        feats = self.features(params, content, [m for t in chosen for l in t.layers for m in layersets.members(l)])
        return {t.name: {l: {m: losses.top_fraction_mask(feats[m], q) for m in layersets.members(l)}
                         for l, q in zip(t.layers, t.mask_fractions)}
                for t in chosen}

    def blend(self, stats: Sequence[dict], blend_weights: jax.Array) -> dict[str, dict]:
        """The style targets from the :meth:`statistics` of several style images and normalized blend weights
        (each kind's ``blend``)."""
        return {t.name: {l: t.spec.blend([s[t.name][l] for s in stats], blend_weights, t.entry_opts(l))
                         for l in t.layers}
                for t in self.terms if t.source == "style"}

    def loss(self, params, x: jax.Array, targets) -> Terms:
        """The weighted loss terms of one Caffe-space image ``x`` ``(H, W, 3)``."""
        feats = self.features(params, x)
        named = {}
        for t in self.terms:
            target, weight = targets[t.name].get("target", {}), targets[t.name]["weight"]
            masks = targets[t.name].get("mask", {})
            value = jnp.zeros((), x.dtype)
            for i, layer in enumerate(t.layers):
                seen = feats
                if layer in masks:  # the same values; the gradient only where the content's mask is true
                    seen = {**feats, **{m: losses.mask_gradient(feats[m], mask) for m, mask in masks[layer].items()}}
                per_layer = t.spec.loss(t.entry_features(seen, layer), target.get(layer), t.entry_opts(layer))
                value = value + weight[i].astype(per_layer.dtype) * per_layer
            named[t.name] = value
        values = list(named.values())
        total = functools.reduce(jnp.add, values[1:], values[0]) if values else jnp.zeros((), x.dtype)
        return Terms(total, **named)

    def value_and_grad(self, params, x: jax.Array, targets) -> tuple[Terms, jax.Array]:
        """Loss terms and the gradient of the total w.r.t. the image."""
        def total(x):
            t = self.loss(params, x, targets)
            return t.total, t
        (_, named), g = jax.value_and_grad(total, has_aux=True)(x)
        return named, g


def _network_layers(layers) -> tuple[str, ...]:
    return tuple(sorted({l for l in layers if l != INPUT}, key=vgg.layer_index))


@functools.partial(jax.jit, static_argnums=0)
def content_targets(objective: Objective, params, content: jax.Array) -> dict[str, dict]:
    """The content-source targets ``{term name: {layer: statistic}}`` of a Caffe-space content image."""
    return objective.statistics(params, content, "content")


@functools.partial(jax.jit, static_argnums=0)
def _content_masks(objective: Objective, params, content: jax.Array) -> dict[str, dict]:
    return objective.masks(params, content)


def content_masks(objective: Objective, params, content: jax.Array) -> dict[str, dict]:
    """The gradient masks ``{term name: {entry: {layer: mask}}}`` of a Caffe-space content image
    (:meth:`Objective.masks`); ``{}`` when no term is masked."""
    return _content_masks(objective, params, content) if objective.masked else {}


@functools.partial(jax.jit, static_argnums=0)
def style_statistics(objective: Objective, params, style: jax.Array) -> dict[str, dict]:
    """The statistics ``{term name: {layer: statistic}}`` of one Caffe-space style image (before blending)."""
    return objective.statistics(params, style, "style")


@functools.partial(jax.jit, static_argnums=0)
def _blend(objective: Objective, stats, blend_weights):
    return objective.blend(stats, blend_weights)


@functools.partial(jax.jit, static_argnums=0)
def loss(objective: Objective, params, x: jax.Array, targets) -> Terms:
    """Jitted :meth:`Objective.loss`."""
    return objective.loss(params, x, targets)


def style_targets(objective: Objective, params, styles: Sequence[jax.Array], blend_weights=None, *,
                  statistics: Callable[[Objective, object, jax.Array], dict] | None = None) -> dict:
    """Blended style targets ``{term name: {layer: target}}`` of Caffe-space style images (any sizes).

    Args:
        objective: the loss description.
        params: VGG-19 params.
        styles: Caffe-space style images ``(H, W, 3)``.
        blend_weights: one weight per style image (normalized here); default equal.
        statistics: ``statistics(objective, params, style)``: one style image's statistics before blending;
            default :func:`style_statistics` (one forward pass; :func:`nst_jax.tiled_targets.style_statistics`
            computes those of large images tile by tile).
    """
    if not any(t.source == "style" for t in objective.terms):
        return {}
    if not styles:
        raise ValueError("the objective has a style term but no style image was given.")
    if blend_weights is None:
        blend_weights = [1.0] * len(styles)
    if len(blend_weights) != len(styles):
        raise ValueError(f"{len(blend_weights)} style blend weights for {len(styles)} style images; "
                         "give one weight per style image.")
    total = float(sum(blend_weights))
    if total <= 0:
        raise ValueError("style blend weights must not all be 0.")
    b = jnp.asarray([float(w) / total for w in blend_weights])
    statistics = style_statistics if statistics is None else statistics
    return _blend(objective, [statistics(objective, params, s) for s in styles], b)


def with_weights(objective: Objective, weights: Settings | Mapping[str, Sequence[float]], *parts: dict,
                 masks: Mapping[str, dict] | None = None) -> dict:
    """The targets pytree: each term's target (from ``parts``, the outputs of :func:`content_targets` and
    :func:`style_targets`), weights (``weights``: settings, or ``{term name: per-layer weights}``) and, for the
    masked terms, their gradient masks (``masks``, from :func:`content_masks`).

    Raises:
        ValueError: a term without a target, without weights of the right length, or masked without masks.
    """
    if isinstance(weights, Settings):
        weights = objective.weights(weights)
    found = {name: t for part in parts for name, t in part.items()}
    out = {}
    for t in objective.terms:
        if t.source is not None and t.name not in found:
            raise ValueError(f"term {t.name!r} needs a target from a {t.source} image; none was given.")
        w = weights[t.name]
        if not isinstance(w, jax.Array):  # host numbers; a jax array (also a tracer) is used as it is
            w = jnp.asarray(np.asarray(w, np.float64).reshape(-1))
        if w.shape != (len(t.layers),):
            raise ValueError(f"term {t.name!r} reads {len(t.layers)} layer(s) but has {w.size} weight(s).")
        out[t.name] = {"target": found.get(t.name, {}), "weight": w}
        if t.mask_fractions:
            if not masks or t.name not in masks:
                raise ValueError(f"term {t.name!r} masks its gradient with masks made from the content image "
                                 "(style_mask_fractions), but no content image was given: pass one, or leave "
                                 "style_mask_fractions unset.")
            out[t.name]["mask"] = masks[t.name]
    return out


def make_targets(objective: Objective, params, content: jax.Array | None, styles: Sequence[jax.Array],
                 blend_weights=None, *, weights: Settings | Mapping[str, Sequence[float]]) -> dict:
    """Precomputes the targets pytree from a Caffe-space content image ``(H, W, 3)`` (None without a
    content term) and style images (see :func:`style_targets`), with the terms' ``weights`` (settings, or
    ``{term name: per-layer weights}``; see :func:`with_weights`)."""
    parts = [style_targets(objective, params, list(styles), blend_weights)]
    masks = None
    if content is not None:
        parts.append(content_targets(objective, params, content))
        masks = content_masks(objective, params, content)
    return with_weights(objective, weights, *parts, masks=masks)
