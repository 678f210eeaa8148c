"""VGG-19 (the 16 convolutional layers of the ImageNet model) as a Flax module.

No I/O happens here: weights are read by :mod:`nst_jax.weights` into a params
pytree and passed to :func:`apply`.

Conventions (the Caffe/Keras ones, so converted weights are used unchanged):

* The network's input is an image in the *Caffe space*: BGR channel order,
  values 0..255, the ImageNet BGR mean ``(103.939, 116.779, 123.68)``
  subtracted. :func:`preprocess` maps float RGB images in [0, 1] (NHWC) to that
  space and :func:`deprocess` maps back; style transfer optimizes images in the
  Caffe space, as neural-style does.
* Kernels are HWIO, ``(3, 3, C_in, C_out)``; ``conv1_1``'s input channels are
  in BGR order (the weights come from Caffe).
* Params pytree: ``{"params": {"conv1_1": {"kernel", "bias"}, ...}}``.

Size: one concern, the network (layer names and aliases, pre/post-processing, the Flax module, the
Winograd preparation of its kernels, parameter shapes); no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import conv

#: ImageNet mean in BGR order, 0..255 (Caffe / Keras ``preprocess_input``).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

#: (block, number of conv layers, output channels) of VGG-19.
BLOCKS: tuple[tuple[int, int, int], ...] = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

#: The 16 convolution layers, shallow to deep.
CONV_LAYERS: tuple[str, ...] = tuple(f"conv{b}_{i}" for b, n, _ in BLOCKS for i in range(1, n + 1))


def _layer_sequence() -> tuple[str, ...]:
    names: list[str] = []
    for b, n, _ in BLOCKS:
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


#: Every named output, in the order the network computes them.
LAYERS: tuple[str, ...] = _layer_sequence()
_LAYER_INDEX = {name: i for i, name in enumerate(LAYERS)}

#: (C_in, C_out) of every convolution.
CONV_CHANNELS: dict[str, tuple[int, int]] = {}
_cin = 3
for _b, _n, _c in BLOCKS:
    for _i in range(1, _n + 1):
        CONV_CHANNELS[f"conv{_b}_{_i}"] = (_cin, _c)
        _cin = _c
del _cin, _b, _n, _c, _i

_KERAS_CONV = re.compile(r"^block([1-5])_conv([1-4])$")
_KERAS_POOL = re.compile(r"^block([1-5])_pool$")

Pooling = Literal["max", "avg"]
Padding = Literal["zero", "reflect"]


def canonical_layer(name: str) -> str:
    """Returns the canonical name of a layer, resolving Keras aliases.

    Keras's ``blockB_convI`` output already includes the ReLU, so it is
    ``reluB_I`` here; ``blockB_pool`` is ``poolB``.

    Raises:
        ValueError: the name is not a VGG-19 layer; the message lists the valid ones.
    """
    if name in _LAYER_INDEX:
        return name
    m = _KERAS_CONV.match(name)
    if m and f"relu{m[1]}_{m[2]}" in _LAYER_INDEX:
        return f"relu{m[1]}_{m[2]}"
    m = _KERAS_POOL.match(name)
    if m:
        return f"pool{m[1]}"
    raise ValueError(
        f"unknown VGG-19 layer {name!r}. Valid layers: {', '.join(LAYERS)} "
        "(Keras aliases such as 'block4_conv2' = relu4_2 and 'block4_pool' = pool4 are accepted)."
    )


def canonical_layers(names: str | Iterable[str]) -> tuple[str, ...]:
    """Canonicalizes a layer name or a list of them (order kept, duplicates dropped)."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for n in names:
        c = canonical_layer(n.strip())
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError("no layer given: name at least one VGG-19 layer, e.g. 'relu4_2'.")
    return tuple(out)


def layer_index(name: str) -> int:
    """Position of a (canonical) layer in :data:`LAYERS`."""
    return _LAYER_INDEX[canonical_layer(name)]


def preprocess(images: jax.Array) -> jax.Array:
    """RGB in [0, 1] -> Caffe space (BGR, 0..255, ImageNet mean subtracted)."""
    bgr = images[..., ::-1] * 255.0
    return bgr - jnp.asarray(IMAGENET_BGR_MEAN, dtype=images.dtype)


def deprocess(x: jax.Array) -> jax.Array:
    """Caffe space -> RGB in [0, 1] (not clipped): the inverse of :func:`preprocess`."""
    bgr = x + jnp.asarray(IMAGENET_BGR_MEAN, dtype=x.dtype)
    return bgr[..., ::-1] / 255.0


_PRECISIONS = {
    None: None,
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


class _ConvParams(nn.Module):
    """Declares one 3x3 convolution's kernel (HWIO) and bias; returns them."""

    c_in: int
    c_out: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array, conv.WinogradKernels | None]:
        kernel = self.param("kernel", nn.initializers.he_normal(), (3, 3, self.c_in, self.c_out))
        bias = self.param("bias", nn.initializers.zeros, (self.c_out,))
        transforms = None  # precomputed by prepare_params, if at all
        if self.has_variable("params", WINOGRAD_KEY):
            transforms = conv.WinogradKernels(*self.get_variable("params", WINOGRAD_KEY))
        return kernel, bias, transforms


#: Key of a layer's precomputed Winograd kernel transforms in the params (see :func:`prepare_params`).
WINOGRAD_KEY = "winograd_kernels"


def prepare_params(params, conv_algorithm: str = "direct", layers: Iterable[str] | None = None):
    """The params with what every evaluation would otherwise recompute from them, computed once.

    With ``conv_algorithm="winograd"``: the Winograd kernel transforms of the layers that use them
    (:func:`nst_jax.conv.winograd_kernels`, under ``WINOGRAD_KEY``), so that an evaluation only transforms the
    activations (computed inside every evaluation they cost more than Winograd saves; figures in
    BENCHMARKS.md). The transforms take 16/9 the memory of their kernels (88 MB for conv3_2 .. conv5_1: the
    forward transform only, the input gradient reads it permuted). ``layers``: the (canonical) layers that will
    be asked for, so that only the convolutions up to the deepest of them are prepared (default: all).
    The result is a valid params pytree for :func:`apply`; prepared params are returned as they are, and
    so are the params for ``"direct"``.
    """
    if conv_algorithm != "winograd":
        return params
    deepest = max(map(layer_index, layers)) if layers else len(_LAYER_INDEX)
    names = [n for n, (cin, _) in CONV_CHANNELS.items()
             if cin >= conv.WINOGRAD_MIN_CHANNELS and _LAYER_INDEX[n] <= deepest]
    if all(WINOGRAD_KEY in params["params"][n] for n in names):
        return params
    transforms = _winograd_transforms({n: params["params"][n]["kernel"] for n in names})
    prepared = {**params["params"], **{n: {**params["params"][n], WINOGRAD_KEY: transforms[n]} for n in names}}
    return {**params, "params": prepared}


@jax.jit
def _winograd_transforms(kernels: dict[str, jax.Array]) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {n: tuple(conv.winograd_kernels(k)) for n, k in kernels.items()}


class VGG19(nn.Module):
    """The convolutional part of VGG-19 on Caffe-space NHWC input.

    Attributes:
        pooling: ``"max"`` (the trained network) or ``"avg"`` (Gatys et al.'s
            suggestion for smoother results).
        padding: ``"zero"`` (as trained) or ``"reflect"`` (reflection padding
            of each 3x3 convolution's input; fewer border artifacts).
        precision: matmul/conv precision, ``None``/``"default"``, ``"high"`` or
            ``"highest"``. On GPUs the default uses TF32/bf16 passes.
        remat: recompute each block's activations in the backward pass
            (``jax.checkpoint``) to fit larger images in memory.
        dtype: compute dtype of the network, ``None`` (the input's) or e.g.
            ``"bfloat16"``: input, weights and activations are cast to it.
        conv_algorithm: ``"direct"`` (XLA's convolution, bit-faithful to Keras)
            or ``"winograd"`` (see :mod:`nst_jax.conv`).
    """

    pooling: Pooling = "max"
    padding: Padding = "zero"
    precision: str | None = None
    remat: bool = False
    dtype: str | None = None
    conv_algorithm: str = "direct"

    @nn.compact
    def __call__(self, x: jax.Array, layers: Sequence[str]) -> dict[str, jax.Array]:
        """Runs the network up to the deepest requested layer.

        Args:
            x: Caffe-space images, ``(N, H, W, 3)``.
            layers: canonical layer names (see :func:`canonical_layers`).

        Returns:
            ``{layer: activations (N, H_l, W_l, C_l)}`` for the requested layers.
        """
        weights = {name: _ConvParams(cin, cout, name=name)() for name, (cin, cout) in CONV_CHANNELS.items()}
        return forward(weights, x, tuple(layers), pooling=self.pooling, padding=self.padding,
                       precision=self.precision, remat=self.remat, dtype=self.dtype,
                       conv_algorithm=self.conv_algorithm)


def forward(weights: dict[str, tuple[jax.Array, jax.Array]], x: jax.Array, layers: tuple[str, ...], *,
            pooling: Pooling = "max", padding: Padding = "zero", precision: str | None = None,
            remat: bool = False, dtype: str | None = None, conv_algorithm: str = "direct") -> dict[str, jax.Array]:
    """The network as a pure function of ``{conv: (kernel, bias[, winograd transforms])}``; stops after the
    deepest requested layer.

    With ``dtype`` (e.g. ``"bfloat16"``) the input and every layer's weights are cast to it, so the
    activations (and their gradients) are of that dtype.
    """
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}.")
    if padding not in ("zero", "reflect"):
        raise ValueError(f"padding must be 'zero' or 'reflect', got {padding!r}.")
    if conv_algorithm not in ("direct", "winograd"):
        raise ValueError(f"conv_algorithm must be 'direct' or 'winograd', got {conv_algorithm!r}.")
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"VGG-19 input must be (N, H, W, 3), got shape {tuple(x.shape)}.")
    wanted = frozenset(layers)
    last = max(_LAYER_INDEX[n] for n in wanted)
    prec = _PRECISIONS[precision]
    if dtype is not None:
        x = x.astype(dtype)
    out: dict[str, jax.Array] = {}
    start = 0
    for b, n, _ in BLOCKS:
        if start > last:
            break
        block_w = [weights[f"conv{b}_{i}"] for i in range(1, n + 1)]
        fn = functools.partial(_run_block, block=b, padding=padding, pooling=pooling, precision=prec,
                               stop=last - start, wanted=wanted, algorithm=conv_algorithm)
        if remat:
            fn = jax.checkpoint(fn)
        x, feats = fn(x, block_w)
        out.update(feats)
        start += 2 * n + 1
    return out


def _run_block(x, block_w, *, block, padding, pooling, precision, stop, wanted, algorithm="direct"):
    """One VGG block (convs + ReLUs + pool), stopping after position ``stop`` within it."""
    feats = {}
    pos = 0
    for i, (kernel, bias, *transforms) in enumerate(block_w, start=1):
        transforms = transforms[0] if transforms else None
        x = conv.conv3x3(x, kernel, padding=padding, precision=precision, algorithm=algorithm,
                         transforms=transforms) + bias.astype(x.dtype)
        if f"conv{block}_{i}" in wanted:
            feats[f"conv{block}_{i}"] = x
        if pos + 1 > stop:
            return x, feats
        x = relu(x)
        if f"relu{block}_{i}" in wanted:
            feats[f"relu{block}_{i}"] = x
        pos += 2
        if pos > stop:
            return x, feats
    x = pool2x2(x, pooling)
    if f"pool{block}" in wanted:
        feats[f"pool{block}"] = x
    return x, feats


@jax.custom_jvp
def relu(x: jax.Array) -> jax.Array:
    """``max(x, 0)`` whose derivative is taken from its output: ``grad * (y > 0)``.

    The same values and gradients as ``jax.nn.relu`` (``y > 0`` exactly where ``x > 0``; the derivative at 0
    is 0), but the backward pass needs only the output, which it keeps anyway (it is the next pool's, the
    Gram matrix's or the content loss's input). ``jax.nn.relu`` takes the mask from its input, so every
    convolution's output would be kept for the backward pass as well: about a third more memory. This is what
    PyTorch's autograd saves for ``relu`` (its result).
    """
    return jnp.maximum(x, 0)


@relu.defjvp
def _relu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = relu(x)
    return y, jnp.where(y > 0, dx, jnp.zeros_like(dx))


def pool2x2(x: jax.Array, pooling: Pooling = "max") -> jax.Array:
    """2x2 pooling with stride 2, "valid" (odd trailing rows/columns dropped), as VGG's (NHWC).

    Written as a reshape to ``(N, H/2, 2, W/2, 2, C)`` and a reduction over the two window axes rather
    than ``lax.reduce_window``: the forward values are the same, and the backward pass of max pooling
    is an elementwise one-hot of each window's first maximum instead of XLA's select-and-scatter, which
    measures slower on CPU (see BENCHMARKS.md). Ties (common where tiny inputs round to equal
    activations) send the gradient to the first maximum in row-major window order, as
    select-and-scatter, Caffe and PyTorch do.
    """
    n, h, w, c = x.shape
    windows = x[:, : 2 * (h // 2), : 2 * (w // 2), :].reshape(n, h // 2, 2, w // 2, 2, c)
    if pooling == "max":
        return _max_pool_windows(windows)
    return jnp.mean(windows, axis=(2, 4))


@jax.custom_vjp
def _max_pool_windows(windows):
    return jnp.max(windows, axis=(2, 4))


def _max_pool_fwd(windows):
    return _max_pool_windows(windows), windows


def _max_pool_bwd(windows, g):
    n, h2, _, w2, _, c = windows.shape
    flat = windows.transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c, 4)  # (dy, dx) row-major
    first = jax.nn.one_hot(jnp.argmax(flat, axis=-1), 4, dtype=g.dtype)  # argmax: the first maximum
    dwin = (first * g[..., None]).reshape(n, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (dwin,)


_max_pool_windows.defvjp(_max_pool_fwd, _max_pool_bwd)


def apply(params, x_caffe: jax.Array, layers: Sequence[str], *, pooling: Pooling = "max",
          padding: Padding = "zero", precision: str | None = None, remat: bool = False,
          dtype: str | None = None, conv_algorithm: str = "direct") -> dict[str, jax.Array]:
    """Pure function: features of Caffe-space images. Safe inside ``jit``/``vmap``/``grad``.

    ``layers`` must be canonical names (static under ``jit``).
    """
    module = VGG19(pooling=pooling, padding=padding, precision=precision, remat=remat, dtype=dtype,
                   conv_algorithm=conv_algorithm)
    return module.apply(params, x_caffe, tuple(layers))


def param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """The expected shape of every parameter, ``{conv: {"kernel": HWIO, "bias": (C_out,)}}``."""
    return {name: {"kernel": (3, 3, cin, cout), "bias": (cout,)} for name, (cin, cout) in CONV_CHANNELS.items()}


def check_params(params) -> None:
    """Raises ``ValueError`` naming the first missing, unexpected or misshapen parameter."""
    if not isinstance(params, dict) or "params" not in params:
        raise ValueError("VGG-19 params must be a dict {'params': {'conv1_1': {'kernel', 'bias'}, ...}}.")
    p = params["params"]
    expected = param_shapes()
    missing = [k for k in expected if k not in p]
    extra = [k for k in p if k not in expected]
    if missing or extra:
        raise ValueError(f"VGG-19 params: missing layers {missing}, unexpected layers {extra}.")
    for name, shapes in expected.items():
        for kind, shape in shapes.items():
            got = tuple(np.shape(p[name].get(kind))) if kind in p[name] else None
            if got != shape:
                raise ValueError(f"VGG-19 params: {name}/{kind} has shape {got}, expected {shape}.")


class FeatureExtractor:
    """VGG-19 with its params: what :func:`nst_jax.load_vgg19` returns.

    Attributes:
        params: the params pytree (``{"params": {"conv1_1": {...}, ...}}``).
        pooling, padding, precision, remat: the network's settings (see :class:`VGG19`).
    """

    def __init__(self, params, *, pooling: Pooling = "max", padding: Padding = "zero",
                 precision: str | None = None, remat: bool = False):
        check_params(params)
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}.")
        if padding not in ("zero", "reflect"):
            raise ValueError(f"padding must be 'zero' or 'reflect', got {padding!r}.")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of None, 'default', 'high', 'highest', got {precision!r}.")
        self.params = jax.tree.map(jnp.asarray, params)
        self.pooling, self.padding, self.precision, self.remat = pooling, padding, precision, remat
        #: How many times :meth:`features` has been traced (compiled); for tests and diagnostics.
        self.trace_count = 0
        self._features = jax.jit(self._features_impl, static_argnames=("layers",))

    def apply(self, params, x_caffe: jax.Array, layers: Sequence[str]) -> dict[str, jax.Array]:
        """Pure apply on Caffe-space input with this network's settings (use inside ``jit``/``vmap``)."""
        return apply(params, x_caffe, canonical_layers(layers), pooling=self.pooling, padding=self.padding,
                     precision=self.precision, remat=self.remat)

    def _features_impl(self, params, images, layers):
        self.trace_count += 1
        return apply(params, preprocess(images), layers, pooling=self.pooling, padding=self.padding,
                     precision=self.precision, remat=self.remat)

    def features(self, images, layers: str | Iterable[str]) -> dict[str, jax.Array]:
        """Activations of RGB images in [0, 1] at the given layers (jitted).

        Args:
            images: float32 array ``(N, H, W, 3)`` (or one image ``(H, W, 3)``), RGB in [0, 1].
            layers: layer names (canonical or Keras aliases), or a comma-separated string.

        Returns:
            ``{name: (N, H_l, W_l, C_l)}`` keyed by the names as given (``"block5_conv1"`` stays
            ``"block5_conv1"``, the same activations as ``"relu5_1"``), in the order requested.
        """
        asked = [n.strip() for n in layers.split(",") if n.strip()] if isinstance(layers, str) else list(layers)
        unique = canonical_layers(asked)  # also: at least one name
        images = check_images(images)
        out = self._features(self.params, images, unique)  # jit returns dicts with sorted keys
        return {name: out[canonical_layer(name.strip())] for name in asked}


def check_images(images) -> jax.Array:
    """Validates an RGB image batch for :meth:`FeatureExtractor.features`; returns ``(N, H, W, 3)`` float32."""
    dtype = getattr(images, "dtype", None)
    if dtype is None:
        images = np.asarray(images)
        dtype = images.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"images must be floating point RGB in [0, 1], got dtype {dtype}; "
            "convert with `np.asarray(img, np.float32) / 255`.")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, 3) or (H, W, 3), got {tuple(images.shape)}.")
    if images.shape[-1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels in the last axis (NHWC), got shape {tuple(images.shape)}; "
            "convert grayscale/RGBA images to RGB first.")
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}.")
    return jnp.asarray(images, jnp.float32)
