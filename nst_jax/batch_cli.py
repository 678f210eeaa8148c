"""``nst-jax batch``: stylize a folder of images; argument parsing only.

This module adds the ``batch`` subcommand to the ``nst-jax`` parser (:func:`add_parser`, called by
:mod:`nst_jax.cli`); :func:`main` runs it alone, with the same flags.

The work is :func:`nst_jax.batch.run_job` (this machine, all its devices) or
:func:`nst_jax.ray_job.run_ray_job` (``--ray``: a Ray cluster). Every setting of
``nst-jax`` is a flag here too (generated from :class:`nst_jax.Settings`).

Exit codes: 0 every input written (or already there), 1 some input failed (see
the summary), 2 bad flags or setup (no traceback), 3 stopped because the output
disk is full (free space, then rerun the same command), 130 interrupted (finished
outputs are complete; rerun the same command to finish).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from nst_jax.flags import add_settings_arguments, error_message, report_created_directory, settings_from_args

EXAMPLES = """\
examples:
  nst-jax batch --style starry_night.jpg --inputs photos/ --output-dir out/ --image-size 512
  nst-jax batch --style a.jpg --style b.jpg --inputs 'photos/**/*.jpg' --output-dir out/ --output-size 384x512
  nst-jax batch --style starry_night.jpg --inputs list.txt --output-dir out/ --ray auto --ray-actors 4

Outputs are <input stem><suffix> in the output directory, written atomically; a rerun skips
the outputs that exist, so an interrupted job is finished by running the same command again.
Per-input status, reason, loss and time: <output-dir>/nst_jax_summary.json.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _output_size(text: str) -> tuple[int, int]:
    from nst_jax.batch import parse_output_size

    try:
        return parse_output_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DESCRIPTION = "Stylize many images with one style (or a blend) in compiled batches."


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``nst-jax batch`` on its own (:func:`main`)."""
    parser = argparse.ArgumentParser(prog="nst-jax batch", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``batch`` subcommand to the ``nst-jax`` parser's subparsers."""
    parser = subparsers.add_parser("batch", help=DESCRIPTION, description=DESCRIPTION, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``nst-jax batch``; ``parser``'s ``run`` default becomes :func:`run`."""
    parser.set_defaults(run=run)
    parser.add_argument("--style", required=True, action="append",
                        help="Style image (path); repeat to blend several (see --style-blend-weights).")
    parser.add_argument("--inputs", required=True,
                        help="Content images: a directory, a glob pattern (quote it; ** recurses), a manifest file "
                             "(one path per line) or one image.")
    parser.add_argument("--output-dir", required=True, help="Directory for the outputs and nst_jax_summary.json.")
    parser.add_argument("--suffix", default=".png", help="Output extension (default: .png, which keeps the settings).")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="Images per compiled call (default: as many as fit in free device memory, at most 16 "
                             "per device).")
    parser.add_argument("--output-size", type=_output_size, metavar="HxW",
                        help="Resize every input to cover HxW and crop the center, so all share one compiled batch "
                             "shape (default: long side --image-size, aspect kept).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Redo inputs whose output exists, also replacing files nst-jax did not write (default: "
                             "skip nst-jax's outputs, fail on other files; inputs are never replaced).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    ray = parser.add_argument_group("Ray (pip install 'nst-jax[ray]')")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="Run on a Ray cluster: ADDRESS as for ray.init ('auto', 'ray://head:10001'); without it, "
                          "$RAY_ADDRESS or a new local cluster. Inputs and output directory must be on a filesystem "
                          "every node sees.")
    ray.add_argument("--ray-actors", type=_positive_int, help="Actors (default: one per GPU, or 1).")
    ray.add_argument("--ray-cpus-per-actor", type=_nonneg_float, default=1.0, help="CPUs per actor (default: 1).")
    ray.add_argument("--ray-gpus-per-actor", type=_nonneg_float,
                     help="GPUs per actor (default: 1 if the cluster has GPUs, else 0).")
    ray.add_argument("--ray-batch-size", type=_positive_int,
                     help="Images per Ray batch sent to an actor (default: --batch-size or 8).")
    add_settings_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``nst-jax batch`` with ``argv`` (the flags after ``batch``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    return run(parser, parser.parse_args(argv))


def run(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    """Runs a parsed ``nst-jax batch`` command; returns the exit code."""
    ray_flags = {"ray_actors", "ray_gpus_per_actor", "ray_batch_size"}
    if ns.ray is None and any(getattr(ns, f) is not None for f in ray_flags):
        parser.error("--ray-actors, --ray-gpus-per-actor and --ray-batch-size need --ray")

    from nst_jax import batch, optim  # heavy imports after argument parsing (fast --help)
    from nst_jax.weights import WeightsError

    out_dir = ns.output_dir
    try:
        settings = settings_from_args(ns)
        common = dict(batch_size=ns.batch_size, output_size=ns.output_size, suffix=ns.suffix,
                      overwrite=ns.overwrite, progress=not ns.quiet)
        with report_created_directory(Path(out_dir).expanduser()):
            if ns.ray is not None:
                from nst_jax import ray_job

                summary = ray_job.run_ray_job(
                    ns.inputs, ns.style, out_dir, settings, address=ns.ray or None, num_actors=ns.ray_actors,
                    num_cpus_per_actor=ns.ray_cpus_per_actor, num_gpus_per_actor=ns.ray_gpus_per_actor,
                    ray_batch_size=ns.ray_batch_size, **common)
            else:
                summary = batch.run_job(ns.inputs, ns.style, out_dir, settings, **common)
    except batch.DiskFullError as e:
        sys.stderr.write(f"nst-jax batch: error: {e}\n")
        return 3
    except (ValueError, TypeError, WeightsError, ImportError, optim.NonFiniteLossError) as e:
        parser.exit(2, f"nst-jax batch: error: {error_message(e)}\n")
    except KeyboardInterrupt:
        sys.stderr.write(f"nst-jax batch: interrupted; finished outputs are complete, run the same command again "
                         f"to do the rest (summary: {Path(out_dir) / batch.SUMMARY_NAME}).\n")
        return 130
    t = summary.totals()
    rate = f", {t['images_per_second']:.3g} images/s" if t["images_per_second"] else ""
    print(f"{t['ok']} written, {t['skipped']} skipped (already done), {t['failed']} failed, in {t['seconds']:.1f} s"
          f"{rate}; summary: {summary.path}")
    for row in summary.failed:
        sys.stderr.write(f"failed: {row.input}: {row.error}\n")
    return summary.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
