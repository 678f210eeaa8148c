"""The settings of a stylization: one frozen dataclass, the single source of defaults.

The CLI is generated from these fields (``nst_jax.cli``), so the two cannot
drift. Defaults are jcjohnson/neural-style's. ``Settings`` is frozen and
hashable; the parts that shape compiled code are passed to ``jax.jit`` as
static arguments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from nst_jax import vgg

#: Smallest allowed ``image_size``: VGG-19 pools four times before relu5_1.
MIN_IMAGE_SIZE = 32

Optimizer = Literal["lbfgs", "adam"]
LineSearch = Literal["none", "zoom", "backtracking", "jaxopt"]
Init = Literal["random", "content", "style", "image"]
Loop = Literal["auto", "step", "chunk"]
Precision = Literal["default", "high", "highest"]


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """Every option of a stylization, with neural-style's defaults."""

    # --- images
    image_size: int = _opt(512, "Long side of the output in pixels (the content image is resized to it; "
                                "sizes truncated toward zero, as neural-style).")
    style_scale: float = _opt(1.0, "Style images are resized to image_size * style_scale (long side).")
    style_blend_weights: tuple[float, ...] | None = _opt(
        None, "One weight per style image (normalized to sum to 1); default equal.")
    original_colors: bool = _opt(False, "Keep the content image's colors: the result's luminance, the content's chroma.")

    # --- losses
    content_layers: tuple[str, ...] = _opt(("relu4_2",), "Content layers (Keras aliases accepted).")
    style_layers: tuple[str, ...] = _opt(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), "Style layers.")
    content_weight: float = _opt(5.0, "Weight of the content loss.")
    style_weight: float = _opt(100.0, "Weight of the style loss.")
    tv_weight: float = _opt(1e-3, "Weight of the total-variation regularizer (0 disables it).")
    content_layer_weights: tuple[float, ...] | None = _opt(None, "Per content layer weights; default all 1.")
    style_layer_weights: tuple[float, ...] | None = _opt(None, "Per style layer weights; default all 1.")
    activation_shift: float = _opt(0.0, "Shift s added to activations before the Gram matrix "
                                        "(Novak & Nikulin; 0 = classic).")

    # --- network
    weights: str | None = _opt(None, "VGG-19 weights: a .h5/.npz file, 'random' (for smoke tests), or unset "
                                     "for $NST_JAX_WEIGHTS, then the cache, then download.")
    pooling: Literal["max", "avg"] = _opt("max", "Pooling of VGG-19.")
    padding: Literal["zero", "reflect"] = _opt("zero", "Padding of VGG-19's convolutions.")
    precision: Precision | None = _opt(None, "Matmul/conv precision (default/high/highest); unset = backend default.")
    remat: bool = _opt(False, "Recompute VGG activations in the backward pass to fit larger images.")
    conv_algorithm: Literal["auto", "direct", "winograd"] = _opt(
        "auto", "3x3 convolutions: 'direct' (XLA's, bit-faithful to Keras), 'winograd' (F(2x2,3x3) for the layers "
                "with >= 256 input channels, kernel transforms computed once: 2.25x fewer multiply-adds, agrees to "
                "~1e-6; measured 0.72-0.74x the time of value+grad on a 2-core AVX2 CPU, see BENCHMARKS.md), "
                "'auto' = winograd on CPU, direct on GPU/TPU.")
    dtype: Literal["float32", "bfloat16"] = _opt(
        "float32", "Compute dtype of VGG-19: 'bfloat16' halves activation memory and is faster where the hardware "
                   "has bf16 units (GPUs, TPUs); Gram matrices, losses and the optimizer stay float32.")

    # --- optimization
    num_iterations: int = _opt(1000, "Number of optimizer iterations (0 returns the initial image).")
    scales: tuple[int, ...] = _opt(
        (), "Coarse-to-fine: long sides (increasing, each < image_size) to stylize at first, scale_iterations "
            "each; every stage starts from the previous result upsampled, the last stage is image_size with "
            "num_iterations. Empty: one scale, as neural-style.")
    scale_iterations: int | None = _opt(None, "Iterations at each of `scales` (default: num_iterations).")
    optimizer: Optimizer = _opt("lbfgs", "Optimizer.")
    learning_rate: float | None = _opt(None, "Step size; default 1 for L-BFGS, 10 for Adam (neural-style's).")
    beta1: float = _opt(0.9, "Adam beta1 (0.99 with epsilon 0.1 removes Adam's gray spots).")
    beta2: float = _opt(0.999, "Adam beta2.")
    epsilon: float = _opt(1e-8, "Adam epsilon.")
    lbfgs_history: int = _opt(100, "L-BFGS history size (neural-style's -lbfgs_num_correction).")
    lbfgs_linesearch: LineSearch = _opt(
        "none", "L-BFGS variant: 'none' = neural-style's (no line search, unit steps); 'zoom' or "
                "'backtracking' = optax line searches; 'jaxopt' = jaxopt.LBFGS (zoom).")
    tolerance_grad: float = _opt(0.0, "Stop an image when max |gradient| <= this.")
    tolerance_change: float = _opt(0.0, "Stop an image when |loss change| < this (0 disables).")
    init: Init = _opt("random", "Initial image: random noise (0.001 * N(0,1) in Caffe space), content, "
                                "style, or a file (init_image).")
    init_image: str | None = _opt(None, "Initial image file for init='image' (e.g. a previous result).")
    seed: int = _opt(0, "Random seed for init='random'.")
    loop: Loop = _opt("auto", "Loop form: 'step' = one jitted call per iteration (fastest on CPU), "
                              "'chunk' = compiled chunks of iterations (fastest on GPU/TPU), 'auto' picks by backend.")
    chunk_size: int = _opt(25, "Iterations per compiled chunk (loop='chunk').")

    # --- output
    print_every: int = _opt(50, "Record/print the losses every N iterations (0 = only first and last).")
    save_every: int = _opt(0, "Write a snapshot every N iterations (0 = never).")

    def __post_init__(self):
        _validate(self)

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def step_size(self) -> float:
        """The learning rate in effect (the optimizer's default when unset)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.optimizer == "lbfgs" else 10.0

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the settings."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}


def _set(s, name, value):
    object.__setattr__(s, name, value)


def _check_choice(s, name):
    value, allowed = getattr(s, name), _CHOICES[name]
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}.")


_CHOICES = {
    "optimizer": ("lbfgs", "adam"),
    "lbfgs_linesearch": ("none", "zoom", "backtracking", "jaxopt"),
    "init": ("random", "content", "style", "image"),
    "loop": ("auto", "step", "chunk"),
    "pooling": ("max", "avg"),
    "padding": ("zero", "reflect"),
    "precision": (None, "default", "high", "highest"),
    "dtype": ("float32", "bfloat16"),
    "conv_algorithm": ("auto", "direct", "winograd"),
}


def _finite_nonneg(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return v


def _weights_tuple(name, values, n, what):
    if values is None:
        return None
    if isinstance(values, (int, float, str)):
        values = [values]
    vals = tuple(_finite_nonneg(name, v) for v in values)
    if len(vals) != n:
        raise ValueError(f"{name} has {len(vals)} value(s) but there are {n} {what}; give one per {what[:-1]}.")
    return vals


def _validate(s: Settings) -> None:
    for name in _CHOICES:
        _check_choice(s, name)
    for name in ("content_layers", "style_layers"):
        _set(s, name, vgg.canonical_layers(getattr(s, name)))
    for name in ("content_weight", "style_weight", "tv_weight", "tolerance_grad", "tolerance_change"):
        _set(s, name, _finite_nonneg(name, getattr(s, name)))
    _set(s, "content_layer_weights",
         _weights_tuple("content_layer_weights", s.content_layer_weights, len(s.content_layers), "content layers"))
    _set(s, "style_layer_weights",
         _weights_tuple("style_layer_weights", s.style_layer_weights, len(s.style_layers), "style layers"))
    if s.style_blend_weights is not None:
        vals = _weights_tuple("style_blend_weights", s.style_blend_weights, len(tuple(
            [s.style_blend_weights] if isinstance(s.style_blend_weights, (int, float, str))
            else s.style_blend_weights)), "style images")
        if sum(vals) <= 0:
            raise ValueError("style_blend_weights must not all be 0.")
        _set(s, "style_blend_weights", vals)
    _validate_scales(s)
    for name, lo in (("image_size", MIN_IMAGE_SIZE), ("num_iterations", 0), ("lbfgs_history", 1),
                     ("chunk_size", 1), ("print_every", 0), ("save_every", 0), ("seed", 0)):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}.")
    for name in ("style_scale",):
        v = _finite_nonneg(name, getattr(s, name))
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {v!r}.")
        _set(s, name, v)
    if s.learning_rate is not None:
        v = _finite_nonneg("learning_rate", s.learning_rate)
        if v <= 0:
            raise ValueError(f"learning_rate must be > 0, got {s.learning_rate!r}.")
        _set(s, "learning_rate", v)
    for name in ("beta1", "beta2"):
        v = _finite_nonneg(name, getattr(s, name))
        if v >= 1:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}.")
        _set(s, name, v)
    eps = _finite_nonneg("epsilon", s.epsilon)
    if eps <= 0:
        raise ValueError(f"epsilon must be > 0, got {s.epsilon!r}.")
    _set(s, "epsilon", eps)
    shift = float(s.activation_shift)
    if not math.isfinite(shift):
        raise ValueError(f"activation_shift must be finite, got {s.activation_shift!r}.")
    _set(s, "activation_shift", shift)
    if s.init == "image" and not s.init_image:
        raise ValueError("init='image' needs init_image: the path of the image to start from.")
    if s.weights is not None and not isinstance(s.weights, str):
        _set(s, "weights", str(s.weights))


def _validate_scales(s: Settings) -> None:
    scales = s.scales
    if isinstance(scales, (int, str)) and not isinstance(scales, bool):
        scales = [scales]
    try:
        vals = tuple(int(v) for v in scales)
        ok = all(float(v) == int(v) and not isinstance(v, bool) for v in scales)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"scales must be a list of integers (long sides in pixels), got {s.scales!r}.")
    if vals:
        if min(vals) < MIN_IMAGE_SIZE:
            raise ValueError(f"scales must be >= {MIN_IMAGE_SIZE} pixels (VGG-19 pools four times), got {vals}.")
        if any(b <= a for a, b in zip(vals, vals[1:])) or (isinstance(s.image_size, int) and vals[-1] >= s.image_size):
            raise ValueError(f"scales must increase and stay below image_size={s.image_size}, got {vals}; "
                             f"e.g. scales=({s.image_size // 2},) for one half-size stage.")
    _set(s, "scales", vals)
    if s.scale_iterations is not None:
        v = s.scale_iterations
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"scale_iterations must be an integer >= 0, got {v!r}.")


def stages(s: Settings) -> list[tuple[int, int]]:
    """``[(long side, iterations), ...]`` of a stylization: the coarse-to-fine ``scales``, then ``image_size``."""
    coarse = s.num_iterations if s.scale_iterations is None else s.scale_iterations
    return [(size, coarse) for size in s.scales] + [(s.image_size, s.num_iterations)]
