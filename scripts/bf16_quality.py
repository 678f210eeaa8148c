"""What ``dtype="bfloat16"`` guarantees: bf16 against float32 on the same problems, on this CPU.

Measures, for several content/style pairs and starts:

* one evaluation at the same image: relative error of the bf16 loss (total and per term) and the
  cosine between the bf16 and float32 gradients;
* after N L-BFGS iterations from the same start: the float32 loss of the bf16 run's image relative
  to the float32 run's (both evaluated by the float32 objective), and how far each got from the
  start (so "within x%" is read against "reduced the loss by y%").

XLA's bf16 arithmetic depends on the CPU (AVX-512 with bf16 units uses native bf16 dot products
with different rounding than AVX2's float32 emulation), so the script records the CPU flags.

Usage::

    .venv/bin/python scripts/bf16_quality.py --size 64 --iterations 30 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nst_jax import api, images, optim, vgg  # noqa: E402
from nst_jax.config import Settings  # noqa: E402
from nst_jax.objective import Objective, loss, make_targets  # noqa: E402

PAIRS = [("tubingen", "starry_night"), ("golden_gate", "the_scream"), ("tubingen", "picasso_selfport1907")]


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    have = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            break
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in have)


def find_image(name: str, dirs: list[Path]) -> Path:
    for d in dirs:
        for ext in (".jpg", ".png"):
            if (d / (name + ext)).exists():
                return d / (name + ext)
    raise SystemExit(f"image {name!r} not found in {', '.join(map(str, dirs))}")


def measure(pair, init: str, size: int, iterations: list[int], params, dirs) -> dict:
    content = images.resize_long_side(images.load_image(find_image(pair[0], dirs)), size)
    style = images.resize_long_side(images.load_image(find_image(pair[1], dirs)), size)
    setups = {}
    for dt in ("float32", "bfloat16"):
        s = Settings(image_size=size, weights="random", dtype=dt, init=init)
        obj = Objective.from_settings(s)
        targets = make_targets(obj, params, vgg.preprocess(jnp.asarray(content)), [vgg.preprocess(jnp.asarray(style))],
                               weights=s)
        setups[dt] = (s, obj, targets)
    s32, obj32, t32 = setups["float32"]
    x0 = np.asarray(api.initial_image(s32, content, [style]))
    row = {"pair": "/".join(pair), "init": init, "size": size}

    # One evaluation at the same image (the start and a partly optimized one).
    def eval_gap(x):
        terms32, g32 = jax.jit(obj32.value_and_grad)(params, x, t32)
        _, obj16, t16 = setups["bfloat16"]
        terms16, g16 = jax.jit(obj16.value_and_grad)(params, x, t16)
        rel = {k: abs(float(getattr(terms16, k)) - float(getattr(terms32, k)))
               / max(abs(float(getattr(terms32, k))), 1e-30)
               for k in ("total", "content", "style")}
        a, b = np.ravel(np.asarray(g32, np.float64)), np.ravel(np.asarray(g16, np.float64))
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        return rel, cos

    row["eval_rel_at_start"], row["grad_cos_at_start"] = eval_gap(x0)

    finals = {}
    for dt in ("float32", "bfloat16"):
        s, obj, targets = setups[dt]
        stepper = optim.single_image_stepper(obj, optim.SolverSpec.from_settings(s), params, targets, "step")
        state, done = stepper.init(x0), 0
        for n in sorted(iterations):
            state = stepper.advance(state, n - done)
            done = n
            finals[(dt, n)] = jnp.asarray(np.asarray(state.x))  # a copy: the state is donated to the next step
    start = float(loss(obj32, params, x0, t32).total)
    row["start_loss"] = start
    row["after"] = {}
    for n in sorted(iterations):
        l32 = float(loss(obj32, params, finals[("float32", n)], t32).total)
        l16 = float(loss(obj32, params, finals[("bfloat16", n)], t32).total)
        row["after"][n] = {"float32": l32, "bfloat16": l16, "rel_gap": (l16 - l32) / l32,
                           "reduction_f32": 1 - l32 / start, "reduction_bf16": 1 - l16 / start}
    row["eval_rel_at_end"], row["grad_cos_at_end"] = eval_gap(finals[("float32", max(iterations))])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--iterations", type=int, nargs="+", default=[30, 100])
    p.add_argument("--inits", nargs="+", default=["content", "random"])
    p.add_argument("--images", type=Path, action="append",
                   help="folders to find the images in (default: examples/ and ../shared/images)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    dirs = args.images or [ROOT / "examples", ROOT.parent / "shared" / "images"]
    params = api.get_params("random")
    t0 = time.time()
    rows = [measure(pair, init, args.size, args.iterations, params, dirs) for pair in PAIRS for init in args.inits]
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_flags": cpu_flags(),
            "jax": jax.__version__, "command": " ".join(["scripts/bf16_quality.py", *(argv or sys.argv[1:])]),
            "seconds": round(time.time() - t0, 1)}
    print(f"# bf16 vs float32, {info['date']}, CPU flags: {info['cpu_flags']}, jax {info['jax']}")
    head = "| pair | init | eval rel. err. total (start/end) | grad cos (start/end) | " + " | ".join(
        f"after {n}: bf16/f32 - 1 (f32 reduced by)" for n in sorted(args.iterations)) + " |"
    print(head)
    print("|" + "---|" * (4 + len(args.iterations)))
    for r in rows:
        cells = [r["pair"], r["init"],
                 f"{r['eval_rel_at_start']['total']:.2e} / {r['eval_rel_at_end']['total']:.2e}",
                 f"{r['grad_cos_at_start']:.5f} / {r['grad_cos_at_end']:.5f}"]
        cells += [f"{a['rel_gap']:+.2%} ({a['reduction_f32']:.1%})"
                  for a in (r["after"][n] for n in sorted(args.iterations))]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
