#!/usr/bin/env python
"""Throughput of batched stylization: images/s per batch size and image size.

For each image size and batch size, stylizes one batch of distinct content images (crops of the
example photo) for a fixed number of iterations with random VGG-19 weights:

* cold: the first call (tracing + XLA compilation + the run);
* warm: the best of ``--repeats`` further calls (compiled code reused, nothing recompiles);
* compile ~ cold - warm; images/s = batch / warm seconds; speedup relative to batch size 1.

Prints a markdown table and writes JSON (``--out``) with the date, the machine (CPU model, cores, JAX
backend and devices) and the exact command. Run it on an otherwise idle machine::

    python scripts/bench_batch.py --sizes 128 256 --batch-sizes 1 2 4 8 --iterations 10 \\
        --out results/bench_batch.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="Image sizes (long side, px).")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="Batch sizes.")
    p.add_argument("--iterations", type=int, default=10, help="Optimizer iterations per run.")
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--loop", choices=["auto", "step", "chunk"], default="auto", help="Loop form (Settings.loop).")
    p.add_argument("--precision", choices=["default", "high", "highest"], default=None)
    p.add_argument("--repeats", type=int, default=2, help="Warm runs per point (the best is reported).")
    p.add_argument("--content", default=str(ROOT / "examples" / "tubingen.jpg"))
    p.add_argument("--style", default=str(ROOT / "examples" / "starry_night.jpg"))
    p.add_argument("--out", type=Path, help="Write the results as JSON here.")
    return p.parse_args(argv)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import jax

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def contents_for(content, n: int, size: int):
    """``n`` distinct crops of one photo, all of the shape that ``size`` gives the photo."""
    import numpy as np

    from nst_jax import images

    full = images.load_image(content)
    h, w = images.target_size(*full.shape[:2], size)
    out = []
    for i in range(n):  # crops drifting along the photo, resized to the same (h, w)
        frac = 0.85
        ch, cw = int(full.shape[0] * frac), int(full.shape[1] * frac)
        top = int((full.shape[0] - ch) * ((i * 0.37) % 1.0))
        left = int((full.shape[1] - cw) * ((i * 0.61) % 1.0))
        out.append(images.resize(np.ascontiguousarray(full[top:top + ch, left:left + cw]), (h, w)))
    return out


def bench_point(size: int, b: int, args) -> dict:
    from nst_jax import batch

    kw = dict(weights="random", image_size=size, num_iterations=args.iterations, optimizer=args.optimizer,
              loop=args.loop, print_every=0)
    if args.precision:
        kw["precision"] = args.precision
    stylizer = batch.BatchStylizer(args.style, batch_size=b, **kw)
    prepared = [stylizer.prepare(c) for c in contents_for(args.content, b, size)]

    def once() -> float:
        t0 = time.perf_counter()
        for _chunk, outcomes, _ in stylizer.iter_results(prepared):
            for r in outcomes:
                if isinstance(r, Exception):
                    raise r
                r.array.sum()  # results are on the host
        return time.perf_counter() - t0

    cold = once()
    traces = sum(batch.trace_counts.values())
    warm_runs = [once() for _ in range(args.repeats)]
    assert sum(batch.trace_counts.values()) == traces, "the warm runs recompiled"
    warm = min(warm_runs)
    return {"size": size, "shape": list(prepared[0].shape[:2]), "batch": b, "iterations": args.iterations,
            "cold_s": round(cold, 3), "warm_s": round(warm, 3), "warm_runs_s": [round(t, 3) for t in warm_runs],
            "compile_s": round(max(0.0, cold - warm), 3), "images_per_s": round(b / warm, 4),
            "ms_per_iteration": round(1000 * warm / args.iterations, 2)}


def table(rows) -> str:
    lines = ["| size | shape | batch | compile s | warm s | ms/iteration | images/s | vs batch 1 |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        if r["batch"] == 1:
            base[r["size"]] = r["images_per_s"]
        ratio = r["images_per_s"] / base[r["size"]] if r["size"] in base else float("nan")
        lines.append(f"| {r['size']} | {r['shape'][0]}x{r['shape'][1]} | {r['batch']} | {r['compile_s']:.2f} | "
                     f"{r['warm_s']:.2f} | {r['ms_per_iteration']:.1f} | {r['images_per_s']:.3f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_batch.py", *argv])
    import jax

    from nst_jax import optim

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "machine": machine(), "loop": optim.default_loop() if args.loop == "auto" else args.loop,
            "optimizer": args.optimizer, "iterations": args.iterations, "weights": "random"}
    print(f"# bench_batch {info['date']}\n\n{info['machine']['cpu']}, {info['machine']['cores']} cores, "
          f"jax {jax.__version__} {info['machine']['backend']} ({len(jax.devices())} device(s)), loop "
          f"{info['loop']}, {args.optimizer}, {args.iterations} iterations\n\n`{command}`\n", flush=True)
    rows = []
    for size in args.sizes:
        for b in args.batch_sizes:
            rows.append(bench_point(size, b, args))
            print(f"  size {size} batch {b}: {rows[-1]['images_per_s']:.3f} images/s "
                  f"(compile {rows[-1]['compile_s']:.1f} s)", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
