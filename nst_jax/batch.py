"""Many images: buckets of equal shape, the single-image optimizer mapped over them, sharding over devices.

The math is :func:`nst_jax.optim.init` / :func:`nst_jax.optim.step` of *one* image; a batch maps those
pure functions over its images with per-image optimizer state (:func:`_per_image`: on CPU one copy of the
single-image program per image, elsewhere ``jax.vmap``). The targets (and weights) of the
images are split into a per-image half, vmapped along axis 0 (content targets; style targets in a style
grid, :func:`stylize_grid`; weights in a weight sweep, ``loss_weights``), and a shared half passed once
(:func:`split_targets`). ``optim.step`` freezes
a finished image (``done``) and counts iterations per image, so an image that converges early stops
changing while the others go on. The stages are those of :func:`nst_jax.stylize`, run by the same stage
loop (:func:`nst_jax.pipeline.run_stages`) with a vmapped stepper and driven by :func:`nst_jax.optim.run`,
with the same per-backend loop form as a single image (one jitted call per iteration on CPU, compiled
chunks on accelerators). Each image starts from exactly what :func:`nst_jax.stylize` would start it from,
so a batch gives each image the result of a single call: on CPU bit for bit, whatever else is in the batch
(batch invariance, tests/test_batch_invariance.py); elsewhere up to float reassociation.

Shapes: images are resized as by :func:`nst_jax.stylize` (long side ``image_size``) and grouped into
buckets of equal shape; each bucket (and batch size) is compiled once and reused. ``output_size=(h,
w)`` resizes every content image to cover ``h x w`` and center-crops it, so that all images share
one bucket. Memory: :func:`default_batch_size` sizes a batch from the free memory
(:func:`estimate_image_bytes`).

Devices: with several (local) devices the batch axis is sharded over a 1-D mesh ``("batch",)``;
params and shared style targets are replicated. A batch that does not divide the device count is
padded with copies of its last image, dropped from the results. Hosts: :mod:`nst_jax.ray_job` runs
one such process per host (or per GPU) as Ray actors.

The stylizer (:class:`BatchStylizer`, :func:`stylize_batch`, :func:`stylize_grid`) lives in
:mod:`nst_jax.stylizer`, jobs over folders (:func:`run_job`, :class:`BatchJob`, :class:`JobSummary`, ...)
in :mod:`nst_jax.job` and :mod:`nst_jax.jobfiles`; they are re-exported here.

Size: one concern, how a batch is laid out and run (bucketing, per-image programs or ``vmap``, sharding,
padding, the memory model that sizes it); the stylizer and the job runner are already modules of their own.
"""

from __future__ import annotations

import collections
import functools
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nst_jax import api, images, optim, pipeline, stall, vgg
from nst_jax.config import Settings
from nst_jax.objective import Objective

# The job names among them are re-exported from nst_jax.job / nst_jax.jobfiles (see __getattr__ at the end).
__all__ = [  # noqa: F822
    "BatchRun", "BatchStylizer", "DiskFullError", "ImageStatus", "JOURNAL_NAME", "JobSummary", "SUMMARY_NAME",  # noqa: F822
    "batch_settings", "clean_stale_files", "default_batch_size",  # noqa: F822
    "estimate_image_bytes", "fit_to_size", "free_memory_bytes", "images_bar", "merge_targets", "optimize_batch",
    "parse_output_size", "run_batch_stages", "run_job", "split_targets", "stylize_batch", "stylize_grid",  # noqa: F822
]

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


def _separate(sharding) -> bool:
    """Whether a batch's images run as separate single-image programs (CPU, one device; see :func:`_per_image`)."""
    return sharding is None and jax.default_backend() == "cpu"


def _per_image(fn, sharding=None):
    """``fn`` of one image mapped over a batch's images (every argument's leaves batched along axis 0).

    On CPU (one device) every image is traced on its own: the compiled batch holds one copy of the
    single-image program per image, so that an image's result is bit-identical whatever else is in its
    batch, in any position, at any batch size (batch invariance; tests/test_batch_invariance.py). Under
    ``jax.vmap`` XLA:CPU computes the batch with batched operations whose implementation depends on the
    batch size, and so does their rounding: reductions of large arrays (the losses, L-BFGS's dot products)
    are split differently from four images on, the Winograd products fold the batch into the rows of one
    GEMM (:mod:`nst_jax.conv`), a batch of one is laid out and fused differently. neural-style's L-BFGS turns
    such last-bit differences into visible ones within a few iterations. On CPU a batch gains little from
    ``vmap``'s batched operations, so this costs no speed; the compile time grows with the batch size (see
    BENCHMARKS.md). The step loop keeps each image's state in buffers of its own (:func:`batch_stepper`).
    Elsewhere (GPUs, TPUs, or the batch sharded over several devices) it is ``jax.vmap``: larger kernels,
    and a batch axis to shard.
    """
    if not _separate(sharding):
        return jax.vmap(fn)

    def mapped(*args):
        images = [fn(*jax.tree.map(lambda a, i=i: a[i], args)) for i in range(jax.tree.leaves(args)[0].shape[0])]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *images)
    return mapped


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames="hook")
def _init_batch(objective, spec, sharding, params, x0, targets, shared, hook=None):
    trace_counts["init", tuple(x0.shape)] += 1
    init = _per_image(lambda x, t: optim.init(objective, spec, params, x, merge_targets(shared, t), hook), sharding)
    return _constrain(init(x0, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames="hook", donate_argnums=(4,))
def _step_batch(objective, spec, sharding, params, state, targets, shared, hook=None):
    trace_counts["step", tuple(state.x.shape)] += 1
    step = _per_image(lambda st, t: optim.step(objective, spec, params, st, merge_targets(shared, t), hook), sharding)
    return _constrain(step(state, targets), sharding)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames="hook", donate_argnums=(3,))
def _step_images(objective, spec, params, states, targets, shared, hook=None):
    """One iteration of every image of a batch held as a tuple of single-image states (see :func:`batch_stepper`)."""
    trace_counts["step", (len(states), *states[0].x.shape)] += 1
    return tuple(optim.step(objective, spec, params, st, merge_targets(shared, t), hook)
                 for st, t in zip(states, targets))


@jax.jit
def _unstack(tree) -> tuple:
    """A tree of per-image leaves (batch axis first) as a tuple of one tree per image."""
    return tuple(jax.tree.map(lambda a, i=i: a[i], tree) for i in range(jax.tree.leaves(tree)[0].shape[0]))


@jax.jit
def _stack(trees: tuple):
    """The inverse of :func:`_unstack`."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames="hook", donate_argnums=(4,))
def _steps_batch(objective, spec, sharding, params, state, targets, shared, n, hook=None):
    trace_counts["steps", tuple(state.x.shape)] += 1
    steps = _per_image(lambda st, t: optim.steps(objective, spec, params, st, merge_targets(shared, t), n, hook),
                       sharding)
    return _constrain(steps(state, targets), sharding)


def batch_stepper(objective: Objective, spec: optim.SolverSpec, params, targets, *, shared: dict | None = None,
                  loop: str = "auto", sharding: NamedSharding | None = None,
                  hook: optim.Hook | None = None) -> optim.Stepper:
    """Compiled ``init``/``advance`` of a batch: :func:`optim.init`/:func:`optim.step` mapped over its images
    (:func:`_per_image`).

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
        hook: an in-step hook (:data:`nst_jax.optim.Hook`), mapped with the step; None: the plain step.
    """
    loop = optim.default_loop() if loop == "auto" else loop
    params = objective.prepare(params)  # once, not in every iteration
    shared = {} if shared is None else shared
    with_hook = {} if hook is None else {"hook": hook}  # no hook: the very program (and cache entry) as before

    def init(x0):
        return _init_batch(objective, spec, sharding, params, x0, targets, shared, **with_hook)

    def advance(state, n):
        if loop == "step" and _separate(sharding):
            # Each image's state in buffers of its own between iterations, as for one image: slicing the
            # batched state inside every step would copy the L-BFGS history each time. The batched state is
            # then freed, as the step's donation would (the caller's reference to it is dead from here on).
            states = _unstack(state)
            # the copies are made before their source is freed: deleting a buffer that an enqueued computation
            # still reads is not safe on every runtime
            jax.block_until_ready(states)
            for leaf in jax.tree.leaves(state):
                if not leaf.is_deleted():
                    leaf.delete()
            per_image = tuple(jax.tree.map(lambda a, i=i: a[i], targets) for i in range(len(states)))
            for _ in range(n):
                states = _step_images(objective, spec, params, states, per_image, shared, **with_hook)
            return _stack(states)
        if loop == "step":
            for _ in range(n):
                state = _step_batch(objective, spec, sharding, params, state, targets, shared, **with_hook)
            return state
        return _steps_batch(objective, spec, sharding, params, state, targets, shared, jnp.asarray(n, jnp.int32),
                            **with_hook)

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
                   on_stop: Callable[[optim.State, float], None] | None = None,
                   hook: optim.Hook | None = None) -> BatchRun:
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
        hook: an in-step hook (:data:`nst_jax.optim.Hook`), vmapped with the step.

    Returns:
        A :class:`BatchRun`. An image whose loss becomes NaN/inf fails alone (``errors[i]``, with the exact
        iteration): :func:`optim.step` freezes it at its last finite state and the others go on.
    """
    stage = pipeline.Stage(None, num_iterations, True)  # one stage, no size in the records
    inputs = pipeline.StageInputs((targets, {} if shared is None else shared), tuple(x0.shape[1:3]), lambda: x0)
    return run_batch_stages(objective, spec, params, [stage], lambda _: inputs, size=int(x0.shape[0]),
                            chunk_size=chunk_size, print_every=print_every, loop=loop, devices=devices,
                            labels=labels, on_stop=on_stop, hook=hook)


def run_batch_stages(objective: Objective, spec: optim.SolverSpec, params, plan: list[pipeline.Stage],
                     prepare: Callable[[pipeline.Stage], pipeline.StageInputs], *, size: int, chunk_size: int,
                     print_every: int, loop: str = "auto", devices: Sequence | None = None,
                     labels: Sequence[str] | None = None, on_stop: Callable[[optim.State, float], None] | None = None,
                     hook: optim.Hook | None = None) -> BatchRun:
    """The pipeline's stages (:func:`nst_jax.pipeline.run_stages`) for a batch of ``size`` images of one shape.

    The stepper is :func:`batch_stepper` over ``devices``: with several, the batch is padded to a multiple of
    their number with copies of its last image (dropped from the results) and sharded along the batch axis;
    params and shared targets are replicated. Each image's history counts its iterations on across the stages,
    and an image whose loss becomes NaN/inf fails alone, at its first such iteration.

    Args:
        objective, spec, params: as for one image.
        plan: the stages (:func:`nst_jax.pipeline.coarse_to_fine`).
        prepare: per stage, its :class:`~nst_jax.pipeline.StageInputs`; targets as ``(batched, shared)``
            (:func:`split_targets`), the initial images ``(size, H, W, 3)``.
        size: the number of images.
        chunk_size, print_every, loop, devices, labels, on_stop, hook: as for :func:`optimize_batch`.

    Returns:
        A :class:`BatchRun` of the last stage's state, with the histories and errors of all stages.
    """
    b = size
    labels = list(labels) if labels is not None else [f"image {i}" for i in range(b)]
    devices = list(devices) if devices is not None else jax.local_devices()
    sharding = replicated = None
    if len(devices) > 1:
        sharding, replicated = _mesh_shardings(devices)
        params = jax.device_put(params, replicated)
    padded = b if sharding is None else -(-b // len(devices)) * len(devices)
    idx = jnp.asarray(list(range(b)) + [b - 1] * (padded - b))

    def spread(tree, placement):
        """Pads a tree of per-image leaves with copies of the last image; places it on the devices."""
        if padded != b:
            tree = jax.tree.map(lambda a: a[idx], tree)
        return tree if placement is None else jax.device_put(tree, placement)

    def stepper(stage, targets, offset) -> optim.Stepper:
        batched, shared = targets
        inner = batch_stepper(objective, spec, params, spread(batched, sharding),
                              shared=shared if replicated is None else jax.device_put(shared, replicated),
                              loop=loop, sharding=sharding, hook=hook)
        return optim.Stepper(lambda x0: inner.init(spread(x0, sharding)), inner.advance)

    histories: list[list[optim.Record]] = [[] for _ in range(b)]
    errors: list[Exception | None] = [None] * b

    def record(stop: pipeline.Stop) -> None:
        its, terms, blurs = jax.device_get((stop.state.iteration, stop.state.terms, stall.blur_count(stop.state)))
        offsets = np.broadcast_to(stop.offset, its.shape)
        for i in range(b):
            pipeline.add_record(histories[i], int(offsets[i]) + int(its[i]),
                                jax.tree.map(lambda a, i=i: a[i], terms), stop.elapsed, stop.stage.size,
                                None if blurs is None else int(blurs[i]))
        if on_stop is not None:
            on_stop(stop.state, stop.elapsed)

    def failures(stop: pipeline.Stop) -> None:
        nonfinite = np.asarray(jax.device_get(stop.state.nonfinite))
        offsets = np.broadcast_to(stop.offset, nonfinite.shape)
        for i in range(b):
            if errors[i] is None and nonfinite[i] >= 0:  # its iteration counted across the stages
                errors[i] = optim.NonFiniteLossError.from_state(stop.state, i, label=labels[i]).shifted(
                    int(offsets[i]))

    state, _ = pipeline.run_stages(plan, prepare, stepper, chunk_size=chunk_size, print_every=print_every,
                                   on_stop=record, on_stage_end=failures, raise_nonfinite=False,
                                   resize=lambda x, hw: pipeline.upsample(x[:b], hw))
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
    vectors; half that with ``lbfgs_history_dtype="bfloat16"``), for Adam two moments; and a few
    image-sized buffers (x, gradient, targets, copies).
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
        bf16 = spec.history_dtype == "bfloat16" and spec.linesearch in ("none", "backtracking")
        opt = 2 * spec.history * image * (2 if bf16 else 4)
    else:
        opt = 2 * image * 4
    return 4 * (3 * floats + 8 * image) + opt


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


def batch_settings(settings: Settings | None = None, *, output_size=None, batch_size: int | None = None,
                   **overrides) -> tuple[Settings, tuple[int, int] | None]:
    """The settings of a batch (a stylizer, a local or a Ray job) and its ``output_size`` as ``(h, w)``.

    ``overrides`` are applied as for :func:`nst_jax.stylize`; with an ``output_size`` the ``image_size`` is
    its long side (so ``style_scale`` is relative to it). ``batch_size`` is checked here, before any work.

    Raises:
        ValueError: an unknown setting, a bad output size, or a batch size that is not an integer >= 1.
    """
    s = api.make_settings(settings, **overrides)
    size = parse_output_size(output_size)
    if size is not None:
        s = s.replace(image_size=max(size))
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    return s, size


# --------------------------------------------------------------------------
# The stylizer: settings, params and style targets, loaded once


# --------------------------------------------------------------------------
# The stylizer and jobs: defined in nst_jax.stylizer, nst_jax.job and nst_jax.jobfiles, re-exported here
# --------------------------------------------------------------------------

#: Names this module re-exports from the stylizer and job modules (loaded on first use: they import this module).
_JOB_NAMES = {
    "nst_jax.job": ("BatchJob", "JobRun", "check_job_settings", "check_suffix", "job_folder", "plan_job",
                    "plan_summary", "resolve_inputs", "run_job", "style_names"),
    "nst_jax.stylizer": ("BatchStylizer", "images_bar", "stylize_batch", "stylize_grid"),
    "nst_jax.jobfiles": ("Claim", "DiskFullError", "ImageStatus", "JOURNAL_NAME", "JobSummary", "SUMMARY_NAME",
                         "clean_stale_files", "write_json_atomic"),
}


def __getattr__(name: str):
    """The stylizer's and the jobs' names (:data:`_JOB_NAMES`), imported when first asked for."""
    for module, names in _JOB_NAMES.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
