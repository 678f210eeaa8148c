"""The method presets side by side, measured: seconds per L-BFGS iteration relative to classic, peak memory of a
run, final losses, and one of the paper's findings (the activation shift lets the optimizer leave the content
image: iterations until the style loss halves, with and without the shift).

    .venv/bin/python scripts/method_study.py --weights random --size 128 --iterations 30 --memory-size 256 \\
        --md study.md

Each method's memory is measured in a process of its own (peak RSS of a short run at ``--memory-size``). The
results are printed as markdown (and written to ``--md``/``--json``) with the date, machine and command, for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTENT = ROOT / "examples" / "tubingen.jpg"
STYLE = ROOT / "examples" / "starry_night.jpg"


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({' '.join(shown)}), {os.cpu_count()} cores"


def _run(method: str, size: int, iterations: int, weights: str, every: int, **more):
    import nst_jax

    return nst_jax.stylize(CONTENT, STYLE, method=method, weights=weights, image_size=size,
                           num_iterations=iterations, print_every=every, progress=False, **more)


def speed(methods, size: int, iterations: int, weights: str) -> list[dict]:
    """Seconds per iteration (between iteration 5 and the last, so compilation is left out) and final losses."""
    rows = []
    for m in methods:
        r = _run(m, size, iterations, weights, every=5)
        by_it = {rec.iteration: rec for rec in r.history}
        first, last = by_it[5], r.history[-1]
        per_it = (last.elapsed - first.elapsed) / max(1, last.iteration - first.iteration)
        rows.append({"method": m, "s_per_iter": per_it, "iterations": last.iteration, "total": last.total,
                     "terms": dict(last.terms), "start_total": r.history[0].total,
                     "wall_s": last.elapsed})
        print(f"  {m}: {per_it:.3f} s/iter, loss {r.history[0].total:.4g} -> {last.total:.4g}", file=sys.stderr)
    return rows


def memory(methods, size: int, weights: str) -> dict[str, float]:
    """Peak RSS (MB) of a 3-iteration run of each method, each in a fresh process (its VmHWM: unlike
    ``ru_maxrss``, which Linux carries over from the forking parent through exec, it starts anew)."""
    out = {}
    for m in methods:
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import scripts.method_study as s; "
                f"s._run({m!r}, {size}, 3, {weights!r}, every=0); "
                "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            out[m] = None
            print(f"  {m}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        out[m] = int(proc.stdout.strip().splitlines()[-1]) / 1024  # kB
        print(f"  {m}: peak RSS {out[m]:.0f} MB", file=sys.stderr)
    return out


def halving(pairs, size: int, iterations: int, weights: str) -> list[dict]:
    """For each (with shift, without shift) pair of methods: the iteration at which the style loss first falls to
    half of its value at the start (the content image), or None within ``iterations``."""
    rows = []
    for shifted, plain in pairs:
        for m in (shifted, plain):
            r = _run(m, size, iterations, weights, every=1)
            start = r.history[0].terms.get("style", r.history[0].style)
            it = next((rec.iteration for rec in r.history if rec.terms.get("style", rec.style) <= start / 2), None)
            rows.append({"method": m, "style_start": start, "halved_at": it,
                         "style_end": r.history[-1].terms.get("style", r.history[-1].style),
                         "iterations": r.history[-1].iteration})
            print(f"  {m}: style {start:.4g} -> {rows[-1]['style_end']:.4g}, halved at {it}", file=sys.stderr)
    return rows


def markdown(res: dict) -> str:
    lines = [f"- date: {res['date']}", f"- machine: {res['machine']}", f"- command: `{res['command']}`",
             f"- weights: {res['weights']}; tubingen + starry_night (examples/), the presets' own settings", ""]
    base = next(r for r in res["speed"] if r["method"] == "classic")["s_per_iter"]
    lines += [f"| method | s/iter at {res['size']} px | vs classic | peak RSS at {res['memory_size']} px (MB) | "
              f"loss at start | loss after {res['iterations']} it |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["speed"]:
        mem = res["memory"].get(r["method"])
        lines.append(f"| {r['method']} | {r['s_per_iter']:.3f} | {r['s_per_iter'] / base:.2f} | "
                     f"{'failed' if mem is None else f'{mem:.0f}'} | {r['start_total']:.4g} | {r['total']:.4g} |")
    if res["halving"]:
        lines += ["", f"Iterations until the style loss halves from the content image (at most "
                      f"{res['halving_iterations']}, {res['size']} px):", "",
                  "| method | style loss at start | halved at iteration | style loss at the end |",
                  "|---|---:|---:|---:|"]
        for r in res["halving"]:
            lines.append(f"| {r['method']} | {r['style_start']:.4g} | "
                         f"{'not within the run' if r['halved_at'] is None else r['halved_at']} | "
                         f"{r['style_end']:.4g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None, help="comma-separated presets (default: all)")
    p.add_argument("--weights", default="random", help="VGG-19 weights (a file, 'normalized' or 'random')")
    p.add_argument("--size", type=int, default=128, help="long side for the speed runs")
    p.add_argument("--iterations", type=int, default=30, help="L-BFGS iterations of the speed runs")
    p.add_argument("--memory-size", type=int, default=256, help="long side for the memory runs (0: skip)")
    p.add_argument("--halving-iterations", type=int, default=100,
                   help="iterations of the shift runs (0: skip them)")
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    from nst_jax import presets

    methods = a.methods.split(",") if a.methods else list(presets.NAMES)
    if "classic" not in methods:
        methods.insert(0, "classic")
    res = {"date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
           "machine": _cpu(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "weights": a.weights, "size": a.size, "iterations": a.iterations, "memory_size": a.memory_size,
           "halving_iterations": a.halving_iterations}
    print("speed:", file=sys.stderr)
    res["speed"] = speed(methods, a.size, a.iterations, a.weights)
    print("memory:", file=sys.stderr)
    res["memory"] = memory(methods, a.memory_size, a.weights) if a.memory_size else {}
    print("shift:", file=sys.stderr)
    res["halving"] = (halving([("classic-shifted", "classic"), ("chain", "chain-unshifted")], a.size,
                              a.halving_iterations, a.weights) if a.halving_iterations else [])
    text = markdown(res)
    print(text)
    if a.md:
        a.md.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
