"""The library entry point: ``nst_jax.stylize(content, style, **settings) -> Result``."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import canvas, display, images, normalize, optim, provenance, stall, vgg, weights
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective, make_targets

# The pipeline's pieces, re-exported: callers have long found them here.
from nst_jax.pipeline import (Stage, StageInputs, Stop, add_record, coarse_to_fine, finish_image,  # noqa: F401
                              initial_image, run_stages, stage_images, upsample)  # noqa: F401


@dataclass
class Result:
    """The outcome of a stylization.

    Attributes:
        array: the output, float32 ``(H, W, 3)`` RGB in [0, 1].
        history: loss records; ``history[0]`` is the initial image at iteration 0.
        settings: the settings used.
        output: where the image was written, if it was.
        weights: which VGG-19 weights made it (:func:`nst_jax.weights.describe`: file path and MD5, or random
            and seed); saved images record it.
        inputs: the input images (:func:`nst_jax.provenance.describe_inputs`: role, file name, path and a short
            hash); saved images record them, with the software versions and device.
    """

    array: np.ndarray
    history: list[optim.Record]
    settings: Settings
    output: Path | None = None
    snapshots: list[Path] = field(default_factory=list)
    weights: dict | None = None
    inputs: list[dict] | None = None

    @property
    def image(self):
        """The output as a ``PIL.Image``."""
        return images.to_pil(self.array)

    @property
    def loss(self) -> float:
        """Final total loss."""
        return self.history[-1].total

    @property
    def blurs(self) -> int | None:
        """With ``blur_on_stall``: how many times the image was blurred (all stages); else None."""
        return self.history[-1].blurs if self.history else None

    def save(self, path, *, metadata: dict | None = None) -> Path:
        """Writes the output atomically; its metadata (PNG text, EXIF elsewhere) records how it was made: the
        settings, the weights, the inputs, the software and device, the final losses, plus ``metadata``."""
        last = self.history[-1] if self.history else None
        meta = {**provenance.record(self.settings.to_dict(), self.weights, self.inputs),
                **({"iterations": last.iteration, "loss": last.total, "terms": dict(last.terms)} if last else {}),
                **(metadata or {})}
        return images.save_image(self.array, path, metadata=meta)

    def __repr__(self) -> str:  # one line, not the array
        return display.result_text(self)

    def _repr_html_(self) -> str:  # notebooks: the picture and a small loss table
        return display.result_html(self)

    def _repr_png_(self) -> bytes:  # frontends without HTML: the picture
        return display.png_bytes(self.array)

    def plot(self, ax=None, *, x: str = "iteration", terms=None):
        """Draws the loss curves (every weighted term and the total, log scale) against ``x`` ("iteration" or
        "time"); needs matplotlib (the ``[report]`` extra). Returns the matplotlib Axes."""
        return display.plot_history(self.history, ax, x=x, terms=terms)


class Interrupted(KeyboardInterrupt):
    """A stylization stopped by Ctrl-C (the command line turns SIGTERM into one too).

    :func:`stylize` keeps the latest finished iterate and, with an ``output``, writes it atomically as
    ``<stem>.partial-<iteration><suffix>`` next to it: a complete image, named so that it is never taken for
    a finished result (the output itself is not written).

    Attributes:
        array: that image, float32 ``(H, W, 3)`` in [0, 1]; None if no iteration had run.
        iteration: its iteration (counted on across coarse-to-fine stages, as in the history), or None.
        partial: where it was written; None without ``output``, before the first iteration, or if it could not
            be written (``reason`` says why).
        reason: why no partial file was written, or None.
    """

    def __init__(self, array: np.ndarray | None = None, iteration: int | None = None, partial: Path | None = None,
                 reason: str | None = None):
        self.array, self.iteration, self.partial, self.reason = array, iteration, partial, reason
        if partial is not None:
            text = f"interrupted at iteration {iteration}; the latest image (not a finished result) is in '{partial}'"
        elif iteration is None:
            text = "interrupted before the first iteration; no image was written"
        else:
            text = f"interrupted at iteration {iteration}; no image was written" + (f" ({reason})" if reason else "")
        super().__init__(text)


@functools.lru_cache(maxsize=2)
def _cached_params(spec: str | None):
    return weights.resolve_params(spec)


def get_params(spec: str | None):
    """VGG-19 params for a weights spec (see :func:`nst_jax.load_vgg19`), cached per spec."""
    return _cached_params(_weights_key(spec))


def weights_used(spec: str | None) -> dict:
    """Which weights :func:`get_params` loads for ``spec`` (:func:`nst_jax.weights.describe`), for outputs."""
    return weights.describe(_weights_key(spec))


def _weights_key(spec: str | None) -> str | None:
    """``spec`` with ``$NST_JAX_WEIGHTS`` applied and a path made absolute: one cache entry per file.

    ``"normalized"`` becomes the path of the normalized VGG-19 of the default weights, computed here on first
    use (:func:`nst_jax.normalize.normalized_weights`), so outputs record that file and its provenance.
    """
    if spec == weights.NORMALIZED:
        return str(normalize.normalized_weights())
    if spec is None:
        spec = os.environ.get("NST_JAX_WEIGHTS") or None
    if spec is not None and spec != "random":
        spec = str(Path(spec).expanduser().resolve())
    return spec


def make_settings(settings: Settings | None = None, **overrides) -> Settings:
    """``settings`` (default: neural-style's) with ``overrides`` applied (:meth:`Settings.replace`: a ``method``
    among them sets the fields that neither gives explicitly); unknown names are an error."""
    settings = settings or Settings()
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(names))}.")
    return settings.replace(**overrides) if overrides else settings


def prepare_styles(style, s: Settings, content: np.ndarray | None = None) -> list[np.ndarray]:
    """Loads the style image(s), repeats each ``style_tile`` rows x columns, resizes the result to ``image_size
    * style_scale`` (long side) and, given the (prepared) ``content`` image, matches its colours to the
    content's (``color_transfer``, :func:`match_style_colors`); none for ``None``.

    The order is that of the words: tiling first, so that the tiled image fills the style size (its texture
    N and M times smaller), colours last, on the pixels whose statistics the targets take.
    """
    if style is None:  # no style term (see canvas.check_inputs)
        return []
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise ValueError("no style image given: pass at least one.")
    if s.style_blend_weights is not None and len(s.style_blend_weights) != len(styles):
        raise SettingError("{0} has {n} value(s) for {count} style image(s); give one weight per style image.",
                           "style_blend_weights", n=len(s.style_blend_weights), count=len(styles))
    size = max(1, int(s.image_size * s.style_scale))
    out = []
    for i, st in enumerate(styles, start=1):
        label = "style image" if len(styles) == 1 else f"style image {i}"
        img = tile(images.load_image(st, label=label), s.style_tile)
        out.append(images.resize_long_side(img, size, label=label))
    return out if content is None else match_style_colors(out, content, s)


def tile(image: np.ndarray, rows_columns: tuple[int, int]) -> np.ndarray:
    """``image`` repeated ``rows`` x ``columns`` times (``style_tile``); ``(1, 1)`` returns it as it is."""
    rows, columns = rows_columns
    return image if (rows, columns) == (1, 1) else np.tile(image, (rows, columns, 1))


def match_style_colors(styles: list[np.ndarray], content: np.ndarray, s: Settings) -> list[np.ndarray]:
    """The prepared style images with the prepared ``content`` image's colours (``color_transfer``:
    :func:`nst_jax.images.transfer_colors`); unchanged with ``"none"``.

    Raises:
        SettingError: ``color_transfer`` is set but there is no content image.
    """
    if s.color_transfer == "none":
        return styles
    if content is None:
        raise SettingError("{color_transfer=} matches the style images' colours to the content image's; none is "
                           "given.", "color_transfer", color_transfer=s.color_transfer)
    return [images.transfer_colors(st, content, s.color_transfer) for st in styles]


def stylize(content, style, settings: Settings | None = None, *, output: str | os.PathLike | None = None,
            overwrite: bool = False, callback: Callable[[optim.Record], None] | None = None, progress: bool = True,
            hook: optim.Hook | None = None, preview_every: int = 0,
            image_callback: Callable[[optim.Record, np.ndarray], None] | None = None, **overrides) -> Result:
    """Stylizes one content image (or, without one, synthesizes a texture).

    Args:
        content: a path, a ``PIL.Image`` or an ``(H, W, 3)`` float array in [0, 1]; None with
            ``content_weight=0`` (texture synthesis: the canvas is ``image_size`` by ``aspect``).
        style: one style image (same kinds) or a list of them (blended by ``style_blend_weights``); None with
            ``style_weight=0`` (the content reconstructed from its activations).
        settings: a :class:`Settings`; ``overrides`` (any of its field names) are applied on top.
        output: if given, the result is written there atomically (PNG metadata holds the settings),
            and snapshots (``save_every``) next to it as ``<stem>_<iteration><suffix>``. These paths are
            checked before the run (:func:`nst_jax.images.check_overwrite`): never an input; an existing
            file only if nst_jax wrote it, or with ``overwrite``.
        overwrite: replace existing files at the output (and snapshot) paths that nst_jax did not write.
        callback: called with each progress :class:`~nst_jax.optim.Record` (outside ``jit``).
        progress: show a progress bar (``tqdm.auto``: terminal or notebook).
        hook: an in-step hook (:data:`nst_jax.optim.Hook`), applied inside the compiled step after each
            update; None (default) leaves the step as it is.
        preview_every: in a notebook, show the image and replace it in place every this many iterations (0:
            no preview; outside a notebook nothing is shown).
        image_callback: called like ``callback`` at each progress record, with the record and the image at
            that iteration as the output would be (float32 ``(H, W, 3)`` RGB in [0, 1], at the stage's size),
            for live previews (``nst-jax serve``); each call copies the image from the device.

    Returns:
        A :class:`Result`; ``result.image`` is a PIL image, ``result.history[0]`` the initial loss.

    With ``tile`` (large outputs) the image is made by :func:`nst_jax.tiling.refine`: the whole image at a
    base size first, then overlapping tiles of the full-size image refined as batches and blended.

    Raises:
        ValueError: a bad setting or input (``images.ImageError`` for images, also an output that would
            replace an input or another program's file), naming it.
        nst_jax.optim.NonFiniteLossError: the loss became NaN/inf; nothing is written. The error names the
            iteration and carries the image of the last finite one (``last_good``, RGB in [0, 1], and
            ``last_good_iteration``).
        Interrupted: Ctrl-C (``KeyboardInterrupt``) during the optimization; the latest iterate is in its
            ``partial`` file (with ``output``) and ``array``.
    """
    s = make_settings(settings, **overrides)
    if isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 0:
        raise ValueError(f"preview_every must be an integer >= 0 (0: no preview), got {preview_every!r}.")
    if s.tile is not None:  # tiled: a base stage, then the tiles as batches (nst_jax.tiling)
        if preview_every or image_callback is not None:
            raise SettingError("preview_every and image_callback show the image of one optimization; {tile} runs "
                               "many (a base stage, then the tiles): leave them unset or {tile} unset.", "tile")
        from nst_jax import tiling  # it builds on this module

        return tiling.stylize_tiled(content, style, s, output=output, overwrite=overwrite, callback=callback,
                                    progress=progress, hook=hook)
    inputs = input_paths(content, style, s)
    out_path = None
    if s.save_every and output is None:
        raise SettingError("{save_every=} writes snapshots next to the output, but no output path is given: pass "
                           "output=... or leave {save_every} at 0.", "save_every", save_every=s.save_every)
    if output is not None:
        out_path = images.check_output_path(output)
        for path in [out_path] + [snapshot_path(out_path, it) for it in _snapshot_iterations(s)]:
            images.check_overwrite(path, inputs, overwrite=overwrite)
    canvas.check_inputs(s, content, style)
    content_img = None  # texture synthesis: the canvas is canvas.shape(s)
    if content is not None:
        content_img = images.load_image(content, label="content image")
        content_img = images.resize_long_side(content_img, s.image_size, label="content image")
    styles = prepare_styles(style, s, content_img)
    params = get_params(s.weights)
    used = weights_used(s.weights)
    described = provenance.describe_inputs(inputs)
    # what every file written below records
    meta = provenance.record(s.to_dict(), used, described)

    objective = Objective.from_settings(s)
    spec = optim.SolverSpec.from_settings(s)
    hook = stall.settings_hook(s, hook)
    plan = coarse_to_fine(s)
    history: list[optim.Record] = []
    snapshots: list[Path] = []
    bar = display.ProgressBar(sum(st.iterations for st in plan), sizes=len(plan) > 1) if progress else None
    preview = display.Preview() if preview_every else None

    def on_advance(stage: Stage, iterations: int, state: optim.State) -> None:
        it = offsets[stage] + iterations
        if bar is not None:
            bar.advance(it, state)
        if preview is not None and preview.active and iterations % preview_every == 0:
            preview.update(finish_image(state.x, content_img, s), f"iteration {it}, {stage.size} px")

    offsets: dict = {}

    def on_stop(stop: Stop) -> None:
        state, size = stop.state, stop.stage.size
        offsets[stop.stage] = stop.offset
        it = stop.offset + int(state.iteration)
        blurs = stall.blur_count(state)
        rec = add_record(history, it, jax.device_get(state.terms), stop.elapsed, size,
                         None if blurs is None else int(blurs))
        if bar is not None:
            bar.record(rec)
        if callback is not None:
            callback(rec)
        if image_callback is not None:
            image_callback(rec, finish_image(state.x, content_img, s))
        stage_it = int(state.iteration)
        if (stop.stage.last and out_path is not None and s.save_every and stage_it and stage_it % s.save_every == 0
                and stage_it < s.num_iterations):
            snap = snapshot_path(out_path, stage_it)
            snapshots.append(images.save_image(finish_image(state.x, content_img, s), snap,
                                               metadata={**meta, "iteration": stage_it,
                                                         "created": provenance.now()}))

    latest: dict = {}  # a copy of the newest iterate, saved on an interrupt

    def prepare(stage: Stage) -> StageInputs:
        stage_content, stage_styles = stage.images(content_img, styles, s)
        hw = stage.shape(stage_content, s)
        targets = make_targets(objective, params,
                               None if stage_content is None else vgg.preprocess(jnp.asarray(stage_content)),
                               [vgg.preprocess(jnp.asarray(st)) for st in stage_styles], s.style_blend_weights,
                               weights=s)
        return StageInputs(targets, hw, lambda: initial_image(s, stage_content, stage_styles, shape_hw=hw))

    def stepper(stage: Stage, targets, offset: int) -> optim.Stepper:
        return _keeping_latest(optim.single_image_stepper(objective, spec, params, targets, s.loop, hook=hook),
                               s.loop, latest, offset)

    try:
        state, _ = run_stages(plan, prepare, stepper, chunk_size=s.chunk_size, print_every=s.print_every,
                              save_every=s.save_every, on_stop=on_stop, resize=upsample,
                              on_advance=on_advance if bar is not None or preview is not None else None)
        result = Result(finish_image(state.x, content_img, s), history, s, snapshots=snapshots, weights=used,
                        inputs=described)
        if preview is not None and preview.active:
            preview.update(result.array, f"final: iteration {result.history[-1].iteration}, loss {result.loss:.4g}")
        if out_path is not None:
            result.output = result.save(out_path)
    except KeyboardInterrupt as e:
        raise _save_partial(latest, content_img, s, out_path, inputs, overwrite, meta) from e
    except optim.NonFiniteLossError as e:
        raise _nonfinite_error(e, content_img, s, out_path, inputs, overwrite, meta) from None
    finally:
        if bar is not None:
            bar.close()
    return result


def _nonfinite_error(e: optim.NonFiniteLossError, content_img: np.ndarray, s: Settings, out_path: Path | None,
                     inputs, overwrite: bool, metadata: dict) -> optim.NonFiniteLossError:
    """``e`` (its iteration counted on across coarse-to-fine stages, :func:`run_stages`) as :func:`stylize`
    reports it: ``last_good`` the RGB output the last finite iterate would have given (upsampled to full size
    if it is a coarse stage's), written with an output as :func:`partial_path` (under the same rules as the
    output; if it cannot be written the error still carries it)."""
    last_good = None
    if e.last_good is not None:
        x = jnp.asarray(e.last_good)
        full_hw = canvas.shape(s) if content_img is None else content_img.shape[:2]
        if x.shape[:2] != full_hw:
            x = upsample(x, full_hw)
        last_good = finish_image(x, content_img, s)
    partial = None
    if last_good is not None and out_path is not None:
        partial, _ = _write_partial(last_good, e.iteration - 1, out_path, inputs, overwrite,
                                    {**metadata, "nonfinite_at": e.iteration})
    return optim.NonFiniteLossError(e.iteration, e.loss, last_good=last_good,
                                    last_good_loss=e.last_good_loss, label=e.label, partial=partial)


def snapshot_path(output: Path, iteration: int) -> Path:
    """Where the snapshot of ``iteration`` (``save_every``) of ``output`` goes: ``<stem>_<iteration><suffix>``."""
    return output.with_name(f"{output.stem}_{iteration}{output.suffix}")


def partial_path(output: Path, iteration: int) -> Path:
    """Where an interrupted run leaves its latest image: ``<stem>.partial-<iteration><suffix>``."""
    return output.with_name(f"{output.stem}.partial-{iteration}{output.suffix}")


def _snapshot_iterations(s: Settings) -> range:
    """The iterations :func:`stylize` writes snapshots at (those of the last stage, before its end)."""
    return range(s.save_every, s.num_iterations, s.save_every) if s.save_every else range(0)


def input_paths(content, style, s: Settings) -> list[tuple[str, object]]:
    """``(label, source)`` of every image a stylization reads: an output must be none of them."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    found = [("content image", content)] if content is not None else []
    found += [("style image" if len(styles) == 1 else f"style image {i}", st) for i, st in enumerate(styles, 1)
              if st is not None]
    if s.init == "image" and s.init_image is not None:
        found.append(("init image", s.init_image))
    return found


def _keeping_latest(stepper: optim.Stepper, loop: str, latest: dict, offset: int) -> optim.Stepper:
    """``stepper``, keeping in ``latest`` a copy of its newest image and iteration (plus the stage's ``offset``).

    A step donates its input state, so an interrupt cannot fall back on the state it started from: the copy
    (one image-sized buffer) is made after each call, every iteration with the step loop (one jitted call per
    iteration), after each chunk with compiled chunks.
    """
    loop = optim.default_loop() if loop == "auto" else loop

    def keep(state: optim.State) -> optim.State:
        latest.update(x=jnp.copy(state.x), iteration=jnp.copy(state.iteration), offset=offset)
        return state

    def advance(state: optim.State, n: int) -> optim.State:
        for k in [1] * n if loop == "step" else [n]:
            state = keep(stepper.advance(state, k))
        return state

    return optim.Stepper(lambda x0: keep(stepper.init(x0)), advance, stepper.per_iteration)


def _save_partial(latest: dict, content_img: np.ndarray, s: Settings, out_path: Path | None, inputs,
                  overwrite: bool, metadata: dict) -> Interrupted:
    """The :class:`Interrupted` of a run stopped by Ctrl-C, its latest iterate written atomically next to the
    output (as :func:`partial_path`, ``metadata`` plus its iteration) under the same rules as the output."""
    if "x" not in latest:
        return Interrupted()
    iteration = latest["offset"] + int(latest["iteration"])
    array = finish_image(latest["x"], content_img, s)
    if out_path is None:
        return Interrupted(array, iteration)
    return Interrupted(array, iteration, *_write_partial(array, iteration, out_path, inputs, overwrite, metadata))


def _write_partial(array: np.ndarray, iteration: int, out_path: Path, inputs, overwrite: bool,
                   metadata: dict) -> tuple[Path | None, str | None]:
    """Writes an unfinished image atomically as :func:`partial_path` of ``out_path`` under the output's rules
    (never an input; another program's file only with ``overwrite``), its metadata marking it partial.

    Returns:
        ``(path, None)`` once written, or ``(None, why)`` if it could not be.
    """
    path = partial_path(out_path, iteration)
    try:
        images.check_overwrite(path, inputs, overwrite=overwrite)
        images.save_image(array, path, metadata={**metadata, "iteration": iteration, "partial": True,
                                                 "created": provenance.now()})
    except images.ImageError as e:
        return None, str(e)
    return path, None


__all__: Sequence[str] = ["Interrupted", "Result", "stylize", "get_params", "make_settings", "match_style_colors",
                          "partial_path", "prepare_styles", "snapshot_path", "tile"]
