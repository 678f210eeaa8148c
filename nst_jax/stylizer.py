"""The batch stylizer: settings, params and style targets loaded once, then many images in compiled batches.

:class:`BatchStylizer` buckets prepared images by shape, sizes each bucket's batches
(:func:`nst_jax.batch.default_batch_size`) and runs each batch through the pipeline's stages with the
vmapped stepper (:func:`nst_jax.batch.run_batch_stages`). :func:`stylize_batch` and :func:`stylize_grid`
are its one-call forms; batch jobs (:mod:`nst_jax.job`) and Ray actors (:mod:`nst_jax.ray_job`) hold one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import api, display, images, optim, pipeline, provenance, stall, tiling, vgg
from nst_jax import objective as objective_mod
from nst_jax.batch import (PER_IMAGE_SETTINGS, batch_settings, default_batch_size, fit_to_size, run_batch_stages,
                           split_targets)
from nst_jax.config import Settings
from nst_jax.objective import Objective

__all__ = ["BatchStylizer", "images_bar", "stylize_batch", "stylize_grid"]


class BatchStylizer:
    """Holds everything shared by the images of a batch job: settings, params, style(s), compiled code.

    Load it once (a Ray actor does) and call :meth:`iter_results` on as many images as you like; the
    compiled functions are cached per bucket shape and batch size.

    Args:
        style: one style image (path, PIL image or array) or a list to blend; with ``grid=True`` a list
            of styles (each one image or a list to blend).
        settings, overrides: as for :func:`nst_jax.stylize`.
        batch_size: images per compiled call; default :func:`default_batch_size` per bucket shape.
        output_size: ``(h, w)`` (or "HxW"): every content image is resized to cover it and
            center-cropped (:func:`fit_to_size`); ``image_size`` becomes ``max(h, w)`` (so
            ``style_scale`` is relative to it). Default: each image's long side is ``image_size``.
        grid: treat ``style`` as a list of styles, one grid column each.
        devices: devices to shard each batch over (default all of ``jax.local_devices()``: this process's;
            to use several hosts, run one process per host with :mod:`nst_jax.ray_job`).
        hook: an in-step hook (:data:`nst_jax.optim.Hook`), vmapped with the step; None: the plain step.
    """

    def __init__(self, style, settings: Settings | None = None, *, batch_size: int | None = None,
                 output_size=None, grid: bool = False, devices: Sequence | None = None,
                 hook: optim.Hook | None = None, **overrides):
        s, self.output_size = batch_settings(settings, output_size=output_size, batch_size=batch_size, **overrides)
        self.settings = s
        self.batch_size = batch_size
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.hook = stall.settings_hook(s, hook)
        self.user_hook = hook  # tiled runs (tile): their base stage adds the settings' hook itself
        style_sets = list(style) if grid else [style]
        if grid and not style_sets:
            raise ValueError("no style image given: pass at least one.")
        self.styles = [api.prepare_styles(st, s) for st in style_sets]
        # recorded in every result (and so in every output) with its content image
        self.style_inputs = [provenance.describe_inputs(
            (("style image" if not isinstance(st, (list, tuple)) or len(st) == 1 else f"style image {i}", one)
             for i, one in enumerate(st if isinstance(st, (list, tuple)) else [st], 1))) for st in style_sets]
        self.params = api.get_params(s.weights)
        self.weights = api.weights_used(s.weights)  # recorded in every output and in job summaries
        self.objective = Objective.from_settings(s)
        self.spec = optim.SolverSpec.from_settings(s)
        self._style_targets: dict[tuple, dict] = {}
        self._weights = self.objective.weights(s)  # the settings' term weights (traced, per image)

    def prepare(self, content, label: str = "content image") -> np.ndarray:
        """Loads a content image and brings it to its working size (resize, or fit to ``output_size``)."""
        img = images.load_image(content, label=label)
        if self.output_size is not None:
            return fit_to_size(img, self.output_size)
        return images.resize_long_side(img, self.settings.image_size, label=label)

    def _targets(self, content: np.ndarray, style_index: int, styles: list[np.ndarray] | None = None,
                 weights: dict | None = None) -> dict:
        """Targets of one image; ``styles``: the style images of a coarse-to-fine stage (default full size);
        ``weights``: the image's term weights (default the settings')."""
        caffe = vgg.preprocess(jnp.asarray(content))
        styles = self.styles[style_index] if styles is None else styles
        key = (style_index, tuple(styles[0].shape) if styles else None)
        if key not in self._style_targets or self.settings.color_transfer != "none":
            # style targets: once per style (and stage size); per image when its colours are the content's
            self._style_targets[key] = objective_mod.style_targets(
                self.objective, self.params, [vgg.preprocess(jnp.asarray(st)) for st in styles],
                self.settings.style_blend_weights)
        return objective_mod.with_weights(self.objective, self._weights if weights is None else weights,
                                          self._style_targets[key],
                                          objective_mod.content_targets(self.objective, self.params, caffe),
                                          masks=objective_mod.content_masks(self.objective, self.params, caffe))

    def image_settings(self, loss_weights: Mapping | None) -> tuple[Settings, dict]:
        """The settings of one image with its ``loss_weights`` (overrides of :data:`PER_IMAGE_SETTINGS`), and
        its term weights."""
        if not loss_weights:
            return self.settings, self._weights
        unknown = sorted(set(loss_weights) - set(PER_IMAGE_SETTINGS))
        if unknown:
            raise ValueError(f"loss_weights can set {', '.join(PER_IMAGE_SETTINGS)} per image, not "
                             f"{', '.join(unknown)}.")
        s = self.settings.replace(**loss_weights)
        have = {t.name for t in self.objective.terms}
        for t in Objective.from_settings(s).terms:
            if t.name not in have:
                field = objective_mod.SETTINGS_WEIGHTS[t.name][0]
                raise ValueError(f"an image sets {field}={getattr(s, field)!r}, but the batch's settings have "
                                 f"{field}=0, so its compiled objective has no {t.name} term: give the batch a "
                                 f"nonzero {field} (images can still set theirs to 0).")
        return s, self.objective.weights(s)

    def batch_size_for(self, shape_hw: tuple[int, int]) -> int:
        """The batch size used for a bucket of this shape."""
        if self.batch_size is not None:
            return self.batch_size
        return default_batch_size(shape_hw, self.objective, self.spec, devices=self.devices)

    def iter_results(self, contents: Sequence[np.ndarray], style_indices: Sequence[int] | None = None, *,
                     labels: Sequence[str] | None = None,
                     on_stop: Callable[[list[int], optim.State, float], None] | None = None,
                     loss_weights: Sequence[Mapping | None] | None = None,
                     ) -> Iterator[tuple[list[int], list[api.Result | Exception], float]]:
        """Stylizes prepared content images, bucket by bucket, batch by batch.

        Args:
            contents: RGB float images already at their working size (see :meth:`prepare`).
            style_indices: per image, which style (grid column) to use; default style 0 for all.
            labels: names for error messages.
            on_stop: called as ``on_stop(indices, state, elapsed)`` at each progress record of a batch.
            loss_weights: per image, None or overrides of the loss weights (:data:`PER_IMAGE_SETTINGS`, e.g.
                ``{"style_weight": 1e3}``): weights are traced, so images with different weights share a
                compiled batch (a weight sweep is one vmapped call).

        Yields:
            ``(indices, outcomes, seconds)`` per compiled batch, in bucket order: the input positions, a
            :class:`nst_jax.Result` or the exception that failed that image alone, and the batch's wall time.
        """
        n = len(contents)
        style_indices = list(style_indices) if style_indices is not None else [0] * n
        labels = list(labels) if labels is not None else [f"content image {i}" for i in range(n)]
        loss_weights = list(loss_weights) if loss_weights is not None else [None] * n
        if len(loss_weights) != n:
            raise ValueError(f"{len(loss_weights)} loss_weights for {n} content images; give one per image.")
        per_image = [self.image_settings(w) for w in loss_weights]
        if self.settings.tile is not None:  # tiled: each image alone, its tiles the batch
            for i in range(n):
                t0 = time.perf_counter()
                try:
                    outcome = self._run_tiled(contents[i], style_indices[i], per_image[i][0])
                except optim.NonFiniteLossError as e:
                    outcome = e
                yield [i], [outcome], time.perf_counter() - t0
            return
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(contents):
            buckets.setdefault(tuple(c.shape[:2]), []).append(i)
        for shape, members in buckets.items():
            size = self.batch_size_for(shape)
            pending = [members[k:k + size] for k in range(0, len(members), size)]
            while pending:
                chunk = pending.pop(0)
                t0 = time.perf_counter()
                try:
                    outcomes = self._run_chunk(chunk, contents, style_indices, labels, per_image, on_stop)
                except jax.errors.JaxRuntimeError as e:
                    if "RESOURCE_EXHAUSTED" in str(e) and len(chunk) > 1:  # the estimate was too high: halve
                        half = (len(chunk) + 1) // 2
                        pending[:0] = [chunk[:half], chunk[half:]]
                        continue
                    raise
                yield chunk, outcomes, time.perf_counter() - t0

    def _run_tiled(self, content: np.ndarray, style_index: int, s: Settings) -> api.Result:
        """One image stylized tile by tile (:func:`nst_jax.tiling.refine`), its style targets made once per
        style (per image when its colours are the content's)."""
        styles = api.match_style_colors(self.styles[style_index], content, s)
        key = (style_index, "tiled")
        shared = self._style_targets.get(key) if s.color_transfer == "none" else None
        if shared is None:
            shared = tiling.style_targets(self.objective, self.params, styles, s)
            if s.color_transfer == "none":
                self._style_targets[key] = shared
        array, history = tiling.refine(content, styles, s, self.params, hook=self.user_hook, progress=False,
                                       devices=self.devices, shared_targets=shared)
        return api.Result(array, history, s, weights=self.weights, inputs=list(self.style_inputs[style_index]))

    def _run_chunk(self, chunk, contents, style_indices, labels, per_image, on_stop):
        s = self.settings

        def prepare(stage: pipeline.Stage) -> pipeline.StageInputs:
            # the stages of nst_jax.stylize, with its images at each
            # (color_transfer: each image's style images with its colours, at full size, then resized)
            imgs = [stage.images(contents[i], api.match_style_colors(self.styles[style_indices[i]], contents[i], s),
                                 s) for i in chunk]
            targets = split_targets([self._targets(c, style_indices[i], st, per_image[i][1])
                                     for i, (c, st) in zip(chunk, imgs)])
            # each image starts exactly where nst_jax.stylize would start it (same key, same shape)
            return pipeline.StageInputs(targets, imgs[0][0].shape[:2],
                                        lambda: jnp.stack([pipeline.initial_image(s, c, st) for c, st in imgs]))

        run = run_batch_stages(self.objective, self.spec, self.params, pipeline.coarse_to_fine(s), prepare,
                               size=len(chunk), chunk_size=s.chunk_size, print_every=s.print_every, loop=s.loop,
                               devices=self.devices, labels=[labels[i] for i in chunk],
                               on_stop=(lambda st, el: on_stop(chunk, st, el)) if on_stop else None, hook=self.hook)
        x = run.images()
        return [run.errors[k] if run.errors[k] is not None else
                api.Result(pipeline.finish_image(x[k], contents[i], s), run.histories[k], per_image[i][0],
                           weights=self.weights, inputs=list(self.style_inputs[style_indices[i]]))
                for k, i in enumerate(chunk)]

    def stylize(self, contents: Sequence, style_indices: Sequence[int] | None = None, *, progress: bool = True,
                loss_weights: Sequence[Mapping | None] | None = None) -> list[api.Result]:
        """Loads, prepares and stylizes ``contents`` (``loss_weights``: see :meth:`iter_results`); results in
        input order. Raises on the first failure."""
        prepared = [self.prepare(c, label=f"content image {i}") for i, c in enumerate(contents)]
        labels = [f"content image {i} '{c}'" if isinstance(c, (str, os.PathLike)) else f"content image {i}"
                  for i, c in enumerate(contents)]
        results: list[api.Result | None] = [None] * len(prepared)
        bar = images_bar(len(prepared)) if progress else None
        try:
            for chunk, outcomes, _ in self.iter_results(prepared, style_indices, labels=labels,
                                                        on_stop=_bar_postfix(bar) if bar else None,
                                                        loss_weights=loss_weights):
                for i, r in zip(chunk, outcomes):
                    if isinstance(r, Exception):
                        raise r
                    r.inputs = [provenance.describe_input("content image", contents[i])] + (r.inputs or [])
                    results[i] = r
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]


def images_bar(total: int, **kw):
    """A progress bar over images (``tqdm.auto``), for batches and jobs."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, **kw)


def _bar_postfix(bar):
    def on_stop(chunk, state, _elapsed):
        its, totals = jax.device_get((state.iteration, state.terms.total))
        bar.set_postfix(batch=len(chunk), it=int(np.max(its)), loss=f"{float(np.nanmean(totals)):.4g}")
    return on_stop


def stylize_batch(contents: Sequence, style, settings: Settings | None = None, *, batch_size: int | None = None,
                  output_size=None, progress: bool = True, loss_weights: Sequence[Mapping | None] | None = None,
                  **overrides) -> display.Results:
    """Stylizes many content images with one style in compiled batches; one :class:`Result` per image.

    Each image gets what :func:`nst_jax.stylize` would give it alone (same start, same optimizer, state
    per image; it stops when it converges, independently of the others). Images are resized as by
    ``stylize`` and grouped by shape; each bucket is compiled once.

    Args:
        contents: content images (paths, PIL images or float arrays).
        style: one style image or a list to blend (as for ``stylize``).
        settings, overrides: as for ``stylize``.
        batch_size: images per compiled call; default from the free device memory
            (:func:`default_batch_size`).
        output_size: ``(h, w)`` or ``"HxW"``: resize every image to cover it and center-crop, so all share
            one compiled bucket (``image_size`` is then ``max(h, w)``).
        progress: a progress bar over images.
        loss_weights: per image, None or its own loss weights (any of :data:`PER_IMAGE_SETTINGS`), e.g. a
            sweep ``stylize_batch([photo] * 4, style, loss_weights=[{"style_weight": w} for w in (10, 100, 1e3,
            1e4)])``: one compiled, vmapped call; each result's ``settings`` are its own.

    Returns:
        Results in input order (a list that a notebook shows as a labelled row of pictures).

    Raises:
        ValueError / images.ImageError: a bad setting or image, naming it.
        nst_jax.optim.NonFiniteLossError: an image's loss became NaN/inf (use :func:`nst_jax.job.run_job` or
            :meth:`BatchStylizer.iter_results` to keep the others).
    """
    contents = list(contents)
    if not contents:
        return display.Results()
    stylizer = BatchStylizer(style, settings, batch_size=batch_size, output_size=output_size, **overrides)
    labels = [_label(c, i) for i, c in enumerate(contents)]
    if loss_weights is not None:  # a weight sweep: the weights tell the cells apart
        labels = [label if not w else f"{label}: " + ", ".join(f"{k} {_number(v)}" for k, v in w.items())
                  for label, w in zip(labels, loss_weights)]
    return display.Results(stylizer.stylize(contents, progress=progress, loss_weights=loss_weights), labels=labels)


def stylize_grid(contents: Sequence, styles: Sequence, settings: Settings | None = None, *,
                 batch_size: int | None = None, output_size=None, progress: bool = True,
                 **overrides) -> display.Grid:
    """Stylizes every content image with every style in compiled batches (a style grid).

    The pairs of one shape are batched together, style targets per pair. ``grid[i][j]`` equals
    ``nst_jax.stylize(contents[i], styles[j], ...)``.

    Args:
        contents: content images.
        styles: style images (each one image, or a list of images to blend).
        settings, batch_size, output_size, progress, overrides: as for :func:`stylize_batch`.

    Returns:
        ``grid[i][j]``: the result of content ``i`` with style ``j`` (a list of lists that a notebook shows as a
        table of pictures).
    """
    contents, styles = list(contents), list(styles)
    if not contents or not styles:
        return display.Grid([[] for _ in contents])
    stylizer = BatchStylizer(styles, settings, batch_size=batch_size, output_size=output_size, grid=True,
                             **overrides)
    pairs = [(i, j) for i in range(len(contents)) for j in range(len(styles))]
    flat = stylizer.stylize([contents[i] for i, _ in pairs], [j for _, j in pairs], progress=progress)
    return display.Grid([flat[i * len(styles):(i + 1) * len(styles)] for i in range(len(contents))],
                        row_labels=[_label(c, i) for i, c in enumerate(contents)],
                        col_labels=[_label(st, j) for j, st in enumerate(styles)])


def _number(value) -> str:
    """A weight (a number, or per-layer numbers) as a label shows it."""
    if isinstance(value, (list, tuple)):
        return ",".join(_number(v) for v in value)
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _label(image, index: int) -> str:
    """A short name of an input in a notebook's grid: its file name, or its index."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).name
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, (str, os.PathLike)) for i in image):
        return " + ".join(Path(i).name for i in image)
    return str(index)
