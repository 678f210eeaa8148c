"""Tiled vs untiled stylization at a size where both fit: the loss of each output and how visible the seams are.

Both runs use the same settings (every ``nst_jax.Settings`` field is a flag); the tiled one adds ``tile`` and
``tile_overlap`` (and the other tiling settings given: ``--tile-iterations``, ``--tile-base-size``, ...).
Each output is then evaluated **untiled**: its loss under the objective of the whole image
(:func:`nst_jax.evaluate.image_loss`, the same targets for both), and its seam score at the tiled run's
boundary lines (:func:`nst_jax.seams.seam_score`: about 1 means no visible seams; the untiled output, which has
no seams, shows what the picture itself scores there). The tiled output's worst boundary segment is saved as a
PNG next to the same crop of the untiled output, and both outputs.

Usage::

    python scripts/tile_quality.py --size 1024 --tile 512 --tile-overlap 64 --num-iterations 100 \\
        --out-dir /tmp/tile_quality
    python scripts/tile_quality.py --size 256 --tile 128 --tile-overlap 32 --weights random --num-iterations 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402

ROOT = bm.ROOT
EXAMPLES = ROOT / "examples"


def run(args) -> dict:
    """Both stylizations, their untiled losses and seam scores; writes the pictures to ``args.out_dir``."""
    import numpy as np

    import nst_jax
    from nst_jax import flags, images, seams, tiling
    from nst_jax.evaluate import image_loss

    # the settings only tiling reads go to the tiled run only (the untiled one refuses them)
    s = flags.settings_from_args(args, exclude=tiling.TILE_SETTINGS).replace(image_size=args.size)
    tiled = {name: getattr(args, name) for name in tiling.TILE_SETTINGS if getattr(args, name, None) is not None}
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, extra in (("untiled", {}), ("tiled", tiled)):
        t0 = time.perf_counter()
        result = nst_jax.stylize(args.content, args.style, s, progress=False, **extra)
        seconds = time.perf_counter() - t0
        images.save_image(result.array, out / f"{name}.png")
        runs[name] = {"array": result.array, "seconds": seconds, "settings": dict(extra)}
    h, w = runs["untiled"]["array"].shape[:2]
    boxes = tiling.tile_boxes(h, w, args.tile, args.tile_overlap)
    for name, r in runs.items():
        r["loss"] = image_loss(r["array"], args.content, args.style, s)
        r["seam_score"] = seams.seam_score(r["array"], boxes, args.tile)
    worst = seams.worst_seam_crop(runs["tiled"]["array"], boxes, args.crop, args.tile)
    same = runs["untiled"]["array"][worst.top:worst.top + args.crop, worst.left:worst.left + args.crop]
    images.save_image(np.concatenate([worst.array, np.ones((worst.array.shape[0], 4, 3), np.float32), same], axis=1),
                      out / "worst_seam_tiled_vs_untiled.png")
    images.save_image(worst.array, out / "worst_seam_tiled.png")
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": bm.machine_info(), "command": "python scripts/tile_quality.py " + shlex.join(args.argv),
            "shape_hw": [h, w], "tiles": len(boxes), "boxes": [list(map(int, b)) for b in boxes],
            "worst": {"top": worst.top, "left": worst.left, "ratio": worst.ratio, "line": list(worst.line)},
            "runs": {k: {kk: vv for kk, vv in v.items() if kk != "array"} for k, v in runs.items()},
            "out_dir": str(out)}


def markdown(r: dict) -> str:
    m = r["machine"]
    h, w = r["shape_hw"]
    terms = [t for t in ("total", "content", "style", "tv") if t in r["runs"]["untiled"]["loss"]]
    tiled = ", ".join(f"{k}={v}" for k, v in r["runs"]["tiled"]["settings"].items())
    lines = [f"{r['date']}; {m['cpu_model']} ({m['usable_cores']} cores usable, flags {m['cpu_flags']}), "
             f"jax {m['jax']} on {m['backend']}", "", f"command: `{r['command']}`", "",
             f"output {w}x{h}; tiled run: {tiled}, {r['tiles']} tiles; loss evaluated untiled (whole image); "
             "seam score at the tiled run's overlap centre lines (1: none)", "",
             "| run | " + " | ".join(f"{t} loss" for t in terms) + " | seam score | time (s) |",
             "|---|" + "---|" * (len(terms) + 2)]
    for name, run_ in r["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{run_['loss'][t]:.4g}" for t in terms)
                     + f" | {run_['seam_score']:.3f} | {run_['seconds']:.1f} |")
    wz = r["worst"]
    lines += ["", f"worst seam segment of the tiled output: {wz['line'][0]} line {wz['line'][1]}, ratio "
                  f"{wz['ratio']:.2f}; crop at (top {wz['top']}, left {wz['left']}) in "
                  f"{r['out_dir']}/worst_seam_tiled_vs_untiled.png (tiled left, untiled right)"]
    return "\n".join(lines)


def parse_args(argv=None):
    from nst_jax import cli

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], conflict_handler="resolve",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Usage"):])
    p.add_argument("--content", default=str(EXAMPLES / "tubingen.jpg"), help="content image")
    p.add_argument("--style", default=str(EXAMPLES / "starry_night.jpg"), help="style image")
    p.add_argument("--out-dir", type=Path, default=Path("tile_quality"), help="where the pictures go")
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON here too")
    p.add_argument("--crop", type=int, default=128, help="side of the worst-seam crop (px)")
    cli.add_settings_arguments(p)
    # The size both runs are made at, and the tiled run's tiles (replace the settings' flags).
    p.add_argument("--size", type=int, default=1024, help="long side of both outputs (px)")
    p.add_argument("--tile", type=int, default=512, help="tile side of the tiled run (px)")
    p.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=64,
                   help="overlap of neighbouring tiles in the tiled run (px)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    result = run(args)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
