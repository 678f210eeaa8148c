"""Optimizer presets: named bundles of optimizer settings, ``Settings(preset="adam-no-gray")`` (``nst-jax
--preset adam-no-gray``, ``nst_jax.stylize(photo, style, preset="adam-no-gray")``).

They are a field of their own, ``Settings.preset``, rather than more values of ``Settings.method``
(:mod:`nst_jax.presets`), because the two answer different questions and combine freely: a method preset says
*what* is optimized (layers, layer weighting, activation shift, pooling, init and loss weights: a row of Novak &
Nikulin's table), an optimizer preset *how* (the optimizer and its hyperparameters). ``--method chain --preset
adam-no-gray`` is a meaningful run, which one field could not express; and ``nst-jax compare --methods``, which
compares loss methods, stays a comparison of loss methods. The rules are those of ``method``: the preset's
values fill in every field it sets that was not given explicitly (``--preset adam-no-gray --beta1 0.95`` keeps
beta1 0.95), and :attr:`nst_jax.Settings.explicit` tells the two apart. No field is set by both kinds of preset
(a test checks it), so the order in which they are applied does not matter.

The presets come from practitioners' reports on jcjohnson/neural-style (its wiki's "Artifacts" page); what
each one is for is in its ``why``, and the README's "Artifacts and how to avoid them" shows when to reach for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class OptimizerPreset:
    """A named bundle of optimizer settings.

    Attributes:
        name: its value of ``Settings.preset``.
        values: ``{Settings field: value}``; a setting left out keeps its default (or its method's value).
        why: what it is for, and where it comes from.
    """

    name: str
    values: Mapping[str, Any]
    why: str

    def describe(self) -> str:
        """What it sets, as ``field=value`` pairs."""
        return ", ".join(f"{k}={v!r}" for k, v in self.values.items())


_PRESETS = (
    # neural-style wiki, "Artifacts": gray spots/haze that spread over parts of the image come from Adam with
    # its usual constants; a slower first moment (beta1 0.99) and a large epsilon (0.1, on pixel values in
    # 0..255) damp the per-pixel steps where the gradient's second moment is small.
    OptimizerPreset("adam-no-gray", MappingProxyType({"optimizer": "adam", "beta1": 0.99, "epsilon": 0.1}),
                    "Adam with beta1 0.99 and epsilon 0.1: avoids the gray spots and haze that Adam with beta1 0.9 "
                    "and epsilon 1e-8 can leave (neural-style wiki, Artifacts)."),
)

#: The presets by name.
PRESETS: Mapping[str, OptimizerPreset] = MappingProxyType({p.name: p for p in _PRESETS})

#: The values of ``Settings.preset`` (besides None).
NAMES: tuple[str, ...] = tuple(PRESETS)


def get(name: str) -> OptimizerPreset:
    """The optimizer preset ``name``; a ValueError listing the names if there is none."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer preset {name!r}; presets: {', '.join(NAMES)}.") from None
