"""Many images: buckets of equal shape, ``vmap`` of the single-image optimizer, sharding over devices,
and resumable jobs over folders.

The math is :func:`nst_jax.optim.init` / :func:`nst_jax.optim.step` of *one* image; a batch is
``jax.vmap`` of those pure functions with per-image optimizer state. The targets (and weights) of the
images are split into a per-image half, vmapped along axis 0 (content targets; style targets in a style
grid, :func:`stylize_grid`; weights in a weight sweep, ``loss_weights``), and a shared half passed once
(:func:`split_targets`). ``optim.step`` freezes
a finished image (``done``) and counts iterations per image, so an image that converges early stops
changing while the others go on. The loop is driven by :func:`nst_jax.optim.run`, with the same
per-backend loop form as a single image (one jitted call per iteration on CPU, compiled chunks on
accelerators). Each image starts from exactly what :func:`nst_jax.stylize` would start it from, so a
batch gives each image the result of a single call (up to float reassociation, see the tests).

Shapes: images are resized as by :func:`nst_jax.stylize` (long side ``image_size``) and grouped into
buckets of equal shape; each bucket (and batch size) is compiled once and reused. ``output_size=(h,
w)`` resizes every content image to cover ``h x w`` and center-crops it, so that all images share
one bucket.

Devices: with several (local) devices the batch axis is sharded over a 1-D mesh ``("batch",)``;
params and shared style targets are replicated. A batch that does not divide the device count is
padded with copies of its last image, dropped from the results. Hosts: :mod:`nst_jax.ray_job` runs
one such process per host (or per GPU) as Ray actors.

Jobs: :func:`run_job` stylizes files into a folder. Outputs are written atomically, so a rerun skips
every output that exists and that nst_jax wrote (it is complete); bad inputs fail alone and are listed
with the reason in ``<output_dir>/nst_jax_summary.json``. :mod:`nst_jax.ray_job` runs the same per-batch code in Ray
actors across hosts. Jobs survive faults: a killed job's leftovers are cleaned by the next run, jobs sharing
a folder claim each image (:class:`_Claim`) and merge the summary, a full disk stops the job
(:class:`DiskFullError`), and the journal ``nst_jax_journal.jsonl`` records each image done.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import errno
import functools
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

try:
    import fcntl
except ImportError:  # Windows: no flock; claims are then not exclusive (see _Claim)
    fcntl = None

from nst_jax import api, images, optim, vgg
from nst_jax import objective as objective_mod
from nst_jax.config import Settings
from nst_jax.objective import Objective

__all__ = [
    "BatchRun", "BatchStylizer", "DiskFullError", "ImageStatus", "JOURNAL_NAME", "JobSummary", "SUMMARY_NAME",
    "clean_stale_files", "default_batch_size",
    "estimate_image_bytes", "fit_to_size", "free_memory_bytes", "merge_targets", "optimize_batch",
    "parse_output_size", "run_job", "split_targets", "stylize_batch", "stylize_grid",
]

#: Name of the job summary written into the output folder.
SUMMARY_NAME = "nst_jax_summary.json"

#: Name of the job journal in the output folder: one JSON line per image written ("ok") or failed, appended
#: by whichever job did it (time, host, pid and the summary row), so that reruns and jobs sharing the folder
#: can be audited (how many times each image was done).
JOURNAL_NAME = "nst_jax_journal.jsonl"

#: Largest default batch per device: beyond this the throughput gain is small and a failure costs more.
MAX_DEFAULT_BATCH = 16

#: The settings an image of a batch can set for itself (``loss_weights``): numbers that are traced, never
#: part of the compiled structure.
PER_IMAGE_SETTINGS = ("content_weight", "style_weight", "tv_weight", "content_layer_weights", "style_layer_weights")

#: Share of the free memory a default batch may use (the rest: XLA workspace, other processes).
_MEMORY_SHARE = {"device": 0.7, "host": 0.5}

#: Traces of the batched functions, keyed by ``(function, batch shape (B, H, W, 3))``.
#: A trace precedes each compilation: tests assert with it that a bucket compiles once.
trace_counts: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------
# The vmapped single-image step
# --------------------------------------------------------------------------


def split_targets(per_image: Sequence[dict]) -> tuple[dict, dict]:
    """The targets of a batch's images (nested dicts of the same structure, one per image) as
    ``(batched, shared)``: a leaf that is the same object in every image (a style target computed once) is
    shared, the others are stacked along a new first axis. Weights (``"weight"``) are always per image, so
    that the compiled batch does not depend on which weights an image changes (a sweep never recompiles).

    Shared leaves enter the vmapped step once (``in_axes=None``) and are replicated over devices; batched ones
    are per image and sharded with the batch. :func:`merge_targets` joins the two halves again.
    """
    first = per_image[0]
    batched, shared = {}, {}
    for key, value in first.items():
        values = [t[key] for t in per_image]
        if isinstance(value, dict):
            b, s = split_targets(values)
            if b:
                batched[key] = b
            if s or not b:
                shared[key] = s
        elif key != "weight" and all(v is value for v in values[1:]):
            shared[key] = value
        else:
            batched[key] = jax.tree.map(lambda *a: jnp.stack(a), *values)
    return batched, shared


def merge_targets(shared: dict, batched: dict) -> dict:
    """One image's targets from the shared and the (unbatched, inside ``vmap``) per-image halves."""
    out = dict(shared)
    for key, value in batched.items():
        out[key] = merge_targets(out[key], value) if isinstance(out.get(key), dict) else value
    return out


def _constrain(tree, sharding):
    """Keeps every leaf (all have the batch axis first) sharded along the batch."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def _per_image(fn):
    """``jax.vmap(fn)`` over a batch's images (every argument's leaves batched along axis 0), except that a
    batch of one runs ``fn`` on the image itself.

    Why: XLA removes a batch axis of size 1 and then lays out and fuses some operations differently (the two
    matrix products of a Gram matrix's gradient) from the single image and from larger batches, which
    changes their rounding. With the single-image program, an image of a batch of one gets the same bits as
    in any larger batch (see the batch invariance in :mod:`nst_jax.conv` and tests/test_batch_invariance.py).
    """
    def mapped(*args):
        if jax.tree.leaves(args)[0].shape[0] == 1:
            return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], args)))
        return jax.vmap(fn)(*args)
    return mapped


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_batch(objective, spec, sharding, params, x0, targets, shared):
    trace_counts["init", tuple(x0.shape)] += 1
    init = _per_image(lambda x, t: optim.init(objective, spec, params, x, merge_targets(shared, t)))
    return _constrain(init(x0, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _step_batch(objective, spec, sharding, params, state, targets, shared):
    trace_counts["step", tuple(state.x.shape)] += 1
    step = _per_image(lambda st, t: optim.step(objective, spec, params, st, merge_targets(shared, t)))
    return _constrain(step(state, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _steps_batch(objective, spec, sharding, params, state, targets, shared, n):
    trace_counts["steps", tuple(state.x.shape)] += 1
    steps = _per_image(lambda st, t: optim.steps(objective, spec, params, st, merge_targets(shared, t), n))
    return _constrain(steps(state, targets), sharding)


def batch_stepper(objective: Objective, spec: optim.SolverSpec, params, targets, *, shared: dict | None = None,
                  loop: str = "auto", sharding: NamedSharding | None = None) -> optim.Stepper:
    """Compiled ``init``/``advance`` of a batch: ``vmap`` of :func:`optim.init`/:func:`optim.step`.

    The batched counterpart of :func:`optim.single_image_stepper`, with the same loop forms. Objective,
    spec and ``sharding`` are static; targets and weights are traced, so the same problem structure and
    shapes never recompile, whatever the weights.

    Args:
        objective, spec: the loss and the optimizer.
        params: VGG-19 params (shared by every image).
        targets: the per-image targets, every leaf with the batch axis first (see :func:`split_targets`).
        shared: the targets common to every image (no batch axis), merged into each image's.
        loop: "step", "chunk" or "auto" (:func:`optim.default_loop`).
        sharding: the batch-axis sharding over several devices, or None.
    """
    loop = optim.default_loop() if loop == "auto" else loop
    params = objective.prepare(params)  # once, not in every iteration
    shared = {} if shared is None else shared

    def init(x0):
        return _init_batch(objective, spec, sharding, params, x0, targets, shared)

    def advance(state, n):
        if loop == "step":
            for _ in range(n):
                state = _step_batch(objective, spec, sharding, params, state, targets, shared)
            return state
        return _steps_batch(objective, spec, sharding, params, state, targets, shared, jnp.asarray(n, jnp.int32))

    return optim.Stepper(init, advance)


# --------------------------------------------------------------------------
# Driving one batch (padding, sharding, per-image failure)
# --------------------------------------------------------------------------


@dataclass
class BatchRun:
    """The outcome of :func:`optimize_batch`.

    Attributes:
        state: the final :class:`optim.State` of the whole (padded, possibly sharded) batch, on device.
        size: the number of real images (``state`` may hold padding after them).
        histories: per image, its progress records (as :attr:`nst_jax.Result.history`).
        errors: per image, None or the :class:`optim.NonFiniteLossError` that failed it alone.
    """

    state: optim.State
    size: int
    histories: list[list[optim.Record]]
    errors: list[Exception | None]

    def images(self) -> np.ndarray:
        """The final Caffe-space images of the real members, ``(size, H, W, 3)`` on the host."""
        return np.asarray(jax.device_get(self.state.x))[: self.size]


def _mesh_shardings(devices: Sequence) -> tuple[NamedSharding, NamedSharding]:
    # Auto axes: the vmapped step is written for one image; XLA propagates the batch sharding.
    mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    return NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())


def optimize_batch(objective: Objective, spec: optim.SolverSpec, params, x0: jax.Array, targets, *,
                   shared: dict | None = None, num_iterations: int, chunk_size: int = 25, print_every: int = 0,
                   loop: str = "auto", devices: Sequence | None = None, labels: Sequence[str] | None = None,
                   on_stop: Callable[[optim.State, float], None] | None = None) -> BatchRun:
    """Optimizes a batch of images of one shape: ``vmap`` of the single-image step, driven by :func:`optim.run`.

    Args:
        objective, spec, params: as for one image.
        x0: initial Caffe-space images ``(B, H, W, 3)``.
        targets: the per-image targets, every leaf ``(B, ...)`` (e.g. content targets; also style targets in
            a style grid, weights in a weight sweep); see :func:`split_targets`.
        shared: the targets common to every image, without a batch axis (e.g. one style's targets).
        num_iterations, chunk_size, print_every, loop: as in :class:`Settings`.
        devices: devices to shard the batch over (default ``jax.local_devices()``); one device: no sharding.
        labels: names of the images for error messages.
        on_stop: called as ``on_stop(state, elapsed)`` with the whole batch state at each record.

    Returns:
        A :class:`BatchRun`. An image whose loss becomes NaN/inf fails alone (``errors[i]``, with the exact
        iteration): :func:`optim.step` freezes it at its last finite state and the others go on.
    """
    b = int(x0.shape[0])
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(b)]
    devices = list(devices) if devices is not None else jax.local_devices()
    shared = {} if shared is None else shared
    sharding = replicated = None
    if len(devices) > 1:
        sharding, replicated = _mesh_shardings(devices)
    padded = b if sharding is None else -(-b // len(devices)) * len(devices)
    if padded != b:  # pad with copies of the last image (dropped from the results)
        idx = jnp.asarray(list(range(b)) + [b - 1] * (padded - b))
        x0 = x0[idx]
        targets = jax.tree.map(lambda a: a[idx], targets)
    if sharding is not None:
        x0 = jax.device_put(x0, sharding)
        params = jax.device_put(params, replicated)
        targets = jax.device_put(targets, sharding)
        shared = jax.device_put(shared, replicated)

    stepper = batch_stepper(objective, spec, params, targets, shared=shared, loop=loop, sharding=sharding)
    histories: list[list[optim.Record]] = [[] for _ in range(b)]
    t0 = time.perf_counter()

    def record(state, _elapsed):
        elapsed = time.perf_counter() - t0
        its, terms = jax.device_get((state.iteration, state.terms))
        for i in range(b):
            it = int(its[i])
            if not histories[i] or histories[i][-1].iteration != it:
                histories[i].append(optim.Record.from_terms(it, jax.tree.map(lambda a, i=i: a[i], terms), elapsed))
        if on_stop is not None:
            on_stop(state, elapsed)

    state = optim.run(stepper, x0, num_iterations, chunk_size=chunk_size,
                      stops=optim.checkpoints(num_iterations, print_every), on_stop=record, raise_nonfinite=False)
    nonfinite = np.asarray(jax.device_get(state.nonfinite))
    errors: list[Exception | None] = [
        optim.NonFiniteLossError.from_state(state, i, label=labels[i]) if nonfinite[i] >= 0 else None
        for i in range(b)]
    return BatchRun(state, b, histories, errors)


# --------------------------------------------------------------------------
# Memory estimate and default batch size
# --------------------------------------------------------------------------


def estimate_image_bytes(shape_hw: tuple[int, int], objective: Objective, spec: optim.SolverSpec) -> int:
    """Device memory one image of a batch needs, in bytes (an estimate, float32).

    ``activations x 3 + optimizer state + 8 images``: the activations of VGG-19 up to the deepest
    layer the loss reads (each convolution's output and its ReLU, each pooling), times ~3 for the
    backward pass (the saved forward activations plus the gradients flowing back); the optimizer
    state, for L-BFGS its history ``2 * m * H * W * 3 * 4`` bytes (``m`` pairs of image-sized
    vectors), for Adam two moments; and a few image-sized buffers (x, gradient, targets, copies).
    """
    h, w = shape_hw
    deepest = max((vgg.layer_index(l) for l in objective.layers), default=-1)  # -1: no layer (TV alone)
    channels = {b: c for b, _, c in vgg.BLOCKS}
    floats = 0
    for name in vgg.LAYERS[: deepest + 1]:
        block = int(name[4])  # conv<b>_<i>, relu<b>_<i>, pool<b>
        scale = 2 ** (block if name.startswith("pool") else block - 1)
        floats += max(1, h // scale) * max(1, w // scale) * channels[block]
    image = h * w * 3
    if spec.optimizer == "lbfgs":
        opt = 2 * spec.history * image
    else:
        opt = 2 * image
    return 4 * (3 * floats + opt + 8 * image)


def free_memory_bytes(device=None) -> tuple[int, str]:
    """Free memory for a batch on ``device`` (default: the first) and where the figure came from.

    Accelerators report it (``device.memory_stats()``: ``bytes_limit - bytes_in_use``); on CPU it is
    the host's available RAM (``psutil`` if installed, else ``os.sysconf``), shared by all CPU devices.
    """
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), "device"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "host"
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "host"
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3, "host"  # unknown platform: assume 2 GiB


def default_batch_size(shape_hw: tuple[int, int], objective: Objective, spec: optim.SolverSpec, *,
                       devices: Sequence | None = None) -> int:
    """Images per compiled call: as many as fit in the free memory, at most ``MAX_DEFAULT_BATCH`` per device.

    ``per device = share * free / estimate_image_bytes`` (share 0.7 of an accelerator's free memory, 0.5
    of the host's available RAM on CPU, where the CPU devices share it), times the number of devices.
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    free, source = free_memory_bytes(devices[0])
    per_image = estimate_image_bytes(shape_hw, objective, spec)
    usable = _MEMORY_SHARE[source] * free / (len(devices) if source == "host" else 1)
    per_device = int(max(1, min(MAX_DEFAULT_BATCH, usable // per_image)))
    return per_device * len(devices)


# --------------------------------------------------------------------------
# Content preparation
# --------------------------------------------------------------------------


def parse_output_size(value) -> tuple[int, int] | None:
    """``None``, ``(h, w)``, ``"HxW"`` or ``"N"`` (square) -> ``(h, w)``, each side >= ``images.MIN_SIZE``."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("*", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"output size must be HxW (e.g. 256x384) or N, got {value!r}.") from None
    else:
        try:
            nums = [int(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"output_size must be (height, width), got {value!r}.") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < images.MIN_SIZE:
        raise ValueError(f"output size must be two sides of at least {images.MIN_SIZE} pixels (HxW), "
                         f"got {value!r}.")
    return nums[0], nums[1]


def fit_to_size(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resizes ``img`` to cover ``size_hw`` (keeping its aspect ratio), then crops the center to it.

    The resize is :func:`images.resize` (Pillow BILINEAR); nothing is stretched, the overhang of the
    longer relative side is cut evenly from both ends.
    """
    h, w = size_hw
    ih, iw = img.shape[:2]
    scale = max(h / ih, w / iw)
    rh, rw = max(h, round(ih * scale)), max(w, round(iw * scale))
    img = images.resize(img, (rh, rw)) if (rh, rw) != (ih, iw) else np.asarray(img, np.float32)
    top, left = (rh - h) // 2, (rw - w) // 2
    return np.ascontiguousarray(img[top:top + h, left:left + w])


# --------------------------------------------------------------------------
# The stylizer: settings, params and style targets, loaded once
# --------------------------------------------------------------------------


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
    """

    def __init__(self, style, settings: Settings | None = None, *, batch_size: int | None = None,
                 output_size=None, grid: bool = False, devices: Sequence | None = None, **overrides):
        s = api.make_settings(settings, **overrides)
        self.output_size = parse_output_size(output_size)
        if self.output_size is not None:
            s = s.replace(image_size=max(self.output_size))
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self.settings = s
        self.batch_size = batch_size
        self.devices = list(devices) if devices is not None else jax.local_devices()
        style_sets = list(style) if grid else [style]
        if grid and not style_sets:
            raise ValueError("no style image given: pass at least one.")
        self.styles = [api.prepare_styles(st, s) for st in style_sets]
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
        if key not in self._style_targets:  # style targets: once per style (and stage size)
            self._style_targets[key] = objective_mod.style_targets(
                self.objective, self.params, [vgg.preprocess(jnp.asarray(st)) for st in styles],
                self.settings.style_blend_weights)
        return objective_mod.with_weights(self.objective, self._weights if weights is None else weights,
                                          self._style_targets[key],
                                          objective_mod.content_targets(self.objective, self.params, caffe))

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

    def _run_chunk(self, chunk, contents, style_indices, labels, per_image, on_stop):
        s = self.settings
        histories: list[list[optim.Record]] = [[] for _ in chunk]
        errors: list[Exception | None] = [None] * len(chunk)
        offsets = [0] * len(chunk)
        x = None
        for scale in api.coarse_to_fine(s):  # the stages of nst_jax.stylize, with its images at each
            size, n_iter = scale.size, scale.iterations
            stage = [scale.images(contents[i], self.styles[style_indices[i]], s) for i in chunk]
            batched, shared = split_targets([self._targets(c, style_indices[i], st, per_image[i][1])
                                             for i, (c, st) in zip(chunk, stage)])
            if x is None:  # each image starts exactly where nst_jax.stylize would start it (same key, same shape)
                x0 = jnp.stack([api.initial_image(s, c, st) for c, st in stage])
            else:
                x0 = api.upsample(jnp.asarray(x), stage[0][0].shape[:2])
            run = optimize_batch(
                self.objective, self.spec, self.params, x0, batched, shared=shared, num_iterations=n_iter,
                chunk_size=s.chunk_size, print_every=s.print_every, loop=s.loop,
                devices=self.devices, labels=[labels[i] for i in chunk],
                on_stop=(lambda st, el: on_stop(chunk, st, el)) if on_stop else None)
            for m in range(len(chunk)):
                if errors[m] is None and run.errors[m] is not None:  # its iteration counted across the stages
                    errors[m] = run.errors[m].shifted(offsets[m])
                histories[m] += [dataclasses.replace(r, iteration=r.iteration + offsets[m], size=size)
                                 for r in run.histories[m]]
                offsets[m] += run.histories[m][-1].iteration if run.histories[m] else 0
            x = run.images()
        out: list[api.Result | Exception] = []
        for k, i in enumerate(chunk):
            if errors[k] is not None:
                out.append(errors[k])
            else:
                out.append(api.Result(api.finish_image(x[k], contents[i], s), histories[k], per_image[i][0],
                                      weights=self.weights))
        return out

    def stylize(self, contents: Sequence, style_indices: Sequence[int] | None = None, *, progress: bool = True,
                loss_weights: Sequence[Mapping | None] | None = None) -> list[api.Result]:
        """Loads, prepares and stylizes ``contents`` (``loss_weights``: see :meth:`iter_results`); results in
        input order. Raises on the first failure."""
        prepared = [self.prepare(c, label=f"content image {i}") for i, c in enumerate(contents)]
        labels = [f"content image {i} '{c}'" if isinstance(c, (str, os.PathLike)) else f"content image {i}"
                  for i, c in enumerate(contents)]
        results: list[api.Result | None] = [None] * len(prepared)
        bar = _images_bar(len(prepared)) if progress else None
        try:
            for chunk, outcomes, _ in self.iter_results(prepared, style_indices, labels=labels,
                                                        on_stop=_bar_postfix(bar) if bar else None,
                                                        loss_weights=loss_weights):
                for i, r in zip(chunk, outcomes):
                    if isinstance(r, Exception):
                        raise r
                    results[i] = r
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]


def _images_bar(total: int, **kw):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", dynamic_ncols=True, **kw)


def _bar_postfix(bar):
    def on_stop(chunk, state, _elapsed):
        its, totals = jax.device_get((state.iteration, state.terms.total))
        bar.set_postfix(batch=len(chunk), it=int(np.max(its)), loss=f"{float(np.nanmean(totals)):.4g}")
    return on_stop


def stylize_batch(contents: Sequence, style, settings: Settings | None = None, *, batch_size: int | None = None,
                  output_size=None, progress: bool = True, loss_weights: Sequence[Mapping | None] | None = None,
                  **overrides) -> list[api.Result]:
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
        Results in input order.

    Raises:
        ValueError / images.ImageError: a bad setting or image, naming it.
        nst_jax.optim.NonFiniteLossError: an image's loss became NaN/inf (use :func:`run_job` or
            :meth:`BatchStylizer.iter_results` to keep the others).
    """
    contents = list(contents)
    if not contents:
        return []
    stylizer = BatchStylizer(style, settings, batch_size=batch_size, output_size=output_size, **overrides)
    return stylizer.stylize(contents, progress=progress, loss_weights=loss_weights)


def stylize_grid(contents: Sequence, styles: Sequence, settings: Settings | None = None, *,
                 batch_size: int | None = None, output_size=None, progress: bool = True,
                 **overrides) -> list[list[api.Result]]:
    """Stylizes every content image with every style in compiled batches (a style grid).

    The pairs of one shape are batched together, style targets per pair. ``grid[i][j]`` equals
    ``nst_jax.stylize(contents[i], styles[j], ...)``.

    Args:
        contents: content images.
        styles: style images (each one image, or a list of images to blend).
        settings, batch_size, output_size, progress, overrides: as for :func:`stylize_batch`.

    Returns:
        ``grid[i][j]``: the result of content ``i`` with style ``j``.
    """
    contents, styles = list(contents), list(styles)
    if not contents or not styles:
        return [[] for _ in contents]
    stylizer = BatchStylizer(styles, settings, batch_size=batch_size, output_size=output_size, grid=True,
                             **overrides)
    pairs = [(i, j) for i in range(len(contents)) for j in range(len(styles))]
    flat = stylizer.stylize([contents[i] for i, _ in pairs], [j for _, j in pairs], progress=progress)
    return [flat[i * len(styles):(i + 1) * len(styles)] for i in range(len(contents))]


# --------------------------------------------------------------------------
# Jobs over folders: skip finished outputs, fail bad inputs alone, summary
# --------------------------------------------------------------------------


class DiskFullError(OSError):
    """The output disk is full (ENOSPC, or EDQUOT: quota exceeded): a batch job stops there.

    Disk space is not a per-image fault (every further image would fail the same way), so :func:`run_job`
    stops, writes its summary if it can, and raises this; rerun the same command once space is freed.

    Attributes:
        reason: what failed and what to do (also the summary's ``stopped``).
        input: the input whose output could not be written, or None (the summary, the journal).
        summary: the :class:`JobSummary` (set by :func:`run_job`).
        summary_written: whether the summary could still be written.
    """

    def __init__(self, reason: str, *, input: str | None = None, code: int = errno.ENOSPC):
        super().__init__(code, reason)
        self.reason, self.input = reason, input
        self.summary: JobSummary | None = None
        self.summary_written = False
        self.summary_error: str | None = None

    def __reduce__(self):  # picklable (e.g. from a Ray actor) with its reason
        return functools.partial(type(self), input=self.input, code=self.errno), (self.reason,)

    def __str__(self) -> str:
        if self.summary is None:
            return self.reason
        if self.summary_written:
            return f"{self.reason} The job stopped; summary: {self.summary.path}"
        return (f"{self.reason} The job stopped; the summary {self.summary.path} could not be written either "
                f"({self.summary_error}).")


def _disk_full(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``e`` (itself or its causes), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return e
        e = e.__cause__ or e.__context__
    return None


def _disk_full_error(e: BaseException, path, input: str | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` if ``e`` comes from a full disk, else None."""
    full = _disk_full(e)
    if full is None:
        return None
    name = errno.errorcode.get(full.errno, str(full.errno))
    return DiskFullError(f"no space left on the output disk ({name}: {os.strerror(full.errno)}) while writing "
                         f"'{path}'; free disk space (or choose another output directory), then run the same "
                         "command again: finished outputs are kept.", input=input, code=full.errno)


#: flock errors of filesystems that do not support locks (some network and FUSE filesystems).
_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


class _Claim:
    """This process's exclusive claim on an output name of a job folder, so that jobs sharing the folder
    never stylize one image twice (and write the summary one at a time).

    The claim is the file ``.<name>.lock`` next to the output, locked with ``flock``: the OS drops the lock
    when its process ends, however it ends (SIGKILL, a lost machine on NFS after the lease), so a claim is
    never stale; the file a killed job leaves is simply claimed again. The holder removes the file before
    unlocking it; whoever locks a file that was already there (``stale``) knows that its holder died and
    removes the temporary files it left (only a claim holder writes that name). Without ``fcntl``
    (Windows), or on a filesystem without locks, the file is still created and removed, but does not
    exclude another job, and nothing is taken for stale.
    """

    def __init__(self, fd: int, path: Path, *, exclusive: bool, stale: bool):
        self.fd, self.path, self.exclusive, self.stale = fd, path, exclusive, stale

    @staticmethod
    def lock_path(output: Path) -> Path:
        return output.with_name(f".{output.name}.lock")

    @classmethod
    def take(cls, output: Path, *, wait: bool) -> _Claim | None:
        """Claims ``output``; None if another process holds it (``wait``: wait for it instead)."""
        path = cls.lock_path(output)
        while True:
            try:
                fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(path, os.O_RDWR), False
                except FileNotFoundError:  # released meanwhile
                    continue
            locked = fcntl is not None
            try:
                if locked:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                    except OSError as e:  # a filesystem without locks: go on unlocked rather than fail the job
                        if e.errno not in _NO_LOCKS:
                            raise
                        locked = False
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except BlockingIOError:
                os.close(fd)
                return None
            except FileNotFoundError:
                current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)  # its holder released it while we waited: claim the name anew
        # The file stays empty (no data block per claimed image on a nearly full disk): the lock, not the
        # content, says whether it is held.
        return cls(fd, path, exclusive=locked, stale=locked and not created)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


#: ``.<name>.<token>.tmp`` (:func:`nst_jax.images._create_temp`'s temporary files) and ``.<name>.lock`` (claims).
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")
_LOCK_RE = re.compile(r"\.(?P<name>.+)\.lock")


def _remove_temps(output: Path) -> int:
    """Removes the temporary files of ``output`` (call it only while holding its claim); returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(output.parent) as entries:
        for entry in entries:
            m = _TEMP_RE.fullmatch(entry.name)
            if m and m["name"] == output.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _file_id(path) -> dict:
    """Identifies one version of a file (a rewrite changes it): inode, modification time, size."""
    st = os.stat(path)
    return {"inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _recover_journal(output: Path) -> bool:
    """Under a stale claim of ``output``: if its holder died between writing ``output`` and recording it in
    the journal, records it now (marked ``recovered``, input, iterations and loss from the file's metadata),
    so that the journal lists every output written exactly once. Returns whether it did."""
    try:
        file = _file_id(output)
        meta = images.read_metadata(output) or {}
    except (OSError, images.ImageError):
        return False
    if "input" not in meta:  # not a job's output
        return False
    journal = output.parent / JOURNAL_NAME
    with contextlib.suppress(FileNotFoundError), open(journal, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("file") == file and Path(str(rec.get("output"))).name == output.name:
                    return False  # recorded
    _append_journal(journal, {"input": meta["input"], "output": str(output), "status": "ok",
                              "iterations": meta.get("iterations"), "loss": meta.get("loss"), "recovered": True,
                              "file": file})
    return True


def _append_journal(journal: Path, record: dict) -> None:
    """Appends one JSON line: one ``write`` to a file opened for appending, so that the lines of jobs sharing
    the folder never interleave (and a killed job leaves no half line)."""
    line = json.dumps({"time": _now(), "host": platform.node(), "pid": os.getpid(), **record}, default=str) + "\n"
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def clean_stale_files(output_dir, names) -> int:
    """Removes what killed jobs left in ``output_dir`` for these output ``names``: temporary files and claim
    files that no live process holds (a live job's are left alone); records in the journal an output that a
    killed job wrote but had not recorded yet. Returns how many files were removed."""
    output_dir, names = Path(output_dir), set(names)
    try:
        entries = os.listdir(output_dir)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    found = {m["name"] for e in entries for m in [_TEMP_RE.fullmatch(e) or _LOCK_RE.fullmatch(e)]
             if m and m["name"] in names}
    removed = 0
    for name in sorted(found):
        claim = _Claim.take(output_dir / name, wait=False)
        if claim is not None:
            if claim.exclusive:
                removed += _remove_temps(output_dir / name)
            if claim.stale:
                removed += 1
                _recover_journal(output_dir / name)
            claim.release()
    return removed


@dataclass
class ImageStatus:
    """One input's line in the job summary.

    ``status``: "ok" (written), "failed" (``error`` says why), "skipped" (its output, written by nst_jax,
    already existed),
    or "pending" (not reached: the job was interrupted or stopped, or another job on the folder held it,
    ``error`` then says which). ``seconds``: its load time plus its share of
    its batch's wall time. ``worker``: the Ray actor (host:pid) that did it, None locally.
    """

    input: str
    output: str | None
    status: str = "pending"
    error: str | None = None
    loss: float | None = None
    iterations: int | None = None
    seconds: float | None = None
    worker: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class JobSummary:
    """What a batch job did; written as JSON to ``<output_dir>/nst_jax_summary.json``.

    ``stopped``: why the job stopped before the end (a full disk), else None. ``done_by_others``: inputs
    skipped because another job on the folder wrote their output while this one ran (their rows in the
    file are that job's, see :meth:`write`).
    """

    output_dir: Path
    rows: list[ImageStatus]
    inputs: str = ""
    styles: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # weights.describe: file path and MD5, or random and seed
    runner: str = "local"
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    interrupted: bool = False
    seconds: float = 0.0
    stopped: str | None = None
    done_by_others: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return Path(self.output_dir) / SUMMARY_NAME

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def failed(self) -> list[ImageStatus]:
        return [r for r in self.rows if r.status == "failed"]

    @property
    def exit_code(self) -> int:
        """130 if interrupted, 3 if stopped (disk full), 1 if any input failed, else 0."""
        return 130 if self.interrupted else 3 if self.stopped else (1 if self.failed else 0)

    def totals(self) -> dict:
        ok = self.count("ok")
        busy = sum(r.seconds or 0.0 for r in self.rows if r.status == "ok")
        return {"images": len(self.rows), "ok": ok, "failed": self.count("failed"),
                "skipped": self.count("skipped"), "pending": self.count("pending"),
                "seconds": round(self.seconds, 3),
                "images_per_second": round(ok / self.seconds, 4) if self.seconds > 0 and ok else None,
                "seconds_per_image": round(busy / ok, 4) if ok else None}

    def as_dict(self) -> dict:
        return {"version": 1, "runner": self.runner, "started": self.started, "finished": self.finished,
                "interrupted": self.interrupted, "stopped": self.stopped, "inputs": self.inputs,
                "output_dir": str(self.output_dir),
                "styles": self.styles, "settings": self.settings, "weights": self.weights, "totals": self.totals(),
                "host": platform.node(), "images": [r.as_dict() for r in self.rows]}

    def write(self) -> Path:
        """Writes the summary atomically (a temp file renamed over it), merged with the one in the folder.

        Jobs may share an output folder, so the summary is read, merged and written under the folder's
        summary claim (one job at a time; temporary files of a killed writer are removed): an input this
        job left "pending", or skipped because another job wrote its output meanwhile, keeps that job's
        "ok" or "failed" row from the file. Other rows are this job's.
        """
        self.path.parent.mkdir(exist_ok=True)
        claim = _Claim.take(self.path, wait=True)
        try:
            if claim.stale:
                _remove_temps(self.path)
            _write_json_atomic(self.path, self._merged())
        finally:
            claim.release()
        return self.path

    def _merged(self) -> dict:
        try:
            theirs = {r["input"]: r for r in json.loads(self.path.read_text(encoding="utf-8"))["images"]
                      if isinstance(r, dict) and r.get("status") in ("ok", "failed")}
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: ours alone
            return self.as_dict()
        fields = [f.name for f in dataclasses.fields(ImageStatus)]
        rows = [ImageStatus(**{f: theirs[r.input].get(f) for f in fields})
                if r.input in theirs and (r.status == "pending" or (r.status == "skipped"
                                                                     and r.input in self.done_by_others))
                else r for r in self.rows]
        return dataclasses.replace(self, rows=rows).as_dict()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(exist_ok=True)  # only the last level (images.check_output_path checked the rest)
    fd, temp = images._create_temp(path)  # 0666 minus the umask, as the image outputs (mkstemp: 0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _check_suffix(suffix: str) -> str:
    suffix = suffix if suffix.startswith(".") else "." + suffix
    if suffix.lower() not in images.SAVE_FORMATS:
        raise ValueError(f"output suffix {suffix!r} is not a format we write; use one of "
                         f"{', '.join(sorted(images.SAVE_FORMATS))}.")
    return suffix


def _finite_or_none(v) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


class BatchJob:
    """Stylizes image files into ``output_dir``: the per-batch work of :func:`run_job` and of a Ray actor.

    Output names: ``<input stem><suffix>``. An existing output that nst_jax wrote is skipped (writes are
    atomic, so it is complete) unless ``overwrite``; any other existing file fails that input unless
    ``overwrite``. Without a stylizer it only plans (names, skips).
    """

    def __init__(self, stylizer: BatchStylizer | None, output_dir, *, suffix: str = ".png", overwrite: bool = False):
        self.stylizer = stylizer
        self.output_dir = Path(output_dir).expanduser()
        self.suffix = _check_suffix(suffix)
        self.overwrite = overwrite
        self.done_by_others: set[str] = set()  # inputs another job on the folder wrote while this one ran

    def output_path(self, path) -> Path:
        return self.output_dir / (Path(path).stem + self.suffix)

    def precheck(self, path) -> ImageStatus | None:
        """The row of an input that needs no work, else None: "skipped" if its output exists and nst_jax wrote
        it (:func:`nst_jax.images.is_own_output`); "failed" if the output would overwrite the input itself, or
        exists but is some other program's file (not taken for a finished output; ``overwrite`` replaces it)."""
        out = self.output_path(path)
        if images.same_file(out, Path(path)):
            return ImageStatus(str(path), str(out), "failed",
                               error=f"its output '{out}' would overwrite the input; choose another output "
                                     "directory or suffix")
        if out.exists() and not self.overwrite:
            if images.is_own_output(out):
                return ImageStatus(str(path), str(out), "skipped")
            return ImageStatus(str(path), str(out), "failed",
                               error=f"its output '{out}' already exists and was not written by nst_jax, so it is "
                                     "not taken for a finished output; move it away, choose another output "
                                     "directory, or pass --overwrite (Python: overwrite=True) to replace it")
        return None

    def process(self, paths: Sequence, on_row: Callable[[int, ImageStatus], None] | None = None, *,
                wait: bool = False) -> list[ImageStatus]:
        """Stylizes ``paths``; returns one row per path (in order), calling ``on_row(position, row)`` as each
        row is final. Outputs are written as soon as their batch is done.

        Each input is claimed first (:class:`_Claim`), so that jobs sharing the output folder never stylize
        an image twice: an input another live job holds gets a "pending" row saying so (with ``wait``, this
        waits for that job instead, then skips the input if it wrote the output, else does it). Whatever
        a killed job left for the name is removed on the way. Each image written or failed here is recorded
        in the journal (:data:`JOURNAL_NAME`). A bad input fails alone, whatever its loader raises.

        Raises:
            DiskFullError: the output disk is full; that input's row says so and nothing further is tried.
        """
        rows: list[ImageStatus | None] = [None] * len(paths)
        claims: dict[int, _Claim] = {}
        if paths:
            self.output_dir.mkdir(exist_ok=True)  # for the claims

        def finish(k, row, journal=True):
            try:
                if journal and k in claims and row.status in ("ok", "failed"):
                    self._journal(row)
            finally:
                claim = claims.pop(k, None)
                if claim is not None:
                    claim.release()
            rows[k] = row
            if on_row is not None:
                on_row(k, row)

        try:
            prepared, where, load_s = [], [], []
            for k, path in enumerate(paths):
                pre = self.precheck(path)
                if pre is not None:
                    if pre.status == "skipped":  # planned (run_job) as needing work: another job did it since
                        self.done_by_others.add(str(path))
                    finish(k, pre)
                    continue
                out = self.output_path(path)
                claim = _Claim.take(out, wait=wait)
                if claim is None:
                    finish(k, ImageStatus(str(path), str(out), "pending",
                                          error=f"another job on this folder was stylizing it (it holds "
                                                f"'{_Claim.lock_path(out).name}')"))
                    continue
                claims[k] = claim
                if claim.stale:  # its holder died here: clean up after it
                    _remove_temps(out)
                    _recover_journal(out)
                pre = self.precheck(path)  # another job may have written it meanwhile
                if pre is not None:
                    claims.pop(k).release()
                    if pre.status == "skipped":
                        self.done_by_others.add(str(path))
                    finish(k, pre)
                    continue
                t0 = time.perf_counter()
                try:
                    prepared.append(self.stylizer.prepare(path, label="input"))
                except (images.ImageError, ValueError, OSError) as e:
                    finish(k, ImageStatus(str(path), None, "failed", error=str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 - whatever a decoder raises, a bad input fails alone
                    finish(k, ImageStatus(str(path), None, "failed",
                                          error=f"input '{path}' could not be loaded ({type(e).__name__}: {e}); "
                                                "check that it is a valid image, or re-save it as PNG or JPEG"))
                    continue
                where.append(k)
                load_s.append(time.perf_counter() - t0)
            labels = [f"input '{paths[k]}'" for k in where]
            for chunk, outcomes, seconds in self.stylizer.iter_results(prepared, labels=labels):
                for j, r in zip(chunk, outcomes):
                    k = where[j]
                    path, out = paths[k], self.output_path(paths[k])
                    t = load_s[j] + seconds / len(chunk)
                    if isinstance(r, Exception):
                        finish(k, ImageStatus(str(path), None, "failed", error=str(r), seconds=t))
                        continue
                    last = r.history[-1]
                    try:
                        r.save(out, metadata={"input": str(path), "iterations": last.iteration, "loss": last.total})
                    except images.ImageError as e:
                        full = _disk_full_error(e, out, input=str(path))
                        finish(k, ImageStatus(str(path), None, "failed", error=str(full or e), seconds=t),
                               journal=full is None)
                        if full is not None:
                            raise full from e
                        continue
                    finish(k, ImageStatus(str(path), str(out), "ok", loss=_finite_or_none(last.total),
                                          iterations=last.iteration, seconds=round(t, 4)))
        except OSError as e:
            full = None if isinstance(e, DiskFullError) else _disk_full_error(e, e.filename or self.output_dir)
            if full is not None:  # the journal or a claim file could not be written
                raise full from e
            raise
        finally:
            for claim in claims.values():
                claim.release()
        return rows  # type: ignore[return-value]

    def _journal(self, row: ImageStatus) -> None:
        """Records ``row`` in the journal (an output written: with the identity of the file, see
        :func:`_recover_journal`)."""
        file = {"file": _file_id(row.output)} if row.status == "ok" and row.output else {}
        _append_journal(self.output_dir / JOURNAL_NAME, {**row.as_dict(), **file})


def resolve_inputs(inputs) -> list[Path]:
    """A directory, glob, manifest or image path (``images.list_images``), or a list of paths."""
    if isinstance(inputs, (str, os.PathLike)):
        return images.list_images(inputs)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise images.ImageError("no input images given")
    return paths


def plan_job(job: BatchJob, paths: Sequence[Path], summary: JobSummary) -> list[int]:
    """Fills the rows that need no work (existing outputs, clashing names); returns the rest's positions.

    An input is never taken for an output: inputs whose output would be another input of the job (an output
    folder that is the input folder), and every input of a group that shares one output name (``photo.jpg``
    and ``photo.png`` -> ``photo.png``), fail with the reason, even with ``overwrite``.
    """
    owners = collections.defaultdict(list)
    for k, p in enumerate(paths):
        owners[job.output_path(p)].append(k)
    inputs = {}  # file identity (device, inode) -> input: also through symlinks and hard links
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            inputs.setdefault((st.st_dev, st.st_ino), p)
    todo = []
    for k, p in enumerate(paths):
        out = job.output_path(p)
        others = [str(paths[j]) for j in owners[out] if j != k]
        if others:
            summary.rows[k] = ImageStatus(str(p), None, "failed",
                                          error=f"its output name '{out.name}' is also that of input(s) "
                                                f"{', '.join(repr(o) for o in others)}; rename one of them")
            continue
        try:
            st = os.stat(out)
            other = inputs.get((st.st_dev, st.st_ino))
        except OSError:
            other = None
        if other is not None and not images.same_file(other, p):
            summary.rows[k] = ImageStatus(str(p), None, "failed",
                                          error=f"its output '{out}' is the input '{other}' of this job; an input "
                                                "is never replaced nor taken for a finished output: choose another "
                                                "output directory (or suffix)")
            continue
        pre = job.precheck(p)
        if pre is not None:
            summary.rows[k] = pre
        else:
            todo.append(k)
    return todo


def run_job(inputs, style, output_dir, settings: Settings | None = None, *, batch_size: int | None = None,
            output_size=None, suffix: str = ".png", overwrite: bool = False, progress: bool = True,
            callback: Callable[[ImageStatus], None] | None = None, **overrides) -> JobSummary:
    """Stylizes a folder (or glob, manifest, list) of images into ``output_dir``; resumable.

    Outputs are ``<stem><suffix>`` (PNG by default, with the settings as metadata), written atomically
    as each batch finishes. Inputs whose output exists (written by nst_jax) are skipped, so rerunning an
    interrupted job finishes the rest; an output name that is another input, or that two inputs share, fails
    those inputs. A bad input (unreadable, corrupt, too small, NaN loss) fails alone. The summary
    ``<output_dir>/nst_jax_summary.json`` (per input: status, reason, loss, seconds; totals) is written
    atomically after every window of images and at the end, also on Ctrl-C (then re-raised).

    Faults: a job killed at any point (SIGKILL, a lost machine) leaves only complete outputs; its temporary
    and claim files are removed by the next run, which finishes the rest. Several jobs may work on one
    output folder at once (claims, see :meth:`BatchJob.process`): each image is stylized by one of them,
    a job waits at its end for the images another holds, and the summary is merged, not overwritten. A full
    disk stops the job (:class:`DiskFullError`). The journal :data:`JOURNAL_NAME` records each image done.

    Args:
        inputs: a directory, glob pattern, manifest file (one path per line) or list of paths.
        style: the style image(s) (several are blended, as for :func:`nst_jax.stylize`).
        output_dir: where outputs and the summary go (created if missing; only that last level: its parent
            must exist).
        settings, overrides: as for ``stylize``.
        batch_size, output_size: as for :func:`stylize_batch`.
        suffix: output extension (".png", ".jpg", ...).
        overwrite: redo inputs whose output exists (replacing also files nst_jax did not write; never inputs).
        progress: a progress bar over images (images/s).
        callback: called with each input's row when it is final.

    Returns:
        The :class:`JobSummary` (``exit_code``: 1 if any input failed).

    Raises:
        ValueError / images.ImageError: bad settings, style or inputs spec (before any work).
        KeyboardInterrupt: after writing the summary of what finished.
        DiskFullError: the output disk is full; after writing the summary (``stopped`` says why) if it could.
    """
    paths = resolve_inputs(inputs)
    output_dir = Path(output_dir).expanduser()
    suffix = _check_suffix(suffix)
    images.check_output_path(output_dir / f"probe{suffix}")
    stylizer = BatchStylizer(style, settings, batch_size=batch_size, output_size=output_size, **overrides)
    check_job_settings(stylizer.settings)
    job = BatchJob(stylizer, output_dir, suffix=suffix, overwrite=overwrite)
    summary = JobSummary(output_dir, [ImageStatus(str(p), str(job.output_path(p))) for p in paths],
                         inputs=str(inputs) if isinstance(inputs, (str, os.PathLike)) else "",
                         styles=_style_names(style), settings=stylizer.settings.to_dict(), weights=stylizer.weights)
    summary.done_by_others = job.done_by_others
    t0 = time.perf_counter()
    clean_stale_files(output_dir, [job.output_path(p).name for p in paths] + [SUMMARY_NAME])
    todo = plan_job(job, paths, summary)
    bar = _images_bar(len(paths), initial=len(paths) - len(todo)) if progress else None

    def on_row(row: ImageStatus, k: int) -> None:
        summary.rows[k] = row
        if row.status == "pending":  # another job holds it: done later (see below)
            return
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=summary.count("failed"), refresh=False)
        if callback is not None:
            callback(row)

    window = max(64, 4 * (batch_size or MAX_DEFAULT_BATCH * len(stylizer.devices)))
    stop: DiskFullError | None = None
    try:
        summary.write()
        held = []
        for start in range(0, len(todo), window):
            ks = todo[start:start + window]
            rows = job.process([paths[k] for k in ks], on_row=lambda j, row, ks=ks: on_row(row, ks[j]))
            held += [k for k, row in zip(ks, rows) if row.status == "pending"]
            summary.seconds = time.perf_counter() - t0
            summary.write()
        if held:  # inputs another job on the folder held: wait for it, then do what it left undone
            job.process([paths[k] for k in held], on_row=lambda j, row: on_row(row, held[j]), wait=True)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    except OSError as e:  # a full disk stops the job; any other error propagates
        stop = e if isinstance(e, DiskFullError) else _disk_full_error(e, e.filename or summary.path)
        if stop is None:
            raise
        summary.stopped = stop.reason
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        summary.finished = _now()
        try:
            summary.write()
        except OSError as e:
            full = stop or _disk_full_error(e, summary.path)
            if full is None:
                raise
            full.summary, full.summary_error = summary, str(e)
            raise full from e
    if stop is not None:
        stop.summary, stop.summary_written = summary, True
        raise stop
    return summary


def check_job_settings(s: Settings) -> None:
    """Settings a file job cannot honor are an error, not a silent no-op."""
    if s.save_every:
        raise ValueError("save_every (snapshots) is not supported by batch jobs; use nst-jax on one image for "
                         "snapshots, or leave it 0.")


def _style_names(style) -> list[str]:
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    return [str(s) if isinstance(s, (str, os.PathLike)) else type(s).__name__ for s in styles]
