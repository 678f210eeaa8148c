"""Batch jobs across the hosts of a Ray cluster (optional: ``pip install 'nst-jax[ray]'``).

The same job as :func:`nst_jax.job.run_job`, spread over a pool of Ray actors with Ray Data::

    ray.data.from_items([{"index": i, "path": p}, ...])
        .map_batches(StylizeActor, compute=ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
                     num_cpus=..., num_gpus=..., batch_size=...)

Each :class:`StylizeActor` loads the VGG params, the style targets and the compiled stylizer once,
buckets the images of each Ray batch by shape, stylizes them in compiled batches (all of its
devices), writes every output atomically itself and returns one status row per image (input, output,
status ok/failed/skipped, error, loss, iterations, seconds). The driver collects the rows and writes
the same ``<output_dir>/nst_jax_summary.json`` as the local job; a rerun skips finished outputs.

Requirements: every node must see the inputs and the output directory at the same paths (a shared
filesystem) and have nst_jax installed; the style images are read on the driver and shipped to the
actors. ``ray`` is imported only by the functions here.

Python::

    from nst_jax.ray_job import run_ray_job
    summary = run_ray_job("photos/", "starry_night.jpg", "out/", image_size=512, num_actors=4)
    print(summary.totals())

Command line::

    nst-jax batch --ray [ADDRESS] --style starry_night.jpg --inputs photos/ --output-dir out/
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable

import numpy as np

from nst_jax import api, batch, images, job, jobfiles
from nst_jax.config import Settings

__all__ = ["StylizeActor", "run_ray_job"]

#: Images per Ray batch when no batch size is given.
DEFAULT_RAY_BATCH = 8


def _import_ray():
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError("the Ray runner needs Ray Data: pip install 'nst-jax[ray]' (ray[data]>=2.40)") from e
    return ray


class StylizeActor:
    """A Ray Data actor: holds one compiled :class:`~nst_jax.batch.BatchStylizer`; stylizes batches of paths.

    Args:
        style: style image arrays (loaded on the driver; several are blended).
        settings: the :class:`Settings`.
        output_dir, suffix, overwrite: as for :func:`nst_jax.job.run_job`.
        batch_size, output_size: as for :func:`nst_jax.batch.stylize_batch`.
    """

    def __init__(self, style, settings: Settings, output_dir: str, suffix: str = ".png", batch_size: int | None = None,
                 output_size=None, overwrite: bool = False):
        stylizer = batch.BatchStylizer(style, settings, batch_size=batch_size, output_size=output_size)
        self.job = job.BatchJob(stylizer, output_dir, suffix=suffix, overwrite=overwrite)
        self.worker = f"{platform.node()}:{os.getpid()}"

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in rows["path"]]
        statuses = self.job.process(paths)
        return {
            "index": np.asarray(rows["index"], np.int64),
            "input": np.asarray([r.input for r in statuses], dtype=object),
            "output": np.asarray([r.output or "" for r in statuses], dtype=object),
            "status": np.asarray([r.status for r in statuses], dtype=object),
            "error": np.asarray([r.error or "" for r in statuses], dtype=object),
            "loss": np.asarray([math.nan if r.loss is None else r.loss for r in statuses], np.float64),
            "iterations": np.asarray([-1 if r.iterations is None else r.iterations for r in statuses], np.int64),
            "seconds": np.asarray([math.nan if r.seconds is None else r.seconds for r in statuses], np.float64),
            "worker": np.asarray([self.worker] * len(statuses), dtype=object),
        }


def _row_status(row: dict) -> jobfiles.ImageStatus:
    loss, seconds, its = float(row["loss"]), float(row["seconds"]), int(row["iterations"])
    return jobfiles.ImageStatus(
        input=str(row["input"]), output=str(row["output"]) or None, status=str(row["status"]),
        error=str(row["error"]) or None, loss=None if math.isnan(loss) else loss,
        iterations=None if its < 0 else its, seconds=None if math.isnan(seconds) else seconds,
        worker=str(row["worker"]))


def _cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def run_ray_job(inputs, style, output_dir, settings: Settings | None = None, *, address: str | None = None,
                num_actors: int | None = None, num_cpus_per_actor: float = 1, num_gpus_per_actor: float | None = None,
                batch_size: int | None = None, ray_batch_size: int | None = None, output_size=None,
                suffix: str = ".png", overwrite: bool = False, progress: bool = True,
                init_kwargs: dict | None = None, callback: Callable[[jobfiles.ImageStatus], None] | None = None,
                **overrides) -> jobfiles.JobSummary:
    """Stylizes a folder (glob, manifest, list) of images on a Ray cluster; resumable, like ``run_job``.

    Args:
        inputs, style, output_dir, settings, overrides: as for :func:`nst_jax.job.run_job`.
        address: the Ray cluster (``ray.init(address)``: "auto", "ray://host:10001", ...); None connects to
            ``$RAY_ADDRESS`` or starts a local cluster. If Ray is already initialized it is used as it is.
        num_actors: actors in the pool; default one per GPU of the cluster, or 1 without GPUs.
        num_cpus_per_actor, num_gpus_per_actor: resources of each actor; GPUs default to 1 when the
            cluster has GPUs, else 0.
        batch_size: images per compiled call inside an actor (default: from its free device memory).
        ray_batch_size: images per Ray batch handed to an actor (default ``batch_size`` or 8); the actor
            buckets them by shape.
        output_size, suffix, overwrite, progress, callback: as for ``run_job``.
        init_kwargs: extra ``ray.init`` arguments when this call starts Ray (e.g. ``num_cpus``).

    Returns:
        The :class:`~nst_jax.jobfiles.JobSummary` (also written to ``<output_dir>/nst_jax_summary.json``).

    Raises:
        ImportError: Ray Data is not installed.
        ValueError / images.ImageError: bad settings, style, inputs or output directory (before any work).
        KeyboardInterrupt: after writing the summary of what finished.
    """
    s, out_size = batch.batch_settings(settings, output_size=output_size, batch_size=batch_size, **overrides)
    job.check_job_settings(s)
    ray_batch_size = ray_batch_size or batch_size or DEFAULT_RAY_BATCH
    paths, output_dir, suffix = job.job_folder(inputs, output_dir, suffix, absolute=True)  # actors may be elsewhere
    style_list = list(style) if isinstance(style, (list, tuple)) else [style]
    # Read (and check) the styles here: the actors get arrays, so only inputs/outputs need a shared filesystem.
    style_arrays = [images.load_image(st, label="style image" if len(style_list) == 1 else f"style image {i}")
                    for i, st in enumerate(style_list, start=1)]
    api.prepare_styles(style_arrays, s)  # validates the blend weights before starting anything

    planner = job.BatchJob(None, output_dir, suffix=suffix, overwrite=overwrite)
    # The weights the actors load: the same spec, on shared files.
    summary, todo = job.plan_summary(planner, paths, inputs, style, s, api.weights_used(s.weights), runner="ray")
    ray = _import_ray()
    started = False
    with job.JobRun(summary, todo, progress=progress, callback=callback) as run:
        try:
            if todo:
                if not ray.is_initialized():
                    ray.init(address=address, **(init_kwargs or {}))
                    started = True
                gpus = _cluster_gpus(ray)
                if num_gpus_per_actor is None:
                    num_gpus_per_actor = 1 if gpus else 0
                if num_actors is None:
                    num_actors = max(1, int(gpus // num_gpus_per_actor)) if num_gpus_per_actor else 1
                ray.data.DataContext.get_current().enable_progress_bars = False
                # One block per Ray batch, so that every actor of the pool gets work; no more actors than batches.
                blocks = -(-len(todo) // ray_batch_size)
                num_actors = min(num_actors, blocks)
                ds = ray.data.from_items([{"index": k, "path": str(paths[k].absolute())} for k in todo],
                                         override_num_blocks=blocks)
                ds = ds.map_batches(
                    StylizeActor,
                    fn_constructor_kwargs=dict(style=style_arrays, settings=s, output_dir=str(output_dir),
                                               suffix=suffix, batch_size=batch_size, output_size=out_size,
                                               overwrite=overwrite),
                    batch_size=ray_batch_size, batch_format="numpy",
                    # A fixed pool; one Ray batch per actor at a time, so that batches spread over all actors
                    # (a batch is seconds to minutes of work: queueing more per actor only unbalances the end).
                    compute=ray.data.ActorPoolStrategy(size=num_actors, max_tasks_in_flight_per_actor=1),
                    num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor)
                for row in ds.iter_rows():
                    k = int(row["index"])
                    status = _row_status(row)
                    status.input = str(paths[k])  # as the user named it
                    run.record(k, status)
        finally:
            if started:
                ray.shutdown()
    return summary

