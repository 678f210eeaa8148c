"""Seed 000's study: a reconstruction from relu5_1 (Keras ``block5_conv1``) out of noise, where plain L-BFGS stalls
in a minimum full of high-frequency edges; blurring on stall (:mod:`nst_jax.stall`) or a total-variation term are
the proposed ways out. The runs go one after another, each alone, so that their loss-vs-time curves compare like
with like (a batch's time would be shared by its members).
"""

from __future__ import annotations

from nst_jax import modes
from nst_jax.study import Context, Section, Table, study
from nst_jax.study.layers import random_weights_note
from nst_jax.study.measures import mean_gradient, rmse

#: The layer of the seed's reconstruction.
LAYER = "relu5_1"
#: The TV weight of the regularized run (on the scale of neural-style's ``tv_weight``: L1 TV in Caffe pixels).
TV_WEIGHT = 1e-4
#: The stall threshold of the eager blur-on-stall run (the setting's default is 1e-3).
EAGER_THRESHOLD = 1e-2


def settled_at(history, term: str = "content", within: float = 0.01) -> int:
    """The first recorded iteration from which the ``term`` loss never fell more than ``within`` (relative) below
    its value there, i.e. whose value is within that of the final one: where a run stalled for good."""
    final = history[-1].terms.get(term, history[-1].total)
    for r in history:
        if r.terms.get(term, r.total) <= final * (1 + within):
            return r.iteration
    return history[-1].iteration


@study("stall", title="Escaping the relu5_1 stall: plain L-BFGS vs blur on stall vs TV", seeds=("000",))
def stall(ctx: Context) -> Section:
    """The content image reconstructed from relu5_1 out of noise: plain neural-style L-BFGS, blur on stall
    (default and eager thresholds), and a TV term; final losses, blur counts, curves vs iteration and time."""
    n = ctx.iterations(200)
    base = ctx.settings(num_iterations=n, init="random", tv_weight=0.0)
    runs = {"plain L-BFGS": {}, "blur on stall": {"blur_on_stall": True},
            f"blur on stall, threshold {EAGER_THRESHOLD:g}": {"blur_on_stall": True,
                                                              "stall_threshold": EAGER_THRESHOLD},
            f"TV {TV_WEIGHT:g}": {"tv_weight": TV_WEIGHT}}
    runs = {k: runs[k] for k in ctx.cases(runs, quick=2)}
    results = {label: modes.reconstruct(ctx.content, LAYER, base, progress=ctx.progress, **extra)
               for label, extra in runs.items()}
    content = ctx.content_image()
    rows, numbers = [], {"layer": LAYER, "iterations": n, "tv_weight": TV_WEIGHT, "runs": {}}
    for label, r in results.items():
        h = r.history
        d = {"settings": runs[label], "initial_loss": h[0].content, "final_loss": h[-1].content,
             "final_total": h[-1].total, "blurs": r.blurs, "settled_at": settled_at(h), "seconds": h[-1].elapsed,
             "pixel_rmse": rmse(r.array, content), "mean_gradient": mean_gradient(r.array)}
        numbers["runs"][label] = d
        rows.append([label, d["final_loss"], d["final_total"], "-" if r.blurs is None else r.blurs,
                     d["settled_at"], d["seconds"], d["pixel_rmse"], d["mean_gradient"]])
    per = numbers["runs"]
    labels = list(results)
    plain = per[labels[0]]
    lines = [f"The content image reconstructed out of noise from `{LAYER}` alone (seed 000: Keras `block5_conv1`), "
             f"{n} iterations of neural-style's L-BFGS at {ctx.size} px, each run alone: "
             + ", ".join(f"**{k}**" for k in labels) + ". The seed's plain run stalled at loss 3.19 after about 15 "
             "iterations; blurring whenever the loss stalled (about 150 blurs in 994 iterations) reached 0.53 "
             "(its loss scale is Keras's, not ours: compare the runs here with each other).", ""]
    if plain["settled_at"] >= 0.9 * n:
        how = "was still falling at the end (by more than 1% over the last tenth of the run)"
    else:
        how = f"was within 1% of that from iteration {plain['settled_at']} on"
    lines.append(f"Here plain L-BFGS ended at a `{LAYER}` loss of {plain['final_loss']:.4g} and {how}.")
    for k in labels[1:]:
        d = per[k]
        ratio = d["final_loss"] / plain["final_loss"] if plain["final_loss"] else float("nan")
        blurs = f" after {d['blurs']} blur{'s' if d['blurs'] != 1 else ''}" if d["blurs"] is not None else ""
        extra = (f" (total with TV {d['final_total']:.4g})" if "tv_weight" in runs[k] else "")
        lines.append(f"**{k}** ended at {d['final_loss']:.4g}{extra}{blurs}: {ratio:.3g} times plain's.")
    blurred = [k for k in labels if per[k]["blurs"]]
    if any(per[k]["blurs"] is not None for k in labels) and not blurred:
        lines.append("No run stalled long enough to be blurred: the loss kept falling by more than the threshold "
                     "over every window.")
    text = lines[0] + "\n\n" + " ".join(lines[2:]) + random_weights_note(ctx)
    notes = [["", *(f"loss {per[k]['final_loss']:.3g}" + (f", {per[k]['blurs']} blurs" if per[k]["blurs"] else "")
                    for k in labels)]]
    grid = ctx.grid([[content, *(r.array for r in results.values())]], [""], ["content", *labels], "grid",
                    caption=f"The content image and its reconstructions from {LAYER} ({n} iterations).",
                    notes=notes)
    histories = {k: r.history for k, r in results.items()}
    by_iteration = ctx.curves(histories, "iteration", "iterations", f"{LAYER} reconstruction", term="content",
                              caption=f"The {LAYER} content loss against the iteration (the TV run's TV term "
                                      "left out).")
    by_time = ctx.curves(histories, "seconds", "seconds", f"{LAYER} reconstruction", term="content",
                         caption=f"The {LAYER} content loss against wall time after the first iteration (which "
                                 "includes the compilation), each run alone.")
    table = Table(["run", f"final {LAYER} loss", "final total", "blurs", "within 1% from iteration",
                   "seconds (with compilation)", "pixel RMSE", "mean gradient"], rows)
    return Section(ctx.title, text, [table], [grid, by_iteration, by_time], numbers)
