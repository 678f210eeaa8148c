"""Many images: buckets of equal shape, ``vmap`` of the single-image optimizer, sharding over devices,
and resumable jobs over folders.

The math is :func:`nst_jax.optim.init` / :func:`nst_jax.optim.step` of *one* image; a batch is
``jax.vmap`` of those pure functions with per-image optimizer state::

    targets = {"content": per image (vmapped, axis 0), "style": shared (in_axes None)}

(in a style grid, :func:`stylize_grid`, the style targets are per image too). ``optim.step`` freezes
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
every output that exists (it is complete); bad inputs fail alone and are listed with the reason in
``<output_dir>/nst_jax_summary.json``. :mod:`nst_jax.ray_job` runs the same per-batch code in Ray
actors across hosts.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nst_jax import api, images, optim, vgg
from nst_jax import objective as objective_mod
from nst_jax.config import Settings
from nst_jax.objective import Objective

__all__ = [
    "BatchRun", "BatchStylizer", "ImageStatus", "JobSummary", "SUMMARY_NAME", "default_batch_size",
    "estimate_image_bytes", "fit_to_size", "free_memory_bytes", "optimize_batch", "parse_output_size",
    "run_job", "stylize_batch", "stylize_grid",
]

#: Name of the job summary written into the output folder.
SUMMARY_NAME = "nst_jax_summary.json"

#: Largest default batch per device: beyond this the throughput gain is small and a failure costs more.
MAX_DEFAULT_BATCH = 16

#: Share of the free memory a default batch may use (the rest: XLA workspace, other processes).
_MEMORY_SHARE = {"device": 0.7, "host": 0.5}

#: Traces of the batched functions, keyed by ``(function, batch shape (B, H, W, 3), style batched)``.
#: A trace precedes each compilation: tests assert with it that a bucket compiles once.
trace_counts: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------
# The vmapped single-image step
# --------------------------------------------------------------------------


def _target_axes(style_batched: bool) -> dict:
    return {"content": 0, "style": 0 if style_batched else None}


def _constrain(tree, sharding):
    """Keeps every leaf (all have the batch axis first) sharded along the batch."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_batch(objective, spec, style_batched, sharding, params, x0, targets):
    trace_counts["init", tuple(x0.shape), style_batched] += 1
    init = jax.vmap(functools.partial(optim.init, objective, spec), in_axes=(None, 0, _target_axes(style_batched)))
    return _constrain(init(params, x0, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=(5,))
def _step_batch(objective, spec, style_batched, sharding, params, state, targets):
    trace_counts["step", tuple(state.x.shape), style_batched] += 1
    step = jax.vmap(functools.partial(optim.step, objective, spec), in_axes=(None, 0, _target_axes(style_batched)))
    return _constrain(step(params, state, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=(5,))
def _steps_batch(objective, spec, style_batched, sharding, params, state, targets, n):
    trace_counts["steps", tuple(state.x.shape), style_batched] += 1
    steps = jax.vmap(functools.partial(optim.steps, objective, spec),
                     in_axes=(None, 0, _target_axes(style_batched), None))
    return _constrain(steps(params, state, targets, n), sharding)


def batch_stepper(objective: Objective, spec: optim.SolverSpec, params, targets, *, style_batched: bool = False,
                  loop: str = "auto", sharding: NamedSharding | None = None) -> optim.Stepper:
    """Compiled ``init``/``advance`` of a batch: ``vmap`` of :func:`optim.init`/:func:`optim.step`.

    The batched counterpart of :func:`optim.single_image_stepper`, with the same loop forms. Objective,
    spec, ``style_batched`` and ``sharding`` are static, so the same problem and shapes never recompile.

    Args:
        objective, spec: the loss and the optimizer.
        params: VGG-19 params (shared by every image).
        targets: ``{"content": leaves (B, ...), "style": leaves (...) or (B, ...)}``.
        style_batched: the style targets have a batch axis (a style grid).
        loop: "step", "chunk" or "auto" (:func:`optim.default_loop`).
        sharding: the batch-axis sharding over several devices, or None.
    """
    loop = optim.default_loop() if loop == "auto" else loop
    params = objective.prepare(params)  # once, not in every iteration

    def init(x0):
        return _init_batch(objective, spec, style_batched, sharding, params, x0, targets)

    def advance(state, n):
        if loop == "step":
            for _ in range(n):
                state = _step_batch(objective, spec, style_batched, sharding, params, state, targets)
            return state
        return _steps_batch(objective, spec, style_batched, sharding, params, state, targets,
                            jnp.asarray(n, jnp.int32))

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
                   num_iterations: int, chunk_size: int = 25, print_every: int = 0, loop: str = "auto",
                   style_batched: bool = False, devices: Sequence | None = None, labels: Sequence[str] | None = None,
                   on_stop: Callable[[optim.State, float], None] | None = None) -> BatchRun:
    """Optimizes a batch of images of one shape: ``vmap`` of the single-image step, driven by :func:`optim.run`.

    Args:
        objective, spec, params: as for one image.
        x0: initial Caffe-space images ``(B, H, W, 3)``.
        targets: ``{"content": leaves (B, ...), "style": shared leaves, or (B, ...) if style_batched}``.
        num_iterations, chunk_size, print_every, loop: as in :class:`Settings`.
        style_batched: the style targets have a batch axis.
        devices: devices to shard the batch over (default ``jax.local_devices()``); one device: no sharding.
        labels: names of the images for error messages.
        on_stop: called as ``on_stop(state, elapsed)`` with the whole batch state at each record.

    Returns:
        A :class:`BatchRun`. An image whose loss becomes NaN/inf fails alone (``errors[i]``): its state
        is replaced by a copy of a healthy member (same shape, so nothing recompiles) and the others go on.
    """
    b = int(x0.shape[0])
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(b)]
    devices = list(devices) if devices is not None else jax.local_devices()
    sharding = replicated = None
    if len(devices) > 1:
        sharding, replicated = _mesh_shardings(devices)
    padded = b if sharding is None else -(-b // len(devices)) * len(devices)
    if padded != b:  # pad with copies of the last image (dropped from the results)
        idx = jnp.asarray(list(range(b)) + [b - 1] * (padded - b))
        x0 = x0[idx]
        targets = {"content": jax.tree.map(lambda a: a[idx], targets["content"]),
                   "style": jax.tree.map(lambda a: a[idx], targets["style"]) if style_batched else targets["style"]}
    if sharding is not None:
        x0 = jax.device_put(x0, sharding)
        params = jax.device_put(params, replicated)
        targets = {"content": jax.device_put(targets["content"], sharding),
                   "style": jax.device_put(targets["style"], sharding if style_batched else replicated)}

    stepper = batch_stepper(objective, spec, params, targets, style_batched=style_batched, loop=loop,
                            sharding=sharding)
    live = [True] * b + [False] * (padded - b)
    histories: list[list[optim.Record]] = [[] for _ in range(b)]
    errors: list[Exception | None] = [None] * b
    t0 = time.perf_counter()
    last: dict[str, Any] = {}

    def init(x):  # keeps the state optim.run last saw, to recover from a NaN member
        last["state"] = last.pop("resume") if "resume" in last else stepper.init(x)
        last["it"] = 0
        return last["state"]

    def advance(state, n):
        last["state"] = stepper.advance(state, n)
        last["it"] += n
        return last["state"]

    def record(state, _elapsed):
        elapsed = time.perf_counter() - t0
        its, terms = jax.device_get((state.iteration, state.terms))
        for i in range(b):
            it = int(its[i])
            if live[i] and (not histories[i] or histories[i][-1].iteration != it):
                histories[i].append(optim.Record(it, float(terms.total[i]), float(terms.content[i]),
                                                 float(terms.style[i]), float(terms.tv[i]), elapsed))
        if on_stop is not None:
            on_stop(state, elapsed)

    stops = optim.checkpoints(num_iterations, print_every)
    remaining, start = num_iterations, x0
    while True:
        try:
            state = optim.run(optim.Stepper(init, advance), start, remaining, chunk_size=chunk_size, stops=stops,
                              on_stop=record)
            break
        except optim.NonFiniteLossError:
            state, done = last["state"], last["it"]
            totals, its = jax.device_get((state.terms.total, state.iteration))
            finite = np.isfinite(totals)
            for i in np.flatnonzero(~finite):
                if i < b and live[i]:
                    errors[i] = optim.NonFiniteLossError(
                        f"{labels[i]}: the loss became non-finite ({float(totals[i])}) by iteration {int(its[i])}. "
                        "Lower the learning rate or the loss weights, or use optimizer='adam'; no image was "
                        "written for it.")
                live[i] = False
            if not finite.any():
                break
            # Same shape as before (no recompile): failed members become copies of a healthy one.
            src = jnp.asarray(np.where(finite, np.arange(padded), int(np.flatnonzero(finite)[0])))
            state = jax.tree.map(lambda a: a[src], state)
            if sharding is not None:
                state = jax.device_put(state, sharding)
            last["resume"] = state
            remaining -= done
            stops = [s - done for s in stops if s > done]
            start = state.x
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
    deepest = max(vgg.layer_index(l) for l in objective.layers)
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
        self.objective = Objective.from_settings(s)
        self.spec = optim.SolverSpec.from_settings(s)
        self._style_targets: dict[tuple, dict] = {}

    def prepare(self, content, label: str = "content image") -> np.ndarray:
        """Loads a content image and brings it to its working size (resize, or fit to ``output_size``)."""
        img = images.load_image(content, label=label)
        if self.output_size is not None:
            return fit_to_size(img, self.output_size)
        return images.resize_long_side(img, self.settings.image_size, label=label)

    def _targets(self, content: np.ndarray, style_index: int, styles: list[np.ndarray] | None = None) -> dict:
        """Targets of one image; ``styles``: the style images of a coarse-to-fine stage (default full size)."""
        caffe = vgg.preprocess(jnp.asarray(content))
        styles = self.styles[style_index] if styles is None else styles
        key = (style_index, tuple(styles[0].shape))
        if key not in self._style_targets:  # style Gram matrices: once per style (and stage size)
            self._style_targets[key] = objective_mod.style_targets(
                self.objective, self.params, [vgg.preprocess(jnp.asarray(st)) for st in styles],
                self.settings.style_blend_weights)
        return {"content": objective_mod.content_targets(self.objective, self.params, caffe),
                "style": self._style_targets[key]}

    def batch_size_for(self, shape_hw: tuple[int, int]) -> int:
        """The batch size used for a bucket of this shape."""
        if self.batch_size is not None:
            return self.batch_size
        return default_batch_size(shape_hw, self.objective, self.spec, devices=self.devices)

    def iter_results(self, contents: Sequence[np.ndarray], style_indices: Sequence[int] | None = None, *,
                     labels: Sequence[str] | None = None,
                     on_stop: Callable[[list[int], optim.State, float], None] | None = None,
                     ) -> Iterator[tuple[list[int], list[api.Result | Exception], float]]:
        """Stylizes prepared content images, bucket by bucket, batch by batch.

        Args:
            contents: RGB float images already at their working size (see :meth:`prepare`).
            style_indices: per image, which style (grid column) to use; default style 0 for all.
            labels: names for error messages.
            on_stop: called as ``on_stop(indices, state, elapsed)`` at each progress record of a batch.

        Yields:
            ``(indices, outcomes, seconds)`` per compiled batch, in bucket order: the input positions, a
            :class:`nst_jax.Result` or the exception that failed that image alone, and the batch's wall time.
        """
        n = len(contents)
        style_indices = list(style_indices) if style_indices is not None else [0] * n
        labels = list(labels) if labels is not None else [f"content image {i}" for i in range(n)]
        style_batched = len(set(style_indices)) > 1
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
                    outcomes = self._run_chunk(chunk, contents, style_indices, labels, style_batched, on_stop)
                except jax.errors.JaxRuntimeError as e:
                    if "RESOURCE_EXHAUSTED" in str(e) and len(chunk) > 1:  # the estimate was too high: halve
                        half = (len(chunk) + 1) // 2
                        pending[:0] = [chunk[:half], chunk[half:]]
                        continue
                    raise
                yield chunk, outcomes, time.perf_counter() - t0

    def _run_chunk(self, chunk, contents, style_indices, labels, style_batched, on_stop):
        s = self.settings
        histories: list[list[optim.Record]] = [[] for _ in chunk]
        errors: list[Exception | None] = [None] * len(chunk)
        offsets = [0] * len(chunk)
        x = None
        for scale in api.coarse_to_fine(s):  # the stages of nst_jax.stylize, with its images at each
            size, n_iter = scale.size, scale.iterations
            stage = [scale.images(contents[i], self.styles[style_indices[i]], s) for i in chunk]
            targets = [self._targets(c, style_indices[i], st) for i, (c, st) in zip(chunk, stage)]
            batched = {"content": jax.tree.map(lambda *a: jnp.stack(a), *[t["content"] for t in targets]),
                       "style": (jax.tree.map(lambda *a: jnp.stack(a), *[t["style"] for t in targets])
                                 if style_batched else targets[0]["style"])}
            if x is None:  # each image starts exactly where nst_jax.stylize would start it (same key, same shape)
                x0 = jnp.stack([api.initial_image(s, c, st) for c, st in stage])
            else:
                x0 = api.upsample(jnp.asarray(x), stage[0][0].shape[:2])
            run = optimize_batch(
                self.objective, self.spec, self.params, x0, batched, num_iterations=n_iter,
                chunk_size=s.chunk_size, print_every=s.print_every, loop=s.loop, style_batched=style_batched,
                devices=self.devices, labels=[labels[i] for i in chunk],
                on_stop=(lambda st, el: on_stop(chunk, st, el)) if on_stop else None)
            for m in range(len(chunk)):
                histories[m] += [dataclasses.replace(r, iteration=r.iteration + offsets[m], size=size)
                                 for r in run.histories[m]]
                offsets[m] += run.histories[m][-1].iteration if run.histories[m] else 0
                errors[m] = errors[m] or run.errors[m]
            x = run.images()
        out: list[api.Result | Exception] = []
        for k, i in enumerate(chunk):
            if errors[k] is not None:
                out.append(errors[k])
            else:
                out.append(api.Result(api.finish_image(x[k], contents[i], s), histories[k], s))
        return out

    def stylize(self, contents: Sequence, style_indices: Sequence[int] | None = None, *, progress: bool = True,
                ) -> list[api.Result]:
        """Loads, prepares and stylizes ``contents``; results in input order. Raises on the first failure."""
        prepared = [self.prepare(c, label=f"content image {i}") for i, c in enumerate(contents)]
        labels = [f"content image {i} '{c}'" if isinstance(c, (str, os.PathLike)) else f"content image {i}"
                  for i, c in enumerate(contents)]
        results: list[api.Result | None] = [None] * len(prepared)
        bar = _images_bar(len(prepared)) if progress else None
        try:
            for chunk, outcomes, _ in self.iter_results(prepared, style_indices, labels=labels,
                                                        on_stop=_bar_postfix(bar) if bar else None):
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
                  output_size=None, progress: bool = True, **overrides) -> list[api.Result]:
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
    return stylizer.stylize(contents, progress=progress)


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


@dataclass
class ImageStatus:
    """One input's line in the job summary.

    ``status``: "ok" (written), "failed" (``error`` says why), "skipped" (its output already existed),
    or "pending" (not reached: the job was interrupted). ``seconds``: its load time plus its share of
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
    """What a batch job did; written as JSON to ``<output_dir>/nst_jax_summary.json``."""

    output_dir: Path
    rows: list[ImageStatus]
    inputs: str = ""
    styles: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    runner: str = "local"
    started: str = field(default_factory=lambda: _now())
    finished: str | None = None
    interrupted: bool = False
    seconds: float = 0.0

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
        """130 if interrupted, 1 if any input failed, else 0."""
        return 130 if self.interrupted else (1 if self.failed else 0)

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
                "interrupted": self.interrupted, "inputs": self.inputs, "output_dir": str(self.output_dir),
                "styles": self.styles, "settings": self.settings, "totals": self.totals(),
                "host": platform.node(), "images": [r.as_dict() for r in self.rows]}

    def write(self) -> Path:
        """Writes the summary atomically (a temp file renamed over it)."""
        _write_json_atomic(self.path, self.as_dict())
        return self.path


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

    Output names: ``<input stem><suffix>``. An existing output is skipped (writes are atomic, so it is
    complete) unless ``overwrite``. Without a stylizer it only plans (names, skips).
    """

    def __init__(self, stylizer: BatchStylizer | None, output_dir, *, suffix: str = ".png", overwrite: bool = False):
        self.stylizer = stylizer
        self.output_dir = Path(output_dir).expanduser()
        self.suffix = _check_suffix(suffix)
        self.overwrite = overwrite

    def output_path(self, path) -> Path:
        return self.output_dir / (Path(path).stem + self.suffix)

    def precheck(self, path) -> ImageStatus | None:
        """The row of an input that needs no work (its output exists, or would overwrite it), else None."""
        out = self.output_path(path)
        if _same_file(out, Path(path)):
            return ImageStatus(str(path), str(out), "failed",
                               error=f"its output '{out}' would overwrite the input; choose another output "
                                     "directory or suffix")
        if out.exists() and not self.overwrite:
            return ImageStatus(str(path), str(out), "skipped")
        return None

    def process(self, paths: Sequence, on_row: Callable[[int, ImageStatus], None] | None = None,
                ) -> list[ImageStatus]:
        """Stylizes ``paths``; returns one row per path (in order), calling ``on_row(position, row)`` as each
        row is final. Outputs are written as soon as their batch is done."""
        rows: list[ImageStatus | None] = [None] * len(paths)

        def finish(k, row):
            rows[k] = row
            if on_row is not None:
                on_row(k, row)

        prepared, where, load_s = [], [], []
        for k, path in enumerate(paths):
            pre = self.precheck(path)
            if pre is not None:
                finish(k, pre)
                continue
            t0 = time.perf_counter()
            try:
                prepared.append(self.stylizer.prepare(path, label="input"))
            except (images.ImageError, ValueError, OSError) as e:
                finish(k, ImageStatus(str(path), None, "failed", error=str(e)))
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
                    finish(k, ImageStatus(str(path), None, "failed", error=str(e), seconds=t))
                    continue
                finish(k, ImageStatus(str(path), str(out), "ok", loss=_finite_or_none(last.total),
                                      iterations=last.iteration, seconds=round(t, 4)))
        return rows  # type: ignore[return-value]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def resolve_inputs(inputs) -> list[Path]:
    """A directory, glob, manifest or image path (``images.list_images``), or a list of paths."""
    if isinstance(inputs, (str, os.PathLike)):
        return images.list_images(inputs)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise images.ImageError("no input images given")
    return paths


def plan_job(job: BatchJob, paths: Sequence[Path], summary: JobSummary) -> list[int]:
    """Fills the rows that need no work (existing outputs, clashing names); returns the rest's positions."""
    todo, owner = [], {}
    for k, p in enumerate(paths):
        out = job.output_path(p)
        if out in owner:
            summary.rows[k] = ImageStatus(str(p), None, "failed",
                                          error=f"its output name '{out.name}' is also that of input "
                                                f"'{paths[owner[out]]}'; rename one of them")
            continue
        owner[out] = k
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
    as each batch finishes. Inputs whose output exists are skipped, so rerunning an interrupted job
    finishes the rest. A bad input (unreadable, corrupt, too small, NaN loss) fails alone. The summary
    ``<output_dir>/nst_jax_summary.json`` (per input: status, reason, loss, seconds; totals) is written
    atomically after every window of images and at the end, also on Ctrl-C (then re-raised).

    Args:
        inputs: a directory, glob pattern, manifest file (one path per line) or list of paths.
        style: the style image(s) (several are blended, as for :func:`nst_jax.stylize`).
        output_dir: where outputs and the summary go (created if missing).
        settings, overrides: as for ``stylize``.
        batch_size, output_size: as for :func:`stylize_batch`.
        suffix: output extension (".png", ".jpg", ...).
        overwrite: redo inputs whose output exists.
        progress: a progress bar over images (images/s).
        callback: called with each input's row when it is final.

    Returns:
        The :class:`JobSummary` (``exit_code``: 1 if any input failed).

    Raises:
        ValueError / images.ImageError: bad settings, style or inputs spec (before any work).
        KeyboardInterrupt: after writing the summary of what finished.
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
                         styles=_style_names(style), settings=stylizer.settings.to_dict())
    t0 = time.perf_counter()
    todo = plan_job(job, paths, summary)
    bar = _images_bar(len(paths), initial=len(paths) - len(todo)) if progress else None

    def on_row(row: ImageStatus, k: int) -> None:
        summary.rows[k] = row
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=summary.count("failed"), refresh=False)
        if callback is not None:
            callback(row)

    window = max(64, 4 * (batch_size or MAX_DEFAULT_BATCH * len(stylizer.devices)))
    try:
        summary.write()
        for start in range(0, len(todo), window):
            ks = todo[start:start + window]
            job.process([paths[k] for k in ks], on_row=lambda j, row, ks=ks: on_row(row, ks[j]))
            summary.seconds = time.perf_counter() - t0
            summary.write()
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        summary.finished = _now()
        summary.write()
    return summary


def check_job_settings(s: Settings) -> None:
    """Settings a file job cannot honor are an error, not a silent no-op."""
    if s.save_every:
        raise ValueError("save_every (snapshots) is not supported by batch jobs; use nst-jax on one image for "
                         "snapshots, or leave it 0.")


def _style_names(style) -> list[str]:
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    return [str(s) if isinstance(s, (str, os.PathLike)) else type(s).__name__ for s in styles]
