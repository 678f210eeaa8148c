"""Benchmarks nst_jax's objective and optimizer loops, optionally against a PyTorch eager reference.

What is measured, per image size (long side; the demo images keep their aspect ratio):

* compile time (trace + lower + XLA compile, from ``jax.monitoring`` events) of the
  objective's value+gradient and of the L-BFGS/Adam steppers;
* seconds per objective value+gradient (``Objective.value_and_grad`` under ``jax.jit``);
* seconds per L-BFGS iteration (neural-style's L-BFGS, ``optim.single_image_stepper``)
  with both loop forms, ``step`` and ``chunk``, and per Adam iteration (default loop);
* peak memory: process RSS high-water mark (``getrusage``), and the high-water mark of
  the timed phase alone (``/proc/self/clear_refs`` reset after compilation); on GPUs the
  device's ``peak_bytes_in_use``. Every configuration runs in a fresh subprocess, so
  peaks do not mix;
* achieved FLOP/s: XLA's cost analysis (``compiled.cost_analysis()["flops"]``) of one
  call / one step divided by its time, as a fraction of the XLA fp32 matmul peak measured
  in the same run (a timed large ``jnp.dot``) and of ``--peak-gflops`` if given;
* with ``--reference torch`` (``scripts/torch_reference.py``): the same objective in
  PyTorch eager mode, checked to agree (every term within 1e-4 relative, gradient cosine
  similarity > 0.9999) before anything is timed; torch.optim.LBFGS and Adam timed the
  same way; every figure also as a ratio nst_jax / PyTorch from the same run;
* with ``--time-to-loss``: the loss PyTorch's L-BFGS reaches after 100 iterations from
  the initial image, and the iterations and seconds nst_jax's L-BFGS needs from the same
  initial image to reach it.

Timings are warm (compilation excluded), ``block_until_ready``-ed, the median of
``--repeats`` repetitions (an optimizer repetition is ``--iters`` iterations).

Weights are random (``nst_jax.weights.random_params``): speed does not depend on them,
but loss trajectories do (see BENCHMARKS.md).

Usage::

    python scripts/benchmark.py                                   # 256 and 512 px, nst_jax only
    python scripts/benchmark.py --reference torch --out results.json --md results.md
    python scripts/benchmark.py --sizes 128 --repeats 2 --iters 2 --reference torch   # quick smoke run
    python scripts/benchmark.py --reference torch --time-to-loss --sizes 256 512
    python scripts/benchmark.py --profile --sizes 256 512         # where the time goes + proposed changes
    python scripts/benchmark.py --sizes 512 1024 2048 --precision highest   # on a GPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
RESULT_MARK = "@@RESULT@@"

#: The targets of the benchmark issue (CPU), checked at the end of a run.
TARGETS = {
    "lbfgs_ratio_512": 0.8,
    "lbfgs_ratio_256": 0.9,
    "time_to_loss_ratio": 0.6,
    "vg_gflops_512": 280.0,
    "compile_s_512": 20.0,
}


# ----------------------------------------------------------------------------------------------------------------
# Small helpers shared by the workers


def _median(xs):
    return float(statistics.median(xs)) if xs else None


def _peak_rss_mb() -> float:
    """The process's RSS high-water mark (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_hwm() -> bool:
    """Resets the kernel's RSS high-water mark (``VmHWM``) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class _CompileClock:
    """Sums JAX's compile-time events (trace, lowering, XLA compile) between :meth:`start` and :meth:`stop`."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        from jax import monitoring

        self.events: list[tuple[str, float]] = []
        monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name, duration, **_):
        self.events.append((name, float(duration)))

    def start(self):
        self.events.clear()

    def stop(self) -> dict:
        by = {k.rsplit("/", 1)[-1]: sum(d for n, d in self.events if n == k) for k in self.EVENTS}
        return {"compile_s": sum(by.values()), "xla_compile_s": by["backend_compile_duration"],
                "trace_lower_s": by["jaxpr_trace_duration"] + by["jaxpr_to_mlir_module_duration"]}


def _flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    f = ca.get("flops")
    return float(f) if f is not None and f > 0 else None


def _device_peak_bytes():
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _memory(result: dict, hwm_reset: bool) -> dict:
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    result["timed_peak_rss_mb"] = round(_hwm_mb(), 1) if hwm_reset and _hwm_mb() is not None else None
    dev = _device_peak_bytes()
    if dev is not None:
        result["device_peak_mb"] = round(dev / 2**20, 1)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Inputs: written once by the parent, read by every worker (so all see identical arrays)


def write_inputs(workdir: Path, sizes, seed: int, content: str, style: str) -> dict:
    """Params and, per size, Caffe-space content/style/initial images, as .npz files; returns their shapes."""
    import jax.numpy as jnp

    import nst_jax
    from nst_jax import api, images, vgg, weights

    params = weights.random_params(seed)
    flat = {f"{k}/{kind}": v[kind] for k, v in params["params"].items() for kind in ("kernel", "bias")}
    np.savez(workdir / "params.npz", **flat)
    shapes = {}
    for size in sizes:
        s = nst_jax.Settings(image_size=size, weights="random", seed=seed)
        content_img = images.resize_long_side(images.load_image(content, label="content image"), size)
        styles = api.prepare_styles(style, s)
        x0 = api.initial_image(s, content_img, styles)  # neural-style's init: 0.001 * N(0, 1), Caffe space
        np.savez(workdir / f"inputs_{size}.npz", content=np.asarray(vgg.preprocess(jnp.asarray(content_img))),
                 style=np.asarray(vgg.preprocess(jnp.asarray(styles[0]))), x0=np.asarray(x0))
        shapes[size] = {"content": list(content_img.shape[:2]), "style": list(styles[0].shape[:2])}
    return shapes


def _load_params(workdir: Path) -> dict:
    z = np.load(workdir / "params.npz")
    params: dict = {"params": {}}
    for key in z.files:
        layer, kind = key.split("/")
        params["params"].setdefault(layer, {})[kind] = z[key]
    return params


def _load_inputs(workdir: Path, size: int) -> dict:
    z = np.load(workdir / f"inputs_{size}.npz")
    return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)


def _jax_problem(cfg: dict, optimizer: str = "lbfgs"):
    """The library's objective, targets and solver spec for this configuration."""
    import jax.numpy as jnp

    import nst_jax
    from nst_jax import optim
    from nst_jax.objective import Objective, make_targets

    workdir = Path(cfg["workdir"])
    params = _load_params(workdir)  # float32 NumPy arrays, as api.get_params returns them
    inp = _load_inputs(workdir, cfg["size"])
    settings = nst_jax.Settings(image_size=cfg["size"], weights="random", optimizer=optimizer,
                                precision=cfg.get("precision"), remat=cfg.get("remat", False),
                                dtype=cfg.get("dtype", "float32"), conv_algorithm=cfg.get("conv_algorithm", "auto"),
                                lbfgs_linesearch=cfg.get("linesearch", "none"))
    objective = Objective.from_settings(settings)
    targets = make_targets(objective, params, jnp.asarray(inp["content"]), [jnp.asarray(inp["style"])],
                           weights=settings)
    spec = optim.SolverSpec.from_settings(settings)
    params = objective.prepare(params)  # once per stylization, as the library's steppers do
    return settings, objective, spec, params, targets, jnp.asarray(inp["x0"])


def worker_matmul_peak(cfg: dict) -> dict:
    """XLA's fp32 matmul throughput (GFLOP/s): the best of a few square ``jnp.dot`` sizes."""
    import jax
    import jax.numpy as jnp

    prec = {"default": None, "high": "high", "highest": "highest"}[cfg.get("precision") or "default"]
    best, per_n = 0.0, {}
    for n in cfg.get("ns", (1024, 2048, 4096)):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(lambda a, b: jnp.dot(a, b, precision=prec))
        f(a, b).block_until_ready()
        ts = []
        for _ in range(cfg.get("repeats", 5)):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            ts.append(time.perf_counter() - t0)
        g = 2 * n**3 / min(ts) / 1e9
        per_n[n] = round(g, 1)
        best = max(best, g)
    out = {"xla_matmul_gflops": round(best, 1), "xla_matmul_gflops_by_n": per_n}
    if cfg.get("torch"):
        import torch

        tbest = 0.0
        for n in cfg.get("ns", (1024, 2048, 4096)):
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.mm(a, b)
            ts = []
            for _ in range(cfg.get("repeats", 5)):
                t0 = time.perf_counter()
                torch.mm(a, b)
                ts.append(time.perf_counter() - t0)
            tbest = max(tbest, 2 * n**3 / min(ts) / 1e9)
        out["torch_matmul_gflops"] = round(tbest, 1)
    return out


def worker_check(cfg: dict) -> dict:
    """nst_jax's objective vs the PyTorch reference at this size: per-term relative error, gradient cosine."""
    import jax

    sys.path.insert(0, str(SCRIPTS))
    import torch_reference as tr

    settings, objective, _, params, targets, x0 = _jax_problem(cfg)
    inp = _load_inputs(Path(cfg["workdir"]), cfg["size"])
    terms, g = jax.jit(objective.value_and_grad)(params, x0, targets)
    tobj = tr.TorchObjective(params, inp["content"], [inp["style"]], content_weight=settings.content_weight,
                             style_weight=settings.style_weight, tv_weight=settings.tv_weight)
    tterms, tg = tobj.value_and_grad(inp["x0"])
    out = {"terms_jax": {}, "terms_torch": {}, "rel_err": {}}
    for k in ("total", "content", "style", "tv"):
        a, b = float(getattr(terms, k)), tterms[k]
        out["terms_jax"][k], out["terms_torch"][k] = a, b
        out["rel_err"][k] = abs(a - b) / max(abs(b), 1e-30)
    g = np.asarray(g, np.float64).ravel()
    tg = tg.astype(np.float64).ravel()
    out["grad_cosine"] = float(g @ tg / (np.linalg.norm(g) * np.linalg.norm(tg)))
    out["grad_rel_l2"] = float(np.linalg.norm(g - tg) / np.linalg.norm(tg))
    out["ok"] = bool(max(out["rel_err"].values()) <= 1e-4 and out["grad_cosine"] > 0.9999)
    return out


def worker_jax_vg(cfg: dict) -> dict:
    """Compile time, FLOPs and warm time of ``Objective.value_and_grad`` (jitted)."""
    import jax

    clock = _CompileClock()
    _, objective, _, params, targets, x0 = _jax_problem(cfg)  # cfg["dtype"]: Settings.dtype (VGG-19 in bf16)
    f = jax.jit(objective.value_and_grad)
    clock.start()
    t0 = time.perf_counter()
    compiled = f.lower(params, x0, targets).compile()
    wall = time.perf_counter() - t0
    out = clock.stop()
    out["compile_wall_s"] = wall
    out["flops"] = _flops(compiled)
    jax.block_until_ready(f(params, x0, targets))  # first call (and a check that it does not recompile)
    hwm = _reset_hwm()
    ts = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        terms, g = f(params, x0, targets)
        jax.block_until_ready((terms, g))
        ts.append(time.perf_counter() - t0)
    out.update(seconds=_median(ts), all_seconds=ts, loss=float(terms.total))
    return _memory(out, hwm)


def worker_jax_opt(cfg: dict) -> dict:
    """Per-iteration time of the library's stepper (L-BFGS or Adam) with the chosen loop form."""
    import jax

    from nst_jax import optim

    clock = _CompileClock()
    _, objective, spec, params, targets, x0 = _jax_problem(cfg, cfg["optimizer"])
    loop = cfg["loop"] if cfg["loop"] != "auto" else optim.default_loop()
    stepper = optim.single_image_stepper(objective, spec, params, targets, loop)
    k = cfg["iters"]
    clock.start()
    t0 = time.perf_counter()
    state = jax.block_until_ready(stepper.init(x0))
    init_wall = time.perf_counter() - t0
    init_compile = clock.stop()
    clock.start()
    t0 = time.perf_counter()
    # The first advance compiles the step (loop "step") or the chunk (loop "chunk", traced count).
    state = jax.block_until_ready(stepper.advance(state, 1 if loop == "step" else k))
    first_wall = time.perf_counter() - t0
    step_compile = clock.stop()
    # FLOPs of one iteration: XLA's cost analysis of the step the stepper runs (analysis only, after the
    # timed compile: an AOT compile here would fill the jit cache and hide the stepper's own compile).
    flops = _flops(optim._step_jit.lower(objective, spec, params, state, targets).compile())
    state = jax.block_until_ready(stepper.advance(state, k))  # warm-up
    hwm = _reset_hwm()
    clock.start()
    ts = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        state = jax.block_until_ready(stepper.advance(state, k))
        ts.append((time.perf_counter() - t0) / k)
    recompiled = clock.stop()["compile_s"] > 0
    out = {"loop": loop, "default_loop": optim.default_loop(), "seconds_per_iter": _median(ts),
           "all_seconds_per_iter": ts, "iters_per_repeat": k, "init_compile_s": init_compile["compile_s"],
           "init_wall_s": init_wall, "step_compile_s": step_compile["compile_s"], "first_advance_wall_s": first_wall,
           "compile_s": init_compile["compile_s"] + step_compile["compile_s"], "flops_per_iter": flops,
           "recompiled_while_timed": recompiled, "iterations_done": int(state.iteration),
           "history_pairs_at_end": (int(state.opt_state[0].stored) if cfg["optimizer"] == "lbfgs" else None),
           "final_loss": float(state.terms.total), "conv_algorithm": objective.conv_algorithm}
    return _memory(out, hwm)


def _torch_objective(cfg: dict):
    import torch

    sys.path.insert(0, str(SCRIPTS))
    import torch_reference as tr

    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg["torch_threads"])
    workdir = Path(cfg["workdir"])
    params = _load_params(workdir)
    inp = _load_inputs(workdir, cfg["size"])
    objective = tr.TorchObjective(params, inp["content"], [inp["style"]], device=cfg.get("torch_device", "cpu"))
    return tr, objective, inp["x0"]


def worker_torch_vg(cfg: dict) -> dict:
    """Warm time of one PyTorch value+gradient (neural-style-pt's ``feval``: zero grad, forward, backward)."""
    import torch

    tr, tobj, x0 = _torch_objective(cfg)
    img = tobj.image(x0).requires_grad_(True)
    closure = tobj.closure_for(img)  # float(loss) in it waits for the device
    closure()
    hwm = _reset_hwm()
    ts = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        loss = closure()
        ts.append(time.perf_counter() - t0)
    out = {"seconds": _median(ts), "all_seconds": ts, "loss": float(loss), "threads": torch.get_num_threads()}
    return _memory(out, hwm)


def worker_torch_opt(cfg: dict) -> dict:
    """Per-iteration time of torch.optim.LBFGS (neural-style-pt's settings) or Adam, warm."""
    import torch

    tr, tobj, x0 = _torch_objective(cfg)
    img = tobj.image(x0).requires_grad_(True)
    k = cfg["iters"]
    closure = tobj.closure_for(img)
    if cfg["optimizer"] == "lbfgs":
        # One step(closure) call = k iterations (k evaluations); the optimizer's state (history) carries over
        # between calls, as within one long neural-style-pt run.
        opt = tr.make_lbfgs(img, max_iter=k)
        run = lambda: opt.step(closure)  # noqa: E731
    else:
        opt = torch.optim.Adam([img], lr=10.0)

        def run():
            for _ in range(k):
                opt.step(closure)
    run()  # warm-up
    hwm = _reset_hwm()
    ts = []
    for _ in range(cfg["repeats"]):
        t0 = time.perf_counter()
        run()
        ts.append((time.perf_counter() - t0) / k)
    out = {"seconds_per_iter": _median(ts), "all_seconds_per_iter": ts, "iters_per_repeat": k,
           "final_loss": tobj.total(tr.to_hwc(img)), "threads": torch.get_num_threads()}
    if cfg["optimizer"] == "lbfgs":
        st = opt.state[opt._params[0]]
        out["history_pairs_at_end"] = len(st.get("old_dirs", []))
        out["iterations_done"] = int(st["n_iter"])
    return _memory(out, hwm)


def worker_torch_lbfgs_overhead(cfg: dict) -> dict:
    """torch.optim.LBFGS's own cost per iteration with a full 100-pair history, at this image's size.

    The per-iteration figures above are taken early in a run, when PyTorch's two-loop recursion covers only
    the pairs stored so far (nst_jax's always scans all 100 slots). Here LBFGS runs on a cheap convex
    quadratic of the same dimension (every pair accepted) until the history is full, and its iterations are
    then timed: the recursion's cost at steady state, to add to one value+gradient.
    """
    import torch

    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg["torch_threads"])
    sys.path.insert(0, str(SCRIPTS))
    import torch_reference as tr

    inp = _load_inputs(Path(cfg["workdir"]), cfg["size"])
    n = inp["x0"].size
    dev = torch.device(cfg.get("torch_device", "cpu"))
    d = torch.rand(n, device=dev) + 0.5
    x = torch.zeros(n, device=dev, requires_grad=True)
    target = torch.randn(n, device=dev)

    def closure():
        if x.grad is not None:
            x.grad.zero_()
        loss = 0.5 * (d * (x - target) ** 2).sum()
        loss.backward()
        return loss

    opt = tr.make_lbfgs(x, max_iter=110, lr=0.1)
    opt.step(closure)
    assert len(opt.state[x]["old_dirs"]) == 100, len(opt.state[x]["old_dirs"])
    t_eval = []
    for _ in range(20):
        t0 = time.perf_counter()
        float(closure())
        t_eval.append(time.perf_counter() - t0)
    opt.param_groups[0]["max_iter"] = 20
    t0 = time.perf_counter()
    opt.step(closure)
    per_iter = (time.perf_counter() - t0) / 20
    return {"seconds_per_iter_h100": per_iter - _median(t_eval), "quadratic_eval_s": _median(t_eval)}


def worker_jax_lbfgs_overhead(cfg: dict) -> dict:
    """nst_jax's L-BFGS cost per iteration with a full 100-pair history: the twin of the PyTorch one above.

    The library's jitted step (``optim.step``, loop 'step') on the same convex quadratic of the image's
    dimension, until the history is full; then its iterations are timed, minus one evaluation of the
    quadratic.
    """
    import jax
    import jax.numpy as jnp

    from nst_jax import optim
    from nst_jax.objective import Terms

    inp = _load_inputs(Path(cfg["workdir"]), cfg["size"])
    shape = inp["x0"].shape
    rng = np.random.default_rng(0)
    d = jnp.asarray(rng.random(shape, np.float32) + 0.5)
    target = jnp.asarray(rng.standard_normal(shape).astype(np.float32))

    class Quadratic:  # the methods of nst_jax.objective.Objective that optim uses
        def loss(self, params, x, targets):
            v = 0.5 * jnp.sum(d * (x - targets) ** 2)
            return Terms(v, v, 0.0 * v, 0.0 * v)

        def value_and_grad(self, params, x, targets):
            return self.loss(params, x, targets), d * (x - targets)

        def prepare(self, params):
            return params

    quad, spec = Quadratic(), optim.SolverSpec(learning_rate=0.1)
    stepper = optim.single_image_stepper(quad, spec, None, target, "step")
    state = stepper.advance(stepper.init(jnp.zeros(shape, jnp.float32)), 110)
    assert int(state.opt_state[0].stored) == 100, int(state.opt_state[0].stored)
    vg = jax.jit(quad.value_and_grad)
    jax.block_until_ready(vg(None, state.x, target))
    t_eval = []
    for _ in range(20):
        t0 = time.perf_counter()
        jax.block_until_ready(vg(None, state.x, target))
        t_eval.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    state = jax.block_until_ready(stepper.advance(state, 20))
    per_iter = (time.perf_counter() - t0) / 20
    return {"seconds_per_iter_h100": per_iter - _median(t_eval), "quadratic_eval_s": _median(t_eval)}


def worker_torch_ttl(cfg: dict) -> dict:
    """PyTorch L-BFGS, 100 iterations from x0: the loss reached and the time taken."""
    tr, tobj, x0 = _torch_objective(cfg)
    n = cfg["ttl_iterations"]
    tr.lbfgs(tobj, x0, 2, final_loss=False)  # warm-up (allocator, oneDNN primitives)
    _, losses, seconds = tr.lbfgs(tobj, x0, n)
    return {"iterations": n, "seconds": seconds, "loss": losses[n], "losses": losses,
            "best_loss": float(np.nanmin(losses))}


def worker_jax_ttl(cfg: dict) -> dict:
    """nst_jax's L-BFGS (default loop) from x0 until the loss is <= the target: iterations and warm seconds."""
    import jax
    import jax.numpy as jnp

    from nst_jax import api, optim, vgg
    from nst_jax.objective import make_targets

    clock = _CompileClock()
    settings, objective, spec, params, targets, x0 = _jax_problem(cfg)
    stepper = optim.single_image_stepper(objective, spec, params, targets, "auto")
    coarse = cfg.get("coarse")  # [long side, iterations]: coarse-to-fine as nst_jax.stylize(scales=...) does it

    def coarse_stage():
        """Stage 1 at the coarse size from x0 downsampled; returns its result upsampled to the full size."""
        inp = _load_inputs(Path(cfg["workdir"]), cfg["size"])
        rgb = lambda a: np.asarray(vgg.deprocess(jnp.asarray(a)))  # noqa: E731
        c, st = api.stage_images(rgb(inp["content"]), [rgb(inp["style"])], coarse[0], settings)
        t = make_targets(objective, params, vgg.preprocess(jnp.asarray(c)), [vgg.preprocess(jnp.asarray(st[0]))],
                         weights=settings)
        xc = jax.image.resize(x0, (*c.shape[:2], 3), "linear")  # the same initial image, at the coarse size
        st_c = optim.single_image_stepper(objective, spec, params, t, "auto")
        state_c = st_c.advance(st_c.init(xc), coarse[1])
        return api.upsample(state_c.x, x0.shape[:2]), float(state_c.terms.total)

    clock.start()
    jax.block_until_ready(stepper.advance(stepper.init(x0), 1))  # compile, then start again from x0
    if coarse:
        saved, coarse[1] = coarse[1], 1
        jax.block_until_ready(coarse_stage()[0])  # compile the coarse stage too
        coarse[1] = saved
    compile_s = clock.stop()["compile_s"]
    target, cap = cfg["target_loss"], cfg["max_iterations"]
    losses = []
    t0 = time.perf_counter()
    coarse_loss = None
    if coarse:
        start, coarse_loss = coarse_stage()
    else:
        start = x0
    state = stepper.init(start)
    coarse_s = time.perf_counter() - t0
    losses.append(float(state.terms.total))
    reached = None
    it = 0
    while it < cap:
        state = stepper.advance(state, 1)
        it += 1
        loss = float(state.terms.total)  # one sync per iteration, as the PyTorch loop's float(loss)
        losses.append(loss)
        if loss <= target:
            reached = time.perf_counter() - t0
            break
        if not np.isfinite(loss):
            break
    elapsed = time.perf_counter() - t0
    return {"target_loss": target, "reached": reached is not None, "iterations": it, "seconds": elapsed,
            "compile_s": compile_s, "loop": optim.default_loop(), "linesearch": settings.lbfgs_linesearch,
            "losses": losses, "coarse": coarse,
            "coarse_seconds": coarse_s if coarse else None, "coarse_final_loss": coarse_loss,
            "loss_at_100": losses[100] if len(losses) > 100 else None}


WORKERS = {
    "matmul_peak": worker_matmul_peak, "check": worker_check, "jax_vg": worker_jax_vg, "jax_opt": worker_jax_opt,
    "torch_vg": worker_torch_vg, "torch_opt": worker_torch_opt, "torch_lbfgs_overhead": worker_torch_lbfgs_overhead,
    "jax_lbfgs_overhead": worker_jax_lbfgs_overhead,
    "torch_ttl": worker_torch_ttl, "jax_ttl": worker_jax_ttl,
}


def run_worker(cfg: dict) -> None:
    if cfg.get("x64"):
        import jax

        jax.config.update("jax_enable_x64", True)
    result = WORKERS[cfg["kind"]](cfg)
    print(RESULT_MARK + json.dumps(result), flush=True)


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used (user + nice + system + irq + softirq), /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


#: Set from --wait-idle / --retry-noisy.
_IDLE = {"wait_s": 0.0, "retries": 0, "threshold": 0.1}


def _wait_idle() -> float | None:
    """Waits (up to --wait-idle seconds) until other processes use less than the threshold; returns that load."""
    deadline = time.monotonic() + _IDLE["wait_s"]
    while True:
        b0 = _busy_cpu_seconds()
        time.sleep(3)
        b1 = _busy_cpu_seconds()
        load = None if b0 is None or b1 is None else (b1 - b0) / 3
        if load is None or load < _IDLE["threshold"] or time.monotonic() >= deadline:
            return load


def spawn(cfg: dict, *, verbose: bool = True, env: dict | None = None) -> dict:
    """Runs a worker in a fresh process (see :func:`_spawn_once`), waiting for an idle machine first and
    running it again when another process disturbed it, as --wait-idle and --retry-noisy ask; keeps the
    least disturbed result."""
    best = None
    for _ in range(1 + _IDLE["retries"]):
        if _IDLE["wait_s"] > 0:
            _wait_idle()
        out = _spawn_once(cfg, verbose=verbose, env=env)
        if best is None or out.get("foreign_load", 0) < best.get("foreign_load", 0):
            best = out
        if best.get("foreign_load", 0) <= _IDLE["threshold"]:
            break
    return best


def _spawn_once(cfg: dict, *, verbose: bool = True, env: dict | None = None) -> dict:
    """Runs one worker in a fresh Python process; returns its result (raises with its stderr if it failed).

    Adds ``foreign_load``: the cores that other processes kept busy, on average, while the worker ran
    (machine-wide busy CPU time minus the worker's own, per wall second): figures taken with a foreign
    load above ~0.1 are not clean measurements.
    """
    label = " ".join(f"{k}={v}" for k, v in cfg.items()
                     if k in ("kind", "size", "optimizer", "loop", "dtype", "conv_algorithm"))
    if verbose:
        print(f"  [{time.strftime('%H:%M:%S')}] {label} ...", end="", flush=True, file=sys.stderr)
    t0 = time.perf_counter()
    busy0 = _busy_cpu_seconds()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = _busy_cpu_seconds()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        if verbose:
            print(" failed", file=sys.stderr)
        raise RuntimeError(f"worker {label} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(lines[-1][len(RESULT_MARK):])
    if busy0 is not None and busy1 is not None:
        own = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        out["foreign_load"] = round(max(0.0, (busy1 - busy0) - own) / wall, 2)
    if verbose:
        print(f" {wall:.0f} s" + (f" (foreign load {out['foreign_load']:.2f} cores)" if "foreign_load" in out else ""),
              file=sys.stderr)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Machine description


def machine_info() -> dict:
    import jax

    model = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have)
                break
    except OSError:
        pass
    info = {
        "cpu_model": model, "cpu_flags": flags, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(), "platform": platform.platform(),
        "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(args) -> dict:
    import jax

    from nst_jax import optim

    machine = machine_info()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT)] + sys.argv)
    result = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
              "machine": machine, "options": {k: v for k, v in vars(args).items() if k not in ("worker",)},
              "default_loop": optim.default_loop(), "sizes": {}}
    torch_ref = args.reference == "torch"
    gpu = jax.default_backend() != "cpu"
    with tempfile.TemporaryDirectory(prefix="nst_bench_") as tmp:
        workdir = Path(tmp)
        shapes = write_inputs(workdir, args.sizes, args.seed, args.content, args.style)
        base = {"workdir": str(workdir), "precision": args.precision, "repeats": args.repeats, "iters": args.iters,
                "remat": args.remat}
        if args.torch_threads:
            base["torch_threads"] = args.torch_threads
        base["torch_device"] = args.torch_device
        print(f"machine: {machine['cpu_model']}, {machine['usable_cores']} cores, jax {machine['jax']} "
              f"({machine['backend']})", file=sys.stderr)
        result["matmul_peak"] = spawn({**base, "kind": "matmul_peak", "torch": torch_ref})
        peak = result["matmul_peak"]["xla_matmul_gflops"]
        for size in args.sizes:
            r: dict = {"content_hw": shapes[size]["content"], "style_hw": shapes[size]["style"]}
            cfg = {**base, "size": size}
            if torch_ref:
                r["check"] = spawn({**cfg, "kind": "check"})
                if not r["check"]["ok"]:
                    result["sizes"][size] = r
                    raise SystemExit(f"nst_jax and the PyTorch reference disagree at {size} px: "
                                     f"{json.dumps(r['check'], indent=1)}")
            r["jax_vg"] = spawn({**cfg, "kind": "jax_vg", "conv_algorithm": "direct"})
            r["jax_vg_winograd"] = spawn({**cfg, "kind": "jax_vg", "conv_algorithm": "winograd"})
            if args.dtype == "bfloat16":
                r["jax_vg_bf16"] = spawn({**cfg, "kind": "jax_vg", "dtype": "bfloat16"})
            for loop in ("step", "chunk"):
                r[f"jax_lbfgs_{loop}"] = spawn({**cfg, "kind": "jax_opt", "optimizer": "lbfgs", "loop": loop})
            r["jax_lbfgs_h100"] = spawn({**cfg, "kind": "jax_lbfgs_overhead"})
            r["jax_adam"] = spawn({**cfg, "kind": "jax_opt", "optimizer": "adam", "loop": "auto"})
            if torch_ref:
                r["torch_vg"] = spawn({**cfg, "kind": "torch_vg"})
                r["torch_lbfgs"] = spawn({**cfg, "kind": "torch_opt", "optimizer": "lbfgs"})
                r["torch_lbfgs_h100"] = spawn({**cfg, "kind": "torch_lbfgs_overhead"})
                r["torch_adam"] = spawn({**cfg, "kind": "torch_opt", "optimizer": "adam"})
                if args.time_to_loss and (not args.ttl_sizes or size in args.ttl_sizes):
                    r["torch_ttl"] = spawn({**cfg, "kind": "torch_ttl", "ttl_iterations": 100})
                    ttl = {**cfg, "kind": "jax_ttl", "target_loss": r["torch_ttl"]["loss"],
                           "max_iterations": args.ttl_max_iterations}
                    for ls in args.ttl_linesearch:  # nst_jax's L-BFGS variants (Settings.lbfgs_linesearch)
                        key = "jax_ttl" if ls == "none" else f"jax_ttl_{ls}"
                        r[key] = spawn({**ttl, "linesearch": ls})
                        for n in args.ttl_coarse_iterations:  # coarse-to-fine: `n` iterations at half size first
                            r[f"{key}_c2f_{n}"] = spawn({**ttl, "linesearch": ls, "coarse": [size // 2, n]})
            result["sizes"][size] = r
            _derive(r, peak, args.peak_gflops)
    result["targets"] = _targets(result, gpu)
    return result


def _ratio(a, b):
    return a / b if a is not None and b else None


def _default_vg_key(r: dict) -> str:
    """The value+grad row of the library's default convolution algorithm (as the optimizer rows ran it)."""
    winograd = r["jax_lbfgs_step"].get("conv_algorithm") == "winograd" and "jax_vg_winograd" in r
    return "jax_vg_winograd" if winograd else "jax_vg"


def _derive(r: dict, peak_measured: float, peak_given: float | None) -> None:
    """Throughputs, fractions of peak and nst_jax / PyTorch ratios."""
    vg = r["jax_vg"]
    d: dict = {}
    # The work of one value+grad: XLA's FLOP count of the program with direct convolutions (what PyTorch
    # computes too). Winograd executes fewer FLOPs for the same result, so its throughput is quoted as
    # effective: direct-convolution FLOPs / time.
    work = vg.get("flops")
    if work:
        d["vg_gflop"] = work / 1e9
        d["vg_gflops"] = work / vg["seconds"] / 1e9
        d["vg_frac_measured_peak"] = d["vg_gflops"] / peak_measured if peak_measured else None
        d["vg_frac_given_peak"] = d["vg_gflops"] / peak_given if peak_given else None
        if "torch_vg" in r:
            d["torch_vg_gflops"] = work / r["torch_vg"]["seconds"] / 1e9  # same work, XLA's count
        wino = r.get("jax_vg_winograd")
        if wino:
            d["vg_winograd_effective_gflops"] = work / wino["seconds"] / 1e9
            d["vg_winograd_gflop_executed"] = wino["flops"] / 1e9 if wino.get("flops") else None
    for loop in ("step", "chunk"):
        o = r[f"jax_lbfgs_{loop}"]
        if o.get("flops_per_iter"):
            d[f"lbfgs_{loop}_gflops"] = o["flops_per_iter"] / o["seconds_per_iter"] / 1e9
    if "torch_vg" in r:
        d["ratio_vg"] = _ratio(vg["seconds"], r["torch_vg"]["seconds"])
        tl = r["torch_lbfgs"]["seconds_per_iter"]
        for loop in ("step", "chunk"):
            d[f"ratio_lbfgs_{loop}"] = _ratio(r[f"jax_lbfgs_{loop}"]["seconds_per_iter"], tl)
        d["ratio_adam"] = _ratio(r["jax_adam"]["seconds_per_iter"], r["torch_adam"]["seconds_per_iter"])
        # Steady-state L-BFGS iterations (history full), both sides alike: one value+grad + the recursion's
        # measured cost with 100 pairs.
        d["torch_lbfgs_h100_est_s"] = r["torch_vg"]["seconds"] + r["torch_lbfgs_h100"]["seconds_per_iter_h100"]
        d["jax_lbfgs_h100_est_s"] = (r[_default_vg_key(r)]["seconds"]
                                     + r["jax_lbfgs_h100"]["seconds_per_iter_h100"])
        d["ratio_lbfgs_h100"] = _ratio(d["jax_lbfgs_h100_est_s"], d["torch_lbfgs_h100_est_s"])
    if "torch_ttl" in r:
        t = r["torch_ttl"]
        for key in [k for k in r if k.startswith("jax_ttl")]:
            j = r[key]
            d["ratio_time_to_loss" + key[len("jax_ttl"):]] = (_ratio(j["seconds"], t["seconds"]) if j["reached"]
                                                              else None)
        reached = [v for k, v in d.items() if k.startswith("ratio_time_to_loss") and v is not None]
        d["ratio_time_to_loss_best"] = min(reached) if reached else None
    r["derived"] = d


def _targets(result: dict, gpu: bool) -> list[dict]:
    """The issue's CPU targets, met or not, from this run's figures."""
    out = []
    sizes = result["sizes"]

    def add(name, value, limit, better, note=""):
        met = None if value is None else (value <= limit if better == "<=" else value >= limit)
        out.append({"target": name, "value": value, "limit": f"{better} {limit}", "met": met, "note": note})

    if gpu:
        return [{"target": "CPU targets", "value": None, "limit": "", "met": None, "note": "run on a GPU backend"}]
    for size, key in ((512, "lbfgs_ratio_512"), (256, "lbfgs_ratio_256")):
        if size in sizes and "ratio_lbfgs_step" in sizes[size]["derived"]:
            d = sizes[size]["derived"]
            default = sizes[size]["jax_lbfgs_step"]["default_loop"]
            add(f"L-BFGS s/iter at {size} px, nst_jax/PyTorch (default loop '{default}')",
                d[f"ratio_lbfgs_{default}"], TARGETS[key], "<=")
    for size in sizes:
        if "ratio_time_to_loss_best" in sizes[size]["derived"]:
            add(f"time to PyTorch's 100-iteration loss at {size} px, nst_jax/PyTorch (best of one scale and "
                "coarse-to-fine)", sizes[size]["derived"]["ratio_time_to_loss_best"], TARGETS["time_to_loss_ratio"],
                "<=", "" if sizes[size]["derived"]["ratio_time_to_loss_best"] else "nst_jax did not reach the loss")
    if 512 in sizes:
        r512 = sizes[512]
        wino = _default_vg_key(r512) == "jax_vg_winograd"
        add(f"value+grad fp32 throughput at 512 px, library default ({'Winograd: effective' if wino else 'direct'}, "
            "GFLOP/s)", r512["derived"].get("vg_winograd_effective_gflops" if wino else "vg_gflops"),
            TARGETS["vg_gflops_512"], ">=")
        add("compile time of value+grad at 512 px (s)", r512["jax_vg_winograd" if wino else "jax_vg"]["compile_s"],
            TARGETS["compile_s_512"], "<=")
        add("compile time of the L-BFGS stepper (init + step) at 512 px (s)",
            sizes[512]["jax_lbfgs_step"]["compile_s"], TARGETS["compile_s_512"], "<=")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Report


def _f(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# nst_jax benchmark, {result['date']}",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {m['cpu_model']} ({m['cpu_flags']}), {m['usable_cores']} cores, {m['memory_gb']} GB; "
        f"Python {m['python']}; jax {m['jax']} (backend {m['backend']}, devices {', '.join(m['devices'])}); "
        f"torch {m.get('torch')}" + (f" ({m.get('torch_threads')} threads)" if m.get("torch") else ""),
        f"- load average at start: {', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}",
        f"- precision: {result['options']['precision'] or 'default'}"
        f"{'; remat (jax.checkpoint per block)' if result['options'].get('remat') else ''}"
        f"; repeats {result['options']['repeats']}, "
        f"{result['options']['iters']} iterations per optimizer repeat; library default loop: "
        f"'{result['default_loop']}'",
        f"- XLA fp32 matmul peak measured in this run: {result['matmul_peak']['xla_matmul_gflops']} GFLOP/s"
        + (f" (PyTorch: {result['matmul_peak']['torch_matmul_gflops']} GFLOP/s)"
           if "torch_matmul_gflops" in result["matmul_peak"] else "")
        + (f"; given peak: {result['options']['peak_gflops']} GFLOP/s" if result["options"].get("peak_gflops") else ""),
        "",
        "Times are warm medians; ratio = nst_jax / PyTorch (< 1: nst_jax faster), measured in the same run.",
        "",
    ]
    for size, r in result["sizes"].items():
        d = r["derived"]
        t = "torch_vg" in r
        lines += [f"## {size} px (content {r['content_hw'][0]}x{r['content_hw'][1]}, "
                  f"style {r['style_hw'][0]}x{r['style_hw'][1]})", ""]
        if "check" in r:
            c = r["check"]
            lines += [f"Agreement with PyTorch: max term relative error "
                      f"{max(c['rel_err'].values()):.2e} (total {c['rel_err']['total']:.2e}, content "
                      f"{c['rel_err']['content']:.2e}, style {c['rel_err']['style']:.2e}, "
                      f"tv {c['rel_err']['tv']:.2e}); "
                      f"gradient cosine {c['grad_cosine']:.7f}, relative L2 {c['grad_rel_l2']:.2e}.", ""]
        lines += ["| figure | nst_jax | PyTorch | ratio |", "|---|---:|---:|---:|"]
        vg = r["jax_vg"]

        def row(name, a, b=None, ratio=None, spec=".3f"):
            lines.append(f"| {name} | {_f(a, spec)} | {_f(b, spec)} | {_f(ratio, '.2f')} |")

        mark = lambda key: " (library default)" if key == _default_vg_key(r) else ""  # noqa: E731
        row(f"value+grad, XLA's direct convolutions{mark('jax_vg')} (s)", vg["seconds"],
            r["torch_vg"]["seconds"] if t else None, d.get("ratio_vg"))
        row("  compile (s)", vg["compile_s"])
        row("  XLA FLOPs (GFLOP)", d.get("vg_gflop"), spec=".1f")
        if "jax_vg_winograd" in r:
            wv = r["jax_vg_winograd"]
            row(f"value+grad, Winograd F(2x2,3x3), kernel transforms precomputed{mark('jax_vg_winograd')} (s)",
                wv["seconds"], r["torch_vg"]["seconds"] if t else None,
                _ratio(wv["seconds"], r["torch_vg"]["seconds"]) if t else None)
            row("  compile (s)", wv["compile_s"])
            row("  its effective throughput (GFLOP/s: direct-convolution FLOPs / time)",
                d.get("vg_winograd_effective_gflops"), d.get("torch_vg_gflops"),
                _ratio(d.get("vg_winograd_effective_gflops"), d.get("torch_vg_gflops")), spec=".1f")
            row("  GFLOP it executes (XLA count)", d.get("vg_winograd_gflop_executed"), spec=".1f")
        row("value+grad throughput (GFLOP/s, XLA count)", d.get("vg_gflops"),
            d.get("torch_vg_gflops"),
            _ratio(d.get("vg_gflops"), d.get("torch_vg_gflops")), spec=".1f")
        row("  fraction of measured matmul peak", d.get("vg_frac_measured_peak"),
            _ratio(d.get("torch_vg_gflops"), result["matmul_peak"]["xla_matmul_gflops"]), spec=".2f")
        if d.get("vg_frac_given_peak") is not None:
            row("  fraction of --peak-gflops", d.get("vg_frac_given_peak"),
                _ratio(d.get("torch_vg_gflops"), result["options"]["peak_gflops"]), spec=".2f")
        if "jax_vg_bf16" in r:
            row("value+grad bf16 (s)", r["jax_vg_bf16"]["seconds"],
                ratio=_ratio(r["jax_vg_bf16"]["seconds"], vg["seconds"]))
        tl = r["torch_lbfgs"]["seconds_per_iter"] if t else None
        for loop in ("step", "chunk"):
            o = r[f"jax_lbfgs_{loop}"]
            mark = " (default)" if o["default_loop"] == loop else ""
            row(f"L-BFGS s/iter, loop '{loop}'{mark}", o["seconds_per_iter"], tl, d.get(f"ratio_lbfgs_{loop}"))
        if t:
            row("L-BFGS s/iter at full history (value+grad + measured 100-pair recursion)", d["jax_lbfgs_h100_est_s"],
                d["torch_lbfgs_h100_est_s"], d["ratio_lbfgs_h100"])
        for loop in ("step", "chunk"):
            o = r[f"jax_lbfgs_{loop}"]
            row(f"L-BFGS compile, loop '{loop}' (init + step, s)", o["compile_s"])
        a = r["jax_adam"]
        row(f"Adam s/iter, loop '{a['loop']}'", a["seconds_per_iter"],
            r["torch_adam"]["seconds_per_iter"] if t else None, d.get("ratio_adam"))
        mem = [("value+grad", "jax_vg", "torch_vg"), ("L-BFGS 'step'", "jax_lbfgs_step", "torch_lbfgs"),
               ("L-BFGS 'chunk'", "jax_lbfgs_chunk", None), ("Adam", "jax_adam", "torch_adam")]
        dev = "device_peak_mb" in vg
        for name, jk, tk in mem:
            jm = r[jk]["device_peak_mb"] if dev else r[jk]["peak_rss_mb"]
            tm = r[tk]["peak_rss_mb"] if (t and tk) else None
            row(f"peak {'device memory' if dev else 'RSS'}, {name} (MB)", jm, tm, _ratio(jm, tm), spec=".0f")
            if not dev:
                jt = r[jk].get("timed_peak_rss_mb")
                tt = r[tk].get("timed_peak_rss_mb") if (t and tk) else None
                row(f"  peak RSS while timed (after compile), {name} (MB)", jt, tt, _ratio(jt, tt), spec=".0f")
        for key in [k for k in r if k.startswith("jax_ttl")]:
            j, tt = r[key], r["torch_ttl"]
            how = (f"coarse-to-fine: {j['coarse'][1]} it at {j['coarse'][0]} px, then" if j.get("coarse")
                   else "one scale:")
            if j.get("linesearch", "none") != "none":
                how = f"L-BFGS with {j['linesearch']} line search, {how}"
            lines.append(f"| time to PyTorch's {tt['iterations']}-iteration loss {tt['loss']:.6g} (s), {how} | "
                         f"{_f(j['seconds'])} ({j['iterations']} it at {size} px"
                         f"{'' if j['reached'] else ', NOT reached'}) | "
                         f"{_f(tt['seconds'])} ({tt['iterations']} it) | "
                         f"{_f(d.get('ratio_time_to_loss' + key[len('jax_ttl'):]), '.2f')} |")
        lines.append("")
        if t:
            lines += [f"The L-BFGS s/iter rows were timed early in a run: PyTorch had "
                      f"{r['torch_lbfgs'].get('history_pairs_at_end')} stored pairs at the end, nst_jax "
                      f"{r['jax_lbfgs_step'].get('history_pairs_at_end')} (both recursions run over the stored "
                      f"pairs only). With 100 pairs the recursion costs "
                      f"{r['jax_lbfgs_h100']['seconds_per_iter_h100'] * 1e3:.1f} ms/iter in nst_jax, "
                      f"{r['torch_lbfgs_h100']['seconds_per_iter_h100'] * 1e3:.1f} in PyTorch.", ""]
    noisy = [(size, k, v["foreign_load"]) for size, r in result["sizes"].items() for k, v in r.items()
             if isinstance(v, dict) and v.get("foreign_load", 0) > 0.1]
    if noisy:
        lines += ["**Not clean**: other processes kept CPU busy during " + ", ".join(
            f"{k} at {size} px ({load:.2f} cores)" for size, k, load in noisy) + ". Re-run on an idle machine.", ""]
    else:
        lines += ["No other process used more than 0.1 core during any measurement (foreign load per "
                  "configuration is in the JSON).", ""]
    if result.get("targets"):
        lines += ["## Targets", "", "| target | value | limit | met |", "|---|---:|---:|---|"]
        for tgt in result["targets"]:
            met = {True: "met", False: "NOT met", None: "not measured"}[tgt["met"]]
            lines.append(f"| {tgt['target']} | {_f(tgt['value'], '.2f')} | {tgt['limit']} | {met}"
                         f"{(' (' + tgt['note'] + ')') if tgt['note'] else ''} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Profile: where the time goes, and measured variants (proposals for nst_jax/vgg.py and optim.py)


def run_profile(args) -> dict:
    """Runs the profile worker per size in a fresh process (and once per XLA flag set to try)."""
    out = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT)] + sys.argv),
           "machine": machine_info(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="nst_prof_") as tmp:
        workdir = Path(tmp)
        write_inputs(workdir, args.sizes, args.seed, args.content, args.style)
        for size in args.sizes:
            cfg = {"workdir": str(workdir), "size": size, "repeats": args.repeats, "iters": args.iters,
                   "precision": args.precision, "parts": args.profile_parts,
                   "bf16_iterations": args.bf16_iterations}
            if args.profile_parts != ["none"]:
                out["sizes"][size] = spawn({**cfg, "kind": "profile"})
            # The flag variants run in fresh processes; "" (no extra flags) is their control, measured alongside.
            for flags in ([""] + args.xla_flags_variants if args.xla_flags_variants else []):
                env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
                out["sizes"].setdefault(size, {}).setdefault("xla_flags", {})[flags] = spawn(
                    {**cfg, "kind": "profile", "parts": ["vg"]}, env=env)
    return out


def worker_profile(cfg: dict) -> dict:  # noqa: C901 - a list of independent measurements
    import functools

    import jax
    import jax.numpy as jnp

    from nst_jax import losses, optim, vgg

    settings, objective, spec, params, targets, x0 = _jax_problem(cfg)
    R = cfg["repeats"]
    parts = set(cfg.get("parts") or ["all"])
    want = lambda p: "all" in parts or p in parts  # noqa: E731
    res: dict = {}

    def bench(f, *a, reps=R):
        f = jax.jit(f) if not hasattr(f, "lower") else f
        compiled = f.lower(*a).compile()
        jax.block_until_ready(f(*a))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t0)
        return {"s": _median(ts), "gflop": (_flops(compiled) or 0) / 1e9}

    jparams = jax.tree.map(jnp.asarray, params)
    vg = lambda p, x, t: objective.value_and_grad(p, x, t)  # noqa: E731
    res["vg"] = bench(vg, jparams, x0, targets)
    if want("vg") and cfg.get("parts") == ["vg"]:
        return res
    res["vg_numpy_params"] = bench(jax.jit(vg), params, x0, targets)  # params as api.stylize passes them
    res["forward"] = bench(lambda p, x, t: objective.loss(p, x, t).total, jparams, x0, targets)

    # Per block: forward+backward (vjp) of each VGG block at its input shape, and its forward alone.
    if want("blocks"):
        w = {k: (v["kernel"], v["bias"]) for k, v in jparams["params"].items()}
        x = x0[None]
        last = max(vgg.layer_index(n) for n in objective.layers)
        start, blocks = 0, {}
        for b, n, _ in vgg.BLOCKS:
            if start > last:
                break
            bw = [w[f"conv{b}_{i}"] for i in range(1, n + 1)]
            fn = functools.partial(vgg._run_block, block=b, padding="zero", pooling="max", precision=None,
                                   stop=last - start, wanted=frozenset())
            f = lambda x, bw, fn=fn: fn(x, bw)[0]  # noqa: E731
            y = jax.jit(f)(x, bw)
            blocks[f"block{b}"] = {"in_shape": list(x.shape), "fwd": bench(f, x, bw), "fwd_bwd": bench(
                lambda x, bw, ct, f=f: (f(x, bw), jax.vjp(f, x, bw)[1](ct)[0]), x, bw, y)}
            x = y
            start += 2 * n + 1
        res["blocks"] = blocks
        # single convolutions at full resolution
        convs = {}
        h, wd = x0.shape[:2]
        for name, cin in (("conv1_1", 3), ("conv1_2", 64)):
            k, bias = w[name]
            xi = jnp.ones((1, h, wd, cin), jnp.float32)
            conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",  # noqa: E731
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            yc = conv(xi, k)
            convs[name] = {"fwd": bench(conv, xi, k),
                           "fwd_bwd": bench(lambda x, k, ct: jax.vjp(conv, x, k)[1](ct)[0], xi, k, yc)}
            # the image gradient only (what style transfer needs): backward w.r.t. x, not k
            convs[name]["fwd_bwd_x_only"] = bench(
                lambda x, k, ct: jax.vjp(lambda x: conv(x, k), x)[1](ct)[0], xi, k, yc)
            # NCHW / OIHW layout for comparison
            conv_nchw = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",  # noqa: E731
                                                                  dimension_numbers=("NCHW", "OIHW", "NCHW"))
            xn, kn = jnp.transpose(xi, (0, 3, 1, 2)), jnp.transpose(k, (3, 2, 0, 1))
            yn = conv_nchw(xn, kn)
            convs[name]["nchw_fwd_bwd_x_only"] = bench(
                lambda x, k, ct: jax.vjp(lambda x: conv_nchw(x, k), x)[1](ct)[0], xn, kn, yn)
        res["convs"] = convs

    # Gram matrices and pooling at their real shapes
    if want("gram_pool"):
        feats = jax.jit(lambda p, x: objective.features(p, x))(jparams, x0)
        grams = {}
        for l in objective.term("style").layers:
            f = feats[l]
            grams[l] = {"shape": list(f.shape), "fwd_bwd": bench(
                lambda f, t: jax.value_and_grad(lambda f: losses.style_loss(losses.gram(f), t))(f), f,
                targets["style"]["target"][l])}
        res["gram"] = grams
        h, wd = x0.shape[:2]
        xp = jax.random.normal(jax.random.key(0), (1, h, wd, 64), jnp.float32)
        win = (1, 2, 2, 1)
        pool_rw = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, win, win, "VALID")  # noqa: E731

        def pool_reshape(x):
            n, hh, ww, c = x.shape
            x = x[:, : hh // 2 * 2, : ww // 2 * 2]
            return x.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

        ct = pool_rw(xp)
        res["pool1"] = {
            "reduce_window_fwd_bwd": bench(lambda x, ct: jax.vjp(pool_rw, x)[1](ct)[0], xp, ct),
            "reshape_max_fwd_bwd": bench(lambda x, ct: jax.vjp(pool_reshape, x)[1](ct)[0], xp, ct),
            "same_result": bool(jnp.allclose(pool_rw(xp), pool_reshape(xp))),
        }

    # Whole-objective variants (proposals): NCHW convs, reshape max-pool, remat, bf16.
    if want("variants"):
        def forward_variant(wts, x, layout="NHWC", pool="reduce_window", dtype=jnp.float32):
            """The network with one implementation choice changed; same math as nst_jax.vgg.forward."""
            wanted = frozenset(objective.layers)
            last = max(vgg.layer_index(n) for n in wanted)
            out = {}
            x = x.astype(dtype)
            if layout == "NCHW":
                x = jnp.transpose(x, (0, 3, 1, 2))
            for name in vgg.LAYERS[: last + 1]:
                if name.startswith("conv"):
                    k, b = wts[name]
                    k = k.astype(dtype)
                    if layout == "NCHW":
                        x = jax.lax.conv_general_dilated(x, jnp.transpose(k, (3, 2, 0, 1)), (1, 1), "SAME",
                                                         dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                                         preferred_element_type=jnp.float32)
                        x = (x + b[None, :, None, None]).astype(dtype)
                    else:
                        x = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                         preferred_element_type=jnp.float32)
                        x = (x + b).astype(dtype)
                elif name.startswith("relu"):
                    x = jax.nn.relu(x)
                else:
                    sp = (2, 3) if layout == "NCHW" else (1, 2)
                    if pool == "reshape":
                        n_ = x.shape[0]
                        hh, ww = x.shape[sp[0]], x.shape[sp[1]]
                        if layout == "NCHW":
                            x = x[:, :, : hh // 2 * 2, : ww // 2 * 2]
                            x = x.reshape(n_, x.shape[1], hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
                        else:
                            x = x[:, : hh // 2 * 2, : ww // 2 * 2]
                            x = x.reshape(n_, hh // 2, 2, ww // 2, 2, x.shape[-1]).max(axis=(2, 4))
                    else:
                        win = (1, 1, 2, 2) if layout == "NCHW" else (1, 2, 2, 1)
                        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, win, win, "VALID")
                if name in wanted:
                    out[name] = (jnp.transpose(x, (0, 2, 3, 1)) if layout == "NCHW" else x).astype(jnp.float32)
            return out

        def loss_variant(wts, x, t, **kw):
            feats = {k: v[0] for k, v in forward_variant(wts, x[None], **kw).items()}
            c = sum(wt * losses.content_loss(feats[l], t["content"]["target"][l])
                    for l, wt in zip(objective.term("content").layers, t["content"]["weight"]))
            s = sum(wt * losses.style_loss(losses.gram(feats[l]), t["style"]["target"][l])
                    for l, wt in zip(objective.term("style").layers, t["style"]["weight"]))
            return c + s + t["tv"]["weight"][0] * losses.tv_loss(x)

        w = {k: (v["kernel"], v["bias"]) for k, v in jparams["params"].items()}
        variants = {}
        base_terms, base_g = jax.jit(objective.value_and_grad)(jparams, x0, targets)
        base_val, base_g = float(base_terms.total), np.asarray(base_g)
        for name, kw in (("nhwc_reduce_window", {}), ("nchw", {"layout": "NCHW"}),
                         ("nhwc_reshape_pool", {"pool": "reshape"}),
                         ("nchw_reshape_pool", {"layout": "NCHW", "pool": "reshape"}),
                         ("bf16_fp32_accum", {"dtype": jnp.bfloat16})):
            f = jax.jit(jax.value_and_grad(functools.partial(loss_variant, **kw), argnums=1))
            r = bench(f, w, x0, targets)
            val, g = f(w, x0, targets)
            r["loss_rel_diff"] = abs(float(val) - base_val) / abs(base_val)
            r["grad_rel_diff"] = float(np.linalg.norm(np.asarray(g) - base_g) / np.linalg.norm(base_g))
            variants[name] = r
        res["variants"] = variants

    if want("bf16"):
        # The library's dtype="bfloat16" (VGG-19 in bf16; Grams, losses, L-BFGS in fp32) against float32:
        # neural-style's L-BFGS from the same start, and the float32 objective's loss along both runs.
        import dataclasses

        from nst_jax.objective import make_targets

        inp = _load_inputs(Path(cfg["workdir"]), cfg["size"])
        n_it = cfg.get("bf16_iterations", 50)
        full = jax.jit(lambda x: objective.loss(jparams, x, targets).total)
        bf = {}
        for name in ("float32", "bfloat16"):
            obj_dt = dataclasses.replace(objective, dtype=name)
            t_dt = make_targets(obj_dt, jparams, jnp.asarray(inp["content"]), [jnp.asarray(inp["style"])],
                                weights=settings)
            stepper = optim.single_image_stepper(obj_dt, spec, jparams, t_dt, "auto")
            state = stepper.init(x0)
            curve = [float(full(state.x))]
            for _ in range(n_it):
                state = stepper.advance(state, 1)
                curve.append(float(full(state.x)))
            bf[name] = curve
        bf["final_rel_diff"] = abs(bf["bfloat16"][-1] - bf["float32"][-1]) / abs(bf["float32"][-1])
        bf["iterations"] = n_it
        res["bf16_lbfgs"] = bf

    # remat: time and memory of the library's own option (fresh process would be cleaner; RSS is process-wide,
    # so the main benchmark's peak RSS figures are the ones to quote)
    if want("remat"):
        import dataclasses

        obj_r = dataclasses.replace(objective, remat=True)
        res["remat_vg"] = bench(lambda p, x, t: obj_r.value_and_grad(p, x, t), jparams, x0, targets)

    # L-BFGS overhead beyond one value+grad: the library's step with and without donation, history 100 and 10.
    if want("lbfgs"):
        def step_time(spec_, donate=True):
            state = optim._init_jit(objective, spec_, jparams, x0, targets)
            f = jax.jit(lambda s: optim.step(objective, spec_, jparams, s, targets),
                        donate_argnums=(0,) if donate else ())
            for _ in range(2):
                state = jax.block_until_ready(f(state))
            ts = []
            for _ in range(R):
                t0 = time.perf_counter()
                for _ in range(cfg["iters"]):
                    state = f(state)
                jax.block_until_ready(state)
                ts.append((time.perf_counter() - t0) / cfg["iters"])
            return _median(ts), int(state.opt_state[0].stored)

        spec10 = optim.SolverSpec(history=10)
        lb = {}
        lb["library_step_h100"], lb["stored_pairs_h100"] = step_time(spec)
        lb["library_step_h100_no_donation"] = step_time(spec, donate=False)[0]
        lb["library_step_h10"] = step_time(spec10)[0]
        lb["history_mb_h100"] = 2 * 100 * x0.size * 4 / 2**20
        lb["overhead_vs_vg_h100"] = lb["library_step_h100"] - res["vg"]["s"]
        res["lbfgs"] = lb
    return res


WORKERS["profile"] = worker_profile


def profile_markdown(p: dict) -> str:
    lines = [f"# nst_jax profile, {p['date']}", "", f"- command: `{p['command']}`",
             f"- machine: {p['machine']['cpu_model']}, {p['machine']['usable_cores']} cores, "
             f"jax {p['machine']['jax']} ({p['machine']['backend']})", ""]
    for size, r in p["sizes"].items():
        vg = r["vg"]["s"]
        lines += [f"## {size} px", "", f"Foreign load during the measurement: {r.get('foreign_load', '?')} cores "
                  "(other processes' CPU use; > 0.1: not clean).", "",
                  "| piece | s | GFLOP | GFLOP/s | share of value+grad |", "|---|---:|---:|---:|---:|"]

        def row(name, m):
            if m is None:
                return
            gf = m.get("gflop") or 0
            lines.append(f"| {name} | {m['s']:.4f} | {gf:.2f} | {(gf / m['s'] if gf else 0):.1f} | "
                         f"{m['s'] / vg:.2f} |")

        row("value+grad (device params)", r["vg"])
        row("value+grad (NumPy params, as api.stylize)", r.get("vg_numpy_params"))
        row("forward (loss only)", r.get("forward"))
        for b, m in r.get("blocks", {}).items():
            row(f"{b} forward {m['in_shape']}", m["fwd"])
            row(f"{b} forward+backward", m["fwd_bwd"])
        for c, m in r.get("convs", {}).items():
            row(f"{c} forward", m["fwd"])
            row(f"{c} forward+backward (x and kernel)", m["fwd_bwd"])
            row(f"{c} forward+backward (x only)", m["fwd_bwd_x_only"])
            row(f"{c} forward+backward (x only), NCHW", m["nchw_fwd_bwd_x_only"])
        for l, m in r.get("gram", {}).items():
            row(f"Gram + style loss fwd+bwd {l} {m['shape']}", m["fwd_bwd"])
        if "pool1" in r:
            row("pool1 max fwd+bwd, reduce_window (select-and-scatter)", r["pool1"]["reduce_window_fwd_bwd"])
            row("pool1 max fwd+bwd, reshape + max", r["pool1"]["reshape_max_fwd_bwd"])
        for name, m in r.get("variants", {}).items():
            row(f"variant value+grad: {name} (loss rel diff {m['loss_rel_diff']:.1e}, "
                f"grad rel diff {m.get('grad_rel_diff', float('nan')):.1e})", m)
        row("value+grad with remat=True", r.get("remat_vg"))
        for flags, m in r.get("xla_flags", {}).items():
            row(f"value+grad with XLA_FLAGS='{flags}'" if flags else "value+grad, no extra XLA_FLAGS (control)",
                m["vg"])
        if "bf16_lbfgs" in r:
            b = r["bf16_lbfgs"]
            lines += ["", f"dtype='bfloat16' vs float32, neural-style's L-BFGS, {b['iterations']} iterations: "
                      f"float32 loss "
                      f"{b['bfloat16'][-1]:.6g} vs fp32 {b['float32'][-1]:.6g} (relative difference "
                      f"{b['final_rel_diff']:.2%}; start {b['float32'][0]:.6g})."]
        if "lbfgs" in r:
            lb = r["lbfgs"]
            lines += ["", "| L-BFGS iteration | s/iter |", "|---|---:|"]
            for k, v in lb.items():
                lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Usage"):])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (long side, px)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (the median is reported)")
    p.add_argument("--iters", type=int, default=3, help="optimizer iterations per timed repetition")
    p.add_argument("--precision", choices=["default", "high", "highest"], default=None,
                   help="matmul/conv precision (Settings.precision); unset = the backend's default")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: also time value+grad with Settings.dtype='bfloat16' (VGG-19 in bf16, "
                        "Grams/losses float32)")
    p.add_argument("--reference", choices=["none", "torch"], default="none",
                   help="torch: also run scripts/torch_reference.py (agreement check, then timings and ratios)")
    p.add_argument("--time-to-loss", action="store_true",
                   help="(with --reference torch) time for nst_jax to reach PyTorch's 100-iteration L-BFGS loss; slow")
    p.add_argument("--ttl-max-iterations", type=int, default=200, help="give up time-to-loss after this many")
    p.add_argument("--ttl-sizes", type=int, nargs="+", default=None, help="time-to-loss only at these sizes")
    p.add_argument("--ttl-linesearch", nargs="+", default=["none"], choices=["none", "zoom", "backtracking"],
                   help="time-to-loss with these L-BFGS variants (Settings.lbfgs_linesearch; 'none' is "
                        "neural-style's, the same algorithm as PyTorch's)")
    p.add_argument("--ttl-coarse-iterations", type=int, nargs="*", default=[50],
                   help="also time coarse-to-fine: this many iterations at half size first (one run per value)")
    p.add_argument("--peak-gflops", type=float, default=None, help="the machine's fp32 peak, if known")
    p.add_argument("--torch-device", default="cpu", help="device of the PyTorch reference (cpu, cuda)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="random weights and initial image seed")
    p.add_argument("--content", default=str(ROOT / "examples" / "tubingen.jpg"), help="content image")
    p.add_argument("--style", default=str(ROOT / "examples" / "starry_night.jpg"), help="style image")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown report here too")
    p.add_argument("--profile", action="store_true", help="time the pieces of value+grad and the proposed variants")
    p.add_argument("--profile-parts", nargs="+", default=["all"],
                   choices=["all", "blocks", "gram_pool", "variants", "bf16", "remat", "lbfgs", "none"],
                   help="(--profile) which measurements; 'none': only the --xla-flags-variant runs")
    p.add_argument("--bf16-iterations", type=int, default=50,
                   help="(--profile, part bf16) L-BFGS iterations of the bf16-vs-fp32 comparison")
    p.add_argument("--remat", action="store_true", help="Settings.remat=True (jax.checkpoint per VGG block)")
    p.add_argument("--xla-flags-variant", dest="xla_flags_variants", action="append", default=[], metavar="FLAGS",
                   help="(--profile) also time value+grad with XLA_FLAGS=FLAGS; repeat for several, "
                        "e.g. --xla-flags-variant=--xla_cpu_use_onednn=true")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before each measurement, wait up to this long for other processes to leave the CPU idle")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                   help="run a measurement again (up to N times) when other processes used > 0.1 core during it")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.time_to_loss and args.reference != "torch":
        p.error("--time-to-loss needs --reference torch (the target loss comes from PyTorch's L-BFGS)")
    if args.reference == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            p.error("--reference torch needs PyTorch: pip install torch (CPU build), or the 'torch' extra")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    _IDLE.update(wait_s=args.wait_idle, retries=args.retry_noisy)
    if args.profile:
        result = run_profile(args)
        md = profile_markdown(result)
    else:
        result = run_benchmark(args)
        md = markdown(result)
    print(md)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.md:
        args.md.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
