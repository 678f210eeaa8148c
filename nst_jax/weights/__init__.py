"""Where VGG-19 weights come from: download + checksum + cache, Keras ``.h5`` reader, canonical ``.npz``, random.

The parts: :mod:`~nst_jax.weights.download` (cache folder, checked download under a lock),
:mod:`~nst_jax.weights.files` (the Keras HDF5 reader, the ``.npz`` format), :mod:`~nst_jax.weights.base`
(constants, errors); the entry points that choose a source are here. Everything public is importable from
``nst_jax.weights``.

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

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.vgg import CONV_LAYERS, VGG19, FeatureExtractor, Padding, Pooling, check_params

from nst_jax.weights.base import (ENV_CACHE, ENV_WEIGHTS, KERAS_FILENAME, KERAS_MD5, KERAS_URL, NORMALIZED,
                                  NPZ_METADATA, PathLike, WeightsError, existing_file, file_digest)
from nst_jax.weights.download import cache_dir, fetch_weights
from nst_jax.weights.files import file_provenance, load_keras_h5, load_npz, load_params, npz_metadata, save_npz

__all__ = [
    "KERAS_URL", "KERAS_MD5", "KERAS_FILENAME", "ENV_WEIGHTS", "ENV_CACHE", "WeightsError",
    "cache_dir", "describe", "fetch_weights", "load_vgg19", "resolve_params", "random_params",
    "load_params", "load_keras_h5", "load_npz", "save_npz", "npz_metadata", "NPZ_METADATA", "NORMALIZED",
    "PathLike", "existing_file", "file_digest", "file_provenance",
]

_log = logging.getLogger(__name__)
# Seeds whose random weights were already announced in this process (one notice each).
_ANNOUNCED_SEEDS: set[int] = set()


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
        return _file_record(existing_file(weights))
    raise _bad_weights_argument(weights)


def _file_record(path: Path) -> dict:
    record = {"source": "file", "path": str(path.resolve()), "md5": file_digest(path, "md5")}
    provenance = file_provenance(path)
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
