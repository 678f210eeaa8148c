"""What a batch job keeps in its output folder, and how jobs sharing that folder stay out of each other's way.

Claims (:class:`Claim`: one job stylizes an image, one job writes the summary at a time), the journal
(:data:`JOURNAL_NAME`: a line per image written or failed), the summary (:class:`JobSummary`, written
atomically and merged with the other jobs'), the leftovers of killed jobs (:func:`clean_stale_files`) and a
full output disk (:class:`DiskFullError`). The local runner (:mod:`nst_jax.job`) and the Ray runner
(:mod:`nst_jax.ray_job`) both use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from nst_jax import images, provenance
from nst_jax.lockfile import LockFile

__all__ = ["Claim", "DiskFullError", "ImageStatus", "JOURNAL_NAME", "JobSummary", "SUMMARY_NAME", "append_journal",
           "clean_stale_files", "disk_full_error", "file_id", "now", "recover_journal", "remove_temps",
           "write_json_atomic"]

#: Name of the job summary written into the output folder.
SUMMARY_NAME = "nst_jax_summary.json"

#: Name of the job journal in the output folder: one JSON line per image written ("ok") or failed, appended
#: by whichever job did it (time, host, pid and the summary row), so that reruns and jobs sharing the folder
#: can be audited (how many times each image was done).
JOURNAL_NAME = "nst_jax_journal.jsonl"


class DiskFullError(OSError):
    """The output disk is full (ENOSPC, or EDQUOT: quota exceeded): a batch job stops there.

    Disk space is not a per-image fault (every further image would fail the same way), so :func:`nst_jax.job.run_job`
    stops, writes its summary if it can, and raises this; rerun the same command once space is freed.

    Attributes:
        reason: what failed and what to do (also the summary's ``stopped``).
        input: the input whose output could not be written, or None (the summary, the journal).
        summary: the :class:`JobSummary` (set by :func:`nst_jax.job.run_job`).
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


def disk_full_error(e: BaseException, path, input: str | None = None) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` if ``e`` comes from a full disk, else None."""
    full = _disk_full(e)
    if full is None:
        return None
    name = errno.errorcode.get(full.errno, str(full.errno))
    return DiskFullError(f"no space left on the output disk ({name}: {os.strerror(full.errno)}) while writing "
                         f"'{path}'; free disk space (or choose another output directory), then run the same "
                         "command again: finished outputs are kept.", input=input, code=full.errno)


class Claim:
    """This process's exclusive claim on an output name of a job folder, so that jobs sharing the folder
    never stylize one image twice (and write the summary one at a time).

    The claim is the lock file ``.<name>.lock`` next to the output (:class:`nst_jax.lockfile.LockFile`): the
    OS drops the lock when its process ends, however it ends (SIGKILL, a lost machine on NFS after the
    lease), so a claim is never stale; the file a killed job leaves is simply claimed again, and whoever
    claims such a file (``stale``) knows that its holder died and removes the temporary files it left (only
    a claim holder writes that name). On a filesystem without locks the file is still created and removed,
    but does not exclude another job, and nothing is taken for stale.
    """

    def __init__(self, held: LockFile):
        self._held = held

    @property
    def exclusive(self) -> bool:
        """The claim excludes other jobs (False on a filesystem without locks)."""
        return self._held.exclusive

    @property
    def stale(self) -> bool:
        """The claim file was left by a job that died holding it."""
        return self._held.abandoned

    @staticmethod
    def lock_path(output: Path) -> Path:
        return output.with_name(f".{output.name}.lock")

    @classmethod
    def take(cls, output: Path, *, wait: bool) -> Claim | None:
        """Claims ``output``; None if another process holds it (``wait``: wait for it instead)."""
        # The file stays empty (no data block per claimed image on a nearly full disk): the lock, not the
        # content, says whether it is held.
        held = LockFile.acquire(cls.lock_path(output), wait=wait)
        return None if held is None else cls(held)

    def release(self) -> None:
        self._held.release()


#: ``.<name>.<token>.tmp`` (:func:`nst_jax.images.create_temp`'s temporary files) and ``.<name>.lock`` (claims).
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")
_LOCK_RE = re.compile(r"\.(?P<name>.+)\.lock")


def remove_temps(output: Path) -> int:
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


def file_id(path) -> dict:
    """Identifies one version of a file (a rewrite changes it): inode, modification time, size."""
    st = os.stat(path)
    return {"inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def recover_journal(output: Path) -> bool:
    """Under a stale claim of ``output``: if its holder died between writing ``output`` and recording it in
    the journal, records it now (marked ``recovered``, input, iterations and loss from the file's metadata),
    so that the journal lists every output written exactly once. Returns whether it did."""
    try:
        file = file_id(output)
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
    append_journal(journal, {"input": meta["input"], "output": str(output), "status": "ok",
                              "iterations": meta.get("iterations"), "loss": meta.get("loss"), "recovered": True,
                              "file": file})
    return True


def append_journal(journal: Path, record: dict) -> None:
    """Appends one JSON line: one ``write`` to a file opened for appending, so that the lines of jobs sharing
    the folder never interleave (and a killed job leaves no half line)."""
    line = json.dumps({"time": now(), "host": platform.node(), "pid": os.getpid(), **record}, default=str) + "\n"
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
        claim = Claim.take(output_dir / name, wait=False)
        if claim is not None:
            if claim.exclusive:
                removed += remove_temps(output_dir / name)
            if claim.stale:
                removed += 1
                recover_journal(output_dir / name)
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
    style_files: list[dict] = field(default_factory=list)  # provenance.describe_inputs: paths and short hashes
    runner: str = "local"
    started: str = field(default_factory=lambda: now())
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
                "styles": self.styles, "style_files": self.style_files, "settings": self.settings,
                "weights": self.weights, "totals": self.totals(),
                "host": platform.node(), "environment": provenance.environment(),
                "images": [r.as_dict() for r in self.rows]}

    def write(self) -> Path:
        """Writes the summary atomically (a temp file renamed over it), merged with the one in the folder.

        Jobs may share an output folder, so the summary is read, merged and written under the folder's
        summary claim (one job at a time; temporary files of a killed writer are removed): an input this
        job left "pending", or skipped because another job wrote its output meanwhile, keeps that job's
        "ok" or "failed" row from the file. Other rows are this job's.
        """
        self.path.parent.mkdir(exist_ok=True)
        claim = Claim.take(self.path, wait=True)
        try:
            if claim.stale:
                remove_temps(self.path)
            write_json_atomic(self.path, self._merged())
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


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(exist_ok=True)  # only the last level (images.check_output_path checked the rest)
    fd, temp = images.create_temp(path)  # 0666 minus the umask, as the image outputs (mkstemp: 0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, allow_nan=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
