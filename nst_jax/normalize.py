"""The normalized VGG-19: weights rescaled so that every channel's mean activation over a set of images is 1.

Novak & Nikulin's activation shift ``s = -1`` (``Settings.activation_shift``) centres the activations at 0
only in a network whose channels each have a mean post-ReLU activation of 1 over images and positions: the
normalized VGG-19 (Bethge lab) that Gatys et al. and they used. :func:`normalize` derives one from any
VGG-19 weights, layer by layer in network order (conv1_1 .. conv5_4):

* the mean ``m_c`` of every channel's post-ReLU activation at layer l, over the images and all their
  positions, is measured on the network already normalized up to layer l - 1;
* filter c's kernel and bias are divided by ``m_c``, and the next convolution's input channel c is multiplied
  by ``m_c`` (its input is now divided by ``m_c``). The ReLU and both poolings (max and average) commute with a
  positive per-channel scale, so every later pre-activation is unchanged: the normalized network's
  activations at l are the original's divided by ``m_c``, at every layer;
* a channel that is never active on the images (``m_c = 0``) keeps scale 1; the provenance counts them.

Because later pre-activations are unchanged, the mean measured at layer l on the network normalized up to
l - 1 equals the mean of the *original* network's activations at l: one forward pass per image measures all
16 layers' scales at once (the tests check that the normalized network's means are 1). The images are
resized to one long side (:data:`DEFAULT_SIZE`) and processed one at a time; the pooling of the measuring
network (:data:`DEFAULT_POOLING`: average, as in the paper's base code) matters from pool1 on and is
recorded.

The result is an ``.npz`` in the layout :mod:`nst_jax.weights` reads, with a provenance record (source
weights, images with short SHA-256s, size, pooling, per-layer scale summaries, dead channels, nst_jax
version) that :func:`nst_jax.weights.describe`, and so every output's metadata, shows. ``nst-jax
normalize-weights`` (and ``scripts/normalize_vgg.py``) write one (:func:`normalize_weights`);
``weights="normalized"`` (``--weights normalized``) uses the one derived from the default weights with the
default recipe, computed on first use and cached beside the cached weights (:func:`normalized_weights`).

Size: one concern, the normalized network (measuring, rescaling, its file with provenance, and the cached
copy that ``--weights normalized`` reads); the measurement and the file are checked together by its tests.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import images as image_io
from nst_jax import vgg
from nst_jax import weights as weight_io
from nst_jax.config import MAX_IMAGE_SIZE
from nst_jax.lockfile import LockFile

__all__ = ["DEFAULT_SIZE", "DEFAULT_POOLING", "EXAMPLES_DIR", "MIN_SIZE", "Normalization", "channel_means",
           "default_normalized_path", "describe_source", "example_images", "normalize", "normalize_weights",
           "normalized_path", "normalized_weights", "rescale"]

#: Long side (pixels) the images are resized to before measuring.
DEFAULT_SIZE = 256
#: Pooling of the measuring network: average, as Gatys et al. and the paper's base code (neuralart) use.
DEFAULT_POOLING = "avg"
#: The bundled example images, the default set (a folder of the repository, beside the package).
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
#: Smallest long side: VGG-19 pools four times before conv5_1.
MIN_SIZE = 32

ImageSource = Union[str, "os.PathLike[str]", np.ndarray]

# The post-ReLU output of each convolution.
_RELU = {name: "relu" + name[len("conv"):] for name in vgg.CONV_LAYERS}
# Hex digits of an image's SHA-256 kept in the provenance ("short hashes").
_SHORT_HASH = 12


@dataclass(frozen=True)
class Normalization:
    """A normalized VGG-19 (:func:`normalize`).

    Attributes:
        params: the normalized params pytree (float32 NumPy arrays), usable wherever weights are.
        scales: per convolution, ``(C_out,)`` float64: what each output channel was divided by, its mean
            activation on the images (1 for a channel never active there).
        dead: per convolution, how many channels were never active on the images (kept at scale 1).
        metadata: the provenance record written with the file (see :func:`normalize`).
        path: the file it was written to (:func:`normalize_weights`), or None.
    """

    params: dict
    scales: dict[str, np.ndarray]
    dead: dict[str, int]
    metadata: dict
    path: Path | None = None


def example_images() -> list[Path]:
    """The bundled example images (sorted by name), the default normalization set; empty if the repository's
    ``examples`` folder is not there (an installed package without its repository)."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(p for p in EXAMPLES_DIR.iterdir()
                  if p.is_file() and p.suffix.lower() in image_io.IMAGE_EXTENSIONS and not p.name.startswith("."))


@functools.partial(jax.jit, static_argnames=("pooling",))
def _relu_sums(params, image: jax.Array, pooling: str) -> dict[str, jax.Array]:
    """Per-channel sums of every post-ReLU activation of one image (``(1, H, W, 3)`` RGB in [0, 1])."""
    # "highest": on GPUs the default conv precision (TF32) would perturb the measured means by ~1e-3.
    feats = vgg.apply(params, vgg.preprocess(image), tuple(_RELU.values()), pooling=pooling, precision="highest")
    return {name: jnp.sum(f, axis=(0, 1, 2)) for name, f in feats.items()}


def channel_means(params: Mapping, images: Iterable[np.ndarray], *, pooling: str = DEFAULT_POOLING
                  ) -> dict[str, np.ndarray]:
    """Every channel's mean post-ReLU activation over the images and all their positions, per convolution.

    Each (image, position) counts once, so a larger image weighs more. Images are run one at a time
    (one compilation per distinct shape).

    Args:
        params: VGG-19 params ``{"params": {...}}``.
        images: RGB images ``(H, W, 3)`` float in [0, 1] (a generator is consumed once).
        pooling: the network's pooling, ``"avg"`` or ``"max"``.

    Returns:
        ``{conv name: (C_out,) float64}``, the mean of its ReLU's output.

    Raises:
        ValueError: no image was given, or a bad pooling.
    """
    _check_pooling(pooling)
    device_params = jax.tree.map(jnp.asarray, {"params": params["params"]})
    sums = {name: np.zeros(cout, np.float64) for name, (_, cout) in vgg.CONV_CHANNELS.items()}
    positions = dict.fromkeys(vgg.CONV_LAYERS, 0)
    for image in images:
        batch = vgg.check_images(image)
        h, w = batch.shape[1:3]
        out = _relu_sums(device_params, batch, pooling)
        for name in vgg.CONV_LAYERS:
            sums[name] += np.asarray(out[_RELU[name]], np.float64)
            block = int(name[len("conv")]) - 1  # convB_I comes after B - 1 "valid" 2x2 poolings
            positions[name] += (h >> block) * (w >> block)
    if not positions[vgg.CONV_LAYERS[0]]:
        raise ValueError("channel_means: no images given; pass at least one image.")
    return {name: sums[name] / positions[name] for name in vgg.CONV_LAYERS}


def rescale(params: Mapping, means: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """The params with every output channel divided by its mean activation, and the next convolution's input
    channel multiplied by it (see the module docstring).

    Args:
        params: VGG-19 params.
        means: :func:`channel_means` of ``params``: per convolution, ``(C_out,)``, each >= 0.

    Returns:
        ``(normalized params (float32), scales)``: the scales are the means with 0 (never active) replaced
        by 1, float64.
    """
    scales = {name: np.where(np.asarray(means[name], np.float64) > 0, np.asarray(means[name], np.float64), 1.0)
              for name in vgg.CONV_LAYERS}
    out: dict[str, dict[str, np.ndarray]] = {}
    previous = None
    for name in vgg.CONV_LAYERS:
        kernel = np.asarray(params["params"][name]["kernel"], np.float64)  # HWIO
        bias = np.asarray(params["params"][name]["bias"], np.float64)
        if previous is not None:  # input channel c (axis I) now arrives divided by the previous layer's scale
            kernel = kernel * previous[None, None, :, None]
        s = scales[name]  # output channel c (axis O)
        out[name] = {"kernel": (kernel / s).astype(np.float32), "bias": (bias / s).astype(np.float32)}
        previous = s
    result = {"params": out}
    vgg.check_params(result)
    return result, scales


def normalize(weights: Any = None, images: Sequence[ImageSource] = (), *, examples: bool = True,
              size: int = DEFAULT_SIZE, pooling: str = DEFAULT_POOLING, progress: bool = True) -> Normalization:
    """The normalized VGG-19 of ``weights``: every channel's mean post-ReLU activation on the images is 1.

    Args:
        weights: the source, as in :func:`nst_jax.load_vgg19` (``None``: ``$NST_JAX_WEIGHTS``, the cache,
            a download; ``"random"``; a file; a params dict), not ``"normalized"``.
        images: image files or ``(H, W, 3)`` arrays, used in addition to the examples.
        examples: include the bundled example images (:func:`example_images`).
        size: the long side, in pixels, every image is resized to.
        pooling: the measuring network's pooling, ``"avg"`` (default) or ``"max"``.
        progress: show a progress bar if the source weights are downloaded.

    Returns:
        A :class:`Normalization`, whose ``metadata`` is the provenance record: ``kind``, ``software``
        (nst_jax version), ``source`` (:func:`nst_jax.weights.describe` of ``weights``), ``images`` (name,
        12-digit SHA-256 of the file or array, resized ``[h, w]``), ``size``, ``pooling``, ``dead_channels``
        (total) and ``layers`` (per convolution: dead channels and the min / median / max scale of the
        others).

    Raises:
        ValueError: no images (none given and no bundled examples), a bad size or pooling, or
            ``weights="normalized"``.
        nst_jax.images.ImageError: an image cannot be read; the message names it.
        nst_jax.weights.WeightsError: the source weights cannot be found or read.
    """
    sources = _image_sources(images, examples)
    _check_recipe(weights, sources, size, pooling)
    records = [_image_record(src, i, size) for i, src in enumerate(sources)]  # every image is checked first
    params = weight_io.resolve_params(weights, progress=progress)
    means = channel_means(params, _loaded(sources, size), pooling=pooling)
    normalized, scales = rescale(params, means)
    dead = {name: int(np.sum(np.asarray(means[name]) <= 0)) for name in vgg.CONV_LAYERS}
    metadata = {
        "kind": "normalized VGG-19: every channel's mean post-ReLU activation over the images and all positions "
                "is 1 (Novak & Nikulin; Gatys et al.)",
        "software": image_io.software_name(),
        "source": weight_io.describe(weights),
        "images": records,
        "size": size,
        "pooling": pooling,
        "dead_channels": sum(dead.values()),
        "layers": {name: _layer_summary(scales[name], means[name], dead[name]) for name in vgg.CONV_LAYERS},
    }
    return Normalization(normalized, scales, dead, metadata)


def normalize_weights(output: str | os.PathLike[str] | None = None, weights: Any = None,
                      images: Sequence[ImageSource] = (), *, examples: bool = True, size: int = DEFAULT_SIZE,
                      pooling: str = DEFAULT_POOLING, overwrite: bool = False,
                      progress: bool = True) -> Normalization:
    """Computes the normalized VGG-19 (:func:`normalize`) and writes it, with its provenance, as an ``.npz``.

    What ``nst-jax normalize-weights`` and ``scripts/normalize_vgg.py`` run. The file is written to a
    temporary name and renamed, so it is complete or absent.

    Args:
        output: the file to write; default :func:`normalized_path` of the same inputs in the weights cache
            (with the default images, size and pooling: the file ``weights="normalized"`` reads).
        weights, images, examples, size, pooling, progress: as in :func:`normalize`.
        overwrite: replace an existing ``output``.

    Returns:
        The :class:`Normalization`, with ``path`` set.

    Raises:
        ValueError: as in :func:`normalize`, or no ``output`` for a params dict.
        nst_jax.images.ImageError: an image cannot be read, ``output`` exists and ``overwrite`` is false, or
            ``output`` is one of the input images or the source weights file (even with ``overwrite``).
        nst_jax.weights.WeightsError: the source weights cannot be found or read.
    """
    sources = _image_sources(images, examples)
    _check_recipe(weights, sources, size, pooling)
    if output is None:
        if isinstance(weights, Mapping):
            raise ValueError("normalize_weights: give an output path for params given in memory (the cache file's "
                             "name holds the source file's MD5).")
        path = normalized_path(weights, sources, examples=False, size=size, pooling=pooling)
    else:
        path = Path(output).expanduser()
    inputs = [(f"normalization image {i + 1}", src) for i, src in enumerate(sources)]
    if isinstance(weights, (str, os.PathLike)) and weights not in ("random", weight_io.NORMALIZED):
        inputs.append(("source weights file", weights))
    if path.is_dir():
        raise image_io.ImageError(f"output '{path}' is a directory; add a file name, e.g. '{path / 'vgg19.npz'}'")
    if path.exists() and not overwrite and output is None:
        raise image_io.ImageError(
            f"'{path}' already exists: the normalized weights of these inputs were computed before (it is the "
            "cache file; with the default images, size and pooling, --weights normalized reads it). Pass "
            "--overwrite (Python: overwrite=True) to compute it again.")
    image_io.check_overwrite(path, inputs, overwrite=overwrite)
    result = normalize(weights, sources, examples=False, size=size, pooling=pooling, progress=progress)
    written = weight_io.save_npz(result.params, path, metadata=result.metadata)
    return dataclasses.replace(result, path=written)


def normalized_path(weights: Any = None, images: Sequence[ImageSource] = (), *, examples: bool = True,
                    size: int = DEFAULT_SIZE, pooling: str = DEFAULT_POOLING) -> Path:
    """Where the weights cache keeps the normalized VGG-19 of ``weights`` with this recipe.

    ``<cache>/vgg19_normalized_<source>_<recipe>.npz``: ``<source>`` is the source file's MD5 (``random0``
    for random weights of seed 0) and ``<recipe>`` 8 hex digits of a hash of the images' contents, the size
    and the pooling, so that a changed source or recipe never reads a stale file. Nothing is computed.

    Raises:
        ValueError: ``weights`` is a params dict or ``"normalized"``, or no images.
        nst_jax.weights.WeightsError: the source weights file does not exist.
    """
    sources = _image_sources(images, examples)
    _check_recipe(weights, sources, size, pooling)
    record = weight_io.describe(weights)
    if record["source"] == "random":
        tag = f"random{record['seed']}"
    elif record["source"] == "file":
        tag = record["md5"]
    else:
        raise ValueError("normalized_path: params given in memory have no cache file; write them with "
                         "normalize_weights(output=...).")
    recipe = json.dumps({"images": [_digest(src) for src in sources], "size": size, "pooling": pooling})
    return weight_io.cache_dir() / f"vgg19_normalized_{tag}_{hashlib.sha256(recipe.encode()).hexdigest()[:8]}.npz"


def default_normalized_path() -> Path:
    """Where ``weights="normalized"`` is cached: :func:`normalized_path` of the default weights and recipe
    (the bundled examples, :data:`DEFAULT_SIZE`, :data:`DEFAULT_POOLING`). Nothing is computed.

    Raises:
        nst_jax.weights.WeightsError: the default weights file does not exist, or the bundled example images
            are not there (a package installed without its repository).
    """
    try:  # the module's defaults are read here, at call time, so that tests can redirect them
        return normalized_path(size=DEFAULT_SIZE, pooling=DEFAULT_POOLING)
    except ValueError as e:
        if isinstance(e, weight_io.WeightsError):
            raise
        raise weight_io.WeightsError(
            f"weights='normalized' is computed from the bundled example images ({EXAMPLES_DIR}), which are not "
            "there. Fix: write normalized weights from your own images with nst-jax normalize-weights --images "
            "IMAGE ... --output FILE.npz, and pass --weights FILE.npz.") from e


def normalized_weights(*, progress: bool = True) -> Path:
    """The normalized VGG-19 of the default weights (``weights=None``) with the default recipe: the file that
    ``weights="normalized"`` (``--weights normalized``) reads.

    Computed on first use (one line on stderr says so) from the bundled example images and cached beside
    the cached weights (:func:`normalized_path`); processes that start at once compute it once (a lock file
    ``<name>.lock``).

    Returns:
        The path of the cached ``.npz``.

    Raises:
        nst_jax.weights.WeightsError: the default weights cannot be found or read, or the cache folder
            cannot be written; the message says what to do.
        ValueError: the bundled example images are not there (a package installed without its repository).
    """
    path = default_normalized_path()
    if path.is_file():
        return path

    def tell() -> None:
        if progress:
            print(f"nst_jax: another process is computing {path}; waiting for it.", file=sys.stderr, flush=True)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = LockFile.acquire(path.with_name(path.name + ".lock"), wait=True, on_wait=tell)
        try:
            if not path.is_file():  # else another process computed it while this one waited
                if progress:
                    print(f"nst_jax: computing the normalized VGG-19 of {describe_source(weight_io.describe(None))} "
                          f"on the {len(example_images())} bundled example images at {DEFAULT_SIZE} px (once; "
                          f"cached as {path})", file=sys.stderr, flush=True)
                normalize_weights(path, None, examples=True, size=DEFAULT_SIZE, pooling=DEFAULT_POOLING,
                                  overwrite=True, progress=progress)
        finally:
            lock.release()
    except OSError as e:
        raise weight_io.WeightsError(
            f"cannot write the normalized weights into the cache folder {str(path.parent)!r}: "
            f"{e.strerror or e}. Fix: set ${weight_io.ENV_CACHE} to a writable folder, or write them elsewhere "
            "with nst-jax normalize-weights --output FILE.npz and pass --weights FILE.npz.") from e
    return path


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _check_pooling(pooling: str) -> None:
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}.")


def _check_recipe(weights: Any, sources: Sequence[ImageSource], size: int, pooling: str) -> None:
    """The arguments every entry point shares: a source that is not already normalized, images, size, pooling."""
    if isinstance(weights, str) and weights == weight_io.NORMALIZED:
        raise ValueError("weights='normalized' is already the normalized network: give the weights to normalize "
                         "(None for the default ones, 'random', or a file).")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_IMAGE_SIZE} (the long side in pixels), "
                         f"got {size!r}.")
    _check_pooling(pooling)
    if not sources:
        where = (f"the bundled examples folder {str(EXAMPLES_DIR)!r} is missing (a package installed without its "
                 "repository) and " if not example_images() else "")
        raise ValueError(f"no images to normalize on: {where}no images were given. Fix: pass one or more images "
                         "(--images IMAGE ...; Python: images=[...]), or keep the bundled examples.")


def _image_sources(images: Sequence[ImageSource] | ImageSource, examples: bool) -> list[ImageSource]:
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    return [*(example_images() if examples else []), *images]


def _digest(source: ImageSource) -> str:
    """SHA-256 of an image file's bytes, or of an array's float32 values."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        try:
            return weight_io.file_digest(path, "sha256")  # computed once per version of the file
        except OSError as e:
            raise image_io.ImageError(f"normalization image '{path}' cannot be read ({e.strerror or e}); check "
                                      "the path") from e
    return hashlib.sha256(np.ascontiguousarray(source, np.float32).tobytes()).hexdigest()


def _load(source: ImageSource, index: int, size: int) -> np.ndarray:
    label = f"normalization image {index + 1}"
    return image_io.resize_long_side(image_io.load_image(source, label=label), size, label=label)


def _loaded(sources: Sequence[ImageSource], size: int) -> Iterator[np.ndarray]:
    """The images, loaded and resized one at a time (only one is in memory at once)."""
    for i, src in enumerate(sources):
        yield _load(src, i, size)


def _image_record(source: ImageSource, index: int, size: int) -> dict:
    """Name, short hash and resized shape of one image; loading it checks that it can be read."""
    h, w = _load(source, index, size).shape[:2]
    name = Path(source).name if isinstance(source, (str, os.PathLike)) else f"array {index + 1}"
    return {"name": name, "sha256": _digest(source)[:_SHORT_HASH], "shape": [h, w]}


def _layer_summary(scales: np.ndarray, means: np.ndarray, dead: int) -> dict:
    active = np.asarray(scales)[np.asarray(means) > 0]
    if not active.size:
        return {"dead": dead}
    return {"dead": dead, "scale_min": _round(active.min()), "scale_median": _round(np.median(active)),
            "scale_max": _round(active.max())}


def _round(x) -> float:
    return float(f"{float(x):.6g}")


def describe_source(record: Mapping) -> str:
    """A :func:`nst_jax.weights.describe` record in a few words, for messages."""
    if record.get("source") == "random":
        return f"random weights (seed {record.get('seed')})"
    if record.get("source") == "file":
        return f"{record.get('path')}"
    return "params given in memory"
