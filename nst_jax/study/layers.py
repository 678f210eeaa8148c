"""Studies of what the layers hold: reconstructions per layer (seed 004) and textures per layer set.

Both run every case as one vmapped batch: the objective holds all the layers, and each image switches its own
on with per-layer weights (traced numbers, so one compiled program serves all the cases). A layer weighted 0
adds nothing to an image's loss or gradient, so each result is the one a run on its layers alone would give.
"""

from __future__ import annotations

import numpy as np

from nst_jax import stylizer
from nst_jax.study import Context, Section, Table, study
from nst_jax.study.measures import mean_gradient, rmse, texture_scale

#: The layers of the reconstruction study: the first convolution of each block, before its ReLU (seed 004 put
#: its loss after PyTorch's ``conv_N`` module).
RECONSTRUCTION_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
#: The layer sets of the texture study, by label: Gatys et al.'s textures of growing depth.
TEXTURE_SETS = {"relu1_1": ("relu1_1",), "to relu2_1": ("relu1_1", "relu2_1"),
                "to relu3_1": ("relu1_1", "relu2_1", "relu3_1"),
                "to relu5_1": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")}


def random_weights_note(ctx: Context) -> str:
    """A sentence for the texts of runs with random VGG-19 weights (whose pictures mean little)."""
    if ctx.weights != "random":
        return ""
    return ("\n\nThe VGG-19 weights are random (a smoke test of the study): the pictures show what a random "
            "network keeps, not what the trained one does; rerun with real weights for the practitioners' picture.")


def trend(values: list[float]) -> str:
    """How a sequence of numbers moves, in words: "rises at every step", "falls at every step", or "rises at k
    of n steps"."""
    ups = sum(b > a for a, b in zip(values, values[1:]))
    steps = len(values) - 1
    if ups == steps:
        return "rises at every step"
    if ups == 0:
        return "falls at every step"
    return f"rises at {ups} of {steps} steps"


@study("reconstruction", title="What each layer keeps: reconstructions from noise out of conv1_1 ... conv5_1",
       seeds=("004",))
def reconstruction(ctx: Context) -> Section:
    """The content image rebuilt from noise out of one layer's activations, for each of
    :data:`RECONSTRUCTION_LAYERS` (no style term, no TV), one vmapped batch."""
    layers = tuple(ctx.cases(RECONSTRUCTION_LAYERS))
    n = ctx.iterations(120)
    s = ctx.settings(content_layers=layers, style_weight=0.0, tv_weight=0.0, init="random", num_iterations=n)
    one_hot = [{"content_layer_weights": tuple(float(i == j) for j in range(len(layers)))} for i in range(len(layers))]
    results = stylizer.stylize_batch([ctx.content] * len(layers), None, s, batch_size=len(layers),
                                     loss_weights=one_hot, progress=ctx.progress)
    content = ctx.content_image()
    rows, numbers = [], {"iterations": n, "layers": {}}
    for layer, r in zip(layers, results):
        first, last = r.history[0].total, r.history[-1].total
        d = {"initial_loss": first, "final_loss": last, "relative": last / first if first else None,
             "pixel_rmse": rmse(r.array, content), "mean_gradient": mean_gradient(r.array)}
        numbers["layers"][layer] = d
        rows.append([layer, first, last, d["relative"], d["pixel_rmse"], d["mean_gradient"]])
    numbers["content_mean_gradient"] = mean_gradient(content)
    per = numbers["layers"]
    errors = [per[k]["pixel_rmse"] for k in layers]
    rel = [per[k]["relative"] for k in layers]
    text = (f"Each of {', '.join(f'`{k}`' for k in layers)} (before its ReLU, as in seed 004) was reconstructed "
            f"from the same noise: {n} iterations of neural-style's L-BFGS on that layer's content loss alone "
            f"(no style, no TV), {ctx.size} px. The runs differ only in per-layer content weights (one-hot), "
            "so they ran as one vmapped batch.\n\n"
            f"The loss fell to {rel[0]:.3g} of its start at `{layers[0]}` and {rel[-1]:.3g} at `{layers[-1]}`. "
            f"The pixel RMSE to the content image is {errors[0]:.3g} at `{layers[0]}` and {errors[-1]:.3g} at "
            f"`{layers[-1]}`; with depth it {trend(errors)}. The mean luminance gradient of the reconstructions "
            f"runs from {per[layers[0]]['mean_gradient']:.3g} to {per[layers[-1]]['mean_gradient']:.3g} (the "
            f"content's: {numbers['content_mean_gradient']:.3g})." + random_weights_note(ctx))
    grid = ctx.grid([[content, *(r.array for r in results)]], [""], ["content", *layers], "grid",
                    caption=f"The content image and its reconstructions from each layer ({n} iterations).",
                    notes=[["", *(f"rmse {per[k]['pixel_rmse']:.3f}" for k in layers)]])
    curves = ctx.curves({k: r.history for k, r in zip(layers, results)}, "iteration", "curves",
                        "reconstruction loss per layer", relative=True,
                        caption="Each layer's loss relative to its start (the layers' losses have other scales).")
    table = Table(["layer", "initial loss", "final loss", "final / initial", "pixel RMSE", "mean gradient"], rows)
    return Section(ctx.title, text, [table], [grid, curves], numbers)


@study("texture", title="Textures per layer set: relu1_1, up to relu2_1, relu3_1, relu5_1")
def texture(ctx: Context) -> Section:
    """Textures synthesized from the style image alone (no content) with the Gram matrices of ever deeper layer
    sets (:data:`TEXTURE_SETS`), one vmapped batch."""
    chosen = {k: TEXTURE_SETS[k] for k in ctx.cases(TEXTURE_SETS)}
    all_layers = chosen[list(chosen)[-1]]
    n = ctx.iterations(120)
    # The start: uniform noise in [0, 1] (Gatys et al.'s), given as the canvas with init="content" (the content
    # term is off). init="random" (neural-style's 0.001 * N(0, 1)) starts where the Gram matrices' gradient all
    # but vanishes (it is cubic in the activations), and L-BFGS barely moves from there.
    s = ctx.settings(style_layers=all_layers, content_weight=0.0, tv_weight=0.0, init="content", num_iterations=n)
    per_set = [{"style_layer_weights": tuple(float(k in layers) for k in all_layers)}
               for layers in chosen.values()]
    canvas = np.random.default_rng(ctx.seed).random((ctx.size, ctx.size, 3), dtype=np.float32)
    results = stylizer.stylize_batch([canvas] * len(per_set), ctx.style, s, batch_size=len(per_set),
                                     loss_weights=per_set, progress=ctx.progress)
    style = ctx.style_image()
    rows, numbers = [], {"iterations": n, "sets": {}}
    for label, r in zip(chosen, results):
        first, last = r.history[0].total, r.history[-1].total
        d = {"layers": list(chosen[label]), "initial_loss": first, "final_loss": last,
             "relative": last / first if first else None, "texture_scale": texture_scale(r.array),
             "mean_gradient": mean_gradient(r.array)}
        numbers["sets"][label] = d
        rows.append([label, first, last, d["relative"], d["texture_scale"], d["mean_gradient"]])
    numbers["style_texture_scale"] = texture_scale(style)
    sets = numbers["sets"]
    labels = list(chosen)
    text = (f"Textures synthesized out of the style image's Gram matrices alone (no content) from uniform noise in "
            f"[0, 1] (seed {ctx.seed}; neural-style's near-zero noise gives the Gram matrices almost no gradient), {n} "
            f"iterations of L-BFGS at {ctx.size} px, with the layer sets {', '.join(labels)}. The sets share one "
            "objective (all their layers) and differ in per-layer weights (0 or 1), so they ran as one vmapped "
            "batch.\n\n"
            f"The mean spatial frequency of the texture is {sets[labels[0]]['texture_scale']:.3g} cycles/pixel with "
            f"{labels[0]} alone and {sets[labels[-1]]['texture_scale']:.3g} with the layers {labels[-1]} (the "
            f"style image, at its own size: {numbers['style_texture_scale']:.3g}); across the sets it "
            f"{trend([sets[k]['texture_scale'] for k in labels])}. The loss fell to "
            f"{sets[labels[0]]['relative']:.3g} of its start with {labels[0]} and {sets[labels[-1]]['relative']:.3g} "
            f"with {labels[-1]}." + random_weights_note(ctx))
    grid = ctx.grid([[r.array for r in results]], [""], labels, "grid",
                    caption=f"Textures from the layer sets ({n} iterations).",
                    notes=[[f"freq {sets[k]['texture_scale']:.3f}" for k in labels]])
    curves = ctx.curves({k: r.history for k, r in zip(labels, results)}, "iteration", "curves",
                        "texture loss per layer set", relative=True,
                        caption="Each set's loss relative to its start.")
    table = Table(["layers", "initial loss", "final loss", "final / initial", "mean frequency (cycles/px)",
                   "mean gradient"], rows)
    return Section(ctx.title, text, [table], [grid, curves], numbers)
