"""The quality cost of ``lbfgs_history_dtype="bfloat16"``: the loss after N L-BFGS iterations, bf16 history against
float32, on the same problems.

    .venv/bin/python scripts/history_dtype_quality.py --sizes 128 256 --iterations 50 200 --json out.json

For each size, content/style pair (from ``../shared/images``, else ``examples/``) and start (``content`` and
``random``, neural-style's noise), ``nst_jax.stylize`` runs twice with neural-style's settings (L-BFGS, history
100, no line search), once per history dtype, and reports the loss at each of ``--iterations``: the bf16 run's
loss relative to the float32 run's (``bf16 / f32 - 1``), and how far the float32 run got from the start
(``f32 / start``), so that a difference is read against the progress made. ``--weights``: VGG-19's weights
(default random: the figures then say how the optimizer behaves, not how the pictures look).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = [("tubingen", "starry_night"), ("golden_gate", "the_scream"), ("tubingen", "picasso_selfport1907")]


def find_image(name: str) -> Path:
    for d in (ROOT.parent / "shared" / "images", ROOT / "examples"):
        for ext in (".jpg", ".png"):
            if (d / (name + ext)).exists():
                return d / (name + ext)
    raise SystemExit(f"image {name!r} not found in ../shared/images or examples/")


def run_one(content: Path, style: Path, size: int, init: str, dtype: str, iterations: list[int], weights: str) -> dict:
    import nst_jax

    n = max(iterations)
    t0 = time.perf_counter()
    r = nst_jax.stylize(str(content), str(style), weights=weights, image_size=size, init=init, num_iterations=n,
                        lbfgs_history_dtype=dtype, print_every=min(iterations), progress=False)
    losses = {rec.iteration: rec.total for rec in r.history}
    return {"start": losses[0], **{str(i): losses[i] for i in iterations}, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--iterations", type=int, nargs="+", default=[50, 200])
    p.add_argument("--pairs", type=int, default=3, help="how many of the content/style pairs (at most 3)")
    p.add_argument("--inits", nargs="+", default=["content", "random"])
    p.add_argument("--weights", default="random")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    rows = []
    print("| size | content / style | init | iterations | f32 / start | bf16 / f32 - 1 |")
    print("|---:|---|---|---:|---:|---:|")
    for size in a.sizes:
        for c, s in PAIRS[: a.pairs]:
            for init in a.inits:
                res = {d: run_one(find_image(c), find_image(s), size, init, d, a.iterations, a.weights)
                       for d in ("float32", "bfloat16")}
                for it in a.iterations:
                    f32, bf16 = res["float32"][str(it)], res["bfloat16"][str(it)]
                    row = {"size": size, "content": c, "style": s, "init": init, "iterations": it,
                           "f32": f32, "bf16": bf16, "start": res["float32"]["start"],
                           "f32_over_start": f32 / res["float32"]["start"], "bf16_rel": bf16 / f32 - 1}
                    rows.append(row)
                    print(f"| {size} | {c} / {s} | {init} | {it} | {row['f32_over_start']:.4f} | "
                          f"{row['bf16_rel']:+.4%} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
