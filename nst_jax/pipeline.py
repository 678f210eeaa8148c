"""The stylization pipeline shared by every entry point: coarse-to-fine stages, the initial image, the
upsampling between stages, the output finishing, and the stage runner that drives them.

:func:`run_stages` is the one loop over stages. :func:`nst_jax.stylize` runs it with a single-image
stepper, :class:`nst_jax.batch.BatchStylizer` (and so batch jobs and Ray actors) with a vmapped one; the
callers only say how a stage's targets are made, how its stepper is built and what to do at each look at
the state (progress records, snapshots). Counting iterations on across stages is done here, per image.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import canvas, hostmem, images, optim, vgg
from nst_jax.config import Settings, stages

__all__ = ["Stage", "StageInputs", "Stop", "add_record", "coarse_to_fine", "finish_image", "initial_image",
           "run_stages", "stage_images", "upsample"]


@dataclass(frozen=True)
class Stage:
    """One stage of a stylization: the long side, its iterations, and whether it is the last (full size)."""

    size: int
    iterations: int
    last: bool

    def images(self, content_img: np.ndarray, styles: list[np.ndarray],
               s: Settings) -> tuple[np.ndarray, list[np.ndarray]]:
        """The stage's content and style images: the full-size ones at the last stage, else resized."""
        return (content_img, styles) if self.last else stage_images(content_img, styles, self.size, s)

    def shape(self, content_img: np.ndarray | None, s: Settings) -> tuple[int, int]:
        """The stage's image shape ``(H, W)``: its content image's, or without content the canvas at its size."""
        return canvas.shape(s, self.size) if content_img is None else tuple(content_img.shape[:2])


def coarse_to_fine(s: Settings) -> list[Stage]:
    """The stages of a stylization (:func:`nst_jax.config.stages`): each stage after the first starts from
    the previous one's result upsampled (:func:`upsample`); one stage without ``scales``."""
    plan = stages(s)
    return [Stage(size, n, k == len(plan) - 1) for k, (size, n) in enumerate(plan)]


def stage_images(content_img: np.ndarray, styles: list[np.ndarray], size: int,
                 s: Settings) -> tuple[np.ndarray, list[np.ndarray]]:
    """The content and style images of a coarse-to-fine stage of long side ``size``, resized from the
    full-size ones (style images to ``size * style_scale``)."""
    label = f"content image at coarse-to-fine scale {size}"
    stage_content = None if content_img is None else images.resize_long_side(content_img, size, label=label)
    style_size = max(1, int(size * s.style_scale))
    stage_styles = [images.resize_long_side(st, style_size, label=f"style image at coarse-to-fine scale {size}")
                    for st in styles]
    return stage_content, stage_styles


def initial_image(s: Settings, content: np.ndarray | None, styles: list[np.ndarray], key=None, *,
                  shape_hw: tuple[int, int] | None = None) -> jax.Array:
    """The starting point in Caffe space, ``(H, W, 3)``, for content of shape ``content.shape`` (without
    content, of shape ``shape_hw``)."""
    h, w = content.shape[:2] if content is not None else shape_hw
    if s.init == "random":
        key = jax.random.key(s.seed) if key is None else key
        return 0.001 * jax.random.normal(key, (h, w, 3), jnp.float32)  # neural-style: randn * 0.001
    if s.init == "content":
        src = content
    elif s.init == "style":
        src = images.resize(styles[0], (h, w))
    else:
        src = images.resize(images.load_image(s.init_image, label="init image"), (h, w))
    return vgg.preprocess(jnp.asarray(src))


def upsample(x: jax.Array, size_hw: tuple[int, int]) -> jax.Array:
    """Bicubic resize of Caffe-space images ``(H, W, 3)`` or ``(N, H, W, 3)`` to ``size_hw``: a coarse stage's
    result becomes the next stage's start."""
    resize = functools.partial(_resize_hw, size_hw=tuple(size_hw))
    return jax.vmap(resize)(x) if x.ndim == 4 else resize(x)


@functools.partial(jax.jit, static_argnames="size_hw")
def _resize_hw(x, size_hw):
    return jax.image.resize(x, (*size_hw, x.shape[-1]), method="cubic")


def finish_image(x: jax.Array, content_img: np.ndarray, s: Settings) -> np.ndarray:
    """Caffe-space optimized image -> RGB [0, 1] float32 output (content colors restored if asked)."""
    rgb = np.clip(np.asarray(vgg.deprocess(x), np.float32), 0.0, 1.0)
    if s.original_colors:
        rgb = images.original_colors(content_img, rgb)
    return rgb


def add_record(history: list[optim.Record], iteration: int, terms, elapsed: float,
               size: int | None, blurs: int | None = None) -> optim.Record:
    """The progress record of one image at ``iteration`` (counted on across stages), added to its ``history``.

    A record is added unless the history's last one is of the same iteration and stage size: a stage's end
    is looked at once more when every image is done early. A stage's first record (its start, at the end
    iteration of the stage before) has another size, so the history shows where each stage starts.

    Args:
        history: the image's records so far (appended to).
        iteration: its iteration.
        terms: its loss terms (host values).
        elapsed: seconds since the run started.
        size: the stage's long side, or None.
        blurs: blur_on_stall's blurs in this stage (:func:`nst_jax.stall.blur_count`), or None; the record
            counts on from the last record of the stage before.

    Returns:
        The record (also when it was not added).
    """
    if blurs is not None:
        before = next((r.blurs for r in reversed(history) if r.size != size), None) or 0
        blurs = before + int(blurs)
    rec = optim.Record.from_terms(iteration, terms, elapsed, size, blurs)
    if not history or (history[-1].iteration, history[-1].size) != (iteration, size):
        history.append(rec)
    return rec


@dataclass(frozen=True)
class StageInputs:
    """What a stage needs from its caller (see :func:`run_stages`).

    Attributes:
        targets: the stage's targets (one image's, or a batch's per-image and shared halves).
        shape: the stage's image shape ``(H, W)``.
        start: makes the initial image(s) in Caffe space; called for the first stage only (later stages start
            from the previous result).
    """

    targets: object
    shape: tuple[int, int]
    start: Callable[[], jax.Array]


@dataclass(frozen=True)
class Stop:
    """One look at the state during :func:`run_stages` (at iteration 0 of a stage and at each checkpoint).

    Attributes:
        stage: the stage running.
        state: its optimizer state (one image, or a batch with per-image leaves along axis 0).
        offset: iterations done in the stages before: an int for one image, an int array per image for a
            batch (images stop at different iterations). ``offset + state.iteration`` counts on across stages.
        elapsed: seconds since the run started.
    """

    stage: Stage
    state: optim.State
    offset: int | np.ndarray
    elapsed: float


@hostmem.compacting_after_compiles()  # the compiler's memory returned before each program first runs
def run_stages(plan: list[Stage], prepare: Callable[[Stage], StageInputs],
               stepper: Callable[[Stage, object, int | np.ndarray], optim.Stepper], *, chunk_size: int,
               print_every: int, save_every: int = 0, on_stop: Callable[[Stop], None] | None = None,
               on_stage_end: Callable[[Stop], None] | None = None, raise_nonfinite: bool = True,
               on_advance: Callable[[Stage, int, optim.State], None] | None = None,
               resize: Callable[[jax.Array, tuple[int, int]], jax.Array] = upsample) -> tuple[optim.State, object]:
    """Runs the coarse-to-fine stages of one image or of a batch: the pipeline's single stage loop.

    Each stage's targets and shape come from ``prepare``; the first stage starts from its ``start``, each
    later one from the previous stage's result resized (``resize``) to its shape. The stage is optimized by
    the stepper that ``stepper`` builds (single-image or vmapped; an in-step hook, if any, is part of it)
    and driven by :func:`nst_jax.optim.run`, which looks at the state at iteration 0, every ``print_every``
    iterations, every ``save_every`` iterations of the last stage, and at the stage's end.

    Args:
        plan: the stages (:func:`coarse_to_fine`).
        prepare: ``prepare(stage) -> StageInputs``: the stage's targets, shape and initial image(s).
        stepper: ``stepper(stage, targets, offset) -> Stepper`` for the stage (``offset``: as in :class:`Stop`).
        chunk_size, print_every, save_every: as in :class:`~nst_jax.config.Settings`.
        on_stop: called with a :class:`Stop` at each look at the state.
        on_stage_end: called with a :class:`Stop` of each stage's final state.
        on_advance: called as ``on_advance(stage, iterations, state)`` after every compiled call (see
            :func:`nst_jax.optim.run`), ``iterations`` counted within the stage.
        raise_nonfinite: raise on a non-finite loss (one image); a batch leaves it in ``state.nonfinite``.
        resize: how a stage's result becomes the next stage's start (default :func:`upsample`).

    Returns:
        ``(state, iterations)``: the last stage's final state and the iterations done over all stages (an int,
        or an int array per image).

    Raises:
        nst_jax.optim.NonFiniteLossError: (``raise_nonfinite``) the loss became NaN/inf; its iteration counts
            on across the stages.
    """
    t_start = time.perf_counter()
    x, offset, state = None, 0, None
    hostmem.compact()  # what loading the params freed
    for stage in plan:
        inputs = prepare(stage)
        hostmem.compact()  # the targets' temporaries, before the optimizer state is allocated
        x0 = inputs.start() if x is None else resize(x, inputs.shape)
        t_stage = time.perf_counter()

        def look(st, elapsed, stage=stage, offset=offset, t_stage=t_stage):
            on_stop(Stop(stage, st, offset, t_stage - t_start + elapsed))

        try:
            state = optim.run(_compacting(stepper(stage, inputs.targets, offset)), x0, stage.iterations,
                              chunk_size=chunk_size,
                              stops=optim.checkpoints(stage.iterations, print_every, save_every if stage.last else 0),
                              on_stop=look if on_stop is not None else None, raise_nonfinite=raise_nonfinite,
                              on_advance=None if on_advance is None else functools.partial(on_advance, stage))
        except optim.NonFiniteLossError as e:
            raise e.shifted(offset) from None
        if on_stage_end is not None:
            on_stage_end(Stop(stage, state, offset, time.perf_counter() - t_start))
        its = np.asarray(jax.device_get(state.iteration))
        offset = offset + (int(its) if its.ndim == 0 else its.astype(np.int64))
        x = state.x
    return state, offset


def _compacting(stepper: optim.Stepper) -> optim.Stepper:
    """``stepper`` with the allocator's free memory returned after its initial evaluation (see :mod:`hostmem`)."""
    def init(x0):
        state = jax.block_until_ready(stepper.init(x0))
        hostmem.compact()
        return state

    return stepper._replace(init=init)
