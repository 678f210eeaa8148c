"""The artifacts study (seed 001, the neural-style wiki's "Artifacts" page): each remedy the practitioners give,
run against its artifact and measured with :mod:`nst_jax.artifacts`.

* border lines: zero padding (neural-style's) against ``padding="reflect"``: :func:`nst_jax.artifacts.border_energy`;
* gray spots with Adam: Adam's usual constants against ``preset="adam-no-gray"`` (beta1 0.99, epsilon 0.1):
  :func:`nst_jax.artifacts.gray_spots` (the content image's own count alongside);
* grid patterns: TV weight 0 against the default: :func:`nst_jax.artifacts.grid_energy` at VGG-19's strides and
  :func:`nst_jax.artifacts.high_frequency`.

Every run starts from the same noise with Adam (neural-style's learning rate 10), where the first two artifacts
are reported. The baseline (zero padding, Adam's usual constants, the default TV weight) and the run without TV
differ only in a loss weight, a traced number: they run as one vmapped batch; padding and Adam's constants shape
the compiled program, so those runs come one after another.
"""

from __future__ import annotations

from nst_jax import artifacts, stylizer
from nst_jax.api import stylize
from nst_jax.config import Settings
from nst_jax.study import Context, Section, Table, study
from nst_jax.study.layers import random_weights_note

#: Layers of the quick runs (tests): shallow, so that each program compiles fast.
QUICK_LAYERS = {"style_layers": ("relu1_1", "relu2_1"), "content_layers": ("relu2_1",)}


def light_layers(ctx: Context) -> dict:
    """The layer settings of a study's runs: the defaults, or :data:`QUICK_LAYERS` in quick runs."""
    return dict(QUICK_LAYERS) if ctx.quick else {}


def grid_period(size: int) -> int:
    """The period of :func:`nst_jax.artifacts.grid_energy` for pictures of ``size`` px: VGG-19's deepest pooling
    stride (16), halved until the picture is 4 periods long."""
    period = 16
    while period > 2 and 4 * period > size:
        period //= 2
    return period


def _measure(image, period: int, width: int) -> dict:
    return {"border_energy": artifacts.border_energy(image, width), "gray_spots": artifacts.gray_spots(image),
            "grid_energy": artifacts.grid_energy(image, period), "high_frequency": artifacts.high_frequency(image)}


def _change(new: float, old: float) -> str:
    """How ``new`` compares with ``old`` in words: within 2% counts as the same."""
    rel = new / old - 1 if old else 0.0
    if abs(rel) < 0.02:
        return f"leaves it about the same ({rel:+.1%})"
    return f"{'lowers' if rel < 0 else 'raises'} it by {abs(rel):.0%}"


@study("artifacts", title="Artifacts and their remedies: border lines, gray spots, grid patterns", seeds=("001",))
def artifacts_study(ctx: Context) -> Section:
    """Zero vs reflect padding, Adam vs adam-no-gray, TV weight 0 vs the default, from one noise start."""
    n = ctx.iterations(100)
    s = ctx.settings(optimizer="adam", init="random", num_iterations=n, **light_layers(ctx))
    tv = Settings().tv_weight
    baseline, no_tv = stylizer.stylize_batch([ctx.content] * 2, ctx.style, s, batch_size=2,
                                             loss_weights=[{"tv_weight": tv}, {"tv_weight": 0.0}],
                                             progress=ctx.progress)
    reflect = stylize(ctx.content, ctx.style, s.replace(padding="reflect"), progress=ctx.progress)
    no_gray = stylize(ctx.content, ctx.style, s.replace(preset="adam-no-gray"), progress=ctx.progress)
    content = ctx.content_image()
    period = grid_period(min(content.shape[:2]))
    width = 4 if min(content.shape[:2]) >= 48 else 2
    runs = {"baseline": baseline, "reflect padding": reflect, "adam-no-gray": no_gray, "tv_weight 0": no_tv}
    measured = {"content": _measure(content, period, width)}
    measured.update({k: _measure(r.array, period, width) for k, r in runs.items()})
    for k, r in runs.items():
        measured[k]["final_loss"] = r.history[-1].total
    m = measured
    numbers = {"iterations": n, "grid_period": period, "border_width": width, "tv_weight": tv, "runs": m}
    rows = [[k, d.get("final_loss", ""), d["border_energy"], d["gray_spots"], d["grid_energy"], d["high_frequency"]]
            for k, d in m.items()]
    table = Table(["run", "final loss", f"border energy (width {width})", "gray spots",
                   f"grid energy (period {period})", "high-frequency fraction"], rows,
                  caption="Higher: more of the artifact. The baseline: zero padding, Adam (beta1 0.9, epsilon "
                          f"1e-8), tv_weight {tv:g}; each other run changes one of these.")
    b, r_, g, t = m["baseline"], m["reflect padding"], m["adam-no-gray"], m["tv_weight 0"]
    text = (f"{n} iterations of Adam from the same noise at {ctx.size} px, content and style as in the rest of "
            "the report. The baseline has zero padding, Adam's usual constants and the default TV weight; each "
            "other run changes one of them (the run without TV shared the baseline's compiled batch).\n\n"
            f"**Border lines.** The border energy (mean gradient in the outer {width} px over the interior's) is "
            f"{b['border_energy']:.3g} with zero padding and {r_['border_energy']:.3g} with reflect padding "
            f"(the content image's: {m['content']['border_energy']:.3g}): reflect padding "
            + _change(r_["border_energy"], b["border_energy"]) + " here.\n\n"
            f"**Gray spots.** Gray blobs (at least 4 px of low saturation around the ImageNet mean's value): "
            f"{b['gray_spots']} with Adam's usual constants, {g['gray_spots']} with `--preset adam-no-gray` "
            f"(the content image has {m['content']['gray_spots']}). The final losses: {b['final_loss']:.4g} and "
            f"{g['final_loss']:.4g}.\n\n"
            f"**Grid patterns.** Without TV the grid energy at period {period} is {t['grid_energy']:.3g} (with "
            f"tv_weight {tv:g}: {b['grid_energy']:.3g}) and the fraction of spectral power above half the Nyquist "
            f"frequency {t['high_frequency']:.3g} ({b['high_frequency']:.3g} with TV)."
            + random_weights_note(ctx))
    labels = ["content", *runs]
    notes = [[f"border {m[k]['border_energy']:.2f}, gray {m[k]['gray_spots']}" for k in labels],
             [f"grid {m[k]['grid_energy']:.2f}, hf {m[k]['high_frequency']:.3f}" for k in labels]]
    grid = ctx.grid([[content, *(r.array for r in runs.values())]], [""], labels, "grid",
                    caption=f"The content image and the four runs ({n} iterations).",
                    notes=[[f"{a}; {c}" for a, c in zip(*notes)]])
    curves = ctx.curves({k: r.history for k, r in runs.items()}, "iteration", "curves", "total loss",
                        caption="The total loss of each run (the run without TV lacks the TV term; reflect padding "
                                "changes the network's activations, so its targets and losses too).")
    return Section(ctx.title, text, [table], [grid, curves], numbers)

