"""Method comparisons: one content image, every method preset (:mod:`nst_jax.presets`) on every style image.

:func:`compare` (``nst-jax compare``) writes into an output directory:

* ``compare.png``: a labelled grid, one row per method and one column per style (:func:`nst_jax.sweep.labelled_grid`);
* ``losses.png``: the loss curves of every method (needs matplotlib, the ``report`` extra; without it a
  warning says so and no plot is written);
* ``compare.md`` and ``compare.json``: per method and style, the final loss terms, the iterations, the time per
  iteration and the wall time (the JSON also holds each method's settings and loss history).

Every method gets the given settings; a method's preset sets the fields not given explicitly (as
``Settings(method=...)`` does). Methods whose runs differ only in loss weights (the weights are traced: e.g.
chain and chain-uniform, the same terms on the same layers with other per-layer weights) run as one batch
through :func:`nst_jax.stylize_batch` with per-image loss weights, one compiled program for the group; the
others one after another with :func:`nst_jax.stylize`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nst_jax import api, images, presets, stylizer, weighting
from nst_jax.batch import PER_IMAGE_SETTINGS
from nst_jax.config import SettingError, Settings
from nst_jax.sweep import labelled_grid

#: The files :func:`compare` writes into its output directory, by role.
FILES = {"grid": "compare.png", "plot": "losses.png", "table": "compare.md", "json": "compare.json"}

#: Settings that differ between the methods of one batch: traced loss weights (per image), and the fields that
#: only choose them.
_WEIGHT_FIELDS = frozenset(PER_IMAGE_SETTINGS) | {"layer_weighting", "method"}


class NoPlotWarning(UserWarning):
    """The loss plot was not written (matplotlib is not installed)."""


@dataclasses.dataclass
class Run:
    """One method on one style.

    Attributes:
        method: the preset's name.
        style: the style's column.
        settings: the method's settings.
        result: its :class:`nst_jax.Result` (in a batch, ``result.settings`` are the batch's, with this method's
            loss weights).
        seconds: wall time of the call that ran it (shared by the methods of a batch).
        batch: the methods of that call, in order (this one alone when it ran by itself).
    """

    method: str
    style: int
    settings: Settings
    result: api.Result
    seconds: float
    batch: tuple[str, ...]

    @property
    def seconds_per_iteration(self) -> float | None:
        """Mean time per iteration from the first record after iteration 0 (the step is compiled during the
        first iteration) to the last; None with fewer than two such records (``print_every``)."""
        later = [r for r in self.result.history if r.iteration > 0]
        if len(later) < 2 or later[-1].iteration == later[0].iteration:
            return None
        return (later[-1].elapsed - later[0].elapsed) / (later[-1].iteration - later[0].iteration)

    def losses(self) -> dict[str, float]:
        """The final weighted loss terms (and their total)."""
        last = self.result.history[-1]
        return {"total": last.total, "content": last.content, "style": last.style, "tv": last.tv, **last.terms}


@dataclasses.dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes:
        methods: the methods, one grid row each.
        styles: the style labels, one grid column each.
        runs: row-major (``runs[i * len(styles) + j]``: method ``i``, style ``j``).
        grid: the labelled grid, float32 ``(H, W, 3)`` in [0, 1].
        boxes: per run, ``(x, y, width, height)`` of its image in ``grid``.
        files: what was written, by role (:data:`FILES`).
    """

    methods: tuple[str, ...]
    styles: tuple[str, ...]
    runs: list[Run]
    grid: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def run(self, method: str, style: int = 0) -> Run:
        """The run of ``method`` on style ``style``."""
        return self.runs[self.methods.index(method) * len(self.styles) + style]

    def to_dict(self) -> dict:
        """Everything the table shows, plus each method's settings and every run's loss history."""
        runs = []
        for k, (run, box) in enumerate(zip(self.runs, self.boxes)):
            runs.append({"method": run.method, "style": self.styles[run.style], "row": k // len(self.styles),
                         "col": k % len(self.styles), "iterations": run.result.history[-1].iteration,
                         "loss": run.losses(), "seconds_per_iteration": run.seconds_per_iteration,
                         "wall_seconds": run.seconds, "batch": list(run.batch), "box": list(box),
                         "history": [r.as_dict() for r in run.result.history]})
        settings = {m: self.run(m).settings for m in self.methods}
        return {"software": images.software_name(), "methods": list(self.methods), "styles": list(self.styles),
                "rows": len(self.methods), "cols": len(self.styles), "runs": runs,
                "settings": {m: s.to_dict() for m, s in settings.items()},
                "overridden": {m: overridden(s) for m, s in settings.items()},
                "weights": self.runs[0].result.weights}

    def markdown(self) -> str:
        """The table of final losses and times (markdown)."""
        extra = sorted({k for run in self.runs for k in run.losses()} - {"total", "content", "style", "tv"})
        head = ["method", "style", "total", "content", "style loss", "tv", *extra, "iterations", "s / iteration",
                "wall s", "run"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in self.runs:
            loss = run.losses()
            per_it = run.seconds_per_iteration
            how = "alone" if len(run.batch) == 1 else "batch: " + ", ".join(run.batch)
            cells = [f"`{run.method}`", self.styles[run.style],
                     *(f"{loss.get(k, 0.0):.4g}" for k in ("total", "content", "style", "tv", *extra)),
                     str(run.result.history[-1].iteration), "-" if per_it is None else f"{per_it:.3g}",
                     f"{run.seconds:.3g}", how]
            lines.append("| " + " | ".join(cells) + " |")
        notes = ["", "Losses are the final weighted terms; a method's loss scale depends on its layers and weights, "
                     "so compare images and curves, not totals across methods. Times of a batch are shared by its "
                     "methods; s / iteration leaves out the first iteration (compilation)."]
        changed = {m: overridden(self.run(m).settings) for m in self.methods}
        notes += [f"`{m}`: explicit {', '.join(f)} replaced the preset's." for m, f in changed.items() if f]
        return "\n".join(lines + notes) + "\n"


def overridden(s: Settings) -> list[str]:
    """The fields of ``s.method``'s preset that ``s`` gives explicitly (so the preset's values are not used)."""
    return sorted(set(presets.get(s.method).values) & s.explicit) if s.method else []


def method_settings(s: Settings, methods: Sequence[str]) -> dict[str, Settings]:
    """Each method's settings: ``s`` with that ``method`` (its preset sets the fields not given explicitly).

    Raises:
        SettingError: an unknown, repeated or unusable method (naming it), or ``s`` already has a method.
    """
    methods = list(methods)
    if s.method is not None:
        raise SettingError("{method=} is set, but a comparison runs each of its methods: leave {method} unset and "
                           "list the methods to compare.", "method", method=s.method)
    if not methods:
        raise SettingError("no method to compare: give one or more of {names}.", "method",
                           names=", ".join(presets.NAMES))
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise SettingError("methods are repeated: {which}; give each once.", "method", which=", ".join(repeated))
    return {m: s.replace(method=m) for m in methods}


def batch_groups(settings: Mapping[str, Settings]) -> list[tuple[str, ...]]:
    """The methods whose runs can share one compiled batch (in the order given): equal settings but for the loss
    weights, and the same terms (the same weights are zero)."""
    groups: dict[str, list[str]] = {}
    for method, s in settings.items():
        groups.setdefault(_structure(s), []).append(method)
    return [tuple(g) for g in groups.values()]


def _structure(s: Settings) -> str:
    kept = {k: v for k, v in s.to_dict().items() if k not in _WEIGHT_FIELDS}
    kept["nonzero"] = [bool(s.content_weight), bool(s.style_weight), bool(s.tv_weight)]
    return json.dumps(kept, sort_keys=True, default=str)


def loss_weights(s: Settings) -> dict:
    """The per-image loss weights (:data:`nst_jax.batch.PER_IMAGE_SETTINGS`) that give an image of a batch the
    objective weights of ``s``."""
    return {"content_weight": s.content_weight, "style_weight": s.style_weight, "tv_weight": s.tv_weight,
            "content_layer_weights": weighting.settings_weights(s, "content"),
            "style_layer_weights": weighting.settings_weights(s, "style")}


def style_label(style, index: int) -> str:
    """A style's column label: its file name without extension, or ``style <n>``."""
    if isinstance(style, (str, os.PathLike)):
        return Path(style).stem
    return f"style {index + 1}"


def compare(content, styles: Sequence, methods: Sequence[str], settings: Settings | None = None, *,
            output_dir: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
            **overrides) -> Comparison:
    """Stylizes ``content`` with every method on every style.

    Args:
        content: the content image (as for :func:`nst_jax.stylize`).
        styles: style images, one grid column each (each one image; a list inside is blended).
        methods: preset names (:data:`nst_jax.presets.NAMES`), one grid row each.
        settings, overrides: the settings of every method (as for :func:`nst_jax.stylize`, without ``method``);
            each method's preset sets the fields they do not give. Unless ``print_every`` is given, the losses are
            recorded about 50 times per run (``num_iterations // 50``, at least every iteration) for the curves.
        output_dir: if given, :data:`FILES` are written there atomically; they are checked before the run under
            the rules of ``nst_jax.stylize``'s output (never an input; an existing file only if nst_jax wrote it,
            or with ``overwrite``); only its last level is created.
        overwrite: replace existing files at those paths that nst_jax did not write.
        progress: progress bars.

    Returns:
        A :class:`Comparison`.

    Raises:
        SettingError: a bad setting or method, naming it.
        ValueError / images.ImageError: a bad image or output path.
    """
    s = api.make_settings(settings, **overrides)
    if s.save_every:
        raise SettingError("{save_every} writes snapshots of one image; a comparison writes only its grid and "
                           "tables: leave {save_every} at 0.", "save_every")
    if "print_every" not in s.explicit:
        s = s.replace(print_every=max(1, s.num_iterations // 50))
    styles = list(styles) if isinstance(styles, (list, tuple)) else [styles]
    if not styles:
        raise ValueError("no style image given: pass at least one.")
    per_method = method_settings(s, methods)
    labels = tuple(style_label(st, j) for j, st in enumerate(styles))
    paths = _check_outputs(output_dir, content, styles, s, overwrite) if output_dir is not None else None

    runs: dict[tuple[str, int], Run] = {}
    for group in batch_groups(per_method):
        for j, style in enumerate(styles):
            t0 = time.perf_counter()
            if len(group) == 1:
                results = [api.stylize(content, style, per_method[group[0]], progress=progress)]
            else:
                results = stylizer.stylize_batch([content] * len(group), style, per_method[group[0]],
                                                 batch_size=len(group), progress=progress,
                                                 loss_weights=[loss_weights(per_method[m]) for m in group])
            seconds = time.perf_counter() - t0
            for m, r in zip(group, results):
                runs[m, j] = Run(m, j, per_method[m], r, seconds, group)
    ordered = [runs[m, j] for m in per_method for j in range(len(styles))]
    cell_labels = [[run.method] + ([labels[run.style]] if len(styles) > 1 else []) for run in ordered]
    grid, boxes = labelled_grid([run.result.array for run in ordered], cell_labels, len(per_method), len(styles))
    out = Comparison(tuple(per_method), labels, ordered, grid, boxes)
    if paths is not None:
        _write(out, paths)
    return out


def _check_outputs(output_dir, content, styles, s: Settings, overwrite: bool) -> dict[str, Path]:
    directory = Path(output_dir).expanduser()
    paths = {role: directory / name for role, name in FILES.items()}
    images.check_output_path(paths["grid"])
    inputs = api.input_paths(content, styles, s)
    for path in paths.values():
        images.check_overwrite(path, inputs, overwrite=overwrite)
    return paths


def _write(out: Comparison, paths: dict[str, Path]) -> None:
    from nst_jax import jobfiles

    record = out.to_dict()
    out.files["grid"] = images.save_image(out.grid, paths["grid"], metadata={"compare": {
        k: v for k, v in record.items() if k != "runs"}})
    plot = loss_plot(out)
    if plot is None:
        warnings.warn("matplotlib is not installed, so no loss plot was written (pip install 'nst-jax[report]')",
                      NoPlotWarning, stacklevel=3)
    else:
        out.files["plot"] = images.save_image(plot, paths["plot"], metadata={"compare": "loss curves"})
    out.files["table"] = images.save_text(out.markdown(), paths["table"])
    record["files"] = {role: str(p) for role, p in out.files.items()}
    jobfiles.write_json_atomic(paths["json"], record)
    out.files["json"] = paths["json"]


def loss_plot(out: Comparison) -> np.ndarray | None:
    """The loss curves of every method as an RGB uint8 image (one column of panels per style: the total loss,
    and the total relative to its start, against the iteration, both on log scales); None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    cols = len(out.styles)
    fig = Figure(figsize=(5.5 * cols, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, cols, squeeze=False)
    for j, style in enumerate(out.styles):
        for i, method in enumerate(out.methods):
            history = out.run(method, j).result.history
            its = np.array([r.iteration for r in history], float)
            totals = np.array([r.total for r in history], float)
            style_kw = dict(label=method, marker="o" if len(its) < 12 else None, markersize=3,
                            linestyle="-" if i < 10 else "--")
            axes[0, j].plot(its, totals, **style_kw)
            if totals[0] > 0:
                axes[1, j].plot(its, totals / totals[0], **style_kw)
        axes[0, j].set(title=f"style: {style}", ylabel="total loss", yscale="log")
        axes[1, j].set(xlabel="iteration", ylabel="total / initial total", yscale="log")
        for ax in axes[:, j]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0, -1].legend(fontsize="small", loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    from PIL import Image

    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))
