"""What the parts of :mod:`nst_jax.weights` share: the Keras file's address and checksum, the environment
variables, the error type, and file checks.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Union

import pooch



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


class WeightsError(ValueError):
    """A weights file could not be found, downloaded, verified or read; the message says how to fix it."""


def existing_file(path: PathLike) -> Path:
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


def file_digest(path: Path, alg: str) -> str:
    """The ``alg`` digest of a file, computed once per version of it (path, inode, size, modification time)."""
    st = path.stat()
    return _cached_digest(str(path.resolve()), alg, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _cached_digest(path: str, alg: str, inode: int, size: int, mtime_ns: int) -> str:
    return pooch.file_hash(path, alg=alg)
