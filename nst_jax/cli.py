"""Command line: one parser with subcommands; argument parsing only, the work is done by the library.

``nst-jax [stylize]`` (one image; the default command), ``nst-jax batch`` (folders, in compiled batches;
:mod:`nst_jax.batch_cli` adds that subcommand), ``nst-jax sweep`` (a grid of loss weights) and ``nst-jax serve``
(a local web page, :mod:`nst_jax.web`, imported only by that command: it needs the ``web`` extra). The settings
flags are generated from :class:`nst_jax.config.Settings` (:mod:`nst_jax.flags`), so every setting is a
flag with the same default and help text.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from nst_jax import api, batch_cli, canvas, optim, sweep
from nst_jax.config import Settings
from nst_jax.flags import (add_settings_arguments, error_message, fail, report_created_directory,
                           settings_from_args, show_warning, sigterm_as_interrupt)
from nst_jax.flags import flag as _flag
from nst_jax.sweep import SWEEPABLE
from nst_jax.weights import WeightsError

COMMANDS = ("stylize", "batch", "sweep", "serve")

STYLIZE_DESCRIPTION = "Stylize one image, or synthesize a texture (no --content, --content-weight 0)."
EXAMPLES = """\
examples:
  nst-jax --content photo.jpg --style painting.jpg --output out.png
  nst-jax --style painting.jpg --content-weight 0 --size 384x512 --output texture.png
  nst-jax batch --style painting.jpg --inputs photos/ --output-dir out/
  nst-jax sweep --content photo.jpg --style painting.jpg --style-weight 10 100 1000 --output grid.png

Without a command, nst-jax stylizes one image: nst-jax --content ... is nst-jax stylize --content ...
"""
SWEEP_DESCRIPTION = ("Stylize one image with every combination of the given --content-weight, --style-weight "
                     "and --tv-weight values in one compiled batch; writes a labelled grid and the final losses "
                     "of every cell as <output stem>.json.")
SWEEP_EXAMPLES = """\
examples:
  nst-jax sweep --content photo.jpg --style painting.jpg --style-weight 10 100 1000 --output grid.png
  nst-jax sweep --content photo.jpg --style painting.jpg --style-weight 10 100 --tv-weight 0 0.001 --output grid.png

One swept weight gives a row of cells, two give rows x columns (the first swept flag, in the order
content, style, tv, runs down the rows). Every other flag applies to all cells.
"""
SERVE_DESCRIPTION = ("A local web page: upload a content and a style image, set the main options, watch the image "
                     "change during the run and download the result (PNG with the settings as metadata). One run "
                     "at a time. The settings flags apply to every run; the page starts from their values of the "
                     "options it shows. Needs the web extra: pip install -e '.[web]'.")


def _size(text: str) -> tuple[int, int]:
    """``--size HxW`` -> ``(h, w)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"must be HxW (height x width in pixels, e.g. 384x512), got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if max(h, w) < 32 or min(h, w) < canvas.MIN_SIDE:
        raise argparse.ArgumentTypeError(f"the long side must be at least 32 px and the short side at least "
                                         f"{canvas.MIN_SIDE} px, got {text!r}")
    return h, w


def _add_stylize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=_run)
    parser.add_argument("--content", help="Content image (path). Optional with --content-weight 0: texture "
                                          "synthesis on a canvas of --image-size by --aspect, or --size.")
    parser.add_argument("--style", action="append",
                        help="Style image (path); repeat for several styles (see --style-blend-weights). Optional "
                             "with --style-weight 0 (the content image reconstructed from its activations).")
    parser.add_argument("--output", help="Output image path, required (.png recommended: holds the settings).")
    parser.add_argument("--size", type=_size, metavar="HxW",
                        help="Without --content: the canvas, height x width in pixels (sets --image-size to the "
                             "long side and --aspect to width / height).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing output (or snapshot) file that nst-jax did not write (default: "
                             "refuse; previous nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_settings_arguments(parser)


def _add_sweep_parser(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="A grid of loss weights on one image.",
                                   description=SWEEP_DESCRIPTION, epilog=SWEEP_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_sweep)
    parser.add_argument("--content", required=True, help="Content image (path).")
    parser.add_argument("--style", required=True, action="append",
                        help="Style image (path); repeat for several styles (see --style-blend-weights).")
    parser.add_argument("--output", required=True,
                        help="The grid image (.png recommended); the losses go to <stem>.json next to it.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing grid or losses file that nst-jax did not write (default: refuse; "
                             "previous nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_settings_arguments(parser, several=SWEEPABLE)


def _add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="A local web page to stylize by clicking.",
                                   description=SERVE_DESCRIPTION)
    parser.set_defaults(run=_run_serve)
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to listen on (default: 127.0.0.1, this computer only; the page has no login).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default: 8000; 0: any free port).")
    add_settings_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``nst-jax`` parser: the ``stylize`` flags at the top level (the default command) and the
    subcommands ``stylize``, ``batch``, ``sweep`` and ``serve``."""
    parser = argparse.ArgumentParser(
        prog="nst-jax", description="Neural style transfer in JAX. " + STYLIZE_DESCRIPTION, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_stylize_arguments(parser)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     help="stylize (the default), batch, sweep or serve; see nst-jax COMMAND --help")
    stylize = commands.add_parser("stylize", help=STYLIZE_DESCRIPTION, description=STYLIZE_DESCRIPTION,
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_stylize_arguments(stylize)
    batch_cli.add_parser(commands)
    _add_sweep_parser(commands)
    _add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nst-jax`` and ``python -m nst_jax``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.showwarning = show_warning
        parser = build_parser()
        ns = parser.parse_args(argv)
        if ns.command is not None and argv[0] != ns.command:
            fail(parser, f"put the command first: nst-jax {ns.command} ... (flags before it are not "
                         f"{ns.command}'s)")
        sub = parser if ns.command is None else _subparser(parser, ns.command)
        return ns.run(sub, ns)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _canvas_settings(parser: argparse.ArgumentParser, ns: argparse.Namespace, s: Settings) -> Settings:
    """``--size HxW`` as ``image_size`` (the long side) and ``aspect`` (width / height)."""
    if ns.size is None:
        return s
    if ns.content is not None:
        fail(parser, "--size sets the canvas of a texture (no --content); with --content the content image's "
                     "shape is used: leave --size out (--image-size sets the long side).")
    given = [f for f in ("image_size", "aspect") if f in vars(ns)]
    if given:
        fail(parser, f"--size replaces {' and '.join(map(_flag, given))}: give --size or "
                     f"{' and '.join(map(_flag, given))}, not both.")
    h, w = ns.size
    aspect = w / h
    s = s.replace(image_size=max(h, w), aspect=aspect)
    if canvas.shape(s) != (h, w):  # the short side is truncated: aim at its middle so that it comes out exact
        s = s.replace(aspect=w / (h + 0.5) if w > h else (w + 0.5) / h)
    return s


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    received: list[int] = []
    if ns.output is None:
        fail(parser, "--output is required: the path of the image to write (e.g. --output out.png).")
    try:
        settings = _canvas_settings(parser, ns, settings_from_args(ns))
        if ns.content is None and settings.content_weight:
            fail(parser, f"--content is missing: pass --content IMAGE, or --content-weight 0 to synthesize a "
                         f"texture (canvas: --image-size by --aspect, or --size HxW); got --content-weight "
                         f"{settings.content_weight:g}.")
        if ns.style is None and settings.style_weight:
            fail(parser, f"--style is missing: pass --style IMAGE, or --style-weight 0 to reconstruct the content "
                         f"image from its activations; got --style-weight {settings.style_weight:g}.")
        canvas.check_inputs(settings, ns.content, ns.style)
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output).expanduser().parent):
            result = api.stylize(ns.content, ns.style, settings, output=ns.output, overwrite=ns.overwrite,
                                 progress=not ns.quiet)
    except (ValueError, TypeError, WeightsError, optim.NonFiniteLossError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt as e:  # exit code 128 + signal number, as a shell reports a killed program
        code = 128 + int(received[-1] if received else signal.SIGINT)
        if isinstance(e, api.Interrupted):
            parser.exit(code, f"nst-jax: {e}.\n")
        parser.exit(code, "nst-jax: interrupted; no output was written.\n")
    last = result.history[-1]
    print(f"wrote {result.output} ({result.array.shape[1]}x{result.array.shape[0]}, "
          f"{last.iteration} iterations, loss {last.total:.6g}, {last.elapsed:.1f} s)")
    for snap in result.snapshots:
        print(f"snapshot {snap}")
    return 0


def _run_sweep(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    axes = {name: vars(ns)[name] for name in SWEEPABLE if name in vars(ns)}
    if not axes:
        fail(parser, "give the values to sweep: one or more of --content-weight, --style-weight, --tv-weight, "
                     "each with one or more numbers (e.g. --style-weight 10 100 1000).")
    received: list[int] = []
    try:
        settings = settings_from_args(ns, exclude=SWEEPABLE)
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output).expanduser().parent):
            result = sweep.stylize_sweep(ns.content, ns.style, axes, settings, output=ns.output,
                                         overwrite=ns.overwrite, progress=not ns.quiet)
    except (ValueError, TypeError, WeightsError, optim.NonFiniteLossError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt:
        parser.exit(128 + int(received[-1] if received else signal.SIGINT),
                    f"{parser.prog}: interrupted; no output was written.\n")
    print(f"wrote {result.output} ({result.rows}x{result.cols} cells) and {result.json_path}")
    for weights, r in zip(result.cells, result.results):
        last = r.history[-1]
        print(f"  {', '.join(sweep.label(weights))}: loss {last.total:.6g} ({last.iteration} iterations)")
    return 0


def _run_serve(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    try:
        from nst_jax import web  # the web extra is optional: imported only here
    except ModuleNotFoundError as e:
        fail(parser, str(e))
    received: list[int] = []
    try:
        with sigterm_as_interrupt(received):  # so that kill, like Ctrl-C, removes the server's temporary files
            web.serve(ns.host, ns.port, settings_from_args(ns))
    except (ValueError, WeightsError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt:
        parser.exit(128 + int(received[-1] if received else signal.SIGINT), f"{parser.prog}: stopped.\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
