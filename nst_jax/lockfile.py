"""Lock files: one process at a time holds a named file, and the OS frees it when the process dies.

Used for the weights download (one download when several processes start at once) and for the claims of
batch jobs sharing an output folder (one job stylizes an image; one writes the summary at a time).

The protocol: the holder has the file open and locked (``flock`` on POSIX, a byte-range ``msvcrt`` lock
on Windows); it removes the file *before* unlocking it, so a process that waited on the lock of a removed
file sees that the path now names another file (or none) and starts over: two processes never both hold
the lock of the file at that path. Since a holder always removes the file first, a lock file found at the
path whose lock is free was left by a holder that died (:attr:`LockFile.abandoned`; POSIX only: Windows
cannot remove a file another process has open, so there a released file may stay). On a filesystem without
locks the file is still created and removed but excludes nobody (:attr:`LockFile.exclusive` is False).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

__all__ = ["LockFile"]

#: errno values of a filesystem that does not support locks.
_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


class LockFile:
    """A lock file held by this process (see the module docstring); :meth:`acquire` it, :meth:`release` it.

    Attributes:
        path: the lock file.
        exclusive: an OS lock is held (False on a filesystem without locks: nobody is excluded).
        abandoned: the file was there before and its holder had died without removing it (POSIX).
    """

    def __init__(self, fd: int, path: Path, *, exclusive: bool, abandoned: bool):
        self.fd, self.path, self.exclusive, self.abandoned = fd, path, exclusive, abandoned

    @classmethod
    def acquire(cls, path: Path, *, wait: bool, on_wait: Callable[[], None] | None = None) -> LockFile | None:
        """Creates (or opens) and locks ``path``.

        Args:
            path: the lock file; its folder must exist (``FileNotFoundError`` otherwise).
            wait: wait while another process holds it; else return None at once.
            on_wait: called once before waiting (e.g. to say so).

        Returns:
            The held :class:`LockFile`, or None if another process holds it and not ``wait``.
        """
        told = False
        while True:
            try:
                fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(path, os.O_RDWR), False
                except FileNotFoundError:  # released meanwhile
                    continue
            try:
                locked = _lock(fd, blocking=False)
                if locked is False:
                    if not wait:
                        os.close(fd)
                        return None
                    if on_wait is not None and not told:
                        told = True
                        on_wait()
                    locked = _lock(fd, blocking=True)
                current = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                exclusive = bool(locked)
                return cls(fd, path, exclusive=exclusive, abandoned=exclusive and not created and fcntl is not None)
            os.close(fd)  # its holder released it while we waited: take the path anew

    def release(self) -> None:
        """Removes the lock file, then frees the lock (idempotent)."""
        if self.fd is None:
            return
        if fcntl is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while still locked: a waiter then sees another file and starts over
            os.close(self.fd)  # frees the lock
        else:
            with contextlib.suppress(OSError):
                msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
            os.close(self.fd)
            with contextlib.suppress(OSError):  # fails while another process has it open: it stays
                os.unlink(self.path)
        self.fd = None


def _lock(fd: int, *, blocking: bool) -> bool | None:
    """Locks the open file ``fd`` exclusively: True; False if not ``blocking`` and another process holds it;
    None on a filesystem without locks (nothing is locked)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            return None
        return True
    while True:  # msvcrt locks byte 0; LK_NBLCK fails at once while another process holds it
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not blocking:
                return False
            time.sleep(0.1)
