"""Command line: one parser with subcommands; argument parsing only, the work is done by the library.

``nst-jax [stylize]`` (one image; the default command), ``nst-jax batch`` (folders, in compiled batches;
:mod:`nst_jax.batch_cli` adds that subcommand), ``nst-jax sweep`` (a grid of loss weights), ``nst-jax layers``
(the layers of a loss and their weights), ``nst-jax compare`` (method presets side by side), ``nst-jax info``
(how an output was made), ``nst-jax study`` (practitioners' studies as a report folder, :mod:`nst_jax.study`),
``nst-jax reconstruct`` and ``nst-jax texture`` (:mod:`nst_jax.modes`: one layer's
reconstruction of a content image, a texture from a style image), ``nst-jax normalize-weights`` (the
normalized VGG-19, :mod:`nst_jax.normalize`) and ``nst-jax serve`` (a local web page, :mod:`nst_jax.web`,
imported only by that command: the ``web`` extra).
The settings flags are generated from :class:`nst_jax.config.Settings` (:mod:`nst_jax.flags`), so every setting is a
flag with the same default and help text.

Size: each subcommand is a pair of small functions (its parser, its run); they are kept in one module so
that there is one parser and one list of commands (:data:`COMMANDS`).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from nst_jax import (__version__, aliases, api, batch_cli, canvas, compare, images, layersets, modes, normalize,
                     optim, presets, provenance, study, sweep, weighting)
from nst_jax.config import SettingError, Settings
from nst_jax.flags import (add_settings_arguments, error_message, fail, given_settings, report_created_directory,
                           settings_from_args, show_warning, sigterm_as_interrupt)
from nst_jax.flags import flag as _flag
from nst_jax.sweep import SWEEPABLE
from nst_jax.weights import WeightsError

COMMANDS = ("stylize", "batch", "sweep", "compare", "reconstruct", "texture", "study", "layers", "info",
            "normalize-weights", "serve")

STYLIZE_DESCRIPTION = "Stylize one image, or synthesize a texture (no --content, --content-weight 0)."
EXAMPLES = """\
examples:
  nst-jax --content photo.jpg --style painting.jpg --output out.png
  nst-jax --style painting.jpg --content-weight 0 --size 384x512 --output texture.png
  nst-jax batch --style painting.jpg --inputs photos/ --output-dir out/
  nst-jax sweep --content photo.jpg --style painting.jpg --style-weight 10 100 1000 --output grid.png
  nst-jax --content photo.jpg --style painting.jpg --method chain --output out.png
  nst-jax compare --content photo.jpg --style painting.jpg --methods classic,classic-shifted,chain --output-dir cmp/
  nst-jax layers --layers chain --weighting geometric

Without a command, nst-jax stylizes one image: nst-jax --content ... is nst-jax stylize --content ...
"""
#: The usage line of the help (argparse's own would list every one of the ~60 flags).
USAGE = "nst-jax [COMMAND] --content PHOTO --style PAINTING --output OUT.png [options]"
SHORT_USAGE = f"""\
usage: nst-jax --content PHOTO --style PAINTING --output OUT.png [options]
       nst-jax COMMAND ...   (commands: {', '.join(COMMANDS)})

Try 'nst-jax --help' for the options and examples, or 'nst-jax COMMAND --help'.
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


LAYERS_DESCRIPTION = ("Print the entries of a loss (content layers, style layers and pairs of layers) in depth order: "
                      "conv index 1..16, channels, feature map side at --image-size, how many times a blurred "
                      "statistic blurs a pair, and the content and style weights as shares of their family's sum.")
LAYERS_EXAMPLES = """\
examples:
  nst-jax layers                                   # all 16 conv layers, uniform weights
  nst-jax layers --layers chain --weighting geometric
  nst-jax layers --method all-to-content --image-size 256
  nst-jax layers --layers relu1_1,relu2_1:relu1_2 --content-layers relu4_2

Without --content-layers the content layers are those the style entries read (Novak & Nikulin use one set of
layers for both), or the method's.
"""
COMPARE_DESCRIPTION = ("Stylize one content image with every given method preset on every style: writes a labelled "
                       "grid (rows: methods, columns: styles) compare.png, the loss curves losses.png (with "
                       "matplotlib: pip install 'nst-jax[report]'), and the final losses, iterations and times as "
                       "compare.md and compare.json into --output-dir.")
COMPARE_EXAMPLES = """\
examples:
  nst-jax compare --content photo.jpg --style painting.jpg --methods classic,classic-shifted,chain --output-dir cmp/
  nst-jax compare --content photo.jpg --style a.jpg --style b.jpg --methods chain,chain-uniform --image-size 256 \\
      --num-iterations 300 --output-dir cmp/

The other flags apply to every method; a method's preset sets what they leave out (explicit flags win). Methods
that differ only in loss weights (chain, chain-uniform) run as one compiled batch. Unless --print-every is given,
the losses are recorded about 50 times per run for the curves.
"""


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
    parser.add_argument("--from", dest="from_output", metavar="IMAGE",
                        help="Rerun with the settings recorded in an nst-jax output (see nst-jax info); flags given "
                             "here override them, and the recorded style images are used unless --style is given.")
    add_settings_arguments(parser)


def _add_info_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="How an output was made (inputs, weights, settings, losses).",
                                   description="Print what an nst-jax output records about how it was made: the "
                                               "input images (with short hashes), the weights, the settings that "
                                               "differ from the defaults, the final losses, the software and device.")
    parser.set_defaults(run=_run_info)
    parser.add_argument("image", help="An image written by nst-jax (PNG, JPEG, WebP or TIFF).")
    parser.add_argument("--json", action="store_true", help="Print the recorded metadata as JSON.")
    parser.add_argument("--all", action="store_true", help="List every setting, not only those that differ from "
                                                           "the defaults.")


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


def _method_list(text: str) -> list[str]:
    """``--methods a,b`` -> ``["a", "b"]``, each a preset name."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in presets.NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(map(repr, unknown)) or repr(text)}; "
                                         f"methods: {', '.join(presets.NAMES)}")
    return names


def _add_layers_parser(subparsers) -> None:
    parser = subparsers.add_parser("layers", help="The layers of a loss and their weights.",
                                   description=LAYERS_DESCRIPTION, epilog=LAYERS_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_layers)
    parser.add_argument("--layers", metavar="SET|LIST",
                        help=f"Style entries: a set ({', '.join(layersets.SETS)}) or a comma-separated list of layers "
                             "and pairs 'deep:shallow' (e.g. relu2_1:relu1_2) (default: all; with --method, the "
                             "method's).")
    parser.add_argument("--content-layers", metavar="LIST",
                        help="Content layers, comma-separated (default: the layers the style entries read; with "
                             "--method, the method's).")
    parser.add_argument("--weighting", choices=weighting.WEIGHTINGS,
                        help="Layer weighting (default: uniform; with --method, the method's).")
    parser.add_argument("--method", choices=presets.NAMES, help="Take the layers and weighting of a method preset.")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help=f"Long side of the image, for the feature map sides (default: {Settings().image_size}).")


def _add_compare_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="Method presets side by side on one image.",
                                   description=COMPARE_DESCRIPTION, epilog=COMPARE_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_compare)
    parser.add_argument("--content", required=True, help="Content image (path).")
    parser.add_argument("--style", required=True, action="append",
                        help="Style image (path); repeat for several styles, one grid column each.")
    parser.add_argument("--methods", required=True, nargs="+", type=_method_list, metavar="METHOD",
                        help="Methods to compare, one grid row each, comma- or space-separated: "
                             f"{', '.join(presets.NAMES)}.")
    parser.add_argument("--output-dir", required=True,
                        help="Where compare.png, losses.png, compare.md and compare.json go (only its last level "
                             "is created).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace existing files there that nst-jax did not write (default: refuse; previous "
                             "nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_settings_arguments(parser, exclude={"method"})


RECONSTRUCT_DESCRIPTION = ("Reconstruct a content image from noise out of one layer's activations (no style; "
                           "--init random and --tv-weight 0 unless given): what the layer keeps of the image. "
                           "convB_I reads the convolution before its ReLU, reluB_I (or the Keras blockB_convI) "
                           "after it.")
TEXTURE_DESCRIPTION = ("Synthesize a texture from a style image's statistics: no content image (--content-weight 0), "
                       "on a canvas of --size HxW (or --image-size by --aspect).")


def _add_reconstruct_parser(subparsers) -> None:
    parser = subparsers.add_parser("reconstruct", help="A content image rebuilt from one layer's activations.",
                                   description=RECONSTRUCT_DESCRIPTION,
                                   epilog="example:\n  nst-jax reconstruct --content photo.jpg --layer conv4_2 "
                                          "--output recon.png\n",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_reconstruct)
    parser.add_argument("--content", required=True, help="Content image (path).")
    parser.add_argument("--layer", required=True, metavar="LAYER",
                        help="The layer: one of the 16 conv layers as convB_I (before the ReLU), reluB_I or "
                             "blockB_convI (after it).")
    _add_output_arguments(parser)
    add_settings_arguments(parser, exclude={"content_layers", "style_weight"})


def _add_texture_parser(subparsers) -> None:
    parser = subparsers.add_parser("texture", help="A texture from a style image (no content).",
                                   description=TEXTURE_DESCRIPTION,
                                   epilog="example:\n  nst-jax texture --style painting.jpg --layers relu1_1,relu2_1 "
                                          "--size 256x384 --output texture.png\n",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_texture)
    parser.add_argument("--style", required=True, action="append",
                        help="Style image (path); repeat for several styles (see --style-blend-weights).")
    parser.add_argument("--layers", metavar="LIST",
                        help="Style layers, comma-separated (names, pairs 'deep:shallow' or sets, as "
                             "--style-layers; default: the settings' style layers).")
    parser.add_argument("--size", type=_size, metavar="HxW",
                        help="The canvas, height x width in pixels (default: --image-size by --aspect).")
    _add_output_arguments(parser)
    add_settings_arguments(parser, exclude={"content_weight", "style_layers"})


STUDY_DESCRIPTION = ("Rerun practitioners' studies (reconstruction per layer, textures per layer set, blur on stall, "
                     "colour, style tiling, ...) at a small size and write a report folder: index.md, a "
                     "self-contained index.html and study.json with the numbers, labelled picture grids and loss "
                     "curves (matplotlib: pip install 'nst-jax[report]'). Runs of a study that share a compiled "
                     "program run as one batch.")
STUDY_EXAMPLES = f"""\
examples:
  nst-jax study all --output-dir report/
  nst-jax study reconstruction stall --output-dir report/ --weights vgg19.h5
  nst-jax study all --output-dir report/ --size 256 --iterations-scale 4     # on an accelerator
  nst-jax study --list

The default --size ({study.DEFAULT_SIZE} px) is chosen for a CPU; the images default to the project's examples/.
"""


def _add_study_parser(subparsers) -> None:
    parser = subparsers.add_parser("study", help="Practitioners' studies as a report folder.",
                                   description=STUDY_DESCRIPTION, epilog=STUDY_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_study)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="Studies to run (see --list), or all.")
    parser.add_argument("--list", action="store_true", help="List the studies and exit.")
    parser.add_argument("--output-dir", help="The report folder (only its last level is created).")
    parser.add_argument("--size", type=int, metavar="PX",
                        help=f"Long side of the study images in pixels (default: {study.DEFAULT_SIZE}; larger on an "
                             "accelerator).")
    parser.add_argument("--iterations-scale", type=float, default=1.0, metavar="X",
                        help="Multiply every study's iterations by X (default: 1).")
    parser.add_argument("--weights", help="VGG-19 weights, as for stylize: a .h5/.npz file, 'random', 'normalized', "
                                          "or unset for the usual lookup.")
    parser.add_argument("--content", help="Content image (default: examples/tubingen.jpg).")
    parser.add_argument("--style", help="Style image (default: examples/starry_night.jpg).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the initial images (default: 0).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace existing files there that nst-jax did not write (default: refuse; previous "
                             "nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="Output image path (.png recommended: holds the settings).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing output file that nst-jax did not write (default: refuse; "
                             "previous nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")


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
    subcommands named in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="nst-jax", description="Neural style transfer in JAX. " + STYLIZE_DESCRIPTION, epilog=EXAMPLES,
        usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nst-jax {__version__}")
    _add_stylize_arguments(parser)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", prog="nst-jax",
                                     help=f"one of {', '.join(COMMANDS)} (stylize is the default); see "
                                          "nst-jax COMMAND --help")
    stylize = commands.add_parser("stylize", help=STYLIZE_DESCRIPTION, description=STYLIZE_DESCRIPTION,
                                  usage="nst-jax stylize --content PHOTO --style PAINTING --output OUT.png [options]",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_stylize_arguments(stylize)
    batch_cli.add_parser(commands)
    _add_sweep_parser(commands)
    _add_compare_parser(commands)
    _add_reconstruct_parser(commands)
    _add_texture_parser(commands)
    _add_study_parser(commands)
    _add_layers_parser(commands)
    _add_info_parser(commands)
    _add_normalize_parser(commands)
    _add_serve_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nst-jax`` and ``python -m nst_jax``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.showwarning = show_warning
        parser = build_parser()
        if not argv:
            parser.exit(2, SHORT_USAGE)
        try:
            argv, notes = aliases.translate(argv)
        except aliases.AliasError as e:
            fail(parser, str(e))
        for note in notes:
            print(f"nst-jax: note: {note}", file=sys.stderr)
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
    return canvas.for_size(s, *ns.size)


def _recorded(parser: argparse.ArgumentParser, path: str) -> dict:
    """The metadata of an nst-jax output, or exit with an error naming the file."""
    try:
        meta = images.read_metadata(path)
    except images.ImageError as e:
        fail(parser, str(e))
    if not meta or "settings" not in meta:
        fail(parser, f"'{path}' records no nst-jax settings: it was not written by nst-jax (or its metadata was "
                     "stripped, e.g. by an image editor); pass the flags instead.")
    return meta


def _from_output(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> Settings:
    """``--from IMAGE``: the recorded settings with the flags given on top; the recorded style images unless
    ``--style`` is given."""
    meta = _recorded(parser, ns.from_output)
    given = given_settings(ns)
    settings, ignored = Settings.from_dict(meta["settings"], **given)
    if ignored:
        warnings.warn(f"'{ns.from_output}' records settings this version does not know, ignored: "
                      f"{', '.join(ignored)}", stacklevel=1)
    if ns.style is None:
        styles = [i["path"] for i in meta.get("inputs", []) if i.get("role", "").startswith("style") and "path" in i]
        missing = [p for p in styles if not Path(p).is_file()]
        if missing:
            fail(parser, f"the style image recorded in '{ns.from_output}' is not there any more: {missing[0]}; "
                         "pass --style IMAGE.")
        ns.style = styles or None
    return settings


def _run_info(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    meta = _recorded(parser, ns.image)
    if ns.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    print(provenance.report(meta, all_settings=ns.all))
    return 0


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    received: list[int] = []
    if ns.output is None:
        fail(parser, "--output is required: the path of the image to write (e.g. --output out.png).")
    try:
        base = _from_output(parser, ns) if ns.from_output else settings_from_args(ns)
        settings = _canvas_settings(parser, ns, base)
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
    for snap in result.snapshots:
        print(f"snapshot {snap}")
    print(f"wrote {result.output} ({result.array.shape[1]}x{result.array.shape[0]}, "
          f"{last.iteration} iterations, loss {last.total:.6g}, {last.elapsed:.1f} s)")
    return 0


def _run_reconstruct(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    return _run_mode(parser, ns, lambda s, **kw: modes.reconstruct(ns.content, ns.layer, s, **kw))


def _run_texture(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    if ns.size is not None:
        given = [f for f in ("image_size", "aspect") if f in vars(ns)]
        if given:
            fail(parser, f"--size replaces {' and '.join(map(_flag, given))}: give --size or "
                         f"{' and '.join(map(_flag, given))}, not both.")
    return _run_mode(parser, ns, lambda s, **kw: modes.texture(ns.style, layers=ns.layers, size=ns.size,
                                                                settings=s, **kw))


def _run_mode(parser: argparse.ArgumentParser, ns: argparse.Namespace, run) -> int:
    """Runs a :mod:`nst_jax.modes` study ``run(settings, output=..., overwrite=..., progress=...)``."""
    received: list[int] = []
    try:
        settings = settings_from_args(ns)
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output).expanduser().parent):
            result = run(settings, output=ns.output, overwrite=ns.overwrite, progress=not ns.quiet)
    except (ValueError, TypeError, WeightsError, optim.NonFiniteLossError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt as e:
        code = 128 + int(received[-1] if received else signal.SIGINT)
        parser.exit(code, f"{parser.prog}: {e}.\n" if isinstance(e, api.Interrupted)
                    else f"{parser.prog}: interrupted; no output was written.\n")
    last = result.history[-1]
    print(f"wrote {result.output} ({result.array.shape[1]}x{result.array.shape[0]}, "
          f"{last.iteration} iterations, loss {last.total:.6g}, {last.elapsed:.1f} s)")
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


NORMALIZE_DESCRIPTION = (
    "Write the normalized VGG-19 (Novak & Nikulin's activation shift -1 assumes it): the weights rescaled so that "
    "every channel's mean post-ReLU activation over a set of images (the bundled examples and --images) and all "
    "positions is 1. The .npz records its provenance (source weights, images, size, pooling, scales); pass it "
    "with --weights FILE. --weights normalized computes the default one on first use.")
NORMALIZE_EXAMPLES = """\
examples:
  nst-jax normalize-weights                 # the file --weights normalized uses, in the weights cache
  nst-jax normalize-weights --images photos/ --size 512 --output vgg19_normalized.npz
  nst-jax normalize-weights --weights random --size 64 --output random_normalized.npz   # smoke test
"""


def _add_normalize_parser(subparsers) -> None:
    parser = subparsers.add_parser("normalize-weights", help="Write the normalized VGG-19 (unit mean activations).",
                                   description=NORMALIZE_DESCRIPTION, epilog=NORMALIZE_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=_run_normalize)
    parser.add_argument("--weights", help="The weights to normalize: a .h5/.npz file or 'random' (default: "
                                          "$NST_JAX_WEIGHTS, then the cache, then download, as nst-jax).")
    parser.add_argument("--images", nargs="+", action="extend", default=[], metavar="IMAGE",
                        help="Images to measure on besides the bundled examples: files, folders, glob patterns or "
                             "text files listing one image per line.")
    parser.add_argument("--no-examples", action="store_true",
                        help="Measure on --images only, without the bundled example images.")
    parser.add_argument("--size", type=int, default=normalize.DEFAULT_SIZE, metavar="PX",
                        help="Long side the images are resized to (default: %(default)s).")
    parser.add_argument("--pooling", choices=("avg", "max"), default=normalize.DEFAULT_POOLING,
                        help="Pooling of the measuring network (default: %(default)s, as the paper's base code).")
    parser.add_argument("--output", help="The .npz to write (default: the weights cache, named after the source "
                                         "weights' MD5 and the images, size and pooling; with the defaults it is "
                                         "the file --weights normalized reads).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output file.")


def _run_normalize(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    try:
        sources = [path for spec in ns.images for path in images.list_images(spec)]
        result = normalize.normalize_weights(ns.output, ns.weights, sources, examples=not ns.no_examples,
                                             size=ns.size, pooling=ns.pooling, overwrite=ns.overwrite)
    except (ValueError, WeightsError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt:
        parser.exit(128 + int(signal.SIGINT), f"{parser.prog}: interrupted; no file was written.\n")
    meta = result.metadata
    print(f"wrote {result.path}: normalized VGG-19 of {normalize.describe_source(meta['source'])} on "
          f"{len(meta['images'])} image(s) at {meta['size']} px, {meta['pooling']} pooling; "
          f"{meta['dead_channels']} channel(s) never active (kept at scale 1)")
    return 0


_LAYERS_FLAGS = {"style_layers": "--layers", "layer_weighting": "--weighting"}


def _run_layers(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    given = {name: value for name, value in (("method", ns.method), ("style_layers", ns.layers),
                                              ("content_layers", ns.content_layers),
                                              ("layer_weighting", ns.weighting), ("image_size", ns.image_size))
             if value is not None}
    if ns.method is None:
        given.setdefault("style_layers", "all")
    try:
        s = Settings(**given)
        if ns.method is None and ns.content_layers is None:  # the layers the style entries read
            read = {m for entry in s.style_layers for m in layersets.members(entry)}
            s = s.replace(content_layers=tuple(sorted(read, key=weighting.depth_key)))
        rows = weighting.layer_table(s)
    except (ValueError, TypeError) as e:
        fail(parser, e.render(lambda n: _LAYERS_FLAGS.get(n, _flag(n))) if isinstance(e, SettingError) else str(e))
    print(weighting.format_table(rows))
    explicit = [f for f in ("content_layer_weights", "style_layer_weights") if getattr(s, f)]
    how = {"uniform": "uniform: the objective weighs every entry 1 (shares of the sum shown)",
           "geometric": "geometric (Novak & Nikulin): the objective uses these normalized weights"}[s.layer_weighting]
    print(f"\n{len(rows)} entries at --image-size {s.image_size}" + (f", method {s.method}" if s.method else "")
          + f"; weighting {how}" + (f"; explicit {', '.join(explicit)} replace it" if explicit else "") + ".")
    return 0


def _run_compare(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    methods = [m for group in ns.methods for m in group]
    received: list[int] = []
    try:
        settings = settings_from_args(ns)
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output_dir).expanduser()):
            out = compare.compare(ns.content, ns.style, methods, settings, output_dir=ns.output_dir,
                                  overwrite=ns.overwrite, progress=not ns.quiet)
    except (ValueError, TypeError, WeightsError, optim.NonFiniteLossError) as e:
        fail(parser, e.render(lambda n: "--methods" if n == "method" else _flag(n)) if isinstance(e, SettingError)
             else error_message(e))
    except KeyboardInterrupt:
        parser.exit(128 + int(received[-1] if received else signal.SIGINT),
                    f"{parser.prog}: interrupted; no output was written.\n")
    print("wrote " + ", ".join(str(p) for p in out.files.values())
          + f" ({len(out.methods)} methods x {len(out.styles)} styles)")
    replaced = sorted({f for run in out.runs for f in compare.overridden(run.settings)})
    if replaced:
        print(f"note: {', '.join(map(_flag, replaced))} replaced the methods' preset values (explicit flags win)")
    for run in out.runs:
        last = run.result.history[-1]
        per_it = run.seconds_per_iteration
        print(f"  {run.method} / {out.styles[run.style]}: loss {last.total:.6g} ({last.iteration} iterations"
              + ("" if per_it is None else f", {per_it:.3g} s/iteration")
              + ("" if len(run.batch) == 1 else f", batched with {', '.join(m for m in run.batch if m != run.method)}")
              + ")")
    return 0


def _run_study(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    if ns.list:
        for entry in study.STUDIES.values():
            seeds = f" (seed {', '.join(entry.seeds)})" if entry.seeds else ""
            print(f"{entry.name:16s} {entry.title}{seeds}")
        return 0
    if not ns.names:
        fail(parser, f"name the studies to run: {', '.join(study.names())}, or all (nst-jax study --list).")
    if not ns.output_dir:
        fail(parser, "--output-dir is required: the folder the report is written to.")
    received: list[int] = []
    try:
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output_dir).expanduser()):
            out = study.run_studies(ns.names, ns.output_dir, size=ns.size, weights=ns.weights,
                                    iterations_scale=ns.iterations_scale, overwrite=ns.overwrite,
                                    content=ns.content, style=ns.style, seed=ns.seed, progress=not ns.quiet)
    except (ValueError, TypeError, ImportError, WeightsError, optim.NonFiniteLossError) as e:
        fail(parser, error_message(e))
    except KeyboardInterrupt:
        parser.exit(128 + int(received[-1] if received else signal.SIGINT),
                    f"{parser.prog}: interrupted; no report was written.\n")
    for section in out.sections:
        print(f"  {section.name}: {section.seconds:.0f} s")
    print(f"wrote {', '.join(str(p) for p in out.files.values())} ({len(out.sections)} studies, "
          f"{out.seconds:.0f} s)")
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
