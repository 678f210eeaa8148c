"""Runs the command line (``nst-jax ...``) and reports each phase of a tiled stylization: its wall time and
its peak resident memory (``VmHWM``, reset at the start of each phase through ``/proc/self/clear_refs``; Linux).

Phases: the style targets at the output size (:func:`nst_jax.tiling.style_targets`), the base stage, and
each batch of tiles (:func:`nst_jax.batch.optimize_batch`); also how many tiles there were and how many times
the batched step was traced (each trace is one compilation).

    python scripts/tile_phases.py --json phases.json -- --content c.jpg --style s.jpg --output o.png --tile 512 ...

``--style-targets-only`` runs the style-targets phase alone, for the command's style image(s) and settings (the
images prepared as the run would, at ``image_size * style_scale``), and reports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

from nst_jax import api, batch, cli, images, tiling


def _status(key: str) -> int:
    """A ``VmHWM``/``VmRSS`` figure of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the phases here too")
    parser.add_argument("--style-targets-only", action="store_true",
                        help="only the style targets of the command's style image(s) and settings")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the nst-jax arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    phases: list[dict] = []
    if args.style_targets_only:
        return _style_targets_only(command, args.json)

    def probe(name, fn):
        def wrapped(*a, **kw):
            reset = _reset_peak()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases.append({"phase": name, "seconds": round(time.perf_counter() - t0, 2),
                               "peak_rss_mb": round(_status("VmHWM") / 2**20, 1), "peak_reset": reset})
                print(f"[phase] {phases[-1]}", file=sys.stderr, flush=True)
        return wrapped

    tiling.style_targets = probe("style targets", tiling.style_targets)
    stylize, base = api.stylize, probe("base stage", api.stylize)

    def either(content, style, settings=None, **kw):  # the command's own call is tiled, the base stage's not
        return (stylize if settings is not None and settings.tile is not None else base)(content, style, settings,
                                                                                          **kw)

    api.stylize = either
    batch.optimize_batch = probe("tile batch", batch.optimize_batch)
    boxes = tiling.tile_boxes
    count = {}

    def counted(*a, **kw):
        out = boxes(*a, **kw)
        count["tiles"] = len(out)
        return out

    tiling.tile_boxes = counted
    before = batch.trace_counts.copy()
    t0 = time.perf_counter()
    rc = cli.main(command)
    summary = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "tiles": count.get("tiles"),
               "traces": {f"{k[0]} {k[1]}": v for k, v in (batch.trace_counts - before).items()},
               "phases": phases}
    print(json.dumps({k: v for k, v in summary.items() if k != "phases"}), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return rc


def _style_targets_only(command: list[str], out: Path | None) -> int:
    from nst_jax.flags import settings_from_args
    from nst_jax.objective import Objective

    if command[:1] != ["stylize"]:
        command = ["stylize", *command]  # the command line's default command
    ns = cli.build_parser().parse_args(command)
    s = settings_from_args(ns)
    content = images.resize_long_side(images.load_image(ns.content), s.image_size)
    styles = api.prepare_styles(ns.style, s, content)
    params = api.get_params(s.weights)
    objective = Objective.from_settings(s)
    reset = _reset_peak()
    base = _status("VmRSS")
    t0 = time.perf_counter()
    targets = tiling.style_targets(objective, params, styles, s)
    jax.block_until_ready(targets)
    summary = {"phase": "style targets", "style_hw": [list(st.shape[:2]) for st in styles],
               "seconds": round(time.perf_counter() - t0, 2), "rss_before_mb": round(base / 2**20, 1),
               "peak_rss_mb": round(_status("VmHWM") / 2**20, 1), "peak_reset": reset}
    print(json.dumps(summary), file=sys.stderr)
    if out:
        out.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
