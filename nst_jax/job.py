"""Resumable batch jobs over folders of images: output names, skips, claims, summary; run locally.

:func:`run_job` stylizes files into a folder with a :class:`~nst_jax.stylizer.BatchStylizer` on this process's
devices; :mod:`nst_jax.ray_job` runs the same per-batch work (:class:`BatchJob`) in Ray actors across hosts.
Both check the folder (:func:`job_folder`), plan and resume (:func:`plan_summary`) and keep the summary
(:class:`JobRun`) with the functions here. Outputs are written atomically, so a rerun skips every output
that exists and that nst_jax wrote (it is complete); bad inputs fail alone and are listed with the reason in
``<output_dir>/nst_jax_summary.json``. Jobs survive faults: a killed job's leftovers are cleaned by the next
run, jobs sharing a folder claim each image and merge the summary, a full disk stops the job, and the
journal records each image done (:mod:`nst_jax.jobfiles`).

Size: one concern, the life of a job over a folder (plan, resume, claims, per-batch work, summary); the
file formats it writes are in :mod:`nst_jax.jobfiles`.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nst_jax import images, provenance
from nst_jax.batch import MAX_DEFAULT_BATCH
from nst_jax.config import Settings
from nst_jax.jobfiles import (JOURNAL_NAME, SUMMARY_NAME, Claim, DiskFullError, ImageStatus, JobSummary,
                              append_journal, clean_stale_files, disk_full_error, file_id, now, recover_journal,
                              remove_temps)
from nst_jax.stylizer import BatchStylizer, images_bar

__all__ = ["BatchJob", "JobRun", "check_job_settings", "check_suffix", "job_folder", "plan_job", "plan_summary",
           "resolve_inputs", "run_job", "style_names"]


def check_suffix(suffix: str) -> str:
    """The output extension of a job, with its dot; one we write, else a ValueError naming the choices."""
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
        self.suffix = check_suffix(suffix)
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

        Each input is claimed first (:class:`Claim`), so that jobs sharing the output folder never stylize
        an image twice: an input another live job holds gets a "pending" row saying so (with ``wait``, this
        waits for that job instead, then skips the input if it wrote the output, else does it). Whatever
        a killed job left for the name is removed on the way. Each image written or failed here is recorded
        in the journal (:data:`JOURNAL_NAME`). A bad input fails alone, whatever its loader raises.

        Raises:
            DiskFullError: the output disk is full; that input's row says so and nothing further is tried.
        """
        rows: list[ImageStatus | None] = [None] * len(paths)
        claims: dict[int, Claim] = {}
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
                claim = Claim.take(out, wait=wait)
                if claim is None:
                    finish(k, ImageStatus(str(path), str(out), "pending",
                                          error=f"another job on this folder was stylizing it (it holds "
                                                f"'{Claim.lock_path(out).name}')"))
                    continue
                claims[k] = claim
                if claim.stale:  # its holder died here: clean up after it
                    remove_temps(out)
                    recover_journal(out)
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
                    r.inputs = [provenance.describe_input("content image", path)] + (r.inputs or [])
                    try:
                        r.save(out, metadata={"input": str(path)})
                    except images.ImageError as e:
                        full = disk_full_error(e, out, input=str(path))
                        finish(k, ImageStatus(str(path), None, "failed", error=str(full or e), seconds=t),
                               journal=full is None)
                        if full is not None:
                            raise full from e
                        continue
                    finish(k, ImageStatus(str(path), str(out), "ok", loss=_finite_or_none(last.total),
                                          iterations=last.iteration, seconds=round(t, 4)))
        except OSError as e:
            full = None if isinstance(e, DiskFullError) else disk_full_error(e, e.filename or self.output_dir)
            if full is not None:  # the journal or a claim file could not be written
                raise full from e
            raise
        finally:
            for claim in claims.values():
                claim.release()
        return rows  # type: ignore[return-value]

    def _journal(self, row: ImageStatus) -> None:
        """Records ``row`` in the journal (an output written: with the identity of the file, see
        :func:`recover_journal`)."""
        file = {"file": file_id(row.output)} if row.status == "ok" and row.output else {}
        append_journal(self.output_dir / JOURNAL_NAME, {**row.as_dict(), **file})


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
        batch_size, output_size: as for :func:`nst_jax.stylize_batch`.
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
    paths, output_dir, suffix = job_folder(inputs, output_dir, suffix)
    stylizer = BatchStylizer(style, settings, batch_size=batch_size, output_size=output_size, **overrides)
    check_job_settings(stylizer.settings)
    job = BatchJob(stylizer, output_dir, suffix=suffix, overwrite=overwrite)
    summary, todo = plan_summary(job, paths, inputs, style, stylizer.settings, stylizer.weights)
    window = max(64, 4 * (batch_size or MAX_DEFAULT_BATCH * len(stylizer.devices)))
    with JobRun(summary, todo, progress=progress, callback=callback) as run:
        held = []
        for start in range(0, len(todo), window):
            ks = todo[start:start + window]
            rows = job.process([paths[k] for k in ks],
                               on_row=lambda j, row, ks=ks: run.record(ks[j], row, final=row.status != "pending"))
            held += [k for k, row in zip(ks, rows) if row.status == "pending"]  # another job holds it: see below
            run.checkpoint()
        if held:  # inputs another job on the folder held: wait for it, then do what it left undone
            job.process([paths[k] for k in held], on_row=lambda j, row: run.record(held[j], row), wait=True)
    return summary


def check_job_settings(s: Settings) -> None:
    """Settings a file job cannot honor are an error, not a silent no-op."""
    if s.save_every:
        raise ValueError("save_every (snapshots) is not supported by batch jobs; use nst-jax on one image for "
                         "snapshots, or leave it 0.")


def style_names(style) -> list[str]:
    """How a job's summary names its style image(s): the paths, or the kind of an in-memory image."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    return [str(s) if isinstance(s, (str, os.PathLike)) else type(s).__name__ for s in styles]


def job_folder(inputs, output_dir, suffix: str, *, absolute: bool = False) -> tuple[list[Path], Path, str]:
    """A job's inputs, output folder and suffix, checked before any work (local and Ray jobs alike).

    Args:
        inputs: as for :func:`run_job`.
        output_dir: the output folder (``~`` expanded; made absolute with ``absolute``, for workers elsewhere).
        suffix: the output extension.

    Returns:
        ``(paths, output_dir, suffix)``.

    Raises:
        images.ImageError / ValueError: no inputs, an output folder that cannot be written, an unknown suffix.
    """
    paths = resolve_inputs(inputs)
    output_dir = Path(output_dir).expanduser()
    if absolute:
        output_dir = output_dir.absolute()
    suffix = check_suffix(suffix)
    images.check_output_path(output_dir / f"probe{suffix}")
    return paths, output_dir, suffix


def plan_summary(job: BatchJob, paths: Sequence[Path], inputs, style, settings: Settings, weights: dict, *,
                 runner: str = "local") -> tuple[JobSummary, list[int]]:
    """A job's summary, its rows planned: what killed jobs left is cleaned up (:func:`clean_stale_files`),
    inputs whose output exists are skipped, clashing names fail (:func:`plan_job`).

    The resume logic of every runner: rerunning a job finishes only what is left.

    Returns:
        ``(summary, todo)``: the summary (a row per input, in order) and the positions of the inputs to do.
    """
    summary = JobSummary(job.output_dir, [ImageStatus(str(p), str(job.output_path(p))) for p in paths],
                         inputs=str(inputs) if isinstance(inputs, (str, os.PathLike)) else "",
                         styles=style_names(style), settings=settings.to_dict(), runner=runner, weights=weights)
    summary.done_by_others = job.done_by_others
    clean_stale_files(job.output_dir, [job.output_path(p).name for p in paths] + [SUMMARY_NAME])
    return summary, plan_job(job, paths, summary)


class JobRun:
    """One run of a job over its summary: rows as they become final, progress, timing and the summary file.

    Used as a context manager by every runner: the summary is written at each :meth:`checkpoint` and at the
    end, however the run ends. Ctrl-C marks it interrupted (and propagates); a full output disk stops the job
    (:class:`DiskFullError`, with the summary, written if it could be); any other error propagates.

    Args:
        summary: the planned summary (:func:`plan_summary`).
        todo: the positions of the inputs to do (the others count as done in the progress bar).
        progress: show a progress bar over images.
        callback: called with each input's row when it is final.
    """

    def __init__(self, summary: JobSummary, todo: Sequence[int], *, progress: bool = True,
                 callback: Callable[[ImageStatus], None] | None = None):
        self.summary, self.callback = summary, callback
        total = len(summary.rows)
        self.bar = images_bar(total, initial=total - len(todo)) if progress else None
        self.t0 = time.perf_counter()

    def __enter__(self) -> JobRun:
        self.t0 = time.perf_counter()
        try:
            self.summary.write()
        except BaseException as e:  # as a failure inside the run: the same ending (a full disk stops the job)
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def record(self, k: int, row: ImageStatus, *, final: bool = True) -> None:
        """Sets input ``k``'s row; a ``final`` one moves the progress bar and goes to the callback."""
        self.summary.rows[k] = row
        if not final:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.summary.count("failed"), refresh=False)
        if self.callback is not None:
            self.callback(row)

    def checkpoint(self) -> None:
        """Writes the summary as it stands (with the seconds so far)."""
        self.summary.seconds = time.perf_counter() - self.t0
        self.summary.write()

    def __exit__(self, kind, error, _tb) -> bool:
        summary, stop = self.summary, None
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            summary.interrupted = True
        elif isinstance(error, OSError):  # a full disk stops the job; any other error propagates
            stop = error if isinstance(error, DiskFullError) else disk_full_error(error,
                                                                                   error.filename or summary.path)
            if stop is not None:
                summary.stopped = stop.reason
        if self.bar is not None:
            self.bar.close()
        summary.seconds = time.perf_counter() - self.t0
        summary.finished = now()
        try:
            summary.write()
        except OSError as e:
            full = stop or disk_full_error(e, summary.path)
            if full is None:
                raise
            full.summary, full.summary_error = summary, str(e)
            raise full from e
        if stop is not None:
            stop.summary, stop.summary_written = summary, True
            if stop is not error:
                raise stop from error
        return False
