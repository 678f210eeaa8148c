"""The largest image a stylization fits in a given memory: XLA's own accounting, checked by a real run.

For each memory budget, and with ``remat`` off and on, the largest long side (a multiple of ``--step``,
up to ``--max-size``; the other side from ``--aspect``) whose stylization fits is searched for without
running anything: the library's jitted functions are lowered and compiled for abstract inputs
(``jax.ShapeDtypeStruct``, nothing allocated) and ``compiled.memory_analysis()`` gives XLA's buffer
assignment. Per compiled function ("phase")::

    peak = arguments + outputs + temporaries - aliased

* arguments: the live inputs of the call: VGG-19's params (those the loss uses; jit drops the others),
  the targets and, for a step, the whole optimizer state, i.e. for L-BFGS the two history buffers of
  ``history x H x W x 3`` float32 each;
* outputs: the new state (or the targets); aliased: the part of the outputs written in place of
  donated arguments (the state a step consumes), counted once;
* temporaries: XLA's preallocated scratch (activations kept for the backward pass, copies, ...).

The phases are those of ``nst_jax.stylize``: ``targets`` (content activations and style Gram
matrices, two compiled functions), ``init`` (the loss and gradient of the initial image, the empty
optimizer state) and ``step`` (one iteration, or a compiled chunk of them with ``--loop chunk``, the
default on GPUs). The estimate of a size is the largest phase. On GPUs the memory is the device's and
the baseline is the device memory a process uses after one tiny operation (about 0). On CPU the
memory is the process's RSS, which also holds the Python/JAX runtime and VGG-19's params (kept in host
memory by ``nst_jax.stylize``): the baseline is the peak RSS of a fresh process that imports jax and
nst_jax, loads the params and runs one tiny operation, and ``estimate = baseline + max over phases``.
What RSS holds beyond that (and the verification measures) is not in XLA's accounting: the compiler's
memory while compiling (a few hundred MB, independent of the size) and memory that the C allocator
keeps after an earlier phase freed it.

The search assumes the estimate grows with the size: it doubles the size from ``--step`` until a size
does not fit, then bisects between the last two, so the answer fits and the next multiple of
``--step`` does not (both estimates are reported). Each size costs one compilation per phase (seconds
on CPU; ``step`` first, the others only for sizes that it leaves within the budget); estimates are
shared between budgets.

Verification (unless ``--no-verify``): at each size found, a fresh process runs ``nst_jax.stylize``
(random weights, random content and style images of that shape) for ``--verify-iterations`` iterations
and reports its real peak: the RSS high-water mark on CPU (of the whole process, compilation
included, and of the run alone after a warm-up stylization compiled everything), the device's
``peak_bytes_in_use`` on GPUs. It fits when the measured peak is within the budget; when it does not,
smaller sizes (``--step`` at a time) are run until one fits, and that size is reported as the largest
that ran within the budget.

Default budget: the device's memory available to JAX (``bytes_limit`` of its allocator) on GPUs, the
machine's RAM on CPU. Every ``nst_jax.Settings`` field is a flag (``--optimizer adam``,
``--lbfgs-history 20``, ``--dtype bfloat16``, ...), defaults neural-style's (L-BFGS, history 100);
``--remat`` here chooses which of the two settings to search.

Usage::

    python scripts/max_image_size.py                                   # this machine's memory, L-BFGS
    python scripts/max_image_size.py --budget-mb 2048 --budget-mb 8192 --step 128
    python scripts/max_image_size.py --optimizer adam --remat on --no-verify --out max.json --md max.md
    python scripts/max_image_size.py --budget-mb 16384 --verify-max-size 1024 --aspect 16:9
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402

ROOT = bm.ROOT
MB = 2**20
#: Compiled functions of a stylization, in the order they run (see the module docstring).
PHASES = ("targets", "init", "step")
#: The fields of ``compiled.memory_analysis()`` that are reported.
_STATS = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
          "generated_code_size_in_bytes")
#: The environment as the script found it (the workers get it, not the main process's allocator settings).
_ORIGINAL_ENV = dict(os.environ)


# ----------------------------------------------------------------------------------------------------------------
# Shapes


def parse_aspect(text: str) -> tuple[int, int]:
    """``"4:3"`` -> ``(4, 3)``: width and height of the image's aspect ratio."""
    try:
        w, h = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"aspect must be WIDTH:HEIGHT in integers, e.g. 4:3, got {text!r}.") from None
    if w < 1 or h < 1:
        raise ValueError(f"aspect must be WIDTH:HEIGHT with both >= 1, got {text!r}.")
    return w, h


def image_shape(size: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of an image of aspect ``(W, H)`` with long side ``size``, as ``nst_jax.stylize`` resizes it."""
    from nst_jax import images

    return images.target_size(aspect[1], aspect[0], size)


def smallest_size(step: int, aspect: tuple[int, int]) -> int:
    """The smallest multiple of ``step`` that a stylization accepts (long and short side)."""
    from nst_jax import images
    from nst_jax.config import MIN_IMAGE_SIZE

    size = step
    while size < MIN_IMAGE_SIZE or min(image_shape(size, aspect)) < images.MIN_SIZE:
        size += step
    return size


# ----------------------------------------------------------------------------------------------------------------
# XLA's estimate


def abstract_problem(settings, aspect: tuple[int, int]):
    """Objective, spec and abstract (``ShapeDtypeStruct``) params, images, targets and state at
    ``settings.image_size``; nothing of that size is allocated."""
    import functools

    import jax
    import jax.numpy as jnp

    from nst_jax import optim, vgg
    from nst_jax.objective import Objective, make_targets

    objective = Objective.from_settings(settings)
    spec = optim.SolverSpec.from_settings(settings)
    f32 = jnp.float32
    params = {"params": {name: {kind: jax.ShapeDtypeStruct(shape, f32) for kind, shape in layer.items()}
                         for name, layer in vgg.param_shapes().items()}}
    params = jax.eval_shape(objective.prepare, params)  # what the steppers keep (Winograd kernel transforms)
    x = jax.ShapeDtypeStruct((*image_shape(settings.image_size, aspect), 3), f32)
    # The style image is resized to image_size * style_scale (long side); assumed of the same aspect.
    style = jax.ShapeDtypeStruct((*image_shape(max(1, int(settings.image_size * settings.style_scale)), aspect),
                                  3), f32)
    targets = jax.eval_shape(lambda p, c, s: make_targets(objective, p, c, [s], weights=settings), params, x, style)
    state = jax.eval_shape(functools.partial(optim.init, objective, spec), params, x, targets)
    return objective, spec, params, x, style, targets, state


def lowerings(settings, aspect: tuple[int, int], phases: Iterable[str]) -> dict[str, Callable]:
    """``{name: () -> jax.stages.Lowered}`` of the compiled functions of the chosen phases."""
    import jax
    import jax.numpy as jnp

    from nst_jax import objective as objective_mod
    from nst_jax import optim

    objective, spec, params, x, style, targets, state = abstract_problem(settings, aspect)
    loop = optim.default_loop() if settings.loop == "auto" else settings.loop
    out: dict[str, Callable] = {}
    if "targets" in phases:
        out["content_targets"] = lambda: objective_mod.content_targets.lower(objective, params, x)
        out["style_grams"] = lambda: objective_mod.style_statistics.lower(objective, params, style)
    if "init" in phases:
        out["init"] = lambda: optim._init_jit.lower(objective, spec, params, x, targets)
    if "step" in phases:
        if loop == "step":
            out["step"] = lambda: optim._step_jit.lower(objective, spec, params, state, targets)
        else:  # a chunk of iterations; its count is traced, as in optim.single_image_stepper
            n = jax.ShapeDtypeStruct((), jnp.int32)
            out["step"] = lambda: optim._steps_jit.lower(objective, spec, params, state, targets, n)
    return out


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def phase_memory(lower: Callable) -> dict:
    """Compiles one function and returns XLA's memory figures (bytes) and ``peak`` (see the module docstring)."""
    t0 = time.perf_counter()
    try:
        compiled = lower().compile()
    except Exception as e:  # noqa: BLE001 - a compilation that runs out of memory (GPU autotuning) does not fit
        if not _out_of_memory(e):
            raise
        return {"peak": float("inf"), "error": str(e).splitlines()[0][:300],
                "compile_s": round(time.perf_counter() - t0, 2)}
    ma = compiled.memory_analysis()
    if isinstance(ma, (list, tuple)):
        ma = ma[0]
    stats = {k.removesuffix("_size_in_bytes"): int(getattr(ma, k, 0) or 0) for k in _STATS}
    stats["peak"] = stats["argument"] + stats["output"] + stats["temp"] - stats["alias"]
    stats["compile_s"] = round(time.perf_counter() - t0, 2)
    return stats


#: XLA's figures of each compiled function, by (settings with image_size and remat, aspect): shared between
#: searches, budgets and choices of phases.
_CACHE: dict[tuple, dict[str, dict]] = {}


def estimate(settings, size: int, *, remat: bool, aspect: tuple[int, int] = (4, 3),
             phases: Iterable[str] = PHASES, stop_above: float | None = None, compile: bool = True) -> dict | None:
    """XLA's memory estimate of a stylization with these settings at long side ``size`` (cached).

    The compiled functions are estimated in the order ``step``, ``init``, ``content_targets``,
    ``style_grams`` (the largest first, as measured); with ``stop_above`` (bytes) the rest are skipped
    once one exceeds it (the size does not fit anyway), and compiled by a later call that needs them.
    With ``compile=False`` only what is cached is used (None if nothing is).

    Returns:
        ``{"size", "remat", "shape_hw", "xla_bytes", "phase", "complete", "phases": {name: figures}}``:
        ``xla_bytes`` is the largest ``peak`` of the phases compiled (``inf`` where compiling ran out of
        memory), ``phase`` its name; ``complete`` is False when some were skipped (then ``xla_bytes`` is a
        lower bound above ``stop_above``).
    """
    s = settings.replace(image_size=int(size), remat=bool(remat))
    cached = _CACHE.setdefault((s, tuple(aspect)), {})
    wanted = [n for n in _ORDER if _PHASE_OF[n] in set(phases)]
    lowered = None
    for name in wanted if compile else ():
        if name in cached:
            continue
        done = [cached[n]["peak"] for n in wanted if n in cached]
        if stop_above is not None and done and max(done) > stop_above:
            break
        lowered = lowered or lowerings(s, aspect, phases)
        cached[name] = phase_memory(lowered[name])
    figures = {n: cached[n] for n in wanted if n in cached}
    if not figures:
        return None
    worst = max(figures, key=lambda k: figures[k]["peak"])
    return {"size": int(size), "remat": bool(remat), "shape_hw": list(image_shape(size, aspect)),
            "xla_bytes": figures[worst]["peak"], "phase": worst, "complete": len(figures) == len(wanted),
            "phases": figures}


#: Compiled functions in the order they are estimated, and the phase of each.
_ORDER = ("step", "init", "content_targets", "style_grams")
_PHASE_OF = {"step": "step", "init": "init", "content_targets": "targets", "style_grams": "targets"}


def largest_fitting(fits: Callable[[int], bool], *, step: int, max_size: int, start: int | None = None) -> int | None:
    """The largest multiple of ``step`` in ``[start, max_size]`` for which ``fits`` holds, assuming it holds
    below some size and not above (doubling from ``start``, then bisection); None if ``start`` does not fit."""
    top = max_size // step * step
    size = start or step
    if size > top:
        return None
    lo = hi = None
    while True:
        if not fits(size):
            hi = size
            break
        lo = size
        if size >= top:
            return lo
        size = min(2 * size, top)
    if lo is None:
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def search(settings, budget_bytes: float, *, remat: bool, baseline_bytes: float = 0.0,
           aspect: tuple[int, int] = (4, 3), step: int = 64, max_size: int = 8192,
           phases: Iterable[str] = PHASES, log: Callable[[str], None] | None = None) -> dict:
    """The largest size whose estimate (``baseline_bytes`` + XLA's) is within ``budget_bytes``.

    Returns:
        ``{"size", "estimate", "next_size", "next_estimate", "capped"}``: ``size`` is None when even the
        smallest size does not fit; ``next_*`` describe ``size + step`` where it was estimated; ``capped``
        is True when ``max_size`` itself fits (the answer may be larger).
    """
    def total(size):
        e = estimate(settings, size, remat=remat, aspect=aspect, phases=phases,
                     stop_above=budget_bytes - baseline_bytes)
        if log:
            log(f"  remat={'on' if remat else 'off'} {size:5d} px ({e['shape_hw'][1]}x{e['shape_hw'][0]}): "
                f"{'' if e['complete'] else '> '}{(baseline_bytes + e['xla_bytes']) / MB:.1f} MB ({e['phase']})")
        return baseline_bytes + e["xla_bytes"]

    size = largest_fitting(lambda n: total(n) <= budget_bytes, step=step, max_size=max_size,
                           start=smallest_size(step, aspect))
    top = max_size // step * step
    out = {"size": size, "estimate": None, "next_size": None, "next_estimate": None, "capped": size == top}
    if size is not None:
        out["estimate"] = estimate(settings, size, remat=remat, aspect=aspect, phases=phases)
    nxt = (size + step) if size is not None else smallest_size(step, aspect)
    nxt_estimate = estimate(settings, nxt, remat=remat, aspect=aspect, phases=phases, compile=False)
    if nxt <= top and nxt_estimate is not None:
        out["next_size"], out["next_estimate"] = nxt, nxt_estimate
    return out


# ----------------------------------------------------------------------------------------------------------------
# Workers (each runs in a fresh process)


def worker_baseline(cfg: dict) -> dict:
    """The runtime's own memory: import jax and nst_jax, load VGG-19's params as ``nst_jax.stylize`` does (it
    keeps them in host memory), run one tiny operation; and the memory the machine or device has."""
    import jax
    import jax.numpy as jnp

    import nst_jax  # noqa: F401
    from nst_jax import api, optim  # noqa: F401 - what a stylization imports

    api.get_params(cfg.get("weights") or "random")
    jax.block_until_ready(jnp.ones(8).sum())
    out = {"peak_rss_mb": round(bm._peak_rss_mb(), 1), "backend": jax.default_backend(),
           "ram_mb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB, 1)}
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory stats
        stats = {}
    if "bytes_limit" in stats:
        out["device_limit_mb"] = round(stats["bytes_limit"] / MB, 1)
    dev = bm._device_peak_bytes()
    if dev is not None:
        out["device_peak_mb"] = round(dev / MB, 1)
    return out


def worker_verify(cfg: dict) -> dict:
    """``nst_jax.stylize`` at one size: a 1-iteration warm-up (compiles everything), then the measured run."""
    import jax
    import numpy as np

    import nst_jax

    settings = settings_from_dict(cfg["settings"]).replace(image_size=cfg["size"], remat=cfg["remat"],
                                                           print_every=0, save_every=0, num_iterations=1)
    h, w = image_shape(cfg["size"], tuple(cfg["aspect"]))
    rng = np.random.default_rng(0)
    content, style = rng.random((h, w, 3), dtype=np.float32), rng.random((h, w, 3), dtype=np.float32)
    t0 = time.perf_counter()
    nst_jax.stylize(content, style, settings, progress=False)
    warmup_s = time.perf_counter() - t0
    after_warmup = bm._peak_rss_mb()
    hwm = bm._reset_hwm()
    n = cfg["iterations"]
    t0 = time.perf_counter()
    result = nst_jax.stylize(content, style, settings.replace(num_iterations=n), progress=False)
    run_s = time.perf_counter() - t0
    out = {"size": cfg["size"], "remat": cfg["remat"], "shape_hw": [h, w], "iterations": n,
           "peak_rss_mb": round(bm._peak_rss_mb(), 1), "peak_rss_after_warmup_mb": round(after_warmup, 1),
           "run_peak_rss_mb": round(bm._hwm_mb(), 1) if hwm and bm._hwm_mb() is not None else None,
           "warmup_s": round(warmup_s, 2), "run_s": round(run_s, 2), "final_loss": result.loss,
           "backend": jax.default_backend()}
    dev = bm._device_peak_bytes()
    if dev is not None:
        out["device_peak_mb"] = round(dev / MB, 1)
    return out


WORKERS = {"baseline": worker_baseline, "verify": worker_verify}


def spawn(cfg: dict) -> dict:
    """Runs a worker in a fresh Python process (with the environment this script was started with)."""
    label = " ".join(f"{k}={v}" for k, v in cfg.items() if k in ("kind", "size", "remat"))
    print(f"  [{time.strftime('%H:%M:%S')}] {label} ...", end="", flush=True, file=sys.stderr)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT, env=_ORIGINAL_ENV, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(bm.RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        print(" failed", file=sys.stderr)
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    print(f" {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return json.loads(lines[-1][len(bm.RESULT_MARK):])


def settings_from_dict(d: dict):
    """``Settings.to_dict()`` -> ``Settings`` (lists back to tuples)."""
    import nst_jax

    return nst_jax.Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------------------------------------------
# The report


def run(args) -> dict:
    import jax

    from nst_jax import cli, optim

    given = cli.settings_from_args(args)
    settings = given if given.weights is not None else given.replace(weights="random")
    aspect = parse_aspect(args.image_aspect)
    gpu = jax.default_backend() != "cpu"
    remats = {"both": (False, True), "off": (False,), "on": (True,)}[args.remat_modes]
    phases = tuple(p for p in PHASES if p in args.phases)
    machine = bm.machine_info()
    result = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT),
                                                     os.path.relpath(__file__, ROOT)] + list(args.argv)),
        "machine": machine, "settings": settings.to_dict(), "aspect": args.image_aspect, "step": args.step,
        "max_size": args.max_size, "phases": list(phases),
        "loop": optim.default_loop() if settings.loop == "auto" else settings.loop,
        "memory": "device memory" if gpu else "process RSS",
        "formula": "estimate = baseline + max over phases of (arguments + outputs + temporaries - aliased), "
                   "from compiled.memory_analysis()",
    }
    need_worker = (args.baseline_mb is None and not gpu) or not args.budget_mb
    base = spawn({"kind": "baseline", "weights": settings.weights}) if need_worker else {}
    if "error" in base:
        raise SystemExit(f"the baseline process failed: {base['error']}")
    result["baseline_process"] = base or None
    if args.baseline_mb is not None:
        baseline_mb, how = args.baseline_mb, "given (--baseline-mb)"
    elif gpu:
        baseline_mb, how = base.get("device_peak_mb", 0.0), "device memory of a process that ran one tiny operation"
    else:
        baseline_mb, how = base["peak_rss_mb"], ("peak RSS of a process that imported jax and nst_jax, loaded "
                                                  "the params and ran one tiny operation")
    result["baseline_mb"], result["baseline_how"] = baseline_mb, how
    if args.budget_mb:
        budgets = [float(b) for b in args.budget_mb]
    elif gpu:
        if "device_limit_mb" not in base:
            raise SystemExit("the device reports no memory limit; give --budget-mb.")
        budgets = [base["device_limit_mb"]]
    else:
        budgets = [base["ram_mb"]]
    result["budgets_mb"] = budgets
    print(f"baseline {baseline_mb:.1f} MB ({how}); budgets {', '.join(f'{b:.0f}' for b in budgets)} MB",
          file=sys.stderr)

    rows = []
    for remat in remats:
        for budget in sorted(budgets):
            print(f"budget {budget:.0f} MB, remat {'on' if remat else 'off'}:", file=sys.stderr)
            found = search(settings, budget * MB, remat=remat, baseline_bytes=baseline_mb * MB, aspect=aspect,
                           step=args.step, max_size=args.max_size, phases=phases,
                           log=lambda m: print(m, file=sys.stderr))
            row = {"budget_mb": budget, "remat": remat, "size": found["size"], "capped": found["capped"],
                   "shape_hw": found["estimate"]["shape_hw"] if found["estimate"] else None,
                   "xla_mb": _mb(found["estimate"]["xla_bytes"]) if found["estimate"] else None,
                   "phase": found["estimate"]["phase"] if found["estimate"] else None,
                   "next_size": found["next_size"],
                   "next_xla_mb": _mb(found["next_estimate"]["xla_bytes"]) if found["next_estimate"] else None,
                   "next_complete": found["next_estimate"]["complete"] if found["next_estimate"] else None}
            row["estimated_mb"] = None if row["xla_mb"] is None else round(baseline_mb + row["xla_mb"], 1)
            row["next_estimated_mb"] = (None if row["next_xla_mb"] is None
                                        else round(baseline_mb + row["next_xla_mb"], 1))
            rows.append(row)

    verified: dict[tuple, dict] = {}

    def verify(size: int, remat: bool) -> dict:
        if (size, remat) not in verified:
            verified[size, remat] = spawn({"kind": "verify", "size": size, "remat": remat, "aspect": aspect,
                                           "iterations": args.verify_iterations, "settings": settings.to_dict()})
        return verified[size, remat]

    def measured(v: dict) -> float | None:
        return None if "error" in v else (v.get("device_peak_mb") if gpu else v["peak_rss_mb"])

    for row in rows:
        row["verify"], row["measured_mb"], row["fits"], row["verified_size"] = None, None, None, None
        if args.no_verify or row["size"] is None:
            continue
        if args.verify_max_size and row["size"] > args.verify_max_size:
            row["verify"] = {"skipped": f"above --verify-max-size {args.verify_max_size}"}
            continue
        v = row["verify"] = verify(row["size"], row["remat"])
        row["measured_mb"] = measured(v)
        if row["measured_mb"] is not None:
            row["fits"] = row["measured_mb"] <= row["budget_mb"]
            row["measured_minus_estimated_mb"] = round(row["measured_mb"] - row["estimated_mb"], 1)
        # The estimate leaves out what RSS holds beyond XLA's buffers: when the run does not fit, step down
        # (--step at a time) until a run does, so the answer is a size that ran within the budget.
        size, smallest = row["size"], smallest_size(args.step, aspect)
        row["step_down"] = []
        while True:
            m = measured(verify(size, row["remat"]))
            if m is not None and m <= row["budget_mb"]:
                row["verified_size"], row["verified_shape_hw"], row["verified_mb"] = size, image_shape(size, aspect), m
                break
            if size - args.step < smallest:
                break
            size -= args.step
            row["step_down"].append(size)
    result["results"] = rows
    result["verify_runs"] = [v for v in verified.values() if "error" not in v]
    cached = sorted((s.remat, s.image_size) for s, asp in _CACHE if asp == aspect
                    and s.replace(image_size=settings.image_size, remat=settings.remat) == settings)
    result["estimates"] = []
    for remat, size in cached:
        e = estimate(settings, size, remat=remat, aspect=aspect, phases=phases, compile=False)
        if e is not None:
            result["estimates"].append({**e, "xla_mb": _mb(e["xla_bytes"]),
                                        "estimated_mb": round(baseline_mb + _mb(e["xla_bytes"]), 1)})
    return result


def _finite(obj):
    """The result with infinities (sizes whose compilation ran out of memory) as None: valid JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and obj == float("inf") else obj


def _mb(nbytes: float) -> float:
    return round(nbytes / MB, 1) if nbytes != float("inf") else float("inf")


def _f(x, spec=".0f"):
    return "-" if x is None else format(x, spec)


def _wxh(shape_hw) -> str:
    return "-" if not shape_hw else f"{shape_hw[1]} x {shape_hw[0]}"


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    opt = (f"L-BFGS (history {s['lbfgs_history']}, line search {s['lbfgs_linesearch']})" if s["optimizer"] == "lbfgs"
           else "Adam")
    lines = [
        f"# Largest image in a memory budget, {result['date']}",
        "",
        f"- command: `{result['command']}`",
        (f"- machine: {m['cpu_model']}, {m['usable_cores']} cores, {m['memory_gb']} GB; jax {m['jax']} "
         f"(backend {m['backend']}, devices {', '.join(m['devices'])})"),
        (f"- stylization: {opt}, loop '{result['loop']}', dtype {s['dtype']}, precision "
         f"{s['precision'] or 'default'}, style_scale {s['style_scale']}; aspect {result['aspect']} (W:H), long "
         f"sides multiples of {result['step']} up to {result['max_size']}"),
        f"- memory: {result['memory']}; baseline {result['baseline_mb']:.1f} MB ({result['baseline_how']})",
        f"- {result['formula']}; phases: {', '.join(result['phases'])}",
        "",
        ("| budget (MB) | remat | largest size (W x H) | estimated (MB) | next size, estimated (MB) "
         "| measured (MB) | fits | largest size that ran within the budget (measured MB) |"),
        "|---:|---|---|---:|---|---:|---|---|",
    ]
    for r in result["results"]:
        size = "none fits" if r["size"] is None else (f"{r['size']} ({_wxh(r['shape_hw'])})"
                                                       + (" (--max-size)" if r["capped"] else ""))
        nxt = ("-" if r["next_size"] is None else
               f"{r['next_size']}: {'' if r['next_complete'] else '> '}{_f(r['next_estimated_mb'])}")
        v = r["verify"]
        if v is None:
            fits = "not verified"
        elif "skipped" in v:
            fits = f"not verified ({v['skipped']})"
        elif "error" in v:
            fits = "run failed" + (" (out of memory)" if "RESOURCE_EXHAUSTED" in v["error"]
                                   or "out of memory" in v["error"].lower() else "")
        else:
            fits = "yes" if r["fits"] else "NO"
        ran = ("-" if v is None or "skipped" in v else "none" if r.get("verified_size") is None else
               f"{r['verified_size']} ({_wxh(r['verified_shape_hw'])}, {r['verified_mb']:.0f})")
        lines.append(f"| {r['budget_mb']:.0f} | {'on' if r['remat'] else 'off'} | {size} | {_f(r['estimated_mb'])} | "
                     f"{nxt} | {_f(r['measured_mb'])} | {fits} | {ran} |")
    runs = sorted((v for v in result.get("verify_runs", []) if "peak_rss_mb" in v),
                  key=lambda v: (v["remat"], -v["size"]))
    if runs and result["memory"] == "process RSS":
        lines += ["", ("Measured peak RSS: the whole process (compilation included); after a 1-iteration warm-up "
                       "that compiled everything; of the measured run alone (high-water mark reset after the "
                       "warm-up)."), "",
                  "| size | remat | iterations | whole process (MB) | after warm-up (MB) | run alone (MB) | run (s) |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        seen = set()
        for v in runs:
            if (v["size"], v["remat"]) in seen:
                continue
            seen.add((v["size"], v["remat"]))
            lines.append(f"| {v['size']} | {'on' if v['remat'] else 'off'} | {v['iterations']} | "
                         f"{v['peak_rss_mb']:.0f} | {v['peak_rss_after_warmup_mb']:.0f} | "
                         f"{_f(v['run_peak_rss_mb'])} | {v['run_s']:.1f} |")
    shown = {(r["size"], r["remat"]) for r in result["results"] if r["size"] is not None}
    if shown:
        lines += ["", "XLA's figures per phase (MB) at the sizes found:", "",
                  "| size | remat | phase | arguments | outputs | temporaries | aliased | peak | compile (s) |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in result["estimates"]:
        if (e["size"], e["remat"]) not in shown:
            continue
        for name, p in e["phases"].items():
            if "error" in p:
                lines.append(f"| {e['size']} | {'on' if e['remat'] else 'off'} | {name} | compile failed: "
                             f"{p['error'][:80]} | | | | | {p['compile_s']:.1f} |")
                continue
            lines.append(f"| {e['size']} | {'on' if e['remat'] else 'off'} | {name} | {p['argument'] / MB:.1f} | "
                         f"{p['output'] / MB:.1f} | {p['temp'] / MB:.1f} | {p['alias'] / MB:.1f} | "
                         f"{p['peak'] / MB:.1f} | {p['compile_s']:.1f} |")
    lines += ["", "Every size estimated (MB, baseline included): "
              + "; ".join(f"remat {'on' if rm else 'off'}: " + ", ".join(
                  f"{e['size']} {'' if e['complete'] else '> '}{_f(e['estimated_mb'])}"
                  for e in result["estimates"] if e["remat"] == rm)
                  for rm in (False, True) if any(e["remat"] == rm for e in result["estimates"])), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Tiled mode (--tile-stage): no size limit, only time; its tiles' memory, measured


def tile_stage(args, result: dict) -> dict:
    """Measures the peak of one tile of tiled mode: a ``T x T`` stylization (``T = --tile-stage``), run as the
    verification runs (fresh process, same settings), for each remat setting searched."""
    remats = sorted({row["remat"] for row in result["results"]})
    runs = [spawn({"kind": "verify", "size": args.tile_stage, "remat": remat, "aspect": [1, 1],
                   "iterations": args.verify_iterations, "settings": result["settings"]}) for remat in remats]
    gpu = result["machine"].get("backend") != "cpu"
    return {"tile": args.tile_stage, "runs": [{**v, "measured_mb": v.get("device_peak_mb") if gpu else
                                               v.get("peak_rss_mb")} for v in runs if "error" not in v],
            "errors": [v["error"] for v in runs if "error" in v]}


def tile_markdown(result: dict) -> str:
    """The report's lines on tiled mode, from :func:`tile_stage`'s measurements ('' without them)."""
    t = result.get("tile_stage")
    if not t:
        return ""
    tile = t["tile"]
    lines = ["", f"### Tiled mode (`--tile {tile}`)", "",
             f"Tiled mode has no size limit, only time: each tile is refined as a {tile} x {tile} stylization. "
             f"Measured here ({result['memory']}, a fresh process, {tile} x {tile} content and style, "
             "the settings above):", ""]
    for r in t["runs"]:
        lines.append(f"- remat {'on' if r['remat'] else 'off'}: one {tile} x {tile} tile peaks at "
                     f"{_f(r['measured_mb'])} MB")
    lines += [f"- not measured: {e}" for e in t["errors"]]
    lines.append("")
    for row in result["results"]:
        tile_run = next((r for r in t["runs"] if r["remat"] == row["remat"]), None)
        untiled = (_wxh(row["verified_shape_hw"]) if row.get("verified_shape_hw")
                   else f"{_wxh(row['shape_hw'])} (XLA's estimate, not verified)")
        tile_mb = None if tile_run is None else tile_run["measured_mb"]
        fits = "-" if tile_mb is None else ("fits" if tile_mb <= row["budget_mb"] else "does not fit")
        lines.append(f"- budget {row['budget_mb']:.0f} MB, remat {'on' if row['remat'] else 'off'}: untiled up to "
                     f"{untiled}; tiled (`--tile {tile}`): any size, its tile ({_f(tile_mb)} MB measured) {fits}")
    lines += ["", "A tiled run also holds what is full size (the content and output images, the base stage's "
                  "result, the style targets) and refines as many tiles at once as its batch holds; the figures "
                  "above are one tile's, a floor for a tiled run, not its total."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    from nst_jax import cli

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], conflict_handler="resolve",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Usage"):])
    p.add_argument("--budget-mb", type=float, action="append", default=None, metavar="MB",
                   help="memory budget in MiB; repeat for several (default: the device's memory on GPUs, "
                        "the machine's RAM on CPU)")
    p.add_argument("--step", type=int, default=64, help="sizes searched are multiples of this (px)")
    p.add_argument("--max-size", type=int, default=8192, help="largest long side searched (px)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                   help="compiled functions whose peak counts (default: all of a stylization)")
    p.add_argument("--baseline-mb", type=float, default=None,
                   help="runtime baseline added to XLA's estimate, instead of measuring it (CPU: the RSS of "
                        "a process that loaded jax, nst_jax and the params; GPU: about 0)")
    p.add_argument("--no-verify", action="store_true", help="only estimate; run nothing")
    p.add_argument("--verify-iterations", type=int, default=2, help="iterations of the verifying stylization")
    p.add_argument("--verify-max-size", type=int, default=None,
                   help="verify only sizes up to this long side (the run takes long on CPU)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    p.add_argument("--md", type=Path, default=None, help="write the markdown report here too")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tile-stage", type=int, default=None, metavar="T",
                   help="also measure one T x T tile of tiled mode and report, per budget, whether it fits")
    cli.add_settings_arguments(p)
    # Settings.remat is what is searched: --remat chooses the values (replaces the setting's flag).
    p.add_argument("--remat", dest="remat_modes", choices=["both", "off", "on"], default="both",
                   help="search with remat off, on, or both")
    p.add_argument("--no-remat", dest="remat_modes", action="store_const", const="off", help=argparse.SUPPRESS)
    # The image's aspect ratio (replaces Settings.aspect's flag, which only shapes a canvas without content).
    p.add_argument("--aspect", dest="image_aspect", default="4:3",
                   help="aspect ratio WIDTH:HEIGHT; the long side is the size")
    args = p.parse_args(argv)
    if args.step < 1 or args.max_size < args.step:
        p.error("--step must be >= 1 and --max-size >= --step")
    try:
        parse_aspect(args.image_aspect)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv  # for the report's exact command
    if args.worker:
        cfg = json.loads(args.worker)
        print(bm.RESULT_MARK + json.dumps(WORKERS[cfg["kind"]](cfg)), flush=True)
        return 0
    # This process only compiles: on GPUs it must not take the device's memory from the verifying process.
    if "jax" not in sys.modules:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    result = run(args)
    if args.tile_stage:
        result["tile_stage"] = tile_stage(args, result)
    md = markdown(result) + tile_markdown(result)
    print(md)
    if args.out:
        args.out.write_text(json.dumps(_finite(result), indent=1, default=str) + "\n")
    if args.md:
        args.md.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
