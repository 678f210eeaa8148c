#!/usr/bin/env python
"""Batch invariance: what it costs, and whether it holds, measured against the previous batch engine in one run.

"after" is the library as it is. "before" is the previous engine, recreated by swapping three module
attributes while its programs are traced:

* ``nst_jax.conv._tile_products`` -> a plain ``jnp.matmul``: under ``vmap`` the batch then folds into the rows
  of the Winograd GEMMs, whose shape (and so rounding) depends on the batch size;
* ``nst_jax.objective._stored`` -> identity: the weighted loss values summed as XLA fuses them;
* ``nst_jax.batch._per_image`` -> ``jax.vmap``: a batch of one image vmapped too.

Measured with the default settings (``conv_algorithm="auto"``, neural-style's L-BFGS) and random weights,
warm, ``block_until_ready``-ed, the minimum over ``--repeats`` (the machine may be shared; the minimum is the
least disturbed run), "before" and "after" interleaved:

* one image's value+grad (``Objective.value_and_grad`` under ``jit``, no batch axis) at ``--single-size``;
* for each ``--sizes`` x ``--batch-sizes``: the batch's value+grad (the engine's per-image map of
  ``value_and_grad``) and one L-BFGS iteration (``nst_jax.batch._step_batch``, after ``--warmup-steps``);
* invariance: the value+grad of image 0 in each batch (its neighbours: other random images) compared bit for
  bit with image 0 alone (batch of one), before and after.

Prints a markdown table; ``--out`` writes JSON with the date, the machine and the exact command::

    python scripts/bench_batch_invariance.py --sizes 128 256 --batch-sizes 1 2 4 --repeats 5 --out bi.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="Square image sizes (px).")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4], help="Batch sizes.")
    p.add_argument("--single-size", type=int, default=256, help="Size of the single-image value+grad timing.")
    p.add_argument("--repeats", type=int, default=5, help="Timed runs per figure (the minimum is reported).")
    p.add_argument("--warmup-steps", type=int, default=3, help="L-BFGS iterations before the timed ones.")
    p.add_argument("--out", type=Path, help="Write the results as JSON here.")
    return p.parse_args(argv)


@contextlib.contextmanager
def previous_engine():
    """Traces the previous batch engine (see the module docstring) while active."""
    import jax
    import jax.numpy as jnp

    from nst_jax import batch, conv, objective

    saved = conv._tile_products, objective._stored, batch._per_image
    conv._tile_products = lambda precision: (lambda v, u: jnp.matmul(v, u, precision=precision))
    objective._stored = lambda value: value
    batch._per_image = jax.vmap
    jax.clear_caches()  # nothing traced under one variant may be reused by the other
    try:
        yield
    finally:
        conv._tile_products, objective._stored, batch._per_image = saved
        jax.clear_caches()


def variant(name: str):
    return previous_engine() if name == "before" else contextlib.nullcontext()


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Problem:
    """Default objective and L-BFGS, random weights, random content images and one random style, at one size."""

    def __init__(self, size: int, n_images: int):
        import jax.numpy as jnp
        import numpy as np

        from nst_jax import optim, weights
        from nst_jax.config import Settings
        from nst_jax.objective import Objective, make_targets

        self.settings = s = Settings(weights="random")
        self.objective = Objective.from_settings(s)
        self.spec = optim.SolverSpec.from_settings(s)
        raw = weights.random_params(0)
        self.params = self.objective.prepare(raw)
        rng = np.random.default_rng(size)
        style = jnp.asarray(rng.uniform(-100, 100, (size, size, 3)), jnp.float32)
        self.targets = [make_targets(self.objective, raw, jnp.asarray(rng.uniform(-100, 100, (size, size, 3)),
                                                                      jnp.float32), [style], weights=s)
                        for _ in range(n_images)]
        self.x = jnp.asarray(rng.uniform(-100, 100, (n_images, size, size, 3)), jnp.float32)

    def batch_targets(self, b: int):
        from nst_jax import batch

        return batch.split_targets(self.targets[:b])

    def value_and_grad(self, name: str, b: int):
        """The compiled batched value+grad of images ``0..b-1`` under ``name``, and its arguments."""
        import jax

        from nst_jax import batch

        obj = self.objective
        batched, shared = self.batch_targets(b)

        def f(params, x, batched, shared):
            vg = lambda xi, t: obj.value_and_grad(params, xi, batch.merge_targets(shared, t))  # noqa: E731
            return batch._per_image(vg)(x, batched)

        with variant(name):
            compiled = jax.jit(f).lower(self.params, self.x[:b], batched, shared).compile()
        return compiled, (self.params, self.x[:b], batched, shared)

    def stepper(self, name: str, b: int, warmup: int):
        """``(step, state)``: the compiled batched L-BFGS iteration under ``name`` and a state after ``warmup``
        iterations. ``step(state)`` returns the next state (the argument is donated)."""
        from nst_jax import batch

        obj, spec = self.objective, self.spec
        batched, shared = self.batch_targets(b)
        with variant(name):
            t0 = time.perf_counter()
            init = batch._init_batch.lower(obj, spec, None, self.params, self.x[:b], batched, shared).compile()
            state = init(self.params, self.x[:b], batched, shared)
            step = batch._step_batch.lower(obj, spec, None, self.params, state, batched, shared).compile()
            compile_s = time.perf_counter() - t0
        run = lambda st: step(self.params, st, batched, shared)  # noqa: E731
        for _ in range(warmup):
            state = run(state)
        return run, state, compile_s


def identical(a, b) -> bool:
    import jax
    import numpy as np

    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def first_image(tree):
    import jax

    return jax.tree.map(lambda a: a[0], tree)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["bench_batch_invariance.py",
                                                                                      *argv])
    import jax

    from benchmark import machine_info

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "machine": machine_info(), "repeats": args.repeats}
    m = info["machine"]
    print(f"# bench_batch_invariance {info['date']}\n\n{m['cpu_model']} ({m['cpu_flags']}), {m['usable_cores']} "
          f"cores, jax {jax.__version__} {m['backend']}\n\n`{command}`\n", flush=True)
    names = ("before", "after")

    # One image, no batch axis: the path of nst_jax.stylize.
    p = Problem(args.single_size, 1)
    obj = p.objective
    single = {}
    for name in names:
        with variant(name):
            single[name] = jax.jit(obj.value_and_grad).lower(p.params, p.x[0], p.targets[0]).compile()
        jax.block_until_ready(single[name](p.params, p.x[0], p.targets[0]))
    times = {n: [] for n in names}
    for _ in range(args.repeats):  # interleaved
        for n in names:
            times[n].append(seconds(lambda n=n: jax.block_until_ready(single[n](p.params, p.x[0], p.targets[0]))))
    single_row = {"size": args.single_size, **{f"{n}_s": round(min(times[n]), 4) for n in names},
                  **{f"{n}_runs_s": [round(t, 4) for t in times[n]] for n in names}}
    print(f"single image value+grad at {args.single_size} px: before {single_row['before_s']:.3f} s, after "
          f"{single_row['after_s']:.3f} s ({single_row['after_s'] / single_row['before_s']:.2f}x)", flush=True)
    del p, single

    rows = []
    for size in args.sizes:
        p = Problem(size, max(args.batch_sizes))
        alone = {}
        for n in names:
            fn, fn_args = p.value_and_grad(n, 1)
            alone[n] = first_image(jax.device_get(fn(*fn_args)))
        for b in args.batch_sizes:
            row = {"size": size, "batch": b}
            vg = {n: p.value_and_grad(n, b) for n in names}
            outs = {n: jax.device_get(vg[n][0](*vg[n][1])) for n in names}
            for n in names:
                row[f"{n}_identical"] = identical(first_image(outs[n]), alone[n])
            steps = {n: p.stepper(n, b, args.warmup_steps) for n in names}
            states = {n: steps[n][1] for n in names}
            vg_t, step_t = {n: [] for n in names}, {n: [] for n in names}
            for _ in range(args.repeats):  # interleaved
                for n in names:
                    vg_t[n].append(seconds(lambda n=n: jax.block_until_ready(vg[n][0](*vg[n][1]))))
                    t0 = time.perf_counter()
                    states[n] = jax.block_until_ready(steps[n][0](states[n]))
                    step_t[n].append(time.perf_counter() - t0)
            for n in names:
                row[f"{n}_vg_s"] = round(min(vg_t[n]), 4)
                row[f"{n}_step_s"] = round(min(step_t[n]), 4)
                row[f"{n}_step_compile_s"] = round(steps[n][2], 2)
            rows.append(row)
            print(f"  {size} px, batch {b}: value+grad {row['before_vg_s']:.3f} -> {row['after_vg_s']:.3f} s, "
                  f"L-BFGS step {row['before_step_s']:.3f} -> {row['after_step_s']:.3f} s, image 0 as alone: "
                  f"before {row['before_identical']}, after {row['after_identical']}", file=sys.stderr, flush=True)
            del vg, outs, steps, states
        del p

    lines = ["| size | batch | value+grad before s | after s | after/before | L-BFGS step before s | after s | "
             "after/before | step compile before/after s | image 0 bit-identical to alone: before / after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['before_vg_s']:.3f} | {r['after_vg_s']:.3f} | "
                     f"{r['after_vg_s'] / r['before_vg_s']:.2f} | {r['before_step_s']:.3f} | {r['after_step_s']:.3f} | "
                     f"{r['after_step_s'] / r['before_step_s']:.2f} | {r['before_step_compile_s']:.1f} / "
                     f"{r['after_step_compile_s']:.1f} | {'yes' if r['before_identical'] else 'no'} / "
                     f"{'yes' if r['after_identical'] else 'no'} |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "single": single_row, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
