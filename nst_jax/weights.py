"""Where VGG-19 weights come from: download + checksum + cache, Keras ``.h5`` reader, canonical ``.npz``, random.

Every source ends as the same params pytree (see :mod:`nst_jax.vgg`)::

    {"params": {"conv1_1": {"kernel": (3, 3, C_in, C_out) float32 HWIO, "bias": (C_out,)}, ...}}

with ``conv1_1``'s input channels in BGR order and inputs in the Caffe space
(BGR, 0..255, ImageNet mean subtracted). The Keras file already has exactly
this layout, so it is copied unchanged (names mapped, shapes asserted).

Resolution of ``weights=None`` (:func:`resolve_params`), first match wins:

1. ``$NST_JAX_WEIGHTS``: a file path, or the string ``random``;
2. the cached Keras file ``<cache_dir()>/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``
   (its MD5 is checked);
3. a download of that file into the cache (:func:`fetch_weights`): one process
   downloads while others wait on a lock file, and a failure leaves nothing behind.

``weights="normalized"`` is the normalized VGG-19 (unit mean activation per
channel, :mod:`nst_jax.normalize`) derived from the weights that ``None``
resolves to, computed on first use and cached beside them.

Nothing ever falls back to random weights: a failure raises
:class:`WeightsError` saying what went wrong and how to fix it. Random weights,
when asked for, are announced once per process on the ``nst_jax.weights``
logger, and :func:`describe` says which weights were used (outputs record it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pooch
import requests

from nst_jax import images
from nst_jax.lockfile import LockFile
from nst_jax.vgg import CONV_LAYERS, VGG19, FeatureExtractor, Padding, Pooling, check_params, param_shapes

__all__ = [
    "KERAS_URL", "KERAS_MD5", "KERAS_FILENAME", "ENV_WEIGHTS", "ENV_CACHE", "WeightsError",
    "cache_dir", "describe", "fetch_weights", "load_vgg19", "resolve_params", "random_params",
    "load_params", "load_keras_h5", "load_npz", "save_npz", "npz_metadata", "NPZ_METADATA", "NORMALIZED",
]

#: The Keras applications VGG-19 "no top" file (convolutional layers only).
KERAS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
#: Its MD5, as published in ``keras/applications/vgg19.py``.
KERAS_MD5 = "253f8cb515780f3b799900260a226db6"
#: The file name used in the cache (the last part of :data:`KERAS_URL`).
KERAS_FILENAME = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"

#: Environment variable: a weights file to use, or ``random``.
ENV_WEIGHTS = "NST_JAX_WEIGHTS"
#: Environment variable: the cache folder (default ``pooch.os_cache("nst_jax")``).
ENV_CACHE = "NST_JAX_CACHE"
#: The ``weights`` value for the normalized VGG-19 of the default weights (see :mod:`nst_jax.normalize`).
NORMALIZED = "normalized"
#: Key of the provenance record (a JSON string) in an ``.npz`` written by :func:`save_npz` with ``metadata``.
NPZ_METADATA = "nst_jax_metadata"

PathLike = Union[str, "os.PathLike[str]"]

# Keras names the convolutions ``block{B}_conv{I}``; ours are ``conv{B}_{I}``.
_KERAS_CONV = re.compile(r"^block(\d+)_conv(\d+)$")
_KERAS_NAME = {name: "block{}_conv{}".format(*name[4:].split("_")) for name in CONV_LAYERS}
# Weight names: ``block1_conv1_W_1:0`` / ``block1_conv1_b_1:0`` (Keras 1, the 2016 file),
# ``block1_conv1/kernel:0`` (Keras 2), ``block1_conv1/kernel`` (Keras 3 legacy writer).
_KERNEL_NAME = re.compile(r"(^|[/_])(W|kernel)(_\d+)?(:\d+)?$")
_BIAS_NAME = re.compile(r"(^|[/_])(b|bias)(_\d+)?(:\d+)?$")
_ROLE_NDIM = {"kernel": 4, "bias": 1}
# VGG-16's convolutions (2, 2, 3, 3, 3 per block): the other network whose files are most often mistaken for ours.
_VGG16_CONVS = frozenset(f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1))

_log = logging.getLogger(__name__)
# Seeds whose random weights were already announced in this process (one notice each).
_ANNOUNCED_SEEDS: set[int] = set()


class WeightsError(ValueError):
    """A weights file could not be found, downloaded, verified or read; the message says how to fix it."""


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def load_vgg19(weights: Any = None, pooling: Pooling = "max", padding: Padding = "zero",
               precision: str | None = None, remat: bool = False, *, progress: bool = True) -> FeatureExtractor:
    """VGG-19 with weights, ready to compute features.

    Args:
        weights: ``None`` for the default resolution (``$NST_JAX_WEIGHTS``, then the
            cached Keras file, then a download; see the module docstring); a path
            to a Keras ``.h5`` file or to an ``.npz`` written by :func:`save_npz`;
            the string ``"random"`` for seeded random weights (smoke tests only:
            features of a random network are not useful for style transfer); the
            string ``"normalized"`` for the normalized VGG-19 of the weights that
            ``None`` resolves to (:func:`nst_jax.normalize.normalized_weights`:
            computed once, then read from the cache); or a params pytree
            ``{"params": {...}}``.
        pooling: ``"max"`` (as trained) or ``"avg"``.
        padding: ``"zero"`` (as trained) or ``"reflect"``.
        precision: conv precision, ``None``/``"default"``, ``"high"`` or ``"highest"``.
        remat: recompute activations in the backward pass to save memory.
        progress: show a progress bar if the weights are downloaded.

    Returns:
        A :class:`nst_jax.vgg.FeatureExtractor`.

    Raises:
        WeightsError: the weights could not be found, downloaded or read.
    """
    params = resolve_params(weights, progress=progress)
    return FeatureExtractor(params, pooling=pooling, padding=padding, precision=precision, remat=remat)


def resolve_params(weights: Any = None, *, progress: bool = True) -> dict:
    """The params pytree that :func:`load_vgg19` uses.

    Args:
        weights: as in :func:`load_vgg19`: ``None`` (``$NST_JAX_WEIGHTS``, cache,
            download), ``"random"``, ``"normalized"``, a path (``str``/``PathLike``; to load a
            file literally named ``random`` or ``normalized`` pass a ``Path``) or a params dict.
        progress: show a progress bar if the weights are downloaded.

    Returns:
        ``{"params": {"conv1_1": {"kernel", "bias"}, ...}}``, float32 NumPy arrays
        (a params dict is returned as given, after its shapes are checked).

    Raises:
        WeightsError: the weights could not be found, downloaded or read.
    """
    if weights is None:
        return _default_params(progress=progress)
    if isinstance(weights, str) and weights == "random":
        return _announced_random_params(seed=0)
    if isinstance(weights, str) and weights == NORMALIZED:
        return load_npz(_normalize_module().normalized_weights(progress=progress))
    if isinstance(weights, Mapping):
        check_params(weights)
        return {"params": {k: dict(v) for k, v in weights["params"].items()}}
    if isinstance(weights, (str, os.PathLike)):
        return load_params(weights)
    raise _bad_weights_argument(weights)


def describe(weights: Any = None) -> dict:
    """Which weights :func:`resolve_params` uses for ``weights``, as a small JSON-ready record.

    Outputs carry it (PNG metadata, batch job summaries), so that a picture made
    with random weights, or with another file than the published one, can be
    told from a real stylization afterwards. Nothing is downloaded or loaded. A
    file's MD5 (the checksum Keras publishes for its file) is computed once per
    version of the file, so recording it for every output costs nothing.

    Args:
        weights: as in :func:`resolve_params`.

    Returns:
        ``{"source": "random", "seed": 0}``; ``{"source": "file", "path": <absolute
        path>, "md5": <hex>}``, with ``"url"`` added for the default Keras file
        (its MD5 is the published one, which is checked before it is used); or
        ``{"source": "params"}`` for a params dict given in memory. An ``.npz`` that
        carries a provenance record (:func:`save_npz` with ``metadata``, e.g. a
        normalized VGG-19) adds it as ``"provenance"``. ``"normalized"`` is the
        record of its cached file once computed, before that ``{"source":
        "normalized", "path": <where it will be>, "of": <the record of None>}``.

    Raises:
        WeightsError: the weights file does not exist, or ``weights`` is of a wrong type.
    """
    if weights is None:
        env = os.environ.get(ENV_WEIGHTS, "")
        if env == "random":
            return {"source": "random", "seed": 0}
        if env:
            return _file_record(_env_path(env))
        return {"source": "file", "path": str((cache_dir() / KERAS_FILENAME).resolve()), "md5": KERAS_MD5,
                "url": KERAS_URL}
    if isinstance(weights, str) and weights == "random":
        return {"source": "random", "seed": 0}
    if isinstance(weights, str) and weights == NORMALIZED:
        path = _normalize_module().default_normalized_path()
        return _file_record(path) if path.is_file() else {"source": NORMALIZED, "path": str(path.resolve()),
                                                           "of": describe(None)}
    if isinstance(weights, Mapping):
        return {"source": "params"}
    if isinstance(weights, (str, os.PathLike)):
        return _file_record(_existing_file(weights))
    raise _bad_weights_argument(weights)


def _file_record(path: Path) -> dict:
    record = {"source": "file", "path": str(path.resolve()), "md5": _file_digest(path, "md5")}
    provenance = _file_provenance(path)
    return {**record, "provenance": provenance} if provenance is not None else record


def _normalize_module():
    """:mod:`nst_jax.normalize`, imported when ``"normalized"`` is asked for: it builds on this module (it
    resolves the source weights and writes the file with :func:`save_npz`), so it cannot be imported above."""
    from nst_jax import normalize

    return normalize


def _bad_weights_argument(weights: Any) -> WeightsError:
    return WeightsError(
        f"weights must be None, 'random', a file path or a params dict, got {type(weights).__name__}: "
        f"{weights!r:.100}.")


def _default_params(*, progress: bool) -> dict:
    """``$NST_JAX_WEIGHTS``, then the cached Keras file, then a download."""
    env = os.environ.get(ENV_WEIGHTS, "")
    if env == "random":
        return _announced_random_params(seed=0)
    if env:
        return load_params(_env_path(env))
    # The module constants are read here, at call time (not as bound defaults), so tests can redirect them.
    # fetch_weights checks the MD5 of a file already in the cache, and downloads it otherwise.
    return load_keras_h5(fetch_weights(KERAS_URL, "md5:" + KERAS_MD5, cache=cache_dir(), progress=progress))


def _env_path(env: str) -> Path:
    """The file that ``$NST_JAX_WEIGHTS`` names, which must exist."""
    path = Path(env).expanduser()
    if not path.exists():
        raise WeightsError(
            f"${ENV_WEIGHTS} points to {str(path)!r}, which does not exist. Fix: set ${ENV_WEIGHTS} to the "
            f"path of {KERAS_FILENAME} (or of an .npz from save_npz), to 'random' for smoke tests, or unset "
            "it to use the cache / download.")
    return path


def _announced_random_params(seed: int) -> dict:
    """:func:`random_params`, announced once per process and seed: what is made with them is no stylization.

    The notice goes to the ``nst_jax.weights`` logger: without any logging setup
    Python prints it as one plain line on stderr (in a terminal and in a
    notebook alike), and an application can route or silence it.
    """
    if seed not in _ANNOUNCED_SEEDS:
        _ANNOUNCED_SEEDS.add(seed)
        _log.warning("nst_jax: using random VGG-19 weights (seed %d): the output is not a stylization, only a smoke "
                     "test of the pipeline. For real weights drop weights='random' / --weights random and unset "
                     "$%s.", seed, ENV_WEIGHTS)
    return random_params(seed)


def random_params(seed: int = 0) -> dict:
    """Seeded random VGG-19 params (He-normal kernels, zero biases), for tests and smoke runs.

    Random weights give meaningless features; use them only when asked for explicitly.
    The same seed gives the same params on every machine (NumPy's PCG64).
    """
    # The structure comes from the module itself (eval_shape: traced, not run). The values are drawn with
    # NumPy, with the module's initializers (flax he_normal: truncated normal in [-2, 2] sigma, fan-in
    # variance 2, and zero biases), because XLA:CPU takes ~1 s to compile JAX's random generator per
    # tensor: VGG19().init costs 11-14 s on 2 cores, this well under 1 s.
    shapes = jax.eval_shape(lambda key, x: VGG19().init(key, x, ("conv1_1",)),
                            jax.random.key(0), jnp.zeros((1, 1, 1, 3), jnp.float32))
    params: dict[str, dict[str, np.ndarray]] = {}
    for i, name in enumerate(CONV_LAYERS):
        layer = shapes["params"][name]
        rng = np.random.default_rng([seed, i])
        params[name] = {"kernel": _he_normal(rng, layer["kernel"].shape),
                        "bias": np.zeros(layer["bias"].shape, np.float32)}
    result = {"params": params}
    check_params(result)
    return result


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``flax.linen.initializers.he_normal()`` in NumPy for an HWIO kernel."""
    fan_in = int(np.prod(shape[:-1]))
    # Standard normal truncated to [-2, 2] by redrawing the outliers; 0.8796... is its standard deviation,
    # divided out so that the variance is exactly 2 / fan_in (as in jax.nn.initializers.variance_scaling).
    x = rng.standard_normal(shape, dtype=np.float32)
    out = np.abs(x) > 2
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()), dtype=np.float32)
        out = np.abs(x) > 2
    return x * np.float32(np.sqrt(2.0 / fan_in) / 0.87962566103423978)


# ----------------------------------------------------------------------------------------------------------------
# Download and cache


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
    got = _file_digest(path, alg)
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


def _file_digest(path: Path, alg: str) -> str:
    """The ``alg`` digest of a file, computed once per version of it (path, inode, size, modification time)."""
    st = path.stat()
    return _cached_digest(str(path.resolve()), alg, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached_digest(path: str, alg: str, inode: int, size: int, mtime_ns: int) -> str:
    return pooch.file_hash(path, alg=alg)


def _file_provenance(path: Path) -> dict | None:
    """The provenance record of an ``.npz`` (:func:`npz_metadata`), read once per version of the file; None for
    other files and for an ``.npz`` without one."""
    st = path.stat()
    text = _cached_provenance(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    return None if text is None else json.loads(text)  # a new dict for every caller


@functools.lru_cache(maxsize=32)
def _cached_provenance(path: str, inode: int, size: int, mtime_ns: int) -> str | None:
    if not zipfile.is_zipfile(path):
        return None
    try:
        metadata = npz_metadata(path)
    except WeightsError:
        return None  # an unreadable file is reported when it is loaded, not by the record of which file it is
    return None if metadata is None else json.dumps(metadata)


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


# ----------------------------------------------------------------------------------------------------------------
# Files


def load_params(path: PathLike) -> dict:
    """Reads a weights file by its content: a Keras HDF5 file or an ``.npz`` from :func:`save_npz`.

    Raises:
        WeightsError: the file is missing, of another kind, or not VGG-19 weights.
    """
    path = _existing_file(path)
    if h5py.is_hdf5(path):
        return load_keras_h5(path)
    if zipfile.is_zipfile(path):
        return load_npz(path)
    hint = (" PyTorch checkpoints must be converted first: python scripts/convert_torch_weights.py IN.pth OUT.npz."
            if path.suffix in (".pth", ".pt") else _content_hint(path))
    raise WeightsError(
        f"{str(path)!r} is neither an HDF5 (.h5) nor an .npz file. Fix: pass the Keras file {KERAS_FILENAME} "
        f"(from {KERAS_URL}) or an .npz written by nst_jax.weights.save_npz.{hint}")


def load_keras_h5(path: PathLike) -> dict:
    """Reads VGG-19 weights from a Keras HDF5 file.

    Supported layouts, each read through the file's own names (never by order):

    * **Keras 1/2 legacy** (the 2016 ``..._notop.h5`` file, Keras 2
      ``save_weights("x.h5")``, Keras 3's ``legacy_h5_format`` writer): the root
      (or its ``model_weights`` group, for whole-model ``model.save("x.h5")``
      files) has the attribute ``layer_names``; each layer group
      ``<layer>`` has ``weight_names``, paths relative to that group, e.g.
      ``block1_conv1_W_1:0`` (2016) or ``block1_conv1/kernel`` (Keras 3).
    * **Keras 3 native** ``.weights.h5`` (``model.save_weights``): groups
      ``layers/<class>_<n>/vars`` whose ``name`` attribute is the layer name
      and whose datasets ``0``, ``1`` are the kernel and the bias.

    Layer ``blockB_convI`` becomes ``convB_I``; other layers (input, pools, a
    classifier top) are ignored. Keras files of the ``tf_kernels`` kind store
    kernels HWIO with BGR input channels (the Caffe origin), which is our
    layout, so arrays are copied unchanged (cast to float32).

    Raises:
        WeightsError: the file is missing, not HDF5, not a Keras weights file,
            lacks a layer or has a wrong shape; the message names which.
    """
    path = _existing_file(path)
    if not h5py.is_hdf5(path):
        raise WeightsError(
            f"{str(path)!r} is not an HDF5 file. Fix: pass the Keras VGG-19 no-top file {KERAS_FILENAME} "
            f"(from {KERAS_URL}); re-download it if it is truncated.{_content_hint(path)}")
    try:
        with h5py.File(path, "r") as f:
            tensors = _read_keras_tensors(f, path)
            layers = _layer_names(f)
    except WeightsError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        # h5py reports damaged files with any of these, depending on which structure is hit.
        raise WeightsError(
            f"{str(path)!r} is truncated or corrupt: HDF5 cannot read it ({e}). Fix: download it again from "
            f"{KERAS_URL} (a corrupt copy in the cache: delete it, and it is downloaded again on next use).") from e
    return _assemble(tensors, path, source="Keras", file_layers=layers)


def _content_hint(path: Path) -> str:
    """A sentence on what a file that is not weights looks like (a saved web page, a Git LFS pointer), or ''."""
    with open(path, "rb") as f:
        head = f.read(256).lstrip()
    if head.startswith(b"<"):
        return (" It starts with '<': it is a web page (HTML/XML), e.g. an error or sign-in page saved in place of "
                f"the file; download it again from {KERAS_URL} (with curl, use -L to follow redirects).")
    if head.startswith(b"version https://git-lfs"):
        return " It is a Git LFS pointer, not the file: run 'git lfs pull', or download the file."
    return ""


def _read_keras_tensors(f: h5py.File, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{keras layer name: [(weight name, array), ...]}`` for the ``blockB_convI`` layers of the file."""
    root = _legacy_root(f)
    if root is not None:
        return _read_legacy(root, path)
    if "layers" in f:
        return _read_keras3_native(f, path)
    raise WeightsError(
        f"{str(path)!r} is an HDF5 file but not Keras weights: it has neither the 'layer_names' attribute "
        "(Keras 1/2 and legacy .h5) nor a 'layers' group (Keras 3 .weights.h5). "
        f"Fix: pass the Keras VGG-19 no-top file {KERAS_FILENAME}.")


def _legacy_root(f: h5py.File) -> h5py.Group | None:
    """The group with the legacy ``layer_names`` attribute, if any.

    A whole-model file (``model.save("x.h5")``) keeps the legacy weights layout under "model_weights".
    """
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    return root if "layer_names" in root.attrs else None


def _layer_names(f: h5py.File) -> list[str]:
    """Every layer name the file holds, to say what a file of another network is."""
    root = _legacy_root(f)
    if root is not None:
        return [_decode(n) for n in root.attrs["layer_names"]]
    names: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and "name" in obj.attrs:
            names.append(_decode(obj.attrs["name"]))

    f.visititems(visit)
    return names


def _read_legacy(root: h5py.Group, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Legacy layout: ``root.attrs["layer_names"]``; ``root[layer].attrs["weight_names"]`` paths in that group."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for layer in (_decode(n) for n in root.attrs["layer_names"]):
        if not _KERAS_CONV.match(layer):
            continue  # input, pooling, flatten, fc layers
        if layer in out:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} is listed twice in 'layer_names'; the file is corrupt.")
        if layer not in root:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} is listed in 'layer_names' but has no group; "
                               "the file is corrupt or truncated. Fix: re-download it.")
        group = root[layer]
        names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        missing = [n for n in names if n not in group]
        if missing:
            raise WeightsError(f"{str(path)!r}: layer {layer!r} lists weights {missing} that are not in the "
                               "file; it is corrupt or truncated. Fix: re-download it.")
        out[layer] = [(n, np.asarray(group[n])) for n in names]
    return out


def _read_keras3_native(f: h5py.File, path: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Keras 3 ``.weights.h5``: any ``.../vars`` group whose ``name`` attribute is ``blockB_convI``.

    The group paths (``layers/conv2d_3``) come from class names and creation
    order, so they are not used to identify layers; the ``name`` attribute is.
    Nested models (``layers/functional/layers/...``) are found too.
    """
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    unnamed: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if not (isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars"):
            return
        datasets = [(k, v) for k, v in obj.items() if isinstance(v, h5py.Dataset)]
        if "name" not in obj.attrs:
            if datasets:
                unnamed.append(name)
            return
        layer = _decode(obj.attrs["name"])
        if not _KERAS_CONV.match(layer):
            return
        if layer in out:
            raise WeightsError(f"{str(path)!r}: two groups hold layer {layer!r}; the file is not a single "
                               "VGG-19. Fix: save the VGG-19 model's weights on their own.")
        out[layer] = [(f"{name}/{k}", np.asarray(v)) for k, v in datasets]

    f.visititems(visit)
    if not out and unnamed:
        raise WeightsError(
            f"{str(path)!r} is a Keras 3 .weights.h5 file whose variable groups ({unnamed[0]}, ...) carry no "
            "layer 'name' attribute (older Keras 3 releases), so layers cannot be identified without guessing "
            "their order. Fix: re-save with a current Keras (model.save_weights('x.weights.h5')) or with "
            "model.save('x.h5'), or use the original Keras file.")
    return out


def _assemble(tensors: dict[str, list[tuple[str, np.ndarray]]], path: Path, *, source: str,
              file_layers: list[str]) -> dict:
    """Maps Keras layers to our names, assigns kernel/bias, asserts every shape.

    Which layers are missing is checked before any shape, so that a file of
    another network (VGG-16, a ResNet) is named as such.
    """
    expected = param_shapes()
    for keras_name in tensors:
        m = _KERAS_CONV.match(keras_name)
        name = f"conv{m[1]}_{m[2]}"
        if name not in expected:
            raise WeightsError(f"{str(path)!r}: unexpected layer {keras_name!r}: VGG-19 has no {name}. "
                               "Is this another network (VGG-16 has 13 convolutions, VGG-19 16)?")
    missing = [name for name in CONV_LAYERS if _KERAS_NAME[name] not in tensors]
    if missing:
        raise WeightsError(_missing_layers_message(path, missing, list(tensors), file_layers, source))
    params: dict[str, dict[str, np.ndarray]] = {}
    for name in CONV_LAYERS:
        keras_name = _KERAS_NAME[name]
        params[name] = _kernel_and_bias(tensors[keras_name], keras_name, name, path)
    result = {"params": params}
    check_params(result)
    return result


def _missing_layers_message(path: Path, missing: list[str], found: list[str], file_layers: list[str],
                            source: str) -> str:
    """Which VGG-19 convolutions a file lacks, and which network it seems to hold instead."""
    fix = f"Fix: use the VGG-19 no-top file {KERAS_FILENAME} (from {KERAS_URL})."
    expected = "VGG-19's 16 convolutions block1_conv1, block1_conv2, ..., block5_conv4"
    if not found:
        shown = ", ".join(file_layers[:8]) + (", ..." if len(file_layers) > 8 else "")
        return (f"{str(path)!r} holds weights of another network: none of {expected}; its layers are "
                f"{shown or 'none'} ({len(file_layers)} in all). {fix}")
    names = ", ".join(f"{_KERAS_NAME[n]!r} ({n})" for n in missing)
    what = "VGG-16 (13 convolutions), not VGG-19" if set(found) == _VGG16_CONVS else "incomplete"
    return (f"{str(path)!r}: missing layer{'s' if len(missing) > 1 else ''} {names} of {expected}; "
            f"{source} conv layers found: {', '.join(found)}. This file is {what}. {fix}")


def _kernel_and_bias(weights: list[tuple[str, np.ndarray]], keras_name: str, name: str,
                     path: Path) -> dict[str, np.ndarray]:
    """Assigns a layer's arrays to kernel/bias by name (else by rank) and checks shapes against VGG-19's."""
    if len(weights) != 2:
        raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) has {len(weights)} weights "
                           f"{[n for n, _ in weights]}, expected 2 (kernel and bias).")
    shapes = param_shapes()[name]
    out: dict[str, np.ndarray] = {}
    for wname, array in weights:
        role = _role(wname, array)
        if role in out:
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) has two {role}s "
                               f"{[n for n, _ in weights]}; expected one kernel and one bias.")
        want = shapes[role]
        if array.shape != want:
            hint = ""
            if role == "kernel" and array.shape == (want[3], want[2], want[0], want[1]):
                # OIHW is the Theano/Caffe/PyTorch ordering; Keras "th_kernels" files use it.
                hint = (" This looks like an OIHW (Theano/PyTorch) kernel: use the 'tf_kernels' Keras file, or "
                        "convert with scripts/convert_torch_weights.py.")
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) {role} {wname!r} has shape "
                               f"{array.shape}, expected {want}.{hint}")
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsError(f"{str(path)!r}: layer {keras_name!r} ({name}) {role} has dtype {array.dtype}, "
                               "expected floating point.")
        out[role] = np.asarray(array, np.float32)
    return out


def _role(wname: str, array: np.ndarray) -> str:
    """``"kernel"`` or ``"bias"``: from the weight's name when it says, else from its rank (4 vs 1)."""
    if _KERNEL_NAME.search(wname):
        return "kernel"
    if _BIAS_NAME.search(wname):
        return "bias"
    # Keras 3 native files name variables "0", "1": use the rank (a 3x3 conv kernel is 4-D, a bias 1-D).
    return "kernel" if array.ndim == 4 else "bias"


def save_npz(params: Mapping, path: PathLike, metadata: Mapping | None = None) -> Path:
    """Writes params to our canonical ``.npz`` (keys ``conv1_1/kernel``, ``conv1_1/bias``, ...; float32).

    Same layout as the params pytree: kernels HWIO, BGR input channels, Caffe-space
    inputs. The file is written to a temporary name and renamed, so a crash never
    leaves a partial file. The path is used as given (no ``.npz`` is appended).

    Args:
        params: the params pytree.
        path: the file to write.
        metadata: a JSON-able provenance record (how the weights were made), stored as the
            string array :data:`NPZ_METADATA`; :func:`npz_metadata` reads it and
            :func:`describe` shows it.

    Returns:
        The path written.
    """
    check_params(params)
    path = Path(path).expanduser()
    arrays = {f"{name}/{kind}": np.asarray(value, np.float32)
              for name, layer in params["params"].items() for kind, value in layer.items()}
    if metadata is not None:
        # A 0-d unicode array: read back without pickle (np.load(allow_pickle=False)).
        arrays[NPZ_METADATA] = np.asarray(json.dumps(metadata, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = images.create_temp(path)  # the usual permissions (0666 minus the umask), unlike mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as fobj:
            np.savez(fobj, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_npz(path: PathLike) -> dict:
    """Reads params written by :func:`save_npz` (or ``scripts/convert_torch_weights.py``).

    Raises:
        WeightsError: the file is missing, not an ``.npz``, lacks a layer, has
            unexpected keys or a wrong shape.
    """
    path = _existing_file(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{str(path)!r} is not an .npz file. Fix: write it with nst_jax.weights.save_npz, "
                           "or pass a Keras .h5 file instead.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(f"could not read {str(path)!r} as .npz: {e}. Fix: write it again with save_npz.") from e
    expected = param_shapes()
    arrays.pop(NPZ_METADATA, None)  # the provenance record (npz_metadata), not a parameter
    unexpected = sorted(k for k in arrays if k.split("/")[0] not in expected or len(k.split("/")) != 2
                        or k.split("/")[1] not in ("kernel", "bias"))
    if unexpected:
        raise WeightsError(f"{str(path)!r}: unexpected arrays {unexpected[:5]}; expected keys 'conv1_1/kernel', "
                           "'conv1_1/bias', ... Fix: write the file with nst_jax.weights.save_npz.")
    params: dict[str, dict[str, np.ndarray]] = {}
    for name, shapes in expected.items():
        params[name] = {}
        for kind, want in shapes.items():
            key = f"{name}/{kind}"
            if key not in arrays:
                raise WeightsError(f"{str(path)!r}: missing layer {name} (array {key!r}). Fix: write the file "
                                   "with nst_jax.weights.save_npz from complete params.")
            if arrays[key].shape != want:
                raise WeightsError(f"{str(path)!r}: {key} has shape {arrays[key].shape}, expected {want}.")
            params[name][kind] = arrays[key].astype(np.float32)
    return {"params": params}


def npz_metadata(path: PathLike) -> dict | None:
    """The provenance record stored in an ``.npz`` by :func:`save_npz` (``metadata``), or None if it has none.

    Raises:
        WeightsError: the file is missing, not an ``.npz``, or its record is not a JSON object.
    """
    path = _existing_file(path)
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{str(path)!r} is not an .npz file, so it carries no provenance record.")
    try:
        with np.load(path, allow_pickle=False) as data:
            if NPZ_METADATA not in data.files:
                return None
            text = str(data[NPZ_METADATA])
        metadata = json.loads(text)
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # json.JSONDecodeError is a ValueError
        raise WeightsError(f"could not read the provenance record of {str(path)!r}: {e}. Fix: write the file "
                           "again (nst-jax normalize-weights, or save_npz with metadata).") from e
    if not isinstance(metadata, dict):
        raise WeightsError(f"the provenance record of {str(path)!r} is not a JSON object. Fix: write the file "
                           "again (nst-jax normalize-weights, or save_npz with metadata).")
    return metadata


def _existing_file(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file not found: {str(path)!r}. Fix: check the path, or leave out --weights (weights=None) to "
            f"use ${ENV_WEIGHTS} / the cache / a download of {KERAS_URL}, or --weights random (weights='random') "
            "for smoke tests.")
    if not path.is_file():
        raise WeightsError(f"weights path {str(path)!r} is not a file. Fix: pass the path of the .h5/.npz file.")
    if path.stat().st_size == 0:
        raise WeightsError(
            f"weights file {str(path)!r} is empty (0 bytes), e.g. from an interrupted copy or download. Fix: delete "
            f"it and copy or download it again (the Keras file: {KERAS_URL}), or pass another file.")
    return path


def _decode(value: Any) -> str:
    """h5py attributes hold names as ``bytes`` (Keras 1/2) or ``str`` (Keras 3)."""
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)
