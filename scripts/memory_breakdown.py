"""Where the memory of one L-BFGS stylization goes, per component, for nst_jax and (if installed) PyTorch.

    .venv/bin/python scripts/memory_breakdown.py --sizes 512 1024 --weights random --md mem.md --json mem.json

Per image size (long side; tubingen + starry_night from examples/, neural-style's settings: L-BFGS with a
history of 100 pairs, no line search), nst_jax's components:

* runtime baseline: the RSS of a fresh process after importing jax and nst_jax (one tiny operation run);
* VGG-19 params: the bytes of the 16 convolutions' kernels and biases, and of the Winograd kernel transforms
  that :func:`nst_jax.vgg.prepare_params` adds for the layers the loss reaches (``conv_algorithm`` auto: on CPU);
* targets: the bytes of the pytree :func:`nst_jax.objective.make_targets` returns (content activations,
  style Gram matrices, weights);
* L-BFGS history: the two ring buffers of the optimizer state of :func:`nst_jax.optim.init` (``history`` pairs
  of image-sized arrays each), and the rest of the step's state (the image, its gradient, the previous image
  and gradient, the loss terms, ...);
* activations: an estimate of what the backward pass keeps, one tensor per convolution (its ReLU's output,
  which is also the next pooling's and the Gram matrix's input; :func:`nst_jax.vgg.relu` takes its derivative
  from it) up to the deepest layer the loss reads, from ``jax.eval_shape``;
* the compiled step (the very program ``stylize`` runs each iteration on CPU: ``optim.step`` jitted with the
  state donated): XLA's own accounting from ``compiled.memory_analysis()`` (arguments, outputs, temporaries,
  aliased, generated code, and ``arguments + outputs + temporaries - aliased``), and the same for the
  compiled initial evaluation;
* measured: the peak RSS (``VmHWM``; unlike ``ru_maxrss``, not inherited from the parent) of a real
  3-iteration ``nst_jax.stylize`` in a fresh process, compilation included.

Everything but the two measured figures is computed from shapes (``jax.ShapeDtypeStruct``: nothing of the
image's size is allocated), reusing the abstract problem of ``scripts/max_image_size.py``.

PyTorch (``scripts/torch_reference.py``, neural-style-pt's math and ``torch.optim.LBFGS``), in one fresh process
per size with the same random weights and images: the RSS after importing torch, the params and targets bytes,
the tensors autograd saves for the backward pass (measured with ``torch.autograd.graph.saved_tensors_hooks``),
the L-BFGS state after the 3 iterations (torch grows its history one pair per iteration, so it holds 2-3
pairs; the full history's bytes, ``history`` times a pair, are given too), and the process's peak RSS.

``--torch-iterations N`` also runs PyTorch for ``N`` iterations (at ``--torch-long-sizes``, default all sizes):
``N >= history + 1`` fills its history, so that both hold the same number of pairs (ours are allocated in full
from the start, so our peak does not depend on the run's length). Those runs' peaks are extra rows.

The results are printed as a markdown table (components x sizes, ours and PyTorch's) and written to ``--md``
and ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
import benchmark as bm  # noqa: E402
import max_image_size as mis  # noqa: E402

ROOT = bm.ROOT
sys.path.insert(0, str(ROOT))
CONTENT = ROOT / "examples" / "tubingen.jpg"
STYLE = ROOT / "examples" / "starry_night.jpg"
MB = 2**20
RESULT_MARK = "MEMORY_BREAKDOWN_RESULT "
#: Iterations of the measured runs.
RUN_ITERATIONS = 3


def tree_bytes(tree) -> int:
    """Bytes of every array (or ``ShapeDtypeStruct``) leaf of a pytree."""
    import jax
    import numpy as np

    return int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(tree)))


def status_kb(field: str) -> int:
    """A field of ``/proc/self/status`` in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only).")


def content_aspect(content=CONTENT) -> tuple[int, int]:
    """``(W, H)`` of the content image: the canvas keeps its aspect."""
    from PIL import Image

    with Image.open(content) as im:
        return im.size


def settings_for(size: int, weights: str = "random", **overrides):
    """neural-style's settings at long side ``size`` (``overrides``: any other :class:`nst_jax.Settings` field)."""
    import nst_jax

    return nst_jax.Settings(image_size=size, weights=weights, **overrides)


def _lbfgs_states(opt_state) -> list:
    from nst_jax import optim

    found = []

    def visit(node):
        if isinstance(node, optim.NeuralStyleLBFGSState):
            found.append(node)
        elif isinstance(node, (tuple, list)):
            for child in node:
                visit(child)

    visit(opt_state)
    return found


def jax_components(settings, aspect: tuple[int, int], *, compile: bool = True) -> dict:
    """nst_jax's components (bytes) at ``settings.image_size``, from shapes only (see the module docstring).

    Returns:
        ``{"shape_hw", "params", "winograd", "targets", "lbfgs_history", "step_state_other", "state",
        "activations", "step": XLA figures, "init": XLA figures}`` (the last two with ``compile``).
    """
    import jax

    from nst_jax import vgg

    objective, spec, prepared, x, _style, targets, state = mis.abstract_problem(settings, aspect)
    raw = {"params": {name: {kind: jax.ShapeDtypeStruct(shape, "float32") for kind, shape in layer.items()}
                      for name, layer in vgg.param_shapes().items()}}
    lbfgs = _lbfgs_states(state.opt_state)
    if spec.optimizer != "lbfgs" or spec.linesearch != "none" or len(lbfgs) != 1:
        raise ValueError("the breakdown is of neural-style's L-BFGS (optimizer='lbfgs', lbfgs_linesearch='none'); "
                         f"got optimizer={spec.optimizer!r}, lbfgs_linesearch={spec.linesearch!r}.")
    history = tree_bytes((lbfgs[0].s_memory, lbfgs[0].y_memory))
    deepest = max(map(vgg.layer_index, objective.layers))
    every = vgg.LAYERS[: deepest + 1]
    kept = tuple(n for n in every if n.startswith("relu"))
    feats = jax.eval_shape(functools.partial(vgg.apply, layers=every, pooling=objective.pooling,
                                             padding=objective.padding), raw, jax.ShapeDtypeStruct((1, *x.shape),
                                                                                                    x.dtype))
    feats = {n: feats[n] for n in kept}
    out = {"shape_hw": list(x.shape[:2]), "image": tree_bytes(x), "params": tree_bytes(raw),
           "winograd": tree_bytes(prepared) - tree_bytes(raw), "targets": tree_bytes(targets),
           "lbfgs_history": history, "step_state_other": tree_bytes(state) - history, "state": tree_bytes(state),
           "activations": tree_bytes(feats), "deepest_layer": every[-1], "history_size": spec.history}
    if compile:
        found = mis.estimate(settings, settings.image_size, remat=settings.remat, aspect=aspect,
                             phases=("init", "step"))
        out.update(step=found["phases"]["step"], init=found["phases"]["init"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Measured runs, each in a fresh process


def worker_jax(cfg: dict) -> dict:
    """RSS after importing jax and nst_jax, then the peak RSS of a short ``nst_jax.stylize``."""
    import jax.numpy as jnp

    import nst_jax

    jnp.zeros(()).block_until_ready()
    baseline = status_kb("VmRSS")
    if not cfg["size"]:
        return {"baseline_rss": baseline * 1024}
    nst_jax.stylize(cfg["content"], cfg["style"], weights=cfg["weights"], image_size=cfg["size"],
                    num_iterations=cfg["iterations"], print_every=0, progress=False)
    return {"baseline_rss": baseline * 1024, "peak_rss": status_kb("VmHWM") * 1024}


def _load_npz_tree(path: Path) -> dict:
    import numpy as np

    z = np.load(path)
    params: dict = {"params": {}}
    for key in z.files:
        layer, kind = key.split("/")
        params["params"].setdefault(layer, {})[kind] = z[key]
    return params


def worker_torch(cfg: dict) -> dict:
    """PyTorch's components (bytes) and the peak RSS of a short ``torch.optim.LBFGS`` run at one size."""
    import numpy as np
    import torch

    import torch_reference as tr

    torch.zeros(1).sum()
    baseline = status_kb("VmRSS") * 1024
    workdir = Path(cfg["workdir"])
    params = _load_npz_tree(workdir / "params.npz")
    inp = np.load(workdir / f"inputs_{cfg['size']}.npz")
    obj = tr.TorchObjective(params, inp["content"], [inp["style"]])
    img = obj.image(inp["x0"]).requires_grad_(True)
    opt = tr.make_lbfgs(img, max_iter=cfg["iterations"], history_size=cfg["history"])
    opt.step(obj.closure_for(img))
    peak = status_kb("VmHWM") * 1024
    nbytes = lambda ts: int(sum(t.numel() * t.element_size() for t in ts))  # noqa: E731
    state = opt.state[img]
    history_now = nbytes(state.get("old_dirs", [])) + nbytes(state.get("old_stps", []))
    pairs = len(state.get("old_dirs", []))
    other = nbytes(v for k, v in state.items() if isinstance(v, torch.Tensor))
    other += nbytes(v for v in state.get("al", None) or [] if isinstance(v, torch.Tensor))
    saved = {}
    # Weights and targets saved by conv2d and mse_loss are counted above, not as activations.
    fixed = {t.data_ptr() for t in [*(t for wb in obj.weights.values() for t in wb),
                                    *obj.content_targets.values(), *obj.style_targets.values()]}

    def pack(t):
        if t.data_ptr() not in fixed:
            saved[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        obj.terms(img)["total"].backward()
    return {"baseline_rss": baseline, "peak_rss": peak,
            "params": nbytes(t for wb in obj.weights.values() for t in wb),
            "targets": nbytes([*obj.content_targets.values(), *obj.style_targets.values()]),
            "lbfgs_history_now": history_now, "history_pairs_now": pairs,
            "lbfgs_history": history_now // max(pairs, 1) * cfg["history"],
            "step_state_other": other + 2 * img.numel() * img.element_size(),  # + the image and its .grad
            "activations": int(sum(saved.values()))}


WORKERS = {"jax": worker_jax, "torch": worker_torch}


def spawn(cfg: dict) -> dict:
    """Runs a worker in a fresh Python process; returns its result (raises with its stderr if it failed)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {cfg['kind']} at {cfg.get('size')} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Report


#: (key, label) of the table's rows; a key's value is in bytes (``step.`` and ``init.``: XLA's figures).
ROWS = (
    ("baseline_rss", "runtime baseline (RSS after imports)"),
    ("params", "VGG-19 params (16 convolutions)"),
    ("winograd", "Winograd kernel transforms (prepared params)"),
    ("targets", "targets (content activations, Gram matrices)"),
    ("lbfgs_history", "L-BFGS history (2 x history image-sized buffers)"),
    ("lbfgs_history_now", f"L-BFGS history held after {RUN_ITERATIONS} iterations"),
    ("step_state_other", "rest of the step state (image, gradient, previous ones, ...)"),
    ("activations", "activations kept for the backward pass"),
    ("step.argument", "compiled step: arguments"),
    ("step.output", "compiled step: outputs"),
    ("step.alias", "compiled step: aliased (outputs in donated arguments)"),
    ("step.temp", "compiled step: temporaries"),
    ("step.generated_code", "compiled step: generated code"),
    ("step.peak", "compiled step: arguments + outputs + temporaries - aliased"),
    ("init.temp", "compiled initial evaluation: temporaries"),
    ("init.peak", "compiled initial evaluation: peak"),
    ("peak_rss", f"measured peak RSS ({RUN_ITERATIONS}-iteration run, fresh process)"),
)


def _lookup(d: dict | None, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _long_rows(res: dict) -> list[tuple[str, str]]:
    """``(key, label)`` rows of the longer PyTorch runs (``--torch-iterations``)."""
    runs = sorted({int(n) for per_size in (res.get("torch_long") or {}).values() for n in per_size})
    return [(f"long.{n}", f"measured peak RSS, {n}-iteration run (PyTorch: history held then)") for n in runs]


def markdown(res: dict) -> str:
    """The components x sizes table (MB), ours and PyTorch's, with the run's date, machine and command."""
    sizes = res["sizes"]
    lines = [f"- date: {res['date']}", f"- machine: {res['machine']}", f"- command: `{res['command']}`",
             f"- weights: {res['weights']}; tubingen (content) + starry_night (style); L-BFGS, history "
             f"{res['history']}, no line search; image (H, W): "
             + ", ".join(f"{s} px: {tuple(res['jax'][str(s)]['shape_hw'])}" for s in sizes), ""]
    head = "| component (MB) | " + " | ".join(f"ours {s} | PyTorch {s}" for s in sizes) + " |"
    lines += [head, "|---|" + "---:|" * (2 * len(sizes))]
    for key, label in (*ROWS, *_long_rows(res)):
        cells = []
        for s in sizes:
            for side in ("jax", "torch"):
                if key.startswith("long."):
                    run = (res.get("torch_long") or {}).get(str(s), {}).get(key[5:]) if side == "torch" else None
                    v = None if run is None else run["peak_rss"]
                    if run is not None:
                        cells.append(f"{v / MB:,.1f} ({run['history_pairs_now']} pairs)")
                        continue
                else:
                    v = _lookup(res[side].get(str(s)), key) if res.get(side) else None
                cells.append("-" if v is None else f"{v / MB:,.1f}")
        if any(c != "-" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(sizes, weights: str = "random", *, torch: bool = True, measure: bool = True, log=print,
        torch_iterations: tuple[int, ...] = (), torch_long_sizes=None) -> dict:
    """Every component at each size (see the module docstring); ``torch``: PyTorch's too (if installed);
    ``measure``: run the fresh-process measurements; ``torch_iterations``: longer PyTorch runs (at
    ``torch_long_sizes``, default every size)."""
    import nst_jax  # noqa: F401  (the parent's runtime, for machine_info)

    info = bm.machine_info()
    res = {"date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
           "machine": f"{info['cpu_model']} ({info['cpu_flags']}), {info['usable_cores']} cores, "
                      f"{info['memory_gb']} GB; jax {info['jax']}" + (f", torch {info['torch']}"
                                                                     if info.get("torch") else ""),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "weights": weights,
           "sizes": list(sizes), "jax": {}, "torch": {} if torch and torch_available() else None}
    aspect = content_aspect()
    res["history"] = settings_for(sizes[0], weights).lbfgs_history
    with tempfile.TemporaryDirectory() as tmp:
        if res["torch"] is not None:
            if weights != "random":
                raise ValueError("the PyTorch runs use random weights: pass --weights random or --no-torch.")
            bm.write_inputs(Path(tmp), sizes, 0, str(CONTENT), str(STYLE))  # seed 0: stylize's random weights
        for size in sizes:
            log(f"{size} px: nst_jax components (compiling) ...")
            comp = jax_components(settings_for(size, weights), aspect)
            if measure:
                log(f"{size} px: nst_jax {RUN_ITERATIONS}-iteration run ...")
                comp.update(spawn({"kind": "jax", "size": size, "weights": weights, "content": str(CONTENT),
                                   "style": str(STYLE), "iterations": RUN_ITERATIONS}))
            res["jax"][str(size)] = comp
            if res["torch"] is not None and measure:
                log(f"{size} px: PyTorch {RUN_ITERATIONS}-iteration run ...")
                res["torch"][str(size)] = spawn({"kind": "torch", "size": size, "workdir": tmp,
                                                 "iterations": RUN_ITERATIONS, "history": res["history"]})
                for n in torch_iterations if torch_long_sizes is None or size in torch_long_sizes else ():
                    log(f"{size} px: PyTorch {n}-iteration run ...")
                    res.setdefault("torch_long", {}).setdefault(str(size), {})[str(n)] = spawn(
                        {"kind": "torch", "size": size, "workdir": tmp, "iterations": n, "history": res["history"]})
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="long sides (px)")
    p.add_argument("--weights", default="random", help="VGG-19 weights (a file, 'normalized' or 'random')")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--md", type=Path, default=None, help="also write the markdown here")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--torch-iterations", type=int, nargs="+", default=[],
                   help="also run PyTorch this many iterations (history + 1 fills its history)")
    p.add_argument("--torch-long-sizes", type=int, nargs="+", default=None,
                   help="the sizes of the --torch-iterations runs (default: every size)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        cfg = json.loads(a.worker)
        print(RESULT_MARK + json.dumps(WORKERS[cfg["kind"]](cfg)), flush=True)
        return 0
    bad = [s for s in a.sizes if s < 32]
    if bad:
        p.error(f"--sizes must be at least 32 px each, got {bad}.")
    if any(n < 1 for n in a.torch_iterations):
        p.error(f"--torch-iterations must be at least 1 each, got {a.torch_iterations}.")
    res = run(a.sizes, a.weights, torch=not a.no_torch, log=lambda m: print(m, file=sys.stderr, flush=True),
              torch_iterations=tuple(a.torch_iterations), torch_long_sizes=a.torch_long_sizes)
    text = markdown(res)
    print(text)
    if a.md:
        a.md.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
