#!/usr/bin/env python
"""Batch invariance: what it costs, and whether it holds, measured against the previous batch engine in one run.

"after" is the library as it is: on CPU the batch engine runs every image with the single-image program
(``nst_jax.batch._per_image``) and steps each image's state on its own. "before" is the previous engine,
``jax.vmap`` of the single-image step on the batched state, recreated while its programs are traced by
setting ``nst_jax.batch._per_image`` to ``jax.vmap`` and ``nst_jax.batch._separate`` to false.

Measured with the default settings (``conv_algorithm="auto"``, neural-style's L-BFGS), random weights, square
random content images and one random style (its targets shared by the batch, as in the engine); warm,
``block_until_ready``-ed, "before" and "after" interleaved, the minimum over ``--repeats`` (the machine may
be shared with other processes; the minimum is the least disturbed run):

* one image's value+grad (``Objective.value_and_grad`` under ``jit``, no batch axis: the program of
  ``nst_jax.stylize``) at ``--single-size``; the engine does not change it, which is checked (same HLO);
* for each ``--sizes`` x ``--batch-sizes``: the batch's value+grad (the engine's per-image map of
  ``value_and_grad``) and an L-BFGS iteration of the engine's stepper (``nst_jax.batch.batch_stepper``,
  ``advance`` by ``--iterations-per-advance`` after ``--warmup-steps``), its compile time (init and the
  first iteration) and XLA's temporary memory of the compiled step;
* invariance: the value+grad of image 0 in each batch (its neighbours: other random images) compared bit for
  bit with image 0 in a batch of one, before and after.

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
    p.add_argument("--iterations-per-advance", type=int, default=5,
                   help="L-BFGS iterations per timed call of the stepper's advance (the engine advances by "
                        "chunk_size, 25 by default, or to the next record).")
    p.add_argument("--out", type=Path, help="Write the results as JSON here.")
    return p.parse_args(argv)


@contextlib.contextmanager
def previous_engine():
    """Traces the previous batch engine (``jax.vmap``, see the module docstring) while active."""
    import jax

    from nst_jax import batch

    saved = batch._per_image, batch._separate
    batch._per_image = lambda fn, sharding=None: jax.vmap(fn)
    batch._separate = lambda sharding: False
    jax.clear_caches()  # nothing traced under one variant may be reused by the other
    try:
        yield
    finally:
        batch._per_image, batch._separate = saved
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

        from nst_jax import objective, optim, weights
        from nst_jax.config import Settings

        self.settings = s = Settings(weights="random")
        self.objective = obj = objective.Objective.from_settings(s)
        self.spec = optim.SolverSpec.from_settings(s)
        raw = weights.random_params(0)
        self.params = obj.prepare(raw)
        rng = np.random.default_rng(size)
        image = lambda: jnp.asarray(rng.uniform(-100, 100, (size, size, 3)), jnp.float32)  # noqa: E731
        style = objective.style_targets(obj, raw, [image()])  # computed once: shared by the batch
        self.targets = [objective.with_weights(obj, s, style, objective.content_targets(obj, raw, image()))
                        for _ in range(n_images)]
        self.x = jnp.stack([image() for _ in range(n_images)])

    def batch_targets(self, b: int):
        from nst_jax import batch

        return batch.split_targets(self.targets[:b])

    def value_and_grad(self, name: str, b: int):
        """The compiled value+grad of the batch of images ``0..b-1`` under ``name``, and its arguments."""
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
        """The batch engine's L-BFGS stepper (:func:`nst_jax.batch.batch_stepper`) for the images ``0..b-1``
        under ``name``: ``(advance, state, compile seconds, temporary bytes of the compiled step)``;
        ``advance(state, n)`` runs ``n`` iterations (its argument is consumed), ``state`` is the state after
        ``warmup`` iterations."""
        from nst_jax import batch

        obj, spec = self.objective, self.spec
        batched, shared = self.batch_targets(b)
        with variant(name):
            stepper = batch.batch_stepper(obj, spec, self.params, batched, shared=shared, loop="step")
            t0 = time.perf_counter()
            state = jax_ready(stepper.advance(stepper.init(self.x[:b]), 1))  # compiles init, step and around
            compile_s = time.perf_counter() - t0
            if batch._separate(None):  # the step program the engine runs: per image, or vmapped
                per_image = batch._unstack(batched)
                step = batch._step_images.lower(obj, spec, self.params, batch._unstack(state), per_image, shared)
            else:
                step = batch._step_batch.lower(obj, spec, None, self.params, state, batched, shared)
            temp = step.compile().memory_analysis().temp_size_in_bytes
        if warmup > 1:
            state = jax_ready(stepper.advance(state, warmup - 1))
        return stepper.advance, state, compile_s, temp


def jax_ready(tree):
    import jax

    return jax.block_until_ready(tree)


def identical(a, b) -> bool:
    import jax
    import numpy as np

    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def first_image(tree):
    import jax

    return jax.tree.map(lambda a: a[0], tree)


NAMES = ("before", "after")


def single_image(args) -> dict:
    """One image's value+grad, before and after (the same program: checked)."""
    import jax

    p = Problem(args.single_size, 1)
    vg = {}
    for name in NAMES:
        with variant(name):
            vg[name] = jax.jit(p.objective.value_and_grad).lower(p.params, p.x[0], p.targets[0]).compile()
    call = lambda name: jax.block_until_ready(vg[name](p.params, p.x[0], p.targets[0]))  # noqa: E731
    times = {name: [] for name in NAMES}
    for name in NAMES:
        call(name)
    for _ in range(args.repeats):  # interleaved
        for name in NAMES:
            times[name].append(seconds(lambda name=name: call(name)))
    return {"size": args.single_size, "same_program": vg["before"].as_text() == vg["after"].as_text(),
            **{f"{n}_s": round(min(times[n]), 4) for n in NAMES},
            **{f"{n}_runs_s": [round(t, 4) for t in times[n]] for n in NAMES}}


def batch_point(p: Problem, size: int, b: int, alone: dict, args) -> dict:
    import jax

    row = {"size": size, "batch": b}
    vg = {n: p.value_and_grad(n, b) for n in NAMES}
    for n in NAMES:
        row[f"{n}_identical"] = identical(first_image(jax.device_get(vg[n][0](*vg[n][1]))), alone[n])
    steps = {n: p.stepper(n, b, args.warmup_steps) for n in NAMES}
    states = {n: steps[n][1] for n in NAMES}
    vg_t, step_t = {n: [] for n in NAMES}, {n: [] for n in NAMES}
    k = args.iterations_per_advance
    for _ in range(args.repeats):  # interleaved
        for n in NAMES:
            vg_t[n].append(seconds(lambda n=n: jax.block_until_ready(vg[n][0](*vg[n][1]))))
            t0 = time.perf_counter()
            states[n] = jax.block_until_ready(steps[n][0](states[n], k))
            step_t[n].append((time.perf_counter() - t0) / k)
    for n in NAMES:
        row[f"{n}_vg_s"] = round(min(vg_t[n]), 4)
        row[f"{n}_step_s"] = round(min(step_t[n]), 4)
        row[f"{n}_compile_s"] = round(steps[n][2], 2)
        row[f"{n}_temp_mb"] = round(steps[n][3] / 2**20)
    return row


def table(rows) -> str:
    lines = ["| size | batch | value+grad s before | after | after/before | L-BFGS step s before | after | "
             "after/before | compile s before / after | XLA temp MB before / after | bit-identical to alone "
             "before / after |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['before_vg_s']:.3f} | {r['after_vg_s']:.3f} | "
                     f"{r['after_vg_s'] / r['before_vg_s']:.2f} | {r['before_step_s']:.3f} | {r['after_step_s']:.3f} | "
                     f"{r['after_step_s'] / r['before_step_s']:.2f} | {r['before_compile_s']:.1f} / "
                     f"{r['after_compile_s']:.1f} | {r['before_temp_mb']} / {r['after_temp_mb']} | "
                     f"{yes(r['before_identical'])} / {yes(r['after_identical'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(
        ["bench_batch_invariance.py", *argv])
    import jax

    from benchmark import machine_info

    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
            "machine": machine_info(), "repeats": args.repeats}
    m = info["machine"]
    print(f"# bench_batch_invariance {info['date']}\n\n{m['cpu_model']} ({m['cpu_flags']}), {m['usable_cores']} "
          f"cores, jax {jax.__version__} {m['backend']}\n\n`{command}`\n", flush=True)

    single = single_image(args)
    print(f"one image's value+grad at {single['size']} px: before {single['before_s']:.3f} s, after "
          f"{single['after_s']:.3f} s ({single['after_s'] / single['before_s']:.2f}x; same program: "
          f"{single['same_program']})\n", flush=True)
    rows = []
    for size in args.sizes:
        p = Problem(size, max(args.batch_sizes))
        alone = {}
        for n in NAMES:
            fn, fn_args = p.value_and_grad(n, 1)
            alone[n] = first_image(jax.device_get(fn(*fn_args)))
        for b in args.batch_sizes:
            rows.append(batch_point(p, size, b, alone, args))
            r = rows[-1]
            print(f"  {size} px, batch {b}: value+grad {r['before_vg_s']:.3f} -> {r['after_vg_s']:.3f} s, L-BFGS step "
                  f"{r['before_step_s']:.3f} -> {r['after_step_s']:.3f} s, image 0 as alone: before "
                  f"{r['before_identical']}, after {r['after_identical']}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "single": single, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
