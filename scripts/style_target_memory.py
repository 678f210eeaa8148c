"""Peak memory of a large style image's targets: one whole-image pass vs tile by tile (nst_jax.tiled_targets).

Each mode runs in a fresh process (random VGG-19 weights, a random style image of ``--height`` x ``--width``,
the default style layers and loss, or those of the flags) and reports its peak RSS (``ru_maxrss``, the whole
process: runtime, params and compilation included) and that peak minus the process's peak before the targets
(after importing, loading the params and one tiny operation): what the targets themselves add. The two modes'
statistics are compared (the largest difference relative to each layer's largest entry).

XLA's accounting of each mode's one pass (``compiled.memory_analysis()``: arguments + outputs + temporaries -
aliased, as ``scripts/max_image_size.py`` computes it) is reported too: of the whole image, or of the largest
crop a tile reads; ``--estimate-only`` reports only that, running nothing.

Usage (runs of several GB: serialize them with the other large runs)::

    flock /tmp/bigmem.lock python scripts/style_target_memory.py --height 2048 --width 2048 --tile 512
    python scripts/style_target_memory.py --height 4096 --width 4096 --estimate-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402

ROOT = bm.ROOT
MB = 2**20


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def worker(mode: str, height: int, width: int, tile: int, out: Path | None) -> dict:
    """One measurement in this process: the style statistics of a random image, whole or tiled (without ``out``:
    XLA's estimate only, nothing run)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import max_image_size as mis
    from nst_jax import objective, tiled_targets, weights
    from nst_jax.config import Settings

    s = Settings(weights="random")
    obj = objective.Objective.from_settings(s)
    params = obj.prepare(weights.random_params(seed=0))
    # XLA's accounting of one pass (compiled for an abstract input, nothing allocated): over the whole image, or
    # over the largest crop a tile reads (its interior plus the halo on both sides)
    read = tile + 2 * tiled_targets.halo(obj.source_layers("style"))
    shape = (height, width) if mode == "whole" else (min(height, read), min(width, read))
    xla = mis.phase_memory(lambda: objective.style_statistics.lower(
        obj, params, jax.ShapeDtypeStruct((*shape, 3), jnp.float32)))
    info = {"mode": mode, "xla_pass_shape_hw": list(shape), "xla_peak_mb": xla["peak"] / MB,
            "xla_temp_mb": xla["temp"] / MB, "conv_algorithm": obj.conv_algorithm,
            "layers": list(obj.source_layers("style")), "halo": tiled_targets.halo(obj.source_layers("style"))}
    if out is None:
        return info
    style = jnp.asarray(np.random.default_rng(0).uniform(-110.0, 130.0, (height, width, 3)), jnp.float32)
    jax.block_until_ready(style + 1.0)
    before = _peak_bytes()
    t0 = time.perf_counter()
    if mode == "whole":
        stats = objective.style_statistics(obj, params, style)
    else:
        stats = tiled_targets.tiled_statistics(obj, params, style, tile=tile)
    stats = jax.device_get(stats)
    seconds = time.perf_counter() - t0
    np.savez(out, **{f"{name}/{layer}": np.asarray(v) for name, entries in stats.items()
                     for layer, v in entries.items()})
    return {**info, "peak_mb": _peak_bytes() / MB, "before_mb": before / MB, "added_mb": (_peak_bytes() - before) / MB,
            "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=2048)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--tile", type=int, default=512, help="tile side of the tiled mode (px)")
    p.add_argument("--estimate-only", action="store_true",
                   help="only XLA's accounting of each mode's one pass (compiled, nothing run or allocated)")
    p.add_argument("--modes", nargs="+", choices=["whole", "tiled"], default=["whole", "tiled"],
                   help="which modes to run (the tiled one needs far less memory)")
    p.add_argument("--worker", choices=["whole", "tiled"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.height, args.width, args.tile, args.out)))
        return 0
    import numpy as np

    results, files = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in [m for m in ("tiled", "whole") if m in args.modes]:
            files[mode] = Path(tmp) / f"{mode}.npz"
            cmd = [sys.executable, __file__, "--worker", mode, "--height", str(args.height), "--width",
                   str(args.width), "--tile", str(args.tile)]
            cmd += [] if args.estimate_only else ["--out", str(files[mode])]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                results[mode] = {"mode": mode, "error": f"exit {done.returncode}"}
                continue
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        worst = None
        if not args.estimate_only and len(results) == 2 and all("error" not in r for r in results.values()):
            whole, tiled = np.load(files["whole"]), np.load(files["tiled"])
            worst = max(float(np.abs(whole[k] - tiled[k]).max() / np.abs(whole[k]).max()) for k in whole.files)
    m = bm.machine_info()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {m['cpu_model']} ({m['usable_cores']} cores "
          f"usable, flags {m['cpu_flags']}, {m['memory_gb']} GB), jax {m['jax']} on {m['backend']}")
    print("command: python " + " ".join(["scripts/style_target_memory.py"] + (argv or sys.argv[1:])))
    print(f"style image {args.width}x{args.height}, tile {args.tile}, random weights\n")
    print("| mode | XLA: one pass over (H x W) | XLA peak of that pass (MB) | peak RSS (MB) | before targets (MB) | "
          "added by the targets (MB) | time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in [m for m in ("whole", "tiled") if m in results]:
        r = results[mode]
        if "error" in r:
            print(f"| {mode} | {r['error']} | | | | | |")
            continue
        h, w = r["xla_pass_shape_hw"]
        run = (f"{r['peak_mb']:.0f} | {r['before_mb']:.0f} | {r['added_mb']:.0f} | {r['seconds']:.1f}" if "peak_mb" in r
               else "- | - | - | -")
        print(f"| {mode} | {h} x {w} | {r['xla_peak_mb']:.0f} | {run} |")
    if worst is not None:
        print(f"\nlargest difference tiled vs whole, relative to each layer's largest entry: {worst:.2e}")
    info = next((r for r in results.values() if "error" not in r), {})
    print(f"layers {info.get('layers')}, halo {info.get('halo')} px, conv_algorithm {info.get('conv_algorithm')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
