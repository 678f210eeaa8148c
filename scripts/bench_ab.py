"""Two checkouts of nst_jax, the same stylization, alternately: L-BFGS seconds per iteration of each, for a
before/after comparison of a change on the same machine in the same run.

    .venv/bin/python scripts/bench_ab.py /path/to/old/checkout . --sizes 256 512 --repeats 5

Each measurement is a fresh process importing nst_jax from one checkout (``PYTHONPATH``), stylizing the bundled
examples with random weights through ``nst_jax.stylize`` (its defaults: L-BFGS, the library's loop form and
convolutions) for ``--iterations`` iterations; the time per iteration is taken between iteration 5 and the
last, so compilation is left out. The checkouts alternate, so drifts of the machine hit both alike; the
medians and their ratio are printed as markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_WORKER = """
import json, sys
import nst_jax
size, n, content, style = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
r = nst_jax.stylize(content, style, weights="random", image_size=size, num_iterations=n, print_every=5,
                    progress=False)
t = {rec.iteration: rec.elapsed for rec in r.history}
print(json.dumps({"file": nst_jax.__file__, "s_per_iter": (t[n] - t[5]) / (n - 5)}))
"""


def measure(checkout: Path, size: int, iterations: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", _WORKER, str(size), str(iterations),
                          str(ROOT / "examples" / "tubingen.jpg"), str(ROOT / "examples" / "starry_night.jpg")],
                         capture_output=True, text=True, env=env, cwd="/", check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    if not row["file"].startswith(str(checkout)):
        raise SystemExit(f"nst_jax was imported from {row['file']}, not from {checkout}")
    return row["s_per_iter"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="the checkout before the change")
    p.add_argument("after", type=Path, help="the checkout after the change")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iterations", type=int, default=25)
    a = p.parse_args(argv)
    checkouts = {"before": a.before.resolve(), "after": a.after.resolve()}
    times: dict[tuple[str, int], list[float]] = {}
    for rep in range(a.repeats):
        for name, path in checkouts.items():
            for size in a.sizes:
                t = measure(path, size, a.iterations)
                times.setdefault((name, size), []).append(t)
                print(f"  repeat {rep + 1} {name} {size} px: {t:.4f} s/iter", file=sys.stderr)
    print("| size | before: s/iter (median) | after: s/iter (median) | after / before |\n|---|---:|---:|---:|")
    for size in a.sizes:
        b, f = statistics.median(times[("before", size)]), statistics.median(times[("after", size)])
        print(f"| {size} px | {b:.4f} | {f:.4f} | {f / b:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
