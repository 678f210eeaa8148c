"""Studies of the style image's treatment: whose colours the result takes (``original_colors``,
``color_transfer``), and how tiling the style image (``style_tile``, seed 002) changes the texture's scale.

The variants of each study change only the style images' pixels (their statistics are traced targets), so they
run as one batch through :func:`nst_jax.stylize_grid`, one column per prepared style image: the style made
exactly as :func:`nst_jax.stylize` would make it with that setting (tiled, resized, colour-matched). The
``original_colors`` result is the plain result with the content's chroma, the step ``stylize`` applies at the end.
"""

from __future__ import annotations

from nst_jax import api, images, stylizer
from nst_jax.study import Context, Section, Table, study
from nst_jax.study.layers import random_weights_note
from nst_jax.study.measures import color_distance, mean_gradient, texture_scale

#: The ``color_transfer`` modes of the colour study, after the style's own colours ("none").
TRANSFERS = ("histogram", "stats")
#: The ``style_tile`` repeats of the tiling study (rows = columns).
TILES = (1, 2, 3)


def _prepared_style(ctx: Context, tile: int = 1, transfer: str = "none"):
    """The style image as :func:`nst_jax.stylize` prepares it with ``style_tile=(tile, tile)`` and
    ``color_transfer=transfer`` (:func:`nst_jax.api.prepare_styles`)."""
    s = ctx.settings(style_tile=(tile, tile), color_transfer=transfer)
    return api.prepare_styles(ctx.style, s, ctx.content_image() if transfer != "none" else None)[0]


def _stylize(ctx: Context, styles: list, n: int):
    """One content image with each prepared style, one batch; returns the results in order."""
    s = ctx.settings(num_iterations=n)
    grid = stylizer.stylize_grid([ctx.content], styles, s, batch_size=len(styles), progress=ctx.progress)
    return list(grid[0])


@study("color", title="Whose colours: none vs original colours vs colour transfer (histogram, stats)", seeds=("002",))
def color(ctx: Context) -> Section:
    """The style's own colours, the content's chroma kept (``original_colors``), and the style's colours matched
    to the content's before its statistics are taken (``color_transfer`` histogram, stats); the colour-histogram
    distance of each result to the content and to the style."""
    n = ctx.iterations(100)
    transfers = ctx.cases(("none", *TRANSFERS), quick=2)
    styles = [_prepared_style(ctx, transfer=t) for t in transfers]
    results = _stylize(ctx, styles, n)
    content = ctx.content_image()
    style = styles[0]
    outputs = {"none": results[0].array, "original colors": images.original_colors(content, results[0].array)}
    outputs.update({f"transfer {t}": r.array for t, r in zip(transfers[1:], results[1:])})
    rows, numbers = [], {"iterations": n, "runs": {}}
    losses = {"none": results[0].loss, "original colors": results[0].loss,
              **{f"transfer {t}": r.loss for t, r in zip(transfers[1:], results[1:])}}
    for label, arr in outputs.items():
        d = {"to_content": color_distance(arr, content), "to_style": color_distance(arr, style),
             "final_loss": losses[label]}
        numbers["runs"][label] = d
        rows.append([label, d["to_content"], d["to_style"], d["final_loss"]])
    numbers["style_to_content"] = color_distance(style, content)
    numbers["matched_style_to_content"] = {t: color_distance(st, content) for t, st in zip(transfers[1:], styles[1:])}
    per = numbers["runs"]
    order = sorted(per, key=lambda k: per[k]["to_content"])
    text = (f"One stylization ({n} iterations at {ctx.size} px) four ways: the style's own colours (**none**), the "
            "same result with the content's chroma (**original colors**, neural-style's `-original_colors`), and "
            "the style image's colours matched to the content's before its Gram matrices are taken (**transfer "
            "histogram**: each RGB channel's histogram; **transfer stats**: mean and covariance). The runs differ "
            "only in the style image's pixels, so they ran as one batch.\n\n"
            "The colour distance is the 1-D Wasserstein distance between the RGB channels' value histograms, "
            "averaged over the channels (0: the same colours, in [0, 1] units). The style image is "
            f"{numbers['style_to_content']:.3g} from the content; "
            + "; ".join(f"{k}: {per[k]['to_content']:.3g} from the content and {per[k]['to_style']:.3g} from the "
                        "style" for k in per)
            + f". Closest to the content's colours: **{order[0]}**; farthest: **{order[-1]}**."
            + random_weights_note(ctx))
    labels = list(outputs)
    grid = ctx.grid([[content, style, *outputs.values()]], [""], ["content", "style", *labels], "grid",
                    caption=f"The content, the style as used, and the four results ({n} iterations).",
                    notes=[["", "", *(f"to content {per[k]['to_content']:.3f}" for k in labels)]])
    table = Table(["colours", "distance to content", "distance to style", "final loss"], rows,
                  caption="original colors shares its run (and loss) with none.")
    return Section(ctx.title, text, [table], [grid], numbers)


@study("style_tile", title="Tiling the style image: 1x1 vs 2x2 vs 3x3", seeds=("002",))
def style_tile(ctx: Context) -> Section:
    """Stylizations with the style image tiled 1x1, 2x2 and 3x3 (``style_tile``) before it is resized: the
    texture should come out 2 and 3 times smaller; measured by the mean spatial frequency and gradient."""
    n = ctx.iterations(100)
    tiles = ctx.cases(TILES, quick=2)
    styles = [_prepared_style(ctx, tile=t) for t in tiles]
    results = _stylize(ctx, styles, n)
    rows, numbers = [], {"iterations": n, "tiles": {}}
    for t, st, r in zip(tiles, styles, results):
        d = {"texture_scale": texture_scale(r.array), "mean_gradient": mean_gradient(r.array),
             "style_texture_scale": texture_scale(st), "final_loss": r.loss}
        numbers["tiles"][f"{t}x{t}"] = d
        rows.append([f"{t}x{t}", d["texture_scale"], d["mean_gradient"], d["style_texture_scale"], d["final_loss"]])
    per = numbers["tiles"]
    keys = list(per)
    first, last = per[keys[0]], per[keys[-1]]
    text = (f"One stylization ({n} iterations at {ctx.size} px) with the style image repeated "
            + ", ".join(keys) + " times before it is resized to the style size (seed 002: tiling a style "
            "strengthens its texture and makes it smaller). The runs differ only in the style image's pixels, so "
            "they ran as one batch.\n\n"
            "The texture's scale is measured as the mean spatial frequency of the luminance (the power spectrum's "
            "centroid, cycles per pixel) and the mean luminance gradient. The style as used goes from "
            f"{first['style_texture_scale']:.3g} ({keys[0]}) to {last['style_texture_scale']:.3g} ({keys[-1]}) "
            f"cycles/pixel; the results from {first['texture_scale']:.3g} to {last['texture_scale']:.3g} "
            f"({last['texture_scale'] / first['texture_scale']:.3g} times), their mean gradient from "
            f"{first['mean_gradient']:.3g} to {last['mean_gradient']:.3g}." + random_weights_note(ctx))
    grid = ctx.grid([styles, [r.array for r in results]], ["style as used", "result"], keys, "grid",
                    caption=f"Top: the style image as the loss sees it; bottom: the results ({n} iterations).",
                    notes=[[f"freq {per[k]['style_texture_scale']:.3f}" for k in keys],
                           [f"freq {per[k]['texture_scale']:.3f}" for k in keys]])
    table = Table(["tiles", "result: mean frequency (cycles/px)", "result: mean gradient",
                   "style: mean frequency", "final loss"], rows)
    return Section(ctx.title, text, [table], [grid], numbers)
