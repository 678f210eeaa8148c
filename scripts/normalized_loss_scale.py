"""How the classic loss terms change in magnitude on the normalized VGG-19, and how much the style weight
must change to keep the classic content/style balance.

Content: tubingen, style: starry_night (``examples/``), both at ``--size`` px (long side); the image at which
the terms are measured is neural-style's random start (0.001 * N(0, 1) in Caffe space, seed 0). Terms, with
unit weights: content (MSE at relu4_2), style (Gram MSE at relu1_1 .. relu5_1, equal layer weights) with
activation shift 0 and -1, each on the original network and on its normalization
(:func:`nst_jax.normalize.normalize`: the bundled examples at ``--norm-size`` px, average pooling). Both
networks use ``--pooling`` (default avg, as the normalization). Reported: each term's value, the norm of
its gradient w.r.t. the image, and the factor the style weight must be multiplied by on the normalized
network to keep ``style / content`` (of the values, and of the gradient norms) what it is on the original::

    python scripts/normalized_loss_scale.py --weights random            # no real weights needed
    python scripts/normalized_loss_scale.py --weights vgg19.h5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nst_jax import images, losses, normalize, pipeline, vgg, weights  # noqa: E402
from nst_jax.config import Settings  # noqa: E402
from nst_jax.objective import Objective, make_targets  # noqa: E402

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def measure(params, content: np.ndarray, style: np.ndarray, shift: float, pooling: str) -> dict:
    """Values and image-gradient norms of the content and style terms (unit weights) at the random start."""
    s = Settings(weights="random", content_layers=("relu4_2",), style_layers=STYLE_LAYERS, content_weight=1.0,
                 style_weight=1.0, tv_weight=0.0, activation_shift=shift, pooling=pooling, precision="highest",
                 conv_algorithm="direct")
    objective = Objective.from_settings(s)
    x = pipeline.initial_image(s, content, [style])
    c, st = vgg.preprocess(jnp.asarray(content)), vgg.preprocess(jnp.asarray(style))
    out = {}
    for name, w in (("content", {"content": [1.0], "style": [0.0] * 5}),
                    ("style", {"content": [0.0], "style": [1.0] * 5})):
        targets = make_targets(objective, params, c, [st], weights=w)
        terms, grad = jax.jit(objective.value_and_grad)(params, x, targets)
        out[name] = {"value": float(terms[name]), "grad_norm": float(jnp.linalg.norm(grad))}
    # per style layer, from the same formulas
    feats = objective.features(params, x, STYLE_LAYERS)
    style_feats = objective.features(params, st, STYLE_LAYERS)
    out["style_layers"] = {l: float(losses.style_loss(losses.gram(feats[l], shift), losses.gram(style_feats[l], shift)))
                           for l in STYLE_LAYERS}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="random", help="source weights: 'random' (default) or a file")
    parser.add_argument("--size", type=int, default=128, help="long side of content and style (default 128)")
    parser.add_argument("--norm-size", type=int, default=normalize.DEFAULT_SIZE,
                        help="long side of the normalization images (default %(default)s)")
    parser.add_argument("--pooling", choices=("avg", "max"), default="avg")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    original = weights.resolve_params(args.weights)
    start = time.perf_counter()
    result = normalize.normalize(args.weights, size=args.norm_size)
    normalize_s = time.perf_counter() - start
    content = images.resize_long_side(images.load_image(ROOT / "examples" / "tubingen.jpg"), args.size)
    style = images.resize_long_side(images.load_image(ROOT / "examples" / "starry_night.jpg"), args.size)

    report = {"weights": weights.describe(args.weights), "size": args.size, "norm_size": args.norm_size,
              "pooling": args.pooling, "normalize_seconds": round(normalize_s, 2),
              "dead_channels": result.metadata["dead_channels"],
              "scales": {k: v for k, v in result.metadata["layers"].items()}, "shifts": {}}
    for shift in (0.0, -1.0):
        per_net = {net: measure(p, content, style, shift, args.pooling)
                   for net, p in (("original", original), ("normalized", result.params))}
        o, n = per_net["original"], per_net["normalized"]
        factor = {k: (o["style"][k] / o["content"][k]) / (n["style"][k] / n["content"][k])
                  for k in ("value", "grad_norm")}
        report["shifts"][str(shift)] = {**per_net, "style_weight_factor": factor}

    print(f"weights: {weights.describe(args.weights)}; content/style {args.size} px, {args.pooling} pooling; "
          f"normalization on the bundled examples at {args.norm_size} px ({normalize_s:.1f} s, "
          f"{report['dead_channels']} dead channels)")
    print(f"{'shift':>5} {'term':<14} {'original':>12} {'normalized':>12} {'ratio n/o':>10}   "
          f"{'|grad| orig':>11} {'|grad| norm':>11} {'ratio':>9}")
    for shift, r in report["shifts"].items():
        o, n = r["original"], r["normalized"]
        for term in ("content", "style"):
            print(f"{shift:>5} {term:<14} {o[term]['value']:12.4g} {n[term]['value']:12.4g} "
                  f"{n[term]['value'] / o[term]['value']:10.3g}   {o[term]['grad_norm']:11.4g} "
                  f"{n[term]['grad_norm']:11.4g} {n[term]['grad_norm'] / o[term]['grad_norm']:9.3g}")
        for layer in STYLE_LAYERS:
            ov, nv = o["style_layers"][layer], n["style_layers"][layer]
            print(f"{shift:>5} {'  ' + layer:<14} {ov:12.4g} {nv:12.4g} {nv / ov:10.3g}")
        f = r["style_weight_factor"]
        print(f"{shift:>5} style weight x {f['value']:.4g} keeps style/content of the values, "
              f"x {f['grad_norm']:.4g} of the gradient norms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
