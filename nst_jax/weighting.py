"""Per-layer weights of the content and style terms: uniform, or Novak & Nikulin's geometric weighting (§3.1).

``layer_weighting="uniform"`` (the default, neural-style's) weighs every content layer and every style entry 1.
``layer_weighting="geometric"`` orders a family's entries (the content layers, or the style entries) by depth
and, with ``d`` the 1-based depth among them and ``D`` their number, weighs

* style entries ``2^(D - d)``: halved at each deeper entry (colours and simple patterns sit in the bottom
  layers);
* content layers ``2^d``: doubled at each deeper layer (content sits in the upper layers);

each divided by its family's sum, as the code the paper extended (kaishengtai/neuralart) divides its layer
weights. With all 16 conv layers that is ``2^15 .. 2^0`` over ``2^16 - 1`` and ``2^1 .. 2^16`` over
``2^17 - 2``. The paper's rule for cross-layer style terms is lost; the one used here: pair entries
(:mod:`nst_jax.layersets`) are ordered by their deeper layer, then by their shallower one (a single layer
counts as the pair of itself), and the weight halves at each deeper entry, so that the 15 links of the
correlation chain get ``2^14 .. 2^0`` over ``2^15 - 1``.

Explicit ``content_layer_weights`` / ``style_layer_weights`` replace the weighting for their family.
"""

from __future__ import annotations

from collections.abc import Sequence

from nst_jax import layersets, vgg

#: The values of ``Settings.layer_weighting``.
WEIGHTINGS = ("uniform", "geometric")

#: The terms whose per-layer weights the weighting sets, and the fields of their explicit weights.
FAMILIES = {"content": "content_layer_weights", "style": "style_layer_weights"}


def depth_key(entry: str) -> tuple[int, int]:
    """Where an entry sits in depth order: ``(deeper member, shallower member)`` as positions in
    :data:`nst_jax.vgg.LAYERS`; a single layer is the pair of itself."""
    found = sorted(vgg.layer_index(m) for m in layersets.members(entry))
    return found[-1], found[0]


def depths(entries: Sequence[str]) -> tuple[int, ...]:
    """The 1-based depth ``d`` of each entry among ``entries`` (in their order): its rank by :func:`depth_key`."""
    order = sorted(set(map(depth_key, entries)))
    return tuple(order.index(depth_key(e)) + 1 for e in entries)


def geometric(entries: Sequence[str], family: str, *, normalize: bool = True) -> tuple[float, ...]:
    """Novak & Nikulin's geometric weights of a family's entries (in their order).

    Args:
        entries: the content layers or the style entries (canonical names; pairs ``"deep:shallow"``).
        family: "content" (``2^d``) or "style" (``2^(D - d)``).
        normalize: divide by the family's sum (what the objective uses); False gives the powers of two.

    Returns:
        One weight per entry.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}.")
    d = depths(entries)
    top = max(d, default=0)
    raw = [2.0 ** (k if family == "content" else top - k) for k in d]
    total = sum(raw) if normalize else 1.0
    return tuple(w / total for w in raw)


def layer_weights(weighting: str, entries: Sequence[str], family: str) -> tuple[float, ...]:
    """The per-layer weights a weighting gives a family's entries: 1 each (``"uniform"``, and for any term
    outside :data:`FAMILIES`), or :func:`geometric` (normalized)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"layer weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}.")
    if weighting == "uniform" or family not in FAMILIES:
        return (1.0,) * len(entries)
    return geometric(entries, family)


def settings_weights(s, family: str, entries: Sequence[str] | None = None) -> tuple[float, ...]:
    """The per-layer weights of a family under settings ``s`` (a :class:`nst_jax.Settings`): its explicit
    ``content_layer_weights`` / ``style_layer_weights`` if set, else those of ``s.layer_weighting``.

    Args:
        s: the settings.
        family: "content", "style", or another term's name (1 per entry).
        entries: the term's entries; default the family's layers in ``s``.
    """
    if entries is None:
        entries = getattr(s, f"{family}_layers")
    explicit = getattr(s, FAMILIES[family]) if family in FAMILIES else None
    return tuple(explicit) if explicit else layer_weights(s.layer_weighting, entries, family)


# --------------------------------------------------------------------------
# The table of ``nst-jax layers``
# --------------------------------------------------------------------------


def feature_side(layer: str, side: int) -> int:
    """The side of a layer's feature map for an input side of ``side`` pixels (VGG-19 pools by 2 after each
    block, dropping an odd last row or column)."""
    name = vgg.canonical_layer(layer)
    block = int(name[4]) if name.startswith("pool") else int(name[4]) - 1  # conv<b>_<i>, relu<b>_<i>, pool<b>
    for _ in range(block):
        side //= 2
    return side


def channels(layer: str) -> int:
    """Output channels of a layer."""
    return dict((b, c) for b, _, c in vgg.BLOCKS)[int(vgg.canonical_layer(layer)[4])]


def layer_table(s) -> list[dict]:
    """One row per content layer and style entry of settings ``s`` (a :class:`nst_jax.Settings`), in depth
    order: what ``nst-jax layers`` prints.

    Returns:
        Rows ``{"entry", "index", "channels", "side", "blurs", "content", "style"}``: the entry; its conv
        index 1..16 (``"deep:shallow"`` for a pair, None for a pooling layer); its output channels and feature
        map side at the long side ``s.image_size`` (a pair: both, deep first); how many times a blurred
        statistic blurs it (0 for a single layer); its content and style weights as shares of their family's
        sum (None when it is not in the family).
    """
    shares = {}
    for family in FAMILIES:
        entries = getattr(s, f"{family}_layers")
        w = settings_weights(s, family)
        total = sum(w) or 1.0
        shares[family] = {e: v / total for e, v in zip(entries, w)}
    rows = []
    for entry in sorted(set(shares["content"]) | set(shares["style"]), key=depth_key):
        deep_first = tuple(reversed(layersets.members(entry)))
        rows.append({
            "entry": entry,
            "index": ":".join(str(layersets.conv_index(m)) for m in deep_first) if _is_conv(entry) else None,
            "channels": ":".join(str(channels(m)) for m in deep_first),
            "side": ":".join(str(feature_side(m, s.image_size)) for m in deep_first),
            "blurs": layersets.blur_count(entry) if _is_conv(entry) else 0,
            "content": shares["content"].get(entry),
            "style": shares["style"].get(entry),
        })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows of :func:`layer_table` as aligned plain text (``-``: not in that family)."""
    head = ("entry", "index", "channels", "side", "blurs", "content", "style")
    cells = [head] + [(r["entry"], r["index"] or "-", r["channels"], r["side"], str(r["blurs"]),
                       "-" if r["content"] is None else f"{r['content']:.6g}",
                       "-" if r["style"] is None else f"{r['style']:.6g}") for r in rows]
    widths = [max(len(str(row[k])) for row in cells) for k in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) if k == 0 else str(v).rjust(w) for k, (v, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _is_conv(entry: str) -> bool:
    return all(vgg.canonical_layer(m).startswith(("conv", "relu")) for m in layersets.members(entry))
