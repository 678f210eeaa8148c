"""Practitioners' studies, rerun as one command: ``nst-jax study NAME|all --output-dir report/``.

Each study repeats an experiment that practitioners reported (the seed reports: a layer-by-layer
reconstruction, textures per layer set, blur on stall, colour, style tiling, ...) at a small size, and returns a
:class:`Section` of the report: text written from the numbers it measured, tables, labelled picture grids and
loss curves. :func:`run_studies` runs the chosen studies and writes the report folder (:mod:`.report`):
``index.md``, a self-contained ``index.html`` and ``study.json``, next to the PNGs the studies drew.

A study is a function ``run(ctx: Context) -> Section`` registered with :func:`study`::

    @study("reconstruction", title="What each layer keeps", seeds=("004",))
    def reconstruction(ctx: Context) -> Section:
        s = ctx.settings(content_layers=("conv1_1",), style_weight=0.0, num_iterations=ctx.iterations(200))
        ...
        return Section(ctx.title, text, figures=[ctx.grid(...), ctx.curves(...)], numbers={...})

:class:`Context` carries what every study shares (output folder, size, weights, the content and style images,
seed, ``quick`` for tests) and draws the pictures (:meth:`Context.grid`, :meth:`Context.curves`). Runs of a
study that share a compiled program (they differ only in traced numbers: loss and per-layer weights, targets)
go through :func:`nst_jax.stylize_batch` / :func:`nst_jax.stylize_grid` as one vmapped batch.

Plots need matplotlib (the ``report`` extra); :func:`run_studies` checks for it before it runs anything.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from nst_jax import images, provenance
from nst_jax.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Settings
from nst_jax.study import report
from nst_jax.study.report import FILES, Figure, Report, Section, Table

__all__ = ["Context", "DEFAULT_SIZE", "Figure", "FILES", "MissingExtraError", "QUICK_SIZE", "Report", "STUDIES",
           "Section", "Study", "Table", "UnknownStudyError", "default_images", "names", "resolve", "run_studies",
           "study"]

#: Long side in pixels of every study's images unless ``size`` is given: small enough that ``nst-jax study all``
#: runs in minutes on a laptop CPU; an accelerator takes ``--size 256`` or more.
DEFAULT_SIZE = 96
#: The long side with ``quick`` (tests): the smallest VGG-19 takes.
QUICK_SIZE = 32
#: Iterations with ``quick``: enough for a curve.
QUICK_ITERATIONS = 3
#: Grid cells are shown at least this large (long side, pixels), enlarged by an integer factor without
#: smoothing, so that small study images stay visible.
MIN_CELL_SIDE = 128


class UnknownStudyError(ValueError):
    """A study name that is not registered (the message lists the known ones)."""


class MissingExtraError(ImportError):
    """An optional dependency of the report (matplotlib: the ``report`` extra) is not installed."""


@dataclasses.dataclass(frozen=True)
class Study:
    """A registered study: its name, title, the seed reports it follows and its function."""

    name: str
    title: str
    seeds: tuple[str, ...]
    run: Callable[[Context], Section]


#: The registered studies by name, in registration order (the order of ``all``).
STUDIES: dict[str, Study] = {}


def study(name: str, *, title: str, seeds: Sequence[str] = ()) -> Callable:
    """Registers ``run(ctx) -> Section`` as the study ``name`` (a decorator; the function is returned as is).

    Raises:
        ValueError: the name is taken, is ``all``, or is not a lowercase identifier.
    """
    if not name.isidentifier() or name != name.lower() or name == "all":
        raise ValueError(f"a study name must be a lowercase identifier other than 'all', got {name!r}.")
    if name in STUDIES:
        raise ValueError(f"the study {name!r} is already registered; choose another name.")

    def register(run: Callable[[Context], Section]) -> Callable[[Context], Section]:
        STUDIES[name] = Study(name, title, tuple(str(s) for s in seeds), run)
        return run
    return register


def names() -> tuple[str, ...]:
    """The registered studies' names, in the order of ``all``."""
    return tuple(STUDIES)


def resolve(requested: str | Sequence[str]) -> list[str]:
    """The studies to run: ``"all"`` is every registered one; repeats run once, in the order given.

    Raises:
        UnknownStudyError: a name that is not registered (the message lists the known ones), or none given.
    """
    requested = [requested] if isinstance(requested, str) else list(requested)
    if not requested:
        raise UnknownStudyError(f"no study named: give one or more of {', '.join(STUDIES)}, or all.")
    out: list[str] = []
    for n in requested:
        chosen = list(STUDIES) if n == "all" else [n]
        unknown = [c for c in chosen if c not in STUDIES]
        if unknown:
            raise UnknownStudyError(f"unknown study {unknown[0]!r}: the studies are {', '.join(STUDIES)} (or all for "
                                    "every one; nst-jax study --list describes them).")
        out += [c for c in chosen if c not in out]
    return out


def default_images() -> tuple[Path, Path]:
    """The content and style images used unless others are given: the project's ``examples/`` (Tübingen and
    The Starry Night, as in Gatys et al.)."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    return examples / "tubingen.jpg", examples / "starry_night.jpg"


@dataclasses.dataclass
class Context:
    """What a study runs with, and the helpers that draw its pictures into the report folder.

    Attributes:
        output_dir: the report folder (figures are written there).
        size: long side in pixels of the study's images.
        weights: the VGG-19 weights (as the ``weights`` setting: a file, ``"random"``, ``"normalized"`` or None).
        content, style: the content and style images (paths or float arrays).
        seed: random seed of the initial images.
        quick: tiny runs (tests): :meth:`iterations` returns :data:`QUICK_ITERATIONS` at most.
        iterations_scale: every study's iterations are multiplied by this (at least 1).
        progress: progress bars.
        overwrite: replace files in the folder that nst_jax did not write.
        name, title: the study being run (set by :func:`run_studies`).
    """

    output_dir: Path
    size: int
    weights: str | None
    content: object
    style: object
    seed: int = 0
    quick: bool = False
    iterations_scale: float = 1.0
    progress: bool = False
    overwrite: bool = False
    name: str = ""
    title: str = ""

    def iterations(self, n: int) -> int:
        """The iterations of a run the study would give ``n`` at full length: ``n * iterations_scale`` (at least
        1), at most :data:`QUICK_ITERATIONS` with ``quick``."""
        full = max(1, round(n * self.iterations_scale))
        return min(full, QUICK_ITERATIONS) if self.quick else full

    def cases(self, items: Sequence, quick: int = 2) -> list:
        """The cases a study runs: all of ``items``, the first ``quick`` of them with ``quick`` (tests: the
        shallow layers, fewer programs to compile)."""
        return list(items)[:quick] if self.quick else list(items)

    def settings(self, **fields) -> Settings:
        """The settings of a run: the context's weights, size and seed, the losses recorded about 50 times per run
        (for the curves), then ``fields``."""
        n = fields.get("num_iterations", Settings().num_iterations)
        base = {"weights": self.weights, "image_size": self.size, "seed": self.seed,
                "print_every": max(1, n // 50)}
        return Settings(**{**base, **fields})

    def inputs(self) -> list[tuple[str, object]]:
        """``(role, source)`` of the images the studies read (outputs may never replace them)."""
        return [("content image", self.content), ("style image", self.style)]

    def content_image(self) -> np.ndarray:
        """The content image at the study's size, as stylizations use it (float32 ``(H, W, 3)`` in [0, 1])."""
        return images.resize_long_side(images.load_image(self.content, label="content image"), self.size,
                                       label="content image")

    def style_image(self) -> np.ndarray:
        """The style image as loaded (full size)."""
        return images.load_image(self.style, label="style image")

    def figure_path(self, name: str) -> tuple[Path, str]:
        """The file of figure ``name`` (``<study>-<name>.png``) and its path relative to the report folder,
        checked (an existing file is replaced only if nst_jax wrote it, or with ``overwrite``)."""
        rel = f"{self.name}-{name}.png" if self.name else f"{name}.png"
        path = images.check_overwrite(self.output_dir / rel, self.inputs(), overwrite=self.overwrite)
        return path, rel

    def grid(self, cells: Sequence[Sequence], row_labels: Sequence[str], col_labels: Sequence[str], name: str, *,
             caption: str = "", notes: Sequence[Sequence[str]] | None = None) -> Figure:
        """Writes a labelled grid of pictures and returns its :class:`Figure`.

        Args:
            cells: rows of pictures: float ``(H, W, 3)`` arrays in [0, 1] or :class:`nst_jax.Result` objects.
            row_labels, col_labels: one label per row / column (an empty label is left out); every cell shows its
                row's and column's label above it.
            name: the file's name within the study (``<study>-<name>.png``).
            caption: the figure's caption; a note is added when small pictures are enlarged.
            notes: per cell (rows of strings), an extra label line such as its final loss.
        """
        from nst_jax.sweep import labelled_grid

        rows = [list(r) for r in cells]
        cols = max((len(r) for r in rows), default=0)
        if len(row_labels) != len(rows) or len(col_labels) != cols or any(len(r) != cols for r in rows):
            raise ValueError(f"grid {name!r}: {len(rows)} rows of {[len(r) for r in rows]} cells, but "
                             f"{len(row_labels)} row labels and {len(col_labels)} column labels; give one per row "
                             "and one per column, and as many cells in every row.")
        arrays = [[np.asarray(getattr(c, "array", c), np.float32) for c in r] for r in rows]
        long_side = max((max(a.shape[:2]) for r in arrays for a in r), default=MIN_CELL_SIDE)
        factor = max(1, math.ceil(MIN_CELL_SIDE / long_side))
        flat, labels = [], []
        for i, r in enumerate(arrays):
            for j, a in enumerate(r):
                flat.append(np.repeat(np.repeat(a, factor, axis=0), factor, axis=1) if factor > 1 else a)
                lines = [t for t in (row_labels[i], col_labels[j]) if t]
                if notes is not None and notes[i][j]:
                    lines.append(notes[i][j])
                labels.append(lines)
        picture, _ = labelled_grid(flat, labels, len(rows), cols)
        path, rel = self.figure_path(name)
        images.save_image(picture, path, metadata={"study": self.name, "figure": name, "caption": caption})
        if factor > 1:
            caption = (caption + " " if caption else "") + f"(Pictures enlarged {factor}x, pixels repeated.)"
        return Figure(rel, caption)

    def curves(self, histories: Mapping[str, Sequence], x: str = "iteration", name: str = "curves",
               title: str = "", log: bool = True, *, relative: bool = False, caption: str = "",
               term: str = "total", ylabel: str | None = None) -> Figure:
        """Writes a plot of the total loss (or one term) of each history (:class:`nst_jax.Record` lists) and
        returns its :class:`Figure`.

        Args:
            histories: label -> history (``result.history``), one line each.
            x: ``"iteration"`` or ``"seconds"`` (wall time from the end of the run's first iteration, which
                includes the compilation).
            name: the file's name within the study (``<study>-<name>.png``).
            title: the plot's title.
            log: a logarithmic loss axis.
            relative: plot each loss divided by its first value (runs whose losses have other scales).
            caption: the figure's caption.
            term: the weighted loss term to plot (``"content"``, ``"style"``, ... as in ``Record.terms``), or
                ``"total"``.
            ylabel: the loss axis's label (default: the term, and "/ its initial value" with ``relative``).
        """
        if x not in ("iteration", "seconds"):
            raise ValueError(f"x must be 'iteration' or 'seconds', got {x!r}.")
        fig = new_figure((6.4, 4.0))
        ax = fig.add_subplot()
        for k, (label, history) in enumerate(histories.items()):
            if x == "seconds":  # from the end of the first iteration: compilation left out
                history = [r for r in history if r.iteration > 0]
            start = history[0].elapsed if history else 0.0
            xs = [r.iteration if x == "iteration" else r.elapsed - start for r in history]
            ys = np.array([r.total if term == "total" else r.terms.get(term, np.nan) for r in history], np.float64)
            if relative and len(ys) and ys[0] != 0:
                ys = ys / ys[0]
            # a line style per run besides the colour: runs that coincide stay visible
            ax.plot(xs, ys, label=label, lw=1.5, ls=("-", "--", ":", "-.")[k % 4],
                    marker="." if len(xs) <= 12 else None)
        ax.set(xlabel="iteration" if x == "iteration" else "seconds after the first iteration",
               ylabel=ylabel or f"{term} loss" + (" / its initial value" if relative else ""), title=title or None)
        if log:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="best")
        return self.save_plot(fig, name, caption)

    def save_plot(self, fig, name: str, caption: str = "") -> Figure:
        """Writes a matplotlib figure (from :func:`new_figure`) as ``<study>-<name>.png`` and returns its
        :class:`Figure`."""
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        with Image.open(buf) as img:
            picture = np.asarray(img.convert("RGB"))
        path, rel = self.figure_path(name)
        images.save_image(picture, path, metadata={"study": self.name, "figure": name, "caption": caption})
        return Figure(rel, caption)


def new_figure(size: tuple[float, float]):
    """A matplotlib figure (the object-oriented API: no global pyplot state), constrained layout, 100 dpi.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=size, dpi=100, layout="constrained")


def require_matplotlib() -> None:
    """Raises :class:`MissingExtraError` unless matplotlib (the ``report`` extra) is installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError("the study reports draw their loss curves with matplotlib, which is not installed: "
                                "pip install 'nst-jax[report]' (or pip install matplotlib).")


def run_studies(requested: str | Sequence[str], output_dir: str | os.PathLike, *, size: int | None = None,
                weights: str | None = None, iterations_scale: float = 1.0, overwrite: bool = False,
                content=None, style=None, seed: int = 0, quick: bool = False, progress: bool = False,
                command: str | None = None) -> Report:
    """Runs studies and writes their report folder.

    Args:
        requested: study names (:func:`names`), or ``"all"``.
        output_dir: the report folder: ``index.md``, ``index.html``, ``study.json`` and the figures go there
            (only its last level is created); existing files are replaced only if nst_jax wrote them.
        size: long side of the images in pixels (default :data:`DEFAULT_SIZE`, :data:`QUICK_SIZE` with
            ``quick``).
        weights: VGG-19 weights, as the ``weights`` setting (default: the usual lookup).
        iterations_scale: multiplies every study's iterations (e.g. 4 on an accelerator).
        overwrite: replace files there that nst_jax did not write.
        content, style: the images (default :func:`default_images`).
        seed: random seed of the initial images.
        quick: tiny runs for tests (:data:`QUICK_ITERATIONS` iterations).
        progress: progress bars.
        command: the command recorded in the report (default: this process's command line).

    Returns:
        The :class:`Report` (its ``files``: what was written).

    Raises:
        UnknownStudyError: an unknown study name (the message lists the known ones).
        MissingExtraError: matplotlib is not installed.
        ValueError / images.ImageError / SettingError: a bad size, weights, image or output folder.
    """
    chosen = resolve(requested)
    require_matplotlib()
    if not (isinstance(iterations_scale, (int, float)) and math.isfinite(iterations_scale) and iterations_scale > 0):
        raise ValueError(f"iterations_scale must be a positive number, got {iterations_scale!r}.")
    size = (QUICK_SIZE if quick else DEFAULT_SIZE) if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"size must be a whole number of pixels from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                         f"(--size on the command line), got {size!r}.")
    Settings(image_size=size, weights=weights, seed=seed)  # validates the weights and seed, naming the bad one
    default_content, default_style = default_images()
    content = default_content if content is None else content
    style = default_style if style is None else style
    directory = Path(output_dir).expanduser()
    ctx = Context(directory, size, weights, content, style, seed=seed, quick=quick,
                  iterations_scale=float(iterations_scale), progress=progress, overwrite=overwrite)
    for role, image in ctx.inputs():
        images.load_image(image, label=role)  # a bad image fails before anything runs
    paths = report.check_outputs(directory, ctx.inputs(), overwrite)
    from nst_jax import api

    meta = {"command": command or _command_line(), "date": provenance.now(),
            "machine": report.machine(), "weights": api.weights_used(weights), "size": size,
            "iterations_scale": float(iterations_scale), "quick": quick, "seed": seed,
            "content": _describe(content), "style": _describe(style), "requested": chosen}
    sections = []
    t_all = time.perf_counter()
    for n in chosen:
        entry = STUDIES[n]
        t0 = time.perf_counter()
        section = entry.run(dataclasses.replace(ctx, name=n, title=entry.title))
        section.seconds = time.perf_counter() - t0
        section.name, section.seeds = n, entry.seeds
        sections.append(section)
    out = Report(sections, directory, meta, time.perf_counter() - t_all)
    report.write(out, paths)
    return out


def _command_line() -> str:
    """This process's command line, as typed: ``nst-jax ...`` for the command (also ``python -m nst_jax``)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("nst-jax", "__main__.py"):
        program = "nst-jax"
    return shlex.join([program, *sys.argv[1:]])


def _describe(image) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"array {np.shape(image)}"


# The studies register themselves on import (after the registry exists).
from nst_jax.study import layers, stalls, style_image  # noqa: E402,F401
from nst_jax.study import artifacts, optimizers  # noqa: E402,F401
