"""Loss terms as data: a registry of statistics, and the static description of one term.

A term of the objective has two halves:

* a static, hashable :class:`Term` (its ``kind``, its ``name`` in the loss dict, the layers it reads,
  static options such as the activation shift): part of the compiled program's structure;
* two traced leaves in the targets pytree, its per-layer weights and its target statistics::

      targets[term.name] = {"target": {layer: statistic}, "weight": (len(term.layers),)}

  so that changing a weight or a target reuses the compiled step, and ``vmap`` can batch over them.

A *kind* is registered once with :func:`register`: a pure single-image, single-layer loss, how a target
is made from one image's features, and how the targets of several style images are blended. A new
statistic is one function plus one registration::

    terms.register("mean", lambda f, t, o: jnp.mean((f.mean((0, 1)) - t) ** 2),
                   make_target=lambda f, o: f.mean((0, 1)))

after which ``nst_jax.stylize(content, style, style_loss="mean")`` uses it. The features a term reads are
VGG-19 activations ``(H, W, C)`` by layer name, plus the image itself under :data:`INPUT` (Caffe space,
``(H, W, 3)``): total variation is a term like the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from nst_jax import losses, mrf

#: Name of the image itself among the features a term can read.
INPUT = "input"

#: Where a kind's target comes from: the content image, the style image(s), or nowhere (a regularizer).
SOURCES = ("content", "style", None)

Options = Mapping[str, Hashable]


def weighted_mean(stats: Sequence[Any], weights: Sequence, options: Options | None = None) -> Any:
    """``sum_i weights[i] * stats[i]`` leaf by leaf (``weights`` sum to 1): the blend of Gram-like statistics.

    Args:
        stats: one statistic (any pytree of arrays) per style image.
        weights: one blend weight per style image, already normalized.
        options: the term's options (unused).
    """
    del options
    out = jax.tree.map(lambda s: s * weights[0], stats[0])
    for s, b in zip(stats[1:], weights[1:]):
        out = jax.tree.map(lambda o, v, b=b: o + v * b, out, s)
    return out


def concatenate(stats: Sequence[Any], weights: Sequence, options: Options | None = None) -> Any:
    """Concatenation along the first axis, leaf by leaf: the blend of banks of samples (e.g. patches),
    where a weighted mean would mean nothing. The blend weights are not used."""
    del weights, options
    return jax.tree.map(lambda *s: jnp.concatenate(s, axis=0), *stats)


@dataclass(frozen=True)
class Kind:
    """A registered statistic (see :func:`register`)."""

    name: str
    loss: Callable[[jax.Array, Any, Options], jax.Array]
    make_target: Callable[[jax.Array, Options], Any] | None
    blend: Callable[[Sequence[Any], Sequence, Options], Any]
    source: str | None
    views: Callable[[jax.Array, Options], Sequence[jax.Array]] | None = None


_REGISTRY: dict[str, Kind] = {}


def register(kind: str, loss: Callable[[jax.Array, Any, Options], jax.Array],
             make_target: Callable[[jax.Array, Options], Any] | None = None,
             blend: Callable[[Sequence[Any], Sequence, Options], Any] = weighted_mean, *,
             source: str | None = "style",
             views: Callable[[jax.Array, Options], Sequence[jax.Array]] | None = None) -> Kind:
    """Registers (or replaces) a kind of loss term.

    Args:
        kind: its name (``Term.kind``; for a style statistic also a value of ``Settings.style_loss``).
        loss: ``loss(features, target, options) -> scalar``: the unweighted loss of one layer of one image
            (``features`` ``(H, W, C)``; ``target`` what ``blend`` made, or None without a source). Pure and
            traceable: it runs under ``jit``, ``grad`` and ``vmap``.
        make_target: ``make_target(features, options) -> statistic`` (any pytree of arrays), computed once
            per source image and layer, outside the optimization; None for a term without a target.
        blend: ``blend(statistics, weights, options) -> target``: the target of several style images from
            their statistics and normalized blend weights (also called with a single image, weight 1).
            :func:`weighted_mean` for statistics that average (Gram matrices, moments); :func:`concatenate`
            for banks of samples.
        source: which image the target is made from: "style", "content", or None (no target).
        views: ``views(image, options) -> images``: the images a target is made from, given one source image
            (Caffe space ``(H, W, 3)``, any sizes; e.g. rotated and scaled copies of a style image). Each goes
            through the network; their ``make_target`` statistics are blended by ``blend`` with equal weights
            into that image's statistic. None: the image itself.

    Returns:
        The registered :class:`Kind`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if (make_target is None) != (source is None):
        raise ValueError(f"kind {kind!r}: a term with a source needs make_target, and one without a source none.")
    if views is not None and source is None:
        raise ValueError(f"kind {kind!r}: views are of the source image; a term without a source has none.")
    _REGISTRY[kind] = Kind(kind, loss, make_target, blend, source, views)
    return _REGISTRY[kind]


def unregister(kind: str) -> None:
    """Removes a registered kind (no error if there is none)."""
    _REGISTRY.pop(kind, None)


def get(kind: str) -> Kind:
    """The registered kind ``kind``; a ValueError naming the registered ones if there is none."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown loss term kind {kind!r}; registered: {', '.join(sorted(_REGISTRY))} "
                         "(add one with nst_jax.terms.register).") from None


def kinds(source: str | None = "any") -> tuple[str, ...]:
    """Names of the registered kinds (those whose target comes from ``source``, unless ``"any"``)."""
    return tuple(k for k, v in _REGISTRY.items() if source == "any" or v.source == source)


@dataclass(frozen=True)
class Term:
    """The static half of a loss term; hashable, so it is part of a static ``jit`` argument.

    Attributes:
        kind: a registered kind (:func:`register`).
        name: its key in the loss dict and in the targets pytree ("content", "style", "tv", ...).
        layers: the VGG-19 layers it reads (canonical names), or :data:`INPUT` for the image itself; one
            weight and one target per layer.
        options: static options, as sorted ``(key, value)`` pairs (build with :meth:`make`).
    """

    kind: str
    name: str
    layers: tuple[str, ...]
    options: tuple[tuple[str, Hashable], ...] = ()

    @classmethod
    def make(cls, kind: str, name: str, layers: Sequence[str], **options: Hashable) -> "Term":
        """A term with keyword options (kept sorted, so equal options give equal, equally hashed terms)."""
        get(kind)
        if name == "total":
            raise ValueError("'total' is the sum of the terms; name the term otherwise.")
        return cls(kind, name, tuple(layers), tuple(sorted(options.items())))

    @property
    def opts(self) -> Options:
        """The options as a read-only mapping (what the kind's functions receive)."""
        return MappingProxyType(dict(self.options))

    @property
    def spec(self) -> Kind:
        """The registered kind."""
        return get(self.kind)

    @property
    def source(self) -> str | None:
        """Where its target comes from (its kind's source)."""
        return self.spec.source

    def replace(self, **changes) -> "Term":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------
# The built-in kinds (formulas in nst_jax.losses and nst_jax.mrf)
# --------------------------------------------------------------------------


def _mse(features, target, options):
    return losses.content_loss(features, target)


def _gram(features, options):
    return losses.gram(features, options.get("shift", 0.0), precision=options.get("precision"))


def _gram_loss(features, target, options):
    return losses.style_loss(_gram(features, options), target)


def _tv(image, target, options):
    return losses.tv_loss(image)


def _w2_loss(features, target, options):
    return losses.w2_loss(features, target, eps=options.get("eps", losses.W2_EPS),
                          iterations=options.get("iterations", losses.W2_ITERATIONS))


def _w2_blend(stats, weights, options):
    # Means and second moments average across styles; covariances do not (their means differ).
    return losses.w2_target(weighted_mean(stats, weights), eps=options.get("eps", losses.W2_EPS))


def _mrf_loss(features, target, options):
    return mrf.loss(features, target, chunk=options.get("chunk", mrf.CHUNK), precision=options.get("precision"))


def _mrf_target(features, options):
    return mrf.target(features, stride=options.get("stride", 1))


def _mrf_views(image, options):
    return mrf.views(image, options.get("rotations", (0.0,)), options.get("scales", (1.0,)))


register("mse", _mse, make_target=lambda features, options: features, source="content")
register("gram", _gram_loss, make_target=_gram)
register("w2", _w2_loss, make_target=lambda features, options: losses.moments(features), blend=_w2_blend)
register(mrf.KIND, _mrf_loss, make_target=_mrf_target, blend=concatenate, views=_mrf_views)
register("tv", _tv, source=None)
