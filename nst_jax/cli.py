"""Command line: argument parsing only; the work is done by the library.

The flags are generated from :class:`nst_jax.config.Settings`, so every
setting is a flag with the same default and help text.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path

from nst_jax.config import SettingError, Settings

_TUPLE_OF_STR = {"content_layers", "style_layers"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def error_message(error: BaseException) -> str:
    """An error's message in the command line's terms: settings are named by their flags."""
    if isinstance(error, SettingError):
        return error.render(_flag)
    return str(error)


def _strip_optional(tp):
    """``X | None`` -> ``X``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per :class:`Settings` field (defaults and help from the dataclass)."""
    hints = typing.get_type_hints(Settings)
    group = parser.add_argument_group("settings (see nst_jax.Settings)")
    for f in dataclasses.fields(Settings):
        tp = _strip_optional(hints[f.name])
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        default = f.default
        kw["help"] += f" (default: {_show(default)})"
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kw["choices"] = list(typing.get_args(tp))
        elif origin is tuple:
            inner = typing.get_args(tp)[0]
            kw["nargs"] = "+"
            kw["type"] = inner
            kw["metavar"] = "LAYER" if f.name in _TUPLE_OF_STR else ("PX" if inner is int else "W")
        elif tp in (int, float, str):
            kw["type"] = tp
        else:  # pragma: no cover - a new field type must be handled here
            raise TypeError(f"no CLI mapping for setting {f.name}: {tp}")
        group.add_argument(_flag(f.name), **kw)


def _show(v):
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return v


def settings_from_args(ns: argparse.Namespace) -> Settings:
    """Builds validated :class:`Settings` from parsed flags (unset flags keep their defaults)."""
    names = {f.name for f in dataclasses.fields(Settings)}
    given = {k: v for k, v in vars(ns).items() if k in names}
    for k in _TUPLE_OF_STR & given.keys():
        given[k] = tuple(part for item in given[k] for part in item.split(",") if part.strip())
    for k, v in list(given.items()):
        if isinstance(v, list):
            given[k] = tuple(v)
    return Settings(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst-jax",
        description="Neural style transfer in JAX. Example: nst-jax --content photo.jpg --style painting.jpg "
                    "--output out.png",
    )
    parser.add_argument("--content", required=True, help="Content image (path).")
    parser.add_argument("--style", required=True, action="append",
                        help="Style image (path); repeat for several styles (see --style-blend-weights).")
    parser.add_argument("--output", required=True, help="Output image path (.png recommended: holds the settings).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing output (or snapshot) file that nst-jax did not write (default: "
                             "refuse; previous nst-jax outputs are always replaced, inputs never).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    add_settings_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nst-jax`` and ``python -m nst_jax``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.showwarning = _show_warning
        if argv and argv[0] == "batch":
            from nst_jax import batch_cli

            return batch_cli.main(argv[1:])
        parser = build_parser()
        ns = parser.parse_args(argv)
        return _run(parser, ns)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. an animated GIF of which only the first frame is used) as one line on stderr, like the
    errors, instead of Python's ``file:line: Category: ...`` followed by a line of source."""
    print(f"nst-jax: warning: {message}", file=file or sys.stderr)


@contextlib.contextmanager
def sigterm_as_interrupt(received: list[int]):
    """Turns SIGTERM into ``KeyboardInterrupt`` (appending it to ``received``), so that ``kill`` takes the same
    path as Ctrl-C: the library saves the latest image. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def report_created_directory(path: Path):
    """Prints ``created directory <path>/`` if ``path`` did not exist before the block and does after it
    (outputs create only the last level of a missing directory; a typo should not go unnoticed)."""
    existed = path.exists()
    try:
        yield
    finally:
        if not existed and path.is_dir():
            print(f"created directory {os.path.join(path, '')}")


def _run(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> int:
    from nst_jax import api, optim  # heavy imports after argument parsing (fast --help)
    from nst_jax.weights import WeightsError

    received: list[int] = []
    try:
        settings = settings_from_args(ns)
        with sigterm_as_interrupt(received), report_created_directory(Path(ns.output).expanduser().parent):
            result = api.stylize(ns.content, ns.style, settings, output=ns.output, overwrite=ns.overwrite,
                                 progress=not ns.quiet)
    except (ValueError, TypeError, WeightsError, optim.NonFiniteLossError) as e:
        parser.exit(2, f"nst-jax: error: {error_message(e)}\n")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
