"""Layer entries of loss terms: single layers, pairs of layers, and the named sets of Novak & Nikulin.

An *entry* of a term's ``layers`` is either one VGG-19 layer (``"relu3_1"``) or a pair ``"deep:shallow"``
(``"relu2_1:relu1_2"``): a cross-layer statistic of two layers (Novak & Nikulin §3.4), which a kind
registered with ``pairs=True`` receives as the tuple ``(F_shallow, F_deep)``. Pairs are written in either
order and with Keras aliases; :func:`canonical_entry` stores them deeper member first. A pair of a layer with
itself is the plain entry.

Besides names and pairs, a list of entries may name whole sets (:data:`SETS`):

* ``"all"``: the ReLU outputs of the 16 conv layers, shallow to deep (:data:`ALL_CONV`; §3.2);
* ``"chain"``: the 15 links ``l:l-1`` between neighbouring conv layers, in network order (§3.5);
* ``"all-to-content"``: every conv layer paired with the content layer relu4_2, the roles swapped for the
  deeper layers, relu4_2 with itself a plain entry (§3.4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nst_jax import vgg

#: The ReLU outputs of VGG-19's 16 conv layers, shallow to deep (Novak & Nikulin number them 1..16).
ALL_CONV: tuple[str, ...] = tuple(name.replace("conv", "relu") for name in vgg.CONV_LAYERS)

#: What separates the two layers of a pair entry.
SEPARATOR = ":"

#: The layer the ``"all-to-content"`` set pairs every conv layer with (Gatys et al.'s content layer).
CONTENT_LAYER = "relu4_2"

#: Names of layer sets accepted among the entries (see the module docstring).
SETS = ("all", "chain", "all-to-content")


def is_pair(entry: str) -> bool:
    """Whether an entry is a pair of layers (``"relu2_1:relu1_2"``)."""
    return SEPARATOR in entry


def pair(a: str, b: str) -> str:
    """The canonical entry of layers ``a`` and ``b`` (either order, Keras aliases accepted): ``"deep:shallow"``,
    or the plain layer when both are the same layer."""
    a, b = vgg.canonical_layer(a.strip()), vgg.canonical_layer(b.strip())
    if a == b:
        return a
    deep, shallow = sorted((a, b), key=vgg.layer_index, reverse=True)
    return f"{deep}{SEPARATOR}{shallow}"


def members(entry: str) -> tuple[str, ...]:
    """The layers an entry reads: ``(shallow, deep)`` for a canonical pair (the order a kind receives their
    features in), ``(entry,)`` for a single layer."""
    if not is_pair(entry):
        return (entry,)
    deep, shallow = entry.split(SEPARATOR)
    return shallow, deep


def depth(entry: str) -> int:
    """Where an entry sits in the network: the position (:func:`nst_jax.vgg.layer_index`) of its deeper member;
    the key that orders entries by depth."""
    return vgg.layer_index(members(entry)[-1])


def entry_features(features: Mapping[str, Any], entry: str) -> Any:
    """What a kind receives for an entry from ``{layer: activations}``: ``(F_shallow, F_deep)`` for a pair,
    the layer's activations otherwise."""
    if is_pair(entry):
        return tuple(features[m] for m in members(entry))
    return features[entry]


def conv_index(layer: str) -> int:
    """The 1-based index (1..16) among VGG-19's conv layers of a conv layer or its ReLU (Novak & Nikulin's
    numbering, which counts the blurs of a pair).

    Raises:
        ValueError: a pooling layer (or anything else without a conv index).
    """
    name = vgg.canonical_layer(layer).replace("relu", "conv")
    if name not in vgg.CONV_LAYERS:
        raise ValueError(f"layer {layer!r} is not a conv layer or its ReLU, so it has no index among the 16 conv "
                         "layers; blurred statistics need pairs of conv/relu layers, e.g. 'relu2_1:relu1_2'.")
    return vgg.CONV_LAYERS.index(name) + 1


def channels(layer: str) -> int:
    """The number of channels of a VGG-19 layer's output (a conv layer, its ReLU, or a pooling layer)."""
    name = vgg.canonical_layer(layer)
    if name.startswith("pool"):
        return vgg.BLOCKS[int(name[4]) - 1][2]
    return vgg.CONV_CHANNELS[name.replace("relu", "conv")][1]


def blur_count(entry: str) -> int:
    """How many times a blurred statistic blurs the deeper map of an entry: ``|l - k|`` for a pair of conv
    layers l and k (1 for a chain link, §3.6), 0 for a single layer."""
    if not is_pair(entry):
        return 0
    shallow, deep = members(entry)
    return abs(conv_index(deep) - conv_index(shallow))


def chain_pairs() -> tuple[str, ...]:
    """The 15 links of the correlation chain (§3.5), ``relu1_2:relu1_1`` to ``relu5_4:relu5_3``."""
    return tuple(pair(deep, shallow) for shallow, deep in zip(ALL_CONV, ALL_CONV[1:]))


def all_to_content_pairs(content: str = CONTENT_LAYER) -> tuple[str, ...]:
    """Every conv layer paired with ``content`` (§3.4), shallow to deep; ``content`` with itself is the plain
    entry."""
    return tuple(pair(layer, content) for layer in ALL_CONV)


_EXPANSIONS = {"all": lambda: ALL_CONV, "chain": chain_pairs, "all-to-content": all_to_content_pairs}


def canonical_entry(entry: str) -> str:
    """The canonical form of one entry (a layer or a pair; not a set name).

    Raises:
        ValueError: an unknown layer, or a pair without exactly two layers.
    """
    entry = entry.strip()
    if not is_pair(entry):
        return vgg.canonical_layer(entry)
    parts = entry.split(SEPARATOR)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"pair entry {entry!r} must name two VGG-19 layers, e.g. 'relu2_1:relu1_2'.")
    return pair(*parts)


def canonical_entries(entries: str | Iterable[str]) -> tuple[str, ...]:
    """Canonicalizes entries (a comma-separated string or a list): set names expanded, pairs written deeper member
    first, Keras aliases resolved; order kept, duplicates dropped.

    Raises:
        ValueError: an unknown layer or set, a malformed pair, or no entry at all.
    """
    if isinstance(entries, str):
        entries = entries.split(",")
    out: list[str] = []
    for item in entries:
        item = item.strip()
        if not item:
            continue
        for entry in _EXPANSIONS[item]() if item in _EXPANSIONS else (_entry_or_error(item),):
            if entry not in out:
                out.append(entry)
    if not out:
        raise ValueError("no layer given: name at least one VGG-19 layer, e.g. 'relu4_2'.")
    return tuple(out)


def _entry_or_error(item: str) -> str:
    try:
        return canonical_entry(item)
    except ValueError as e:
        raise ValueError(f"{e} Pairs of layers are written 'relu2_1:relu1_2'; layer sets: "
                         f"{', '.join(map(repr, SETS))}.") from None
