"""Method presets: the configurations compared by Novak & Nikulin (Table 2 of "Improving the Neural Algorithm of
Artistic Style", 1605.04603) as named bundles of settings.

``Settings(method="chain")`` (``nst-jax --method chain``, ``nst_jax.stylize(photo, style, method="chain")``)
takes the preset's values for every setting it sets, except those given explicitly:
``Settings(method="chain", pooling="max")`` keeps max pooling. The paper's presets start from the content image
and use average pooling, as the code it extended (kaishengtai/neuralart); their content and style weights are
neural-style's defaults for now, an entry per preset so that each can be retuned (the loss scale depends on
the weights of VGG-19 and on the layer weighting).

Classic Dense is ambiguous in the paper's table: ``classic-dense`` reads it as every other dense method (content
= all 16 conv layers, geometric weights), ``classic-dense-conv4_2`` as Classic with all 16 Grams (content
conv4_2, uniform weights). ``cnn-mrf`` is Li & Wand's method with the defaults of their code (chuanli11/CNNMRF:
content relu4_2, MRF layers relu3_1 and relu4_1, started from the content image); it needs the ``"mrf"`` style
loss to be registered (:func:`nst_jax.terms.register`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nst_jax import layersets, mrf

#: Gatys et al.'s style layers.
CLASSIC_STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

#: Gatys et al.'s content layer.
CLASSIC_CONTENT = ("relu4_2",)

#: The loss weights every preset starts with (neural-style's defaults), until they are retuned per preset.
CLASSIC_WEIGHTS = MappingProxyType({"content_weight": 5.0, "style_weight": 100.0})


@dataclass(frozen=True)
class Preset:
    """A named bundle of settings.

    Attributes:
        name: its value of ``Settings.method``.
        title: the method's name in the paper.
        values: ``{Settings field: value}``; a setting left out keeps its default.
        finding: what the paper found (its §3-§6, restated).
    """

    name: str
    title: str
    values: Mapping[str, Any]
    finding: str

    def describe(self) -> str:
        """What it sets, in words (layers by the name of their set)."""
        v = self.values
        parts = [f"content {_layers_text(v['content_layers'])}", f"style {_layers_text(v['style_layers'])}"]
        parts += [f"{v.get('layer_weighting', 'uniform')} weights", f"shift {v.get('activation_shift', 0.0):g}"]
        parts += [name for name, key in (("blurred", "style_blur"), ("adjacent offsets", "style_adjacent"))
                  if v.get(key)]
        if "style_loss" in v:
            parts.append(f"style loss {v['style_loss']}")
        if "pooling" in v:
            parts.append(f"{v['pooling']} pooling")
        parts.append(f"init {v['init']}")
        return "; ".join(parts)


def _paper(name: str, title: str, content, style, weighting: str, shift: float, finding: str,
           **more) -> Preset:
    values = {"content_layers": tuple(content), "style_layers": tuple(style), "layer_weighting": weighting,
              "activation_shift": shift, **more, "pooling": "avg", "init": "content", **CLASSIC_WEIGHTS}
    return Preset(name, title, MappingProxyType(values), finding)


_ALL = layersets.ALL_CONV
_CHAIN = layersets.chain_pairs()

_PRESETS = (
    _paper("classic", "Classic (Gatys et al.)", CLASSIC_CONTENT, CLASSIC_STYLE, "uniform", 0.0,
           "The baseline. Simple repetitive textures already work; complex styles (foreground vs background) "
           "are where it fails."),
    _paper("classic-shifted", "Classic Shifted", CLASSIC_CONTENT, CLASSIC_STYLE, "uniform", -1.0,
           "The shift s = -1 improves quality across most styles and methods, lets the optimizer leave the "
           "content image (else it can stall for hundreds of iterations) and repaints more uniformly: the "
           "paper's most useful contribution."),
    _paper("classic-dense", "Classic Dense, reading A", _ALL, _ALL, "geometric", -1.0,
           "All 16 Grams: a consistent improvement for most styles, at a higher memory and compute cost. The "
           "table is ambiguous; this reading: content all 16 layers, geometric weights."),
    _paper("classic-dense-conv4_2", "Classic Dense, reading B", CLASSIC_CONTENT, _ALL, "uniform", -1.0,
           "The other reading of the same row: content relu4_2, uniform weights, all 16 Grams."),
    _paper("all-to-content", "All-To-Content", _ALL, layersets.all_to_content_pairs(), "geometric", -1.0,
           "Every layer correlated with relu4_2: no improvement; tying layers far apart in depth works poorly."),
    _paper("chain", "Chain", _ALL, _CHAIN, "geometric", -1.0,
           "Correlations of neighbouring layers only: a consistent and often significant improvement (the "
           "paper's second contribution)."),
    _paper("chain-uniform", "Chain Uniform", _ALL, _CHAIN, "uniform", -1.0,
           "Chain without the geometric weighting, whose effect is sometimes slight (the object separates "
           "better from the background) and often barely visible."),
    _paper("chain-unshifted", "Chain Unshifted", _ALL, _CHAIN, "geometric", 0.0,
           "Chain without the shift: the shift is the most useful of the paper's changes."),
    _paper("chain-blurred", "Chain Blurred", _ALL, _CHAIN, "geometric", -1.0,
           "Blurred correlations: mixed but overall positive, at the cost of slow, unreliable convergence; the "
           "configuration the paper shows as its own against Classic and CNN-MRF.", style_blur=True),
    _paper("chain-extended", "Chain Extended", _ALL, _CHAIN, "geometric", -1.0,
           "Correlations with the 8 neighbouring positions too: a significant effect, more often negative than "
           "positive.", style_adjacent=True),
    # chuanli11/CNNMRF's defaults (nst_jax.mrf.RECOMMENDED: layers, weights on its scale, augmentation, stride)
    Preset("cnn-mrf", "CNN-MRF (Li & Wand)",
           MappingProxyType({**mrf.RECOMMENDED, "layer_weighting": "uniform", "activation_shift": 0.0}),
           "Unmatched for photorealistic styles given a good content match; without one, parts of the content "
           "can vanish."),
)

#: The presets by name.
PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in _PRESETS})

#: The values of ``Settings.method`` (besides None): validation, ``--help`` and the README table use this tuple.
NAMES: tuple[str, ...] = tuple(PRESETS)


def get(name: str) -> Preset:
    """The preset ``name``; a ValueError listing the names if there is none."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(NAMES)}.") from None


def markdown_table() -> str:
    """The presets as a markdown table (method, paper's name, what it sets, the paper's finding): README.md
    holds it verbatim."""
    rows = ["| method | in the paper | sets | finding |", "|---|---|---|---|"]
    rows += [f"| `{p.name}` | {p.title} | {p.describe()} | {p.finding} |" for p in _PRESETS]
    return "\n".join(rows)


def _layers_text(layers: tuple[str, ...]) -> str:
    named = {_ALL: "all 16", _CHAIN: "chain (15 links)", layersets.all_to_content_pairs(): "all-to-content (16)"}
    return named.get(tuple(layers), ", ".join(layers))
