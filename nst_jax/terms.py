"""Loss terms as data: a registry of statistics, and the static description of one term.

A term of the objective has two halves:

* a static, hashable :class:`Term` (its ``kind``, its ``name`` in the loss dict, the layers it reads,
  static options such as the activation shift): part of the compiled program's structure;
* two traced leaves in the targets pytree, its per-layer weights and its target statistics::

      targets[term.name] = {"target": {layer: statistic}, "weight": (len(term.layers),)}

  so that changing a weight or a target reuses the compiled step, and ``vmap`` can batch over them.

A *kind* is registered once with :func:`register`: a pure single-image, single-entry loss, how a target
is made from one image's features, and how the targets of several style images are blended. A new
statistic is one function plus one registration::

    terms.register("mean", lambda f, t, o: jnp.mean((f.mean((0, 1)) - t) ** 2),
                   make_target=lambda f, o: f.mean((0, 1)))

after which ``nst_jax.stylize(content, style, style_loss="mean")`` uses it. The features a term reads are
VGG-19 activations ``(H, W, C)`` by layer name, plus the image itself under :data:`INPUT` (Caffe space,
``(H, W, 3)``): total variation is a term like the others.

An entry of a term's ``layers`` is one layer, or a pair of layers ``"deep:shallow"`` (see
:mod:`nst_jax.layersets`) for the kinds registered with ``pairs=True`` (``"gram"``: cross-layer Gram matrices,
Novak & Nikulin): such a kind receives the tuple ``(F_shallow, F_deep)`` as its features. Every kind's
functions find the entry they are evaluated on in their options, under ``"layer"``. A kind registered with
``context`` also reads layers outside its entries (content-aware Gram matrices read the content layer): their
features follow the entry's in the tuple it receives (:meth:`Term.reads`).

A style term may mask its gradient with masks made from the content image (Novak & Nikulin §4.1,
experimental): the term option :data:`MASK_OPTION` holds one fraction per entry; the objective makes the
masks once per content image (``targets[term.name]["mask"]``, traced leaves like the targets) and feeds the
kind ``mask_gradient(F, mask)`` instead of each layer's ``F``, whatever the kind (see :mod:`nst_jax.objective`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from nst_jax import layersets, losses, mrf

#: Name of the image itself among the features a term can read.
INPUT = "input"

#: Where a kind's target comes from: the content image, the style image(s), or nowhere (a regularizer).
SOURCES = ("content", "style", None)

#: The option under which a kind's functions receive the entry (layer or pair) they are evaluated on.
ENTRY_OPTION = "layer"

#: The built-in style kinds of Gram-like statistics: they take the options shift, precision and power.
GRAM_KINDS = ("gram", "gram_cube")

#: The term option of gradient masks from the content image: one fraction in (0, 1] per entry, the share of a
#: layer's largest content activations whose positions pass the term's gradient (Novak & Nikulin §4.1).
MASK_OPTION = "mask"

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
    pairs: bool = False
    context: Callable[[Options], tuple[str, ...]] | None = None
    position_mean: bool | Callable[[Options], bool] = False

    def is_position_mean(self, options: Options) -> bool:
        """Whether ``make_target`` of one entry (its options, the entry under :data:`ENTRY_OPTION`) is a mean over
        the positions of the features of a per-position function of them (see :func:`register`)."""
        return bool(self.position_mean(options) if callable(self.position_mean) else self.position_mean)


_REGISTRY: dict[str, Kind] = {}


def register(kind: str, loss: Callable[[jax.Array, Any, Options], jax.Array],
             make_target: Callable[[jax.Array, Options], Any] | None = None,
             blend: Callable[[Sequence[Any], Sequence, Options], Any] = weighted_mean, *,
             source: str | None = "style",
             views: Callable[[jax.Array, Options], Sequence[jax.Array]] | None = None, pairs: bool = False,
             context: Callable[[Options], tuple[str, ...]] | None = None,
             position_mean: bool | Callable[[Options], bool] = False) -> Kind:
    """Registers (or replaces) a kind of loss term.

    Args:
        kind: its name (``Term.kind``; for a style statistic also a value of ``Settings.style_loss``).
        loss: ``loss(features, target, options) -> scalar``: the unweighted loss of one entry of one image
            (``features`` ``(H, W, C)``, or ``(F_shallow, F_deep)`` for a pair entry; ``target`` what ``blend``
            made, or None without a source; ``options`` the term's, plus the entry under
            :data:`ENTRY_OPTION`). Pure and traceable: it runs under ``jit``, ``grad`` and ``vmap``.
        make_target: ``make_target(features, options) -> statistic`` (any pytree of arrays), computed once
            per source image and entry, outside the optimization; None for a term without a target.
        blend: ``blend(statistics, weights, options) -> target``: the target of several style images from
            their statistics and normalized blend weights (also called with a single image, weight 1).
            :func:`weighted_mean` for statistics that average (Gram matrices, moments); :func:`concatenate`
            for banks of samples.
        source: which image the target is made from: "style", "content", or None (no target).
        views: ``views(image, options) -> images``: the images a target is made from, given one source image
            (Caffe space ``(H, W, 3)``, any sizes; e.g. rotated and scaled copies of a style image). Each goes
            through the network; their ``make_target`` statistics are blended by ``blend`` with equal weights
            into that image's statistic. None: the image itself.
        pairs: whether the kind reads pair entries ``"deep:shallow"`` (cross-layer statistics); kinds without
            refuse them when a term is made.
        context: ``context(options) -> layers`` that every entry also reads besides its own (e.g. the content
            layer of content-aware Gram matrices); when it names any, the kind receives the tuple of the entry's
            features (one array, or the pair's two) followed by theirs. None: no such layers.
        position_mean: whether ``make_target`` is a mean over positions: ``mean_p g(F[p])`` for some
            per-position ``g`` (a pytree of such means; Gram matrices, moments), so that the statistic of an
            image is the position-count-weighted mean of those of its tiles (:mod:`nst_jax.tiled_targets`
            computes the targets of large style images so). A bool, or ``position_mean(options) -> bool`` for a
            kind that is one only with some options (an entry's options, the entry under :data:`ENTRY_OPTION`).

    Returns:
        The registered :class:`Kind`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    if (make_target is None) != (source is None):
        raise ValueError(f"kind {kind!r}: a term with a source needs make_target, and one without a source none.")
    if views is not None and source is None:
        raise ValueError(f"kind {kind!r}: views are of the source image; a term without a source has none.")
    if position_mean and source is None:
        raise ValueError(f"kind {kind!r}: position_mean describes make_target; a term without a source has none.")
    _REGISTRY[kind] = Kind(kind, loss, make_target, blend, source, views, bool(pairs), context, position_mean)
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
        layers: its entries: VGG-19 layers (canonical names), pairs of layers ``"deep:shallow"`` (kinds
            registered with ``pairs=True``; see :mod:`nst_jax.layersets`), or :data:`INPUT` for the image
            itself; one weight and one target per entry.
        options: static options, as sorted ``(key, value)`` pairs (build with :meth:`make`).
    """

    kind: str
    name: str
    layers: tuple[str, ...]
    options: tuple[tuple[str, Hashable], ...] = ()

    @classmethod
    def make(cls, kind: str, name: str, layers: Sequence[str], **options: Hashable) -> "Term":
        """A term with keyword options (kept sorted, so equal options give equal, equally hashed terms).

        Pair entries are canonicalized (deeper layer first, see :func:`nst_jax.layersets.canonical_entry`).

        Raises:
            ValueError: an unknown kind, the name "total", a reserved option, a pair entry for a kind that
                reads single layers, or mask fractions (:data:`MASK_OPTION`) not one per entry.
        """
        spec = get(kind)
        if name == "total":
            raise ValueError("'total' is the sum of the terms; name the term otherwise.")
        if ENTRY_OPTION in options:
            raise ValueError(f"option {ENTRY_OPTION!r} is reserved (the entry a kind is evaluated on); "
                             "name the option otherwise.")
        if isinstance(layers, str):
            layers = (layers,)
        layers = tuple(layersets.canonical_entry(l) if layersets.is_pair(l) else l for l in layers)
        pairs = [l for l in layers if layersets.is_pair(l)]
        if pairs and not spec.pairs:
            raise ValueError(f"loss term kind {kind!r} reads single layers, not pairs such as {pairs[0]!r}; "
                             "use single layers, or a kind registered with pairs=True such as 'gram'.")
        fractions = options.get(MASK_OPTION)
        if fractions is not None and len(fractions) != len(layers):
            raise ValueError(f"option {MASK_OPTION!r} has {len(fractions)} fraction(s) for {len(layers)} entries; "
                             "give one per entry.")
        return cls(kind, name, layers, tuple(sorted(options.items())))

    @property
    def opts(self) -> Options:
        """The options as a read-only mapping (the kind's functions receive them with the entry added:
        :meth:`entry_opts`)."""
        return MappingProxyType(dict(self.options))

    def entry_opts(self, entry: str) -> Options:
        """The options the kind's functions receive for one entry: :attr:`opts` plus the entry under
        :data:`ENTRY_OPTION`."""
        return MappingProxyType({**dict(self.options), ENTRY_OPTION: entry})

    @property
    def context(self) -> tuple[str, ...]:
        """The layers every entry reads besides its own (its kind's ``context`` of the options; usually none)."""
        context = self.spec.context
        return tuple(context(self.opts)) if context else ()

    def reads(self, entry: str) -> tuple[str, ...]:
        """The layers one entry reads: its members (:func:`nst_jax.layersets.members`), then :attr:`context`."""
        return layersets.members(entry) + self.context

    def entry_features(self, features: Mapping[str, Any], entry: str) -> Any:
        """What the kind receives for ``entry`` from ``{layer: activations}``: the layer's activations, the
        pair ``(F_shallow, F_deep)``, or with context layers the tuple of everything :meth:`reads` names."""
        if not self.context:
            return layersets.entry_features(features, entry)
        return tuple(features[layer] for layer in self.reads(entry))

    @property
    def mask_fractions(self) -> tuple[float, ...] | None:
        """The gradient masks' fractions, one per entry (option :data:`MASK_OPTION`), or None: no mask."""
        return self.opts.get(MASK_OPTION)

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
# The built-in kinds (formulas in nst_jax.losses and nst_jax.mrf). The options of "gram": shift (the activation
# shift), precision, blur (bool: blur a pair's deeper map |l - k| times, Novak & Nikulin §3.6), adjacent (bool:
# one Gram per neighbour offset, §4.3), power (amplified activations, §4.2) and content_aware (a content layer:
# content-aware Gram matrices, §4.4, single layers only); it reads single layers and pairs. "gram_cube" (§4.5)
# takes shift, precision and power.
# --------------------------------------------------------------------------


def _mse(features, target, options):
    return losses.content_loss(features, target)


def _gram(features, options):
    shift, precision, power = options.get("shift", 0.0), options.get("precision"), options.get("power", 1.0)
    if options.get("content_aware"):
        if len(features) != 2:
            raise ValueError(f"content-aware Gram matrices read single layers, not the pair "
                             f"{options[ENTRY_OPTION]!r}.")
        return losses.content_aware_gram(*features, shift, precision=precision, power=power)
    # A single layer is the pair of the layer with itself (the same array: the classic Gram, computed as ever).
    shallow, deep = features if isinstance(features, tuple) else (features, features)
    blur = layersets.blur_count(options[ENTRY_OPTION]) if options.get("blur") else 0
    return losses.cross_gram(shallow, deep, shift, precision=precision, blur=blur,
                             adjacent=options.get("adjacent", False), power=power)


def _gram_position_mean(options):
    # A single layer's (amplified, shifted) F^T F / (C H W); pairs resize the deeper map to the shallower one,
    # blurs and adjacent offsets read neighbours, content-aware Grams resize the content layer: not per position.
    return not (layersets.is_pair(options[ENTRY_OPTION]) or options.get("blur") or options.get("adjacent")
                or options.get("content_aware"))


def _gram_context(options):
    return (options["content_aware"],) if options.get("content_aware") else ()


def _gram_cube(features, options):
    return losses.gram_cube(features, options.get("shift", 0.0), precision=options.get("precision"),
                            power=options.get("power", 1.0))


def _gram_cube_loss(features, target, options):
    return losses.style_loss(_gram_cube(features, options), target)


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
register("gram", _gram_loss, make_target=_gram, pairs=True, context=_gram_context, position_mean=_gram_position_mean)
register("gram_cube", _gram_cube_loss, make_target=_gram_cube, position_mean=True)
register("w2", _w2_loss, make_target=lambda features, options: losses.moments(features), blend=_w2_blend,
         position_mean=True)
register(mrf.KIND, _mrf_loss, make_target=_mrf_target, blend=concatenate, views=_mrf_views)
register("tv", _tv, source=None)
