"""What every command-line subcommand shares: the flags generated from :class:`nst_jax.config.Settings`,
errors in the command line's terms, warnings as one line, SIGTERM as Ctrl-C, and the report of a created
output directory.

The subcommands' parsers are built in :mod:`nst_jax.cli` (``nst-jax``, ``nst-jax stylize``, ``nst-jax sweep``)
and :mod:`nst_jax.batch_cli` (``nst-jax batch``); both import this module, neither imports the other's.
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
from collections.abc import Collection
from pathlib import Path

from nst_jax.config import SECTIONS, SettingError, Settings, section_of

_TUPLE_OF_STR = {"content_layers", "style_layers"}


def _rows_by_columns(text: str) -> tuple[int, int]:
    """``NxM`` -> ``(n, m)`` (checked by :class:`Settings`)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be NxM (rows x columns, e.g. 2x3), got {text!r}") from None
    return n, m


#: Settings read from one word on the command line: ``(parse, metavar)``.
_PARSED = {"style_tile": (_rows_by_columns, "NxM")}

#: Other flags of a setting: ``--style-pairs conv2_1:conv1_2,...`` reads as the cross-layer entries it sets.
ALIASES = {"style_layers": ("--style-pairs",)}


def flag(name: str) -> str:
    """The command-line flag of a :class:`Settings` field (``image_size`` -> ``--image-size``)."""
    return "--" + name.replace("_", "-")


def error_message(error: BaseException) -> str:
    """An error's message in the command line's terms: settings are named by their flags."""
    if isinstance(error, SettingError):
        return error.render(flag)
    return str(error)


def _strip_optional(tp):
    """``X | None`` -> ``X``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


def add_settings_arguments(parser: argparse.ArgumentParser, *, several: Collection[str] = (),
                           exclude: Collection[str] = ()) -> None:
    """Adds one flag per :class:`Settings` field (defaults and help from the dataclass).

    Args:
        parser: the parser (or subparser) to add the flags to.
        several: names of number fields that take one or more values here (``nst-jax sweep``: one grid cell
            per value); their values come back as lists, which :func:`settings_from_args` does not read.
        exclude: names of fields that get no flag here (the subcommand sets them otherwise).
    """
    hints = typing.get_type_hints(Settings)
    groups = {topic: parser.add_argument_group(f"{topic} settings") for topic, _ in SECTIONS}
    for f in dataclasses.fields(Settings):
        if f.name in exclude:
            continue
        tp = _strip_optional(hints[f.name])
        group = groups[section_of(f.name)]
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help", "")}
        shown = "x".join(map(str, f.default)) if f.name in _PARSED else _show(f.default)
        if shown is not None:
            kw["help"] += f" (default: {shown})"
        origin = typing.get_origin(tp)
        if f.name in several:
            if tp not in (int, float):  # pragma: no cover - a programming error
                raise TypeError(f"setting {f.name} is not a number; it cannot take several values")
            kw.update(nargs="+", type=tp, metavar="W")
            kw["help"] += "; several values: one grid cell per value (every combination with the other swept flags)"
        elif f.name in _PARSED:
            kw["type"], kw["metavar"] = _PARSED[f.name]
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif f.metadata.get("choices"):  # a str field whose values are listed elsewhere (method: the presets)
            kw.update(type=tp, choices=[c for c in f.metadata["choices"] if c is not None], metavar="NAME")
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
        group.add_argument(flag(f.name), *ALIASES.get(f.name, ()), **kw)


def _show(v) -> str | None:
    """A default as the help shows it; None where showing it says nothing (unset, empty, off)."""
    if v is None or v is False or v == ():
        return None
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v)


def given_settings(ns: argparse.Namespace, *, exclude: Collection[str] = ()) -> dict:
    """The :class:`Settings` fields given as flags (not validated yet): ``{field: value}``."""
    names = {f.name for f in dataclasses.fields(Settings)} - set(exclude)
    given = {k: v for k, v in vars(ns).items() if k in names}
    for k in _TUPLE_OF_STR & given.keys():
        given[k] = tuple(part for item in given[k] for part in item.split(",") if part.strip())
    for k, v in list(given.items()):
        if isinstance(v, list):
            given[k] = tuple(v)
    return given


def settings_from_args(ns: argparse.Namespace, *, exclude: Collection[str] = ()) -> Settings:
    """Builds validated :class:`Settings` from parsed flags (unset flags, and ``exclude``, keep their defaults)."""
    return Settings(**given_settings(ns, exclude=exclude))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
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


def fail(parser: argparse.ArgumentParser, message: str) -> typing.NoReturn:
    """Exits with code 2 and ``<prog>: error: <message>`` as one line (no usage, no traceback)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")
