"""Studies of where the optimization starts and how it steps (seeds 002 and 004).

* ``inits``: noise, the content image and the style image as starting points, at equal iterations (seed 002's
  "starting point" list; seed 004 found that the content start keeps the content's colours);
* ``optimizers``: neural-style's L-BFGS against Adam at equal wall time, each over a few learning rates (seed
  002: Adam comparable to L-BFGS in speed and loss; seed 004: L-BFGS is sensitive to its learning rate).

The initial image is an input of the compiled program, not part of it, so the three starts reuse one program,
run one after another. Learning rates and the optimizer shape the program (they are static arguments of the
step): each rate compiles its own. Time is measured without compilation: per run, the seconds per iteration in
its steady state (from its second recorded iteration on) times the iteration.
"""

from __future__ import annotations

import math

from nst_jax import optim
from nst_jax.api import stylize
from nst_jax.study import Context, Section, Table, new_figure, study
from nst_jax.study.artifacts import light_layers
from nst_jax.study.layers import random_weights_note
from nst_jax.study.measures import color_distance, rmse

#: The starting points of the inits study (values of the ``init`` setting).
INITS = ("random", "content", "style")
#: Learning rates of neural-style's L-BFGS (the default, 1, and a factor 2 either side).
LBFGS_RATES = (0.5, 1.0, 2.0)
#: Learning rates of Adam: neural-style's default is 10 (on pixel values in Caffe's 0..255 scale).
ADAM_RATES = (1.0, 5.0, 10.0, 20.0)


@study("inits", title="Starting points: noise, the content image, the style image", seeds=("002", "004"))
def inits(ctx: Context) -> Section:
    """One stylization from each of :data:`INITS`, neural-style's L-BFGS, equal iterations."""
    n = ctx.iterations(100)
    chosen = ctx.cases(INITS, quick=2)
    results = {init: stylize(ctx.content, ctx.style, ctx.settings(init=init, num_iterations=n,
                                                                  **light_layers(ctx)), progress=ctx.progress)
               for init in chosen}
    content, style = ctx.content_image(), ctx.style_image()
    per, rows = {}, []
    for init, r in results.items():
        first, last = r.history[0].total, r.history[-1].total
        d = {"initial_loss": first, "final_loss": last, "content_loss": r.history[-1].content,
             "style_loss": r.history[-1].style, "rmse_to_content": rmse(r.array, content),
             "color_distance_to_content": color_distance(r.array, content),
             "color_distance_to_style": color_distance(r.array, style)}
        per[init] = d
        rows.append([init, first, last, d["content_loss"], d["style_loss"], d["rmse_to_content"],
                     d["color_distance_to_content"], d["color_distance_to_style"]])
    best = min(per, key=lambda k: per[k]["final_loss"])
    ordered = sorted(per, key=lambda k: per[k]["final_loss"])
    text = (f"{n} iterations of neural-style's L-BFGS at {ctx.size} px from each starting point: "
            + ", ".join(f"`{k}`" for k in chosen) + " (the same program: the start is an input of it).\n\n"
            f"Lowest final loss: `{best}` ({per[best]['final_loss']:.4g}); in order "
            + ", ".join(f"`{k}` {per[k]['final_loss']:.4g}" for k in ordered) + ". "
            "The colour distance to the content image (per-channel Wasserstein-1 of the histograms) is "
            + ", ".join(f"{per[k]['color_distance_to_content']:.3g} from `{k}`" for k in chosen)
            + "; to the style image "
            + ", ".join(f"{per[k]['color_distance_to_style']:.3g} from `{k}`" for k in chosen) + "."
            + random_weights_note(ctx))
    table = Table(["init", "initial loss", "final loss", "content loss", "style loss", "RMSE to content",
                   "colour distance to content", "colour distance to style"], rows)
    grid = ctx.grid([[content, *(r.array for r in results.values())]], [""], ["content", *chosen], "grid",
                    caption=f"The content image and the result from each start ({n} iterations).",
                    notes=[["", *(f"loss {per[k]['final_loss']:.3g}" for k in chosen)]])
    curves = ctx.curves({k: r.history for k, r in results.items()}, "iteration", "curves",
                        "total loss per starting point", caption="The total loss from each starting point.")
    return Section(ctx.title, text, [table], [grid, curves], {"iterations": n, "inits": per})


def steady_seconds_per_iteration(history) -> float:
    """Seconds per iteration of a run without its compilation: from its first recorded iteration after the
    start (whose time includes compiling the step) to its last; the whole time when there is only one."""
    steps = [r for r in history if r.iteration >= 1]
    if not steps:
        return math.nan
    first, last = steps[0], steps[-1]
    if last.iteration > first.iteration:
        return (last.elapsed - first.elapsed) / (last.iteration - first.iteration)
    return last.elapsed / last.iteration


def _loss_at(history, per_iteration: float, budget: float):
    """``(iteration, total)`` of the last record within ``budget`` seconds of steady time."""
    inside = [r for r in history if r.iteration * per_iteration <= budget * (1 + 1e-9)]
    last = inside[-1] if inside else history[0]
    return last.iteration, last.total


@study("optimizers", title="L-BFGS against Adam at equal time, with their learning rates", seeds=("002", "004"))
def optimizers(ctx: Context) -> Section:
    """Neural-style's L-BFGS at :data:`LBFGS_RATES` and Adam at :data:`ADAM_RATES` from the same noise; the loss
    at the time the slowest run took, compilation excluded."""
    n = ctx.iterations(100)
    cases = [("lbfgs", lr) for lr in (LBFGS_RATES if not ctx.quick else (1.0,))]
    cases += [("adam", lr) for lr in (ADAM_RATES if not ctx.quick else (10.0,))]
    runs, failed = {}, {}
    for opt, lr in cases:
        label = f"{'L-BFGS' if opt == 'lbfgs' else 'Adam'} lr {lr:g}"
        s = ctx.settings(optimizer=opt, learning_rate=lr, init="random", num_iterations=n, **light_layers(ctx))
        try:
            runs[label] = (opt, lr, stylize(ctx.content, ctx.style, s, progress=ctx.progress))
        except optim.NonFiniteLossError as e:  # a learning rate too large: recorded, not fatal
            failed[label] = (opt, lr, e.last_good_iteration)
    per = {label: steady_seconds_per_iteration(r.history) for label, (_, _, r) in runs.items()}
    budget = min(n * t for t in per.values())
    rows, numbers = [], {"iterations": n, "budget_seconds": budget, "runs": {}}
    for label, (opt, lr, r) in runs.items():
        it, loss = _loss_at(r.history, per[label], budget)
        d = {"optimizer": opt, "learning_rate": lr, "seconds_per_iteration": per[label], "iterations_in_budget": it,
             "loss_at_budget": loss, "final_loss": r.history[-1].total, "initial_loss": r.history[0].total}
        numbers["runs"][label] = d
        rows.append([label, per[label], it, loss, r.history[-1].total])
    for label, (opt, lr, it) in failed.items():
        numbers["runs"][label] = {"optimizer": opt, "learning_rate": lr, "non_finite_after": it}
        rows.append([label, "", "", f"NaN/inf after iteration {it}", ""])
    ok = numbers["runs"]
    best = {opt: min((k for k in runs if ok[k]["optimizer"] == opt), key=lambda k: ok[k]["loss_at_budget"],
                     default=None) for opt in ("lbfgs", "adam")}
    spread = {opt: [ok[k]["loss_at_budget"] for k in runs if ok[k]["optimizer"] == opt] for opt in ("lbfgs", "adam")}
    lines = []
    for opt, name in (("lbfgs", "L-BFGS"), ("adam", "Adam")):
        if best[opt] is not None:
            lo, hi = min(spread[opt]), max(spread[opt])
            lines.append(f"best {name}: {best[opt]} ({ok[best[opt]]['loss_at_budget']:.4g}; its rates span "
                         f"{lo:.4g} to {hi:.4g}, a factor {hi / lo:.3g})")
    rates = {opt: ", ".join(f"{lr:g}" for o, lr in cases if o == opt) for opt in ("lbfgs", "adam")}
    text = (f"Neural-style's L-BFGS (no line search) at learning rates {rates['lbfgs']} and Adam at "
            f"{rates['adam']}, each {n} iterations from the "
            f"same noise at {ctx.size} px. Time is each run's steady seconds per iteration (compilation excluded) "
            f"times its iterations; the common budget is the time the slowest run took, {budget:.3g} s.\n\n"
            "At that budget: " + "; ".join(lines) + "."
            + (f" Diverged (NaN/inf): {', '.join(failed)}." if failed else "")
            + random_weights_note(ctx))
    table = Table(["run", "s / iteration", "iterations in budget", "loss at budget", f"loss after {n} iterations"],
                  rows, caption=f"Budget: {budget:.3g} s of steady time (compilation excluded).")
    fig = new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    for label, (opt, lr, r) in runs.items():
        xs = [rec.iteration * per[label] for rec in r.history]
        ax.plot(xs, [rec.total for rec in r.history], label=label, lw=1.5,
                ls="-" if opt == "lbfgs" else "--")
    ax.axvline(budget, color="gray", lw=1, ls=":")
    ax.set(xlabel="seconds (steady time per iteration x iterations; compilation excluded)", ylabel="total loss",
           yscale="log", title="loss against time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    curves = ctx.save_plot(fig, "curves", "Total loss against steady time; the dotted line is the common budget."
                           + (f" Not drawn (NaN/inf loss): {', '.join(failed)}." if failed else ""))
    labels = list(runs)
    grid = ctx.grid([[r.array for _, _, r in runs.values()]], [""], labels, "grid",
                    caption=f"The results after {n} iterations.",
                    notes=[[f"loss {ok[k]['final_loss']:.3g}" for k in labels]])
    return Section(ctx.title, text, [table], [curves, grid], numbers)
