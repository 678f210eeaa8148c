"""How results look in a notebook and in a terminal: short text reprs, HTML with the picture and a loss table,
labelled grids of many results, loss plots, and a live preview that updates one displayed image in place.

Nothing here is needed to stylize: IPython and matplotlib are imported only when a picture is shown or a plot
drawn (matplotlib is the optional extra ``[report]``).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Longest side, in pixels, of a picture embedded in a grid's HTML (bigger images are shown scaled down).
GRID_THUMBNAIL = 256


def png_bytes(array: np.ndarray, max_side: int | None = None) -> bytes:
    """A float RGB ``(H, W, 3)`` image in [0, 1] as PNG bytes, scaled down to ``max_side`` if it is larger."""
    from nst_jax import images

    img = images.to_pil(array)
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def img_tag(array: np.ndarray, max_side: int | None = None, *, title: str = "") -> str:
    """An ``<img>`` element with the image inlined as a PNG data URL."""
    data = base64.b64encode(png_bytes(array, max_side)).decode("ascii")
    h, w = array.shape[:2]
    return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(title or f"{w}x{h} image")}" '
            f'title="{html.escape(title)}" style="max-width:100%;image-rendering:auto"/>')


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _names(history: Sequence) -> list[str]:
    """The total, then every weighted term of the last record, by name."""
    return ["total", *(history[-1].terms if history else ())]


def _value(record, name: str) -> float:
    return record.total if name == "total" else record.terms.get(name, float("nan"))


def result_text(result) -> str:
    """One line about a :class:`~nst_jax.Result`: size, iterations, final losses, where it was written."""
    h, w = result.array.shape[:2]
    last = result.history[-1] if result.history else None
    parts = [f"{w}x{h}"]
    if last is not None:
        parts.append(f"{last.iteration} iterations")
        terms = ", ".join(f"{k} {_fmt(v)}" for k, v in last.terms.items())
        parts.append(f"loss {_fmt(last.total)}" + (f" ({terms})" if terms else ""))
        parts.append(f"{last.elapsed:.1f} s")
    if result.output is not None:
        parts.append(f"written to '{result.output}'")
    return "Result(" + ", ".join(p for p in parts if p) + ")"


def loss_table(history: Sequence) -> str:
    """A small HTML table of the loss terms at the first and last records (and the middle one, if any)."""
    if not history:
        return ""
    picks = [history[0]] + ([history[len(history) // 2]] if len(history) > 2 else []) + [history[-1]]
    names = _names(history)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["iteration", *names, "time (s)"])
    rows = []
    for rec in picks:
        cells = [str(rec.iteration)] + [_fmt(_value(rec, n)) for n in names] + [f"{rec.elapsed:.1f}"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table style="font-size:smaller"><tr>{head}</tr>{"".join(rows)}</table>'


def result_html(result) -> str:
    """The HTML of one result in a notebook: the picture, then its loss table."""
    return (f"<figure style='margin:0'>{img_tag(result.array, title=result_text(result))}"
            f"<figcaption>{html.escape(result_text(result))}</figcaption>{loss_table(result.history)}</figure>")


def grid_html(cells: Sequence[Sequence[Any]], row_labels: Sequence[str] | None = None,
              col_labels: Sequence[str] | None = None) -> str:
    """An HTML table of result pictures (``cells[i][j]`` a :class:`~nst_jax.Result` or None), each captioned
    with its final loss, with optional row and column labels."""
    out = ["<table>"]
    if col_labels:
        out.append("<tr>" + ("<th></th>" if row_labels else "") +
                   "".join(f"<th>{html.escape(c)}</th>" for c in col_labels) + "</tr>")
    for i, row in enumerate(cells):
        out.append("<tr>")
        if row_labels:
            out.append(f"<th>{html.escape(row_labels[i])}</th>")
        for r in row:
            if r is None:
                out.append("<td></td>")
                continue
            caption = f"loss {_fmt(r.loss)}" if r.history else ""
            out.append(f"<td style='text-align:center'>{img_tag(r.array, GRID_THUMBNAIL, title=result_text(r))}"
                       f"<br/><small>{html.escape(caption)}</small></td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


class Results(list):
    """The results of :func:`~nst_jax.stylize_batch` (a list of :class:`~nst_jax.Result`, in input order) that a
    notebook shows as a labelled row of pictures and a terminal as one line per result."""

    def __init__(self, items=(), labels: Sequence[str] | None = None):
        super().__init__(items)
        self.labels = list(labels) if labels is not None else None

    def __repr__(self):
        lines = [f"Results({len(self)} images)"]
        for i, r in enumerate(self):
            label = self.labels[i] if self.labels else str(i)
            lines.append(f"  [{label}] {result_text(r)}")
        return "\n".join(lines)

    def _repr_html_(self):
        labels = self.labels or [str(i) for i in range(len(self))]
        return grid_html([list(self)], col_labels=labels)


class Grid(list):
    """The results of :func:`~nst_jax.stylize_grid`: ``grid[i][j]`` is content ``i`` with style ``j``; a notebook
    shows it as a table of pictures (rows contents, columns styles)."""

    def __init__(self, rows=(), row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None):
        super().__init__(Results(r) for r in rows)
        self.row_labels = list(row_labels) if row_labels is not None else None
        self.col_labels = list(col_labels) if col_labels is not None else None

    def __repr__(self):
        cols = len(self[0]) if self else 0
        lines = [f"Grid({len(self)} contents x {cols} styles)"]
        for i, row in enumerate(self):
            for j, r in enumerate(row):
                lines.append(f"  [{i}][{j}] {result_text(r)}")
        return "\n".join(lines)

    def _repr_html_(self):
        cols = len(self[0]) if self else 0
        return grid_html([list(r) for r in self],
                         self.row_labels or [f"content {i}" for i in range(len(self))],
                         self.col_labels or [f"style {j}" for j in range(cols)])


def plot_history(history: Sequence, ax=None, *, terms: Sequence[str] | None = None, x: str = "iteration",
                 title: str | None = None):
    """Draws the loss terms of a history against ``x`` ("iteration" or "time") on a log scale.

    Args:
        history: :class:`~nst_jax.optim.Record` objects (``result.history``).
        ax: a matplotlib Axes; a new figure if None.
        terms: which terms (default: every term, and the total).
        x: "iteration" or "time" (seconds since the start).
        title: the axes' title.

    Returns:
        The Axes.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'nst_jax[report]'``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'nst_jax[report]' (or pip install matplotlib)") from e
    if x not in ("iteration", "time"):
        raise ValueError(f"x must be 'iteration' or 'time', got {x!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    names = list(terms) if terms is not None else _names(history)
    xs = [r.iteration if x == "iteration" else r.elapsed for r in history]
    for name in names:
        ys = [_value(r, name) for r in history]
        ax.plot(xs, ys, label=name, lw=2 if name == "total" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration" if x == "iteration" else "time (s)")
    ax.set_ylabel("weighted loss")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


class Preview:
    """Shows one image in a notebook and replaces it in place as the run goes on (an IPython display handle).

    Outside IPython (a script, a terminal) it does nothing.
    """

    def __init__(self):
        self._handle = None
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        shell = get_ipython()
        if shell is None or type(shell).__name__ == "TerminalInteractiveShell":
            return
        self._display = display
        self._handle = display(_Html("<i>compiling ...</i>"), display_id=True)

    @property
    def active(self) -> bool:
        """Whether a notebook shows the preview."""
        return self._handle is not None

    def update(self, array: np.ndarray, caption: str) -> None:
        """Replaces the shown image with ``array`` (float RGB in [0, 1]) and ``caption``."""
        if self._handle is not None:
            self._handle.update(_Html(f"{img_tag(array, title=caption)}<br/><small>{html.escape(caption)}</small>"))


class _Html:
    """An object a notebook renders as the given HTML (IPython.display.HTML without importing IPython here)."""

    def __init__(self, text: str):
        self.text = text

    def _repr_html_(self):
        return self.text


class ProgressBar:
    """The progress bar of one stylization (``tqdm.auto``: a terminal or a notebook widget).

    It says "compiling" until the first compiled step returns, then moves at every compiled call (each
    iteration in the "step" loop form) without waiting for a loss record; the loss shown is fetched from the
    device at most every ``refresh`` seconds (one scalar). It stays on screen at the end with the final losses.
    """

    def __init__(self, total: int, *, refresh: float = 0.2, sizes: bool = False):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="it", dynamic_ncols=True, leave=True, desc="compiling")
        self._refresh, self._sizes = refresh, sizes
        self._compiling, self._last_fetch = True, 0.0

    def advance(self, iteration: int, state=None) -> None:
        """Moves the bar to ``iteration`` (counted over all stages); shows ``state``'s loss now and then."""
        import time

        if self._compiling:
            self._compiling = False
            self._bar.set_description_str("", refresh=False)
        self._bar.update(max(0, iteration - self._bar.n))
        now = time.perf_counter()
        if state is not None and now - self._last_fetch >= self._refresh:
            self._last_fetch = now
            self._bar.set_postfix(loss=f"{float(state.terms.total):.4g}", refresh=False)

    def record(self, rec) -> None:
        """Shows a progress record's losses (total and every term)."""
        self._bar.update(max(0, rec.iteration - self._bar.n))
        shown = {"loss": f"{rec.total:.4g}", **{k: f"{v:.3g}" for k, v in rec.terms.items()}}
        if self._sizes and rec.size:
            shown["size"] = rec.size
        self._bar.set_postfix(shown)

    def close(self) -> None:
        self._bar.close()
