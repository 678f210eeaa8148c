"""The largest 4:3 image PyTorch's L-BFGS stylization (``scripts/torch_reference.py``: neural-style-pt's
math, ``torch.optim.LBFGS`` with history 100) fits in a memory budget, for comparison with
``scripts/max_image_size.py``'s answer for nst_jax.

    .venv/bin/python scripts/torch_largest_image.py --budget-mb 8192 --start 1024 --step 128

Each size runs 3 iterations in a fresh process (``scripts/memory_breakdown.py``'s PyTorch worker: random
weights, tubingen + starry_night) and reports two figures:

* the measured peak RSS of that run (``VmHWM``), when PyTorch's history holds only 3 pairs;
* the peak once its history is full (any run of 101+ iterations, e.g. neural-style's default 1000), as
  the measured peak plus the bytes of the 97 pairs still to come. This is a lower bound: at 512 px the
  measured growth from 3 to 101 iterations was larger than the pairs' bytes (BENCHMARKS.md), so the largest
  size it gives is an upper bound of what PyTorch fits in a long run.

The search goes up by ``--step`` from ``--start`` until the full-history figure exceeds the budget (the
3-iteration figure then says how much further a short run would go, without searching for its limit).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark as bm  # noqa: E402
import memory_breakdown as mb  # noqa: E402

MB = 2**20


def measure(size: int, workdir: Path, history: int) -> dict:
    """PyTorch's 3-iteration peak at ``size`` and the full-history figure, in MB."""
    bm.write_inputs(workdir, [size], 0, str(mb.CONTENT), str(mb.STYLE))
    r = mb.spawn({"kind": "torch", "size": size, "workdir": str(workdir), "iterations": mb.RUN_ITERATIONS,
                  "history": history})
    full = r["peak_rss"] - r["lbfgs_history_now"] + r["lbfgs_history"]
    return {"size": size, "peak_3": r["peak_rss"] / MB, "full_history": full / MB,
            "pairs_now": r["history_pairs_now"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-mb", type=float, default=8192.0)
    p.add_argument("--start", type=int, default=1024, help="first long side (px)")
    p.add_argument("--step", type=int, default=128)
    p.add_argument("--max-size", type=int, default=4096)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.start < 32 or a.step < 1:
        p.error("--start must be at least 32 px and --step at least 1.")
    info = bm.machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        size = a.start
        while size <= a.max_size:
            print(f"{size} px ...", file=sys.stderr, flush=True)
            row = measure(size, Path(tmp), 100)
            rows.append(row)
            print(f"  {size} px: {row['peak_3']:,.0f} MB measured (3 iterations), {row['full_history']:,.0f} MB "
                  "with the full history", file=sys.stderr, flush=True)
            if row["full_history"] > a.budget_mb:
                break
            size += a.step
    fits = lambda key: max((r["size"] for r in rows if r[key] <= a.budget_mb), default=None)  # noqa: E731
    res = {"date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
           "machine": f"{info['cpu_model']} ({info['cpu_flags']}), {info['usable_cores']} cores; torch "
                      f"{info.get('torch')}", "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "budget_mb": a.budget_mb, "rows": rows, "largest_3_iterations": fits("peak_3"),
           "largest_full_history": fits("full_history")}
    print(f"- date: {res['date']}\n- machine: {res['machine']}\n- command: `{res['command']}`\n")
    print("| long side (px) | measured peak, 3 iterations (MB) | full history, measured + 97 pairs (MB) |")
    print("|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['peak_3']:,.0f} | {r['full_history']:,.0f} |")
    short = res["largest_3_iterations"]
    more = " or more (not searched further)" if rows and rows[-1]["peak_3"] <= a.budget_mb else ""
    print(f"\nlargest within {a.budget_mb:.0f} MB: {res['largest_full_history']} px (full history), "
          f"{short} px{more} (3 iterations)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
