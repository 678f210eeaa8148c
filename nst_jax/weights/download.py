"""Download and cache: the weights cache folder, a checked download (pooch) under a lock file, and messages
that say how to get the file by hand when this machine is offline.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pooch
import requests

from nst_jax import images
from nst_jax.lockfile import LockFile

from nst_jax.weights.base import (ENV_CACHE, ENV_WEIGHTS, KERAS_FILENAME, KERAS_MD5, KERAS_URL, PathLike, WeightsError,
                                  file_digest)


def cache_dir() -> Path:
    """The weights cache folder: ``$NST_JAX_CACHE`` if set, else ``pooch.os_cache("nst_jax")``."""
    env = os.environ.get(ENV_CACHE, "")
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("nst_jax"))


def fetch_weights(url: str = KERAS_URL, known_hash: str | None = "md5:" + KERAS_MD5, *,
                  cache: PathLike | None = None, progress: bool = True) -> Path:
    """Downloads a weights file into the cache (once) and verifies its checksum.

    A file already in the cache is used only if its checksum matches; otherwise
    it is refused, not replaced (it may have been put there by hand). Several
    processes may call this at once: a lock file next to the target
    (``<name>.lock``) lets one download while the others wait, then use its file.
    The transfer goes to a temporary file that is renamed only once the checksum
    matches. A failure (network, checksum, full disk, Ctrl-C) removes the
    temporary file, the lock file and the folders created for them, so it leaves
    nothing behind, and nothing is printed before the server has answered.

    Args:
        url: where to download from; the cached file is named after its last part.
        known_hash: ``"md5:<hex>"`` (or another algorithm of :mod:`hashlib`;
            a bare hex digest is SHA-256), or ``None`` to skip the check.
        cache: folder to store the file in; default :func:`cache_dir`.
        progress: print a "downloading" line and show a progress bar once the
            transfer starts, and a line if another process's download is awaited.

    Returns:
        The path of the verified file.

    Raises:
        WeightsError: the server could not be reached, the transfer failed, the
            checksum did not match (the file is removed), a cached file is
            corrupt, or the cache folder is not writable. The message says how
            to place the file by hand or where else to put it.
    """
    folder = Path(cache).expanduser() if cache is not None else cache_dir()
    target = folder / (Path(urllib.parse.urlparse(url).path).name or KERAS_FILENAME)
    try:
        if target.is_file():
            return _verified_cached(target, known_hash, url)
        with _download_lock(target, progress=progress):
            if target.is_file():  # another process downloaded it while this one waited
                return _verified_cached(target, known_hash, url)
            _download(url, target, known_hash, progress=progress)
        return target
    except requests.exceptions.RequestException as e:  # before OSError: requests' errors derive from it
        raise WeightsError(_download_failed_message(url, target, e)) from e
    except OSError as e:
        raise WeightsError(_cache_unusable_message(folder, url, e)) from e


def _verified_cached(path: Path, known_hash: str | None, url: str) -> Path:
    """``path`` if its checksum is ``known_hash``; a cached file that is not is never used."""
    if known_hash is None:
        return path
    alg, want = _split_hash(known_hash)
    got = file_digest(path, alg)
    if got != want:
        raise WeightsError(
            f"the cached weights file {str(path)!r} is corrupt or not the expected file: it has {alg.upper()} "
            f"{got}, expected {want}, so it was not used. Fix: delete it, and it is downloaded again from {url} "
            f"on next use; or, to use this file anyway, point ${ENV_WEIGHTS} at it.")
    return path


def _download(url: str, target: Path, known_hash: str | None, *, progress: bool) -> None:
    """Downloads ``url`` to ``target`` through a temporary file renamed only once the checksum matches."""
    # The temporary file gets the usual permissions (0666 minus the umask), which the cached file keeps.
    fd, temp = images.create_temp(target)
    bar = _DownloadProgress(f"nst_jax: downloading {url} to {target}") if progress else False
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                pooch.HTTPDownloader(progressbar=bar)(url, f, None)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar:
                bar.close()
        _check_download(temp, known_hash, url, target)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_download(temp: Path, known_hash: str | None, url: str, target: Path) -> None:
    if known_hash is None:
        return
    alg, want = _split_hash(known_hash)
    got = pooch.file_hash(str(temp), alg=alg)
    if got != want:
        raise WeightsError(
            f"checksum mismatch for {url}: the downloaded file has {alg.upper()} {got}, expected {want}. The "
            f"downloaded file was removed; nothing was written to {str(target)!r}. Fix: retry (the server may have "
            f"sent a truncated or different file, e.g. a proxy's page), or download it elsewhere, check its "
            f"{alg.upper()} and place it there by hand.")


def _split_hash(known_hash: str) -> tuple[str, str]:
    """``"md5:<hex>"`` -> ``("md5", "<hex>")``; a bare digest is SHA-256, as in pooch."""
    alg, sep, value = known_hash.partition(":")
    return (alg.lower(), value.lower()) if sep else ("sha256", known_hash.lower())


class _DownloadProgress:
    """The ``progressbar`` of ``pooch.HTTPDownloader``, which sets ``total`` once the server has answered.

    Only then is the "downloading" line printed and the bar started, so that no
    announcement precedes a download that never starts (offline, wrong URL).
    """

    def __init__(self, message: str):
        self.message = message
        self._bar = None

    @property
    def total(self):
        return None if self._bar is None else self._bar.total

    @total.setter
    def total(self, value: int) -> None:
        from tqdm.auto import tqdm

        print(self.message, file=sys.stderr, flush=True)
        self._bar = tqdm(total=value or None, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def _download_lock(target: Path, *, progress: bool) -> Iterator[None]:
    """Holds the lock file ``<target>.lock`` (creating its folder) while this process downloads ``target``.

    The lock file is removed on the way out, and after a failure so are the
    folders created for it (if still empty): a failed download leaves nothing.
    """
    lock = target.with_name(target.name + ".lock")
    created: list[Path] = []
    done = False
    try:
        held = _acquire(lock, created, progress=progress)
        try:
            yield
            done = True
        finally:
            held.release()
    finally:
        if not done:
            _remove_empty(created)


def _acquire(lock: Path, created: list[Path], *, progress: bool) -> LockFile:
    """Holds ``lock`` (:class:`nst_jax.lockfile.LockFile`), waiting for another process that holds it,
    creating its folder first (again if another process's failed download removed it meanwhile)."""
    def tell() -> None:
        if progress:
            print(f"nst_jax: another process is downloading {lock.stem} into {lock.parent}; "
                  f"waiting for it (lock file {lock}).", file=sys.stderr, flush=True)

    while True:
        _make_dirs(lock.parent, created)
        try:
            return LockFile.acquire(lock, wait=True, on_wait=tell)
        except FileNotFoundError:  # the folder was removed between the two
            continue


def _make_dirs(folder: Path, created: list[Path]) -> None:
    """Creates ``folder`` and its missing parents, appending each one made here to ``created`` (outermost first)."""
    for d in reversed([folder, *folder.parents]):
        if d.is_dir():
            continue
        try:
            d.mkdir()
        except FileExistsError:  # made meanwhile by another process (or a file: os.open then says so)
            continue
        created.append(d)


def _remove_empty(folders: list[Path]) -> None:
    """Removes ``folders`` (outermost first, as created), innermost first, as long as they are empty."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            return


def _cache_unusable_message(folder: Path, url: str, error: OSError) -> str:
    where = f" ({error.filename})" if error.filename and str(error.filename) != str(folder) else ""
    return (
        f"cannot use the weights cache folder {str(folder)!r}: {error.strerror or error}{where}. The weights are "
        "downloaded into it, so it must be a writable folder (with free space).\n"
        "Fix:\n"
        f"  - set ${ENV_CACHE} to a writable folder, or\n"
        f"  - download {url} yourself and point ${ENV_WEIGHTS} at the file (or pass its path: weights=PATH / "
        "--weights PATH).")


def _download_failed_message(url: str, target: Path, error: Exception) -> str:
    return (
        f"could not download the VGG-19 weights from {url}: {type(error).__name__}: {error}. "
        "No file was written (partial transfers are discarded).\n"
        "Fix, if this machine is offline or the server is unreachable:\n"
        f"  - download {url} on another machine and copy it to {str(target)!r} "
        f"(the cache folder; set ${ENV_CACHE} to choose another), or\n"
        f"  - point ${ENV_WEIGHTS} at the downloaded file (or pass its path: --weights PATH / weights=PATH), or\n"
        "  - for smoke tests only, use random weights explicitly: weights='random' / --weights random.")
