"""The settings of a stylization: one frozen dataclass, the single source of defaults.

The CLI is generated from these fields (``nst_jax.cli``), so the two cannot
drift. Defaults are jcjohnson/neural-style's. ``Settings`` is frozen and
hashable; the parts that shape compiled code are passed to ``jax.jit`` as
static arguments.

Every field is checked when a ``Settings`` is made (types, ranges, and
combinations where one setting would be ignored or fail later); a bad value
raises :class:`SettingError`, whose message names the field (or, on the
command line, its flag).

``method`` names a preset (:mod:`nst_jax.presets`): the fields it sets take
its values unless they are given explicitly, so ``Settings(method="chain",
pooling="max")`` keeps max pooling. ``preset`` names an optimizer preset
(:mod:`nst_jax.optimizer_presets`, e.g. ``adam-no-gray``) and follows the same
rule. A ``Settings`` remembers which fields were
given (:attr:`Settings.explicit`); :meth:`Settings.replace` keeps those and
takes the others from the (new) method or the defaults.

Size: one field per option with its help text, then the check of every field and combination; a field and
its check are kept in one file so that they cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import os
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from nst_jax import layersets, losses, optimizer_presets, presets, terms, weighting

#: Smallest allowed ``image_size``: VGG-19 pools four times before relu5_1.
MIN_IMAGE_SIZE = 32
#: Largest allowed ``image_size`` (and style image size): a bound against typos; VGG-19's first layer alone
#: would need about 1 TB at this size.
MAX_IMAGE_SIZE = 65535

Optimizer = Literal["lbfgs", "adam"]
LineSearch = Literal["none", "zoom", "backtracking", "jaxopt"]
Init = Literal["random", "content", "style", "image"]
Loop = Literal["auto", "step", "chunk"]
Precision = Literal["default", "high", "highest"]
StyleLoss = Literal["gram", "w2", "mrf", "gram_cube"]
LayerWeighting = Literal["uniform", "geometric"]  # weighting.WEIGHTINGS
ColorTransfer = Literal["none", "histogram", "stats"]  # images.COLOR_TRANSFERS
#: Largest repeat count of ``style_tile`` in each direction (a bound against typos: the tiled image is held in
#: memory at the style image's own size before it is resized).
MAX_STYLE_TILE = 16


#: The topics of the settings, in order, each with its first field: a field belongs to the topic of the nearest
#: first field above it (the command line's help groups the flags so).
SECTIONS = (("method", "method"), ("images", "image_size"), ("losses", "content_layers"), ("network", "weights"),
            ("optimization", "num_iterations"), ("output", "print_every"), ("tiling", "tile"))


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Settings:
    """Every option of a stylization, with neural-style's defaults (or a method preset's, see ``method``)."""

    # --- method
    method: str | None = _opt(
        None, "Method preset (Novak & Nikulin's Table 2, and CNN-MRF): one of " + ", ".join(presets.NAMES)
              + "; sets the layers, layer weighting, activation shift, pooling, init and loss weights of that "
                "method (see the README's table); settings given explicitly override it. Unset: no preset.",
        choices=presets.NAMES)

    # --- images
    image_size: int = _opt(512, "Long side of the output in pixels (the content image is resized to it; "
                                "sizes truncated toward zero, as neural-style).")
    style_scale: float = _opt(1.0, "Style images are resized to image_size * style_scale (long side).")
    style_blend_weights: tuple[float, ...] | None = _opt(
        None, "One weight per style image (normalized to sum to 1); default equal.")
    original_colors: bool = _opt(
        False, "Keep the content image's colors: the result's luminance, the content's chroma.")
    aspect: float | None = _opt(None, "Width / height of the output when there is no content image (texture "
                                      "synthesis, content_weight 0; the long side is image_size); default 1.")
    color_transfer: ColorTransfer = _opt(
        "none", "Match the style images' colours to the content image's before their statistics are taken: "
                "'histogram' (each RGB channel's histogram, exact CDF matching) or 'stats' (the RGB mean and "
                "covariance, an affine map by symmetric matrix square roots), after style_tile and resizing; "
                "needs a content image. 'none': the style's own colours.")
    style_tile: tuple[int, int] = _opt(
        (1, 1), "Repeat each style image N rows x M columns (NxM, each 1..16) before it is resized to image_size * "
                "style_scale, so its texture comes out N and M times smaller; 1x1: as it is.")

    # --- losses
    content_layers: tuple[str, ...] = _opt(("relu4_2",), "Content layers (Keras aliases accepted; 'all' = the 16 "
                                                         "conv layers' ReLUs).")
    style_layers: tuple[str, ...] = _opt(
        ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        "Style layers, or pairs of layers 'relu2_1:relu1_2' (cross-layer Gram matrices, Novak & Nikulin §3.4), or "
        "the sets 'all' (the 16 conv layers), 'chain' (the 15 pairs of neighbouring conv layers, §3.5), "
        "'all-to-content' (every conv layer paired with relu4_2, §3.4), mixed freely.")
    content_weight: float = _opt(5.0, "Weight of the content loss.")
    style_weight: float = _opt(100.0, "Weight of the style loss.")
    tv_weight: float = _opt(1e-3, "Weight of the total-variation regularizer (0 disables it). It smooths away "
                                  "grid-like dot patterns and high-frequency noise: raise it just enough to hide "
                                  "them, as more blurs the result (README: Artifacts and how to avoid them).")
    content_layer_weights: tuple[float, ...] | None = _opt(None, "Per content layer weights; default all 1.")
    style_layer_weights: tuple[float, ...] | None = _opt(None, "Per style layer weights; default all 1.")
    layer_weighting: LayerWeighting = _opt(
        "uniform", "Per-layer weights when content_layer_weights / style_layer_weights are unset: 'uniform' (all 1) "
                   "or 'geometric' (Novak & Nikulin: in depth order, style 2^(D-d), content 2^d, each divided by "
                   "its sum; pairs of layers ordered by their deeper layer, then the shallower). Explicit "
                   "per-layer weights replace it for their family.")
    activation_shift: float = _opt(0.0, "Shift s added to activations before the Gram matrix "
                                        "(Novak & Nikulin; 0 = classic).")
    style_blur: bool = _opt(False, "Blurred correlations (ref. Novak & Nikulin §3.6): in each pair of style_layers "
                                   "the deeper layer's upsampled map is box-blurred (3x3 mean) |l - k| times, l and k "
                                   "the two conv layers' numbers 1..16 (once for a chain link), before its Gram with "
                                   "the shallower one; style_loss 'gram' with at least one pair.")
    style_adjacent: bool = _opt(False, "Experimental (ref. Novak & Nikulin §4.3, 'Chain Extended'): Gram matrices "
                                       "also between each position and its 8 neighbours (one per offset, 9x the "
                                       "entries), for single style layers and pairs; style_loss 'gram'.")
    activation_power: float = _opt(
        1.0, "Amplified activations (experimental; ref. Novak & Nikulin §4.2): exponent p >= 1 of the activations "
             "in Gram matrices and Gram cubes, sign(F)|F|^p (F^p after a ReLU), taken before activation_shift; p > 1 "
             "favours strong responses (the paper: feature-rich regions change first, severe convergence "
             "problems). 1 = off.")
    style_mask_fractions: tuple[float, ...] | None = _opt(
        None, "Gradient masking (experimental; ref. Novak & Nikulin §4.1): one fraction q in (0, 1] per style "
              "layer; the style gradient of a layer passes only where the content image's activations are among "
              "that layer's fraction q of largest ones (the loss's value is unchanged); the paper lets q decrease "
              "with depth. Needs a content image. Unset = off.")
    style_content_aware: bool = _opt(
        False, "Content-aware Gram matrices (experimental; ref. Novak & Nikulin §4.4): one Gram per channel of "
               "relu4_2, each position weighted by that channel's (upsampled, unshifted) activation: K^2 x 512 "
               "entries per style layer (single layers up to 256 channels; style_loss 'gram').")
    style_loss: StyleLoss = _opt(
        "gram", "Style statistic: 'gram' (Gram matrices, neural-style), 'w2' (Wasserstein-2 distance between "
                "Gaussians with the activations' means and covariances, crowsonkb/style-transfer-pytorch; on "
                "another scale than 'gram': retune style_weight) or 'mrf' (CNN-MRF, Li & Wand: each 3x3 patch of "
                "activations pulled to its nearest style patch; CNNMRF's layers relu3_1 relu4_1, content layer "
                "relu4_2, its weights and augmentation are nst_jax.mrf.RECOMMENDED), 'gram_cube' (experimental, "
                "Novak & Nikulin §4.5: triple correlations sum f_i f_j f_k / (M K^1.5), K^3 entries: layers up to "
                "256 channels); from Python also any style kind registered with nst_jax.terms.register.")
    mrf_stride: int = _opt(1, "style_loss='mrf': stride of the 3x3 patches taken from the style's activations (2 "
                              "keeps about a quarter of them, as CNNMRF, for large style images).")
    mrf_rotations: tuple[float, ...] = _opt(
        (0.0,), "style_loss='mrf': rotations of the style image, in degrees counter-clockwise, whose patches are "
                "matched (each cropped to its inner rectangle; CNNMRF: -7.5 0 7.5).")
    mrf_scales: tuple[float, ...] = _opt(
        (1.0,), "style_loss='mrf': scales of each rotated style image whose patches are matched (CNNMRF: "
                "0.952 1 1.05).")

    # --- network
    weights: str | None = _opt(None, "VGG-19 weights: a .h5/.npz file, 'random' (for smoke tests), 'normalized' "
                                     "(the unset choice rescaled to unit mean activations, computed once and "
                                     "cached; see nst-jax normalize-weights), or unset for $NST_JAX_WEIGHTS, then "
                                     "the cache, then download.")
    pooling: Literal["max", "avg"] = _opt("max", "Pooling of VGG-19.")
    padding: Literal["zero", "reflect"] = _opt(
        "zero", "Padding of VGG-19's convolutions: 'zero' (neural-style's) or 'reflect'; 'reflect' avoids the "
                "lines along the image's borders that zero padding can leave, most visible at small sizes.")
    precision: Precision | None = _opt(None, "Matmul/conv precision (default/high/highest); unset = backend default.")
    remat: bool = _opt(False, "Recompute VGG activations in the backward pass to fit larger images.")
    conv_algorithm: Literal["auto", "direct", "winograd"] = _opt(
        "auto", "3x3 convolutions: 'direct' (XLA's, bit-faithful to Keras), 'winograd' (F(2x2,3x3) for the layers "
                "with >= 256 input channels, kernel transforms computed once: 2.25x fewer multiply-adds, agrees to "
                "~1e-6; faster on CPUs, more memory, see BENCHMARKS.md), 'auto' = winograd on CPU, direct on "
                "GPU/TPU.")
    dtype: Literal["float32", "bfloat16"] = _opt(
        "float32", "Compute dtype of VGG-19: 'bfloat16' halves activation memory and is faster where the hardware "
                   "has bf16 units (GPUs, TPUs); Gram matrices, losses and the optimizer stay float32.")

    # --- optimization
    num_iterations: int = _opt(1000, "Number of optimizer iterations (0 returns the initial image).")
    scales: tuple[int, ...] = _opt(
        (), "Coarse-to-fine: long sides (increasing, each < image_size) to stylize at first, scale_iterations "
            "each; every stage starts from the previous result upsampled, the last stage is image_size with "
            "num_iterations. Large images get their composition from the coarse stages, and square "
            "(convolutional) and border artifacts fade. Empty: one scale, as neural-style.")
    scale_iterations: int | None = _opt(None, "Iterations at each of `scales` (default: num_iterations).")
    preset: str | None = _opt(
        None, "Optimizer preset: one of " + ", ".join(optimizer_presets.NAMES) + "; 'adam-no-gray' is Adam with "
              "beta1 0.99 and epsilon 0.1, against the gray spots and haze of Adam's usual constants. Settings "
              "given explicitly override it; it combines with any method. Unset: no preset.",
        choices=optimizer_presets.NAMES)
    optimizer: Optimizer = _opt("lbfgs", "Optimizer.")
    learning_rate: float | None = _opt(None, "Step size; default 1 for L-BFGS, 10 for Adam (neural-style's).")
    beta1: float = _opt(0.9, "Adam beta1 (0.99 with epsilon 0.1, --preset adam-no-gray, avoids Adam's gray "
                             "spots).")
    beta2: float = _opt(0.999, "Adam beta2.")
    epsilon: float = _opt(1e-8, "Adam epsilon.")
    lbfgs_history: int = _opt(100, "L-BFGS history size (neural-style's -lbfgs_num_correction).")
    lbfgs_history_dtype: Literal["float32", "bfloat16"] = _opt(
        "bfloat16", "Storage of the L-BFGS history pairs (neural-style L-BFGS: lbfgs_linesearch 'none' or "
                    "'backtracking'): 'bfloat16' halves the largest buffers of the optimizer state (2 x history "
                    "image-sized arrays; the pairs are rounded once when stored, the products stay float32); "
                    "'float32' stores them as torch.optim.LBFGS does. Quality cost in BENCHMARKS.md.")
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
    blur_on_stall: bool = _opt(
        False, "Blur the image (Gaussian, blur_sigma) whenever its loss improved by less than stall_threshold "
               "(relative) over stall_iterations iterations, and restart L-BFGS from there: escapes the edge-"
               "covered local minima of reconstructions from deep layers. Neural-style L-BFGS only.")
    stall_iterations: int = _opt(5, "blur_on_stall: window of iterations over which the improvement is measured.")
    stall_threshold: float = _opt(1e-3, "blur_on_stall: relative loss improvement over a window below which it "
                                        "counts as a stall.")
    blur_sigma: float = _opt(1.0, "blur_on_stall: standard deviation of the Gaussian blur in pixels.")

    # --- output
    print_every: int = _opt(50, "Record/print the losses every N iterations (0 = only first and last).")
    save_every: int = _opt(0, "Write a snapshot every N iterations (0 = never).")

    # --- tiling
    tile: int | None = _opt(
        None, "Tiled stylization for outputs too large for one pass: stylize the whole image at tile_base_size "
              "first (scales apply there), upsample it to image_size, then refine overlapping square tiles of this "
              "side (pixels) as batches, each with its own content and the whole style image's targets, and blend "
              "them with feathered overlaps. Unset: untiled.")
    tile_overlap: int = _opt(64, "tile: overlap of neighbouring tiles in pixels (at least this much; 0..tile-1), "
                                 "over which they are cross-faded.")
    tile_base_size: int | None = _opt(
        None, "tile: long side of the whole-image stage that the tiles start from (num_iterations there); "
              "default the tile side (at most image_size).")
    tile_iterations: int | None = _opt(None, "tile: iterations of each tile (default num_iterations).")
    tile_batch: int | None = _opt(
        None, "tile: tiles per compiled call (one compiled program for all of them); default as many as fit in "
              "the free memory (nst_jax.batch.default_batch_size).")

    def __new__(cls, *args, **kwargs):
        # Which fields the caller gives: the method preset fills in only the others (__post_init__).
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        object.__setattr__(self, "_given", frozenset(names[: len(args)]) | frozenset(kwargs))
        return self

    def __post_init__(self):
        _apply_method(self)
        _validate(self)

    @property
    def explicit(self) -> frozenset[str]:
        """The fields given when these settings were made; the others are the method's or the defaults."""
        return self.__dict__.get("_given", frozenset())

    def replace(self, **changes) -> "Settings":
        """A copy with some fields changed (validated). The fields given explicitly when these settings were
        made keep their values, and with ``changes`` are the copy's explicit fields; the others come from the
        copy's ``method`` (a new one if ``changes`` sets it) or are the defaults. (``dataclasses.replace`` keeps
        every value: there every field counts as given, and a new method changes nothing else.)"""
        kept = {name: getattr(self, name) for name in self.explicit}
        return type(self)(**{**kept, **changes})

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

    @classmethod
    def from_dict(cls, values: dict, **overrides) -> tuple["Settings", list[str]]:
        """The settings a :meth:`to_dict` describes (e.g. an output's metadata), with ``overrides`` on top.

        Returns:
            ``(settings, ignored)``: ``ignored`` names the keys that are not settings of this version (a file
            written by another version of nst_jax); they are left out.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
        return cls(**{**known, **overrides}), sorted(set(values) - names)


def section_of(name: str) -> str:
    """The topic (:data:`SECTIONS`) of the :class:`Settings` field ``name``."""
    starts = {first: topic for topic, first in SECTIONS}
    topic = SECTIONS[0][0]
    for f in dataclasses.fields(Settings):
        topic = starts.get(f.name, topic)
        if f.name == name:
            return topic
    raise KeyError(name)


class SettingError(ValueError):
    """A bad setting, or settings that do not go together.

    The message names each setting the way its reader knows it: ``str(e)`` uses
    the field names of :class:`Settings` (``image_size must be an integer >= 32,
    got 8``); the command line renders it with its flags (``--image-size must
    be ...``, see :meth:`render`).

    Attributes:
        fields: the names of the settings involved, the main one first.
    """

    def __init__(self, template: str, *fields: str, **values):
        """Builds the message from a ``str.format`` template.

        Args:
            template: ``{name}`` (or ``{0}``, ``{1}``: ``fields[i]``) is a setting's name; ``{name=}`` the
                setting with its value from ``values`` (``init='image'``; ``--init image`` on the command
                line); ``{name=LITERAL}`` the setting with a Python literal (``{optimizer='lbfgs'}``); any
                other key is a plain value from ``values``, formatted as ``str.format`` does.
            fields: the settings involved.
            values: the plain values, and the settings' values for ``{name=}``.
        """
        self.fields = tuple(fields)
        parts: list = []
        for literal, key, spec, conversion in string.Formatter().parse(template):
            parts.append(literal)
            if key is None:
                continue
            name, assign, given = key.partition("=")
            name = self.fields[int(name)] if name.isdigit() else name
            if name in self.fields:
                value = (ast.literal_eval(given) if given else values.get(name)) if assign else None
                parts.append((name, (_shown(value), _cli_text(value)) if assign else None))
            else:
                value = values[name]
                value = {"r": _shown, "s": str, "a": ascii}.get(conversion, lambda v: v)(value)
                parts.append(format(value, spec or ""))
        self.parts = tuple(parts)
        super().__init__(self.render())

    def render(self, flag: Callable[[str], str] | None = None) -> str:
        """The message; with ``flag`` (field name -> command-line flag), in the command line's terms."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, assigned = part
            if flag is None:
                out.append(name if assigned is None else f"{name}={assigned[0]}")
            else:
                out.append(flag(name) if assigned is None else f"{flag(name)} {assigned[1]}")
        return "".join(out)

    def __reduce__(self):  # the message parts are plain strings: picklable whatever the values were
        return _setting_error, (self.parts, self.fields)


def _setting_error(parts: tuple, fields: tuple[str, ...]) -> SettingError:
    error = SettingError.__new__(SettingError)
    error.parts, error.fields = parts, fields
    ValueError.__init__(error, error.render())
    return error


def _shown(value, limit: int = 80) -> str:
    """``repr(value)``, shortened: error messages quote whatever a caller passed."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cli_text(value) -> str:
    """How a value is written on the command line (``nargs='+'`` lists: space separated)."""
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value))
    return str(value)


def _set(s, name, value):
    object.__setattr__(s, name, value)


_CHOICES = {
    "optimizer": ("lbfgs", "adam"),
    "lbfgs_linesearch": ("none", "zoom", "backtracking", "jaxopt"),
    "lbfgs_history_dtype": ("float32", "bfloat16"),
    "init": ("random", "content", "style", "image"),
    "loop": ("auto", "step", "chunk"),
    "pooling": ("max", "avg"),
    "padding": ("zero", "reflect"),
    "precision": (None, "default", "high", "highest"),
    "dtype": ("float32", "bfloat16"),
    "conv_algorithm": ("auto", "direct", "winograd"),
    "layer_weighting": weighting.WEIGHTINGS,
    "color_transfer": ("none", "histogram", "stats"),
    "method": (None, *presets.NAMES),
    "preset": (None, *optimizer_presets.NAMES),
}

#: Each field's default (settings that are only used with another one must keep it otherwise).
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}

# Upper bounds. Iteration counts and intervals are traced as int32 in the compiled loop; weights, rates and
# tolerances are used in float32, whose largest finite value is 3.4e+38.
_INT32_MAX = 2**31 - 1
_SEED_MAX = 2**63 - 1  # jax.random.key takes a signed 64-bit seed
_FLOAT32_MAX = 3.4028234663852886e38
_MIN_STYLE_SIZE = 16  # images.MIN_SIZE: the smallest side VGG-19 accepts


def _choice(name, value):
    allowed = _CHOICES[name]
    if not (value is None or isinstance(value, str)) or value not in allowed:
        raise SettingError("{0} must be one of {allowed}; got {got!r}.", name,
                           allowed=", ".join(repr(a) for a in allowed), got=value)
    return value


def _integer(name, value, lo, hi=_INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingError("{0} must be an integer, got {got!r}.", name, got=value)
    v = int(value)
    if v < lo:
        raise SettingError("{0} must be an integer >= {lo}, got {got}.", name, lo=lo, got=v)
    if v > hi:
        raise SettingError("{0} must be an integer <= {hi}, got {got!r}.", name, hi=hi, got=v)
    return v


def _real(name, value, *, nonneg=False) -> float:
    """A finite number (>= 0 with ``nonneg``) within float32's range, as a Python float."""
    what = "a finite number >= 0" if nonneg else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingError("{0} must be " + what + ", got {got!r}.", name, got=value)
    if nonneg and value < 0:
        raise SettingError("{0} must be " + what + ", got {got!r}.", name, got=value)
    try:
        v = float(value)
    except OverflowError:  # an integer beyond float64
        v = math.inf if value > 0 else -math.inf
    else:
        if not math.isfinite(v):
            raise SettingError("{0} must be " + what + ", got {got!r}.", name, got=value)
    if abs(v) > _FLOAT32_MAX:
        bound = "at most 3.4e+38" if nonneg else "between -3.4e+38 and 3.4e+38"
        raise SettingError("{0} must be " + bound + " (float32's range), got {got!r}.", name, got=value)
    return v


def _positive(name, value) -> float:
    v = _real(name, value, nonneg=True)
    if v <= 0:
        raise SettingError("{0} must be > 0, got {got!r}.", name, got=value)
    return v


def _flag(name, value) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise SettingError("{0} must be True or False, got {got!r}.", name, got=value)


def _path(name, value, what="a file path") -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise SettingError("{0} must be " + what + ", got {got!r}.", name, got=value)
    return value


def _items(name, value, what):
    """``value`` as a list: a list, tuple or other ordered iterable (not a string, set or dict)."""
    if isinstance(value, (str, bytes, dict, set, frozenset)):
        raise SettingError("{0} must be a list of " + what + ", got {got!r}.", name, got=value)
    try:
        return list(value)
    except TypeError:
        raise SettingError("{0} must be a list of " + what + ", got {got!r}.", name, got=value) from None


def _layers(name, value) -> tuple[str, ...]:
    """Canonical layer entries: names, pairs ``"deep:shallow"``, and the sets of :mod:`nst_jax.layersets`."""
    names = value if isinstance(value, str) else _items(name, value, "VGG-19 layer names")
    if not isinstance(names, str) and not all(isinstance(n, str) for n in names):
        raise SettingError("{0} must be a list of VGG-19 layer names (e.g. ('relu4_2',)), got {got!r}.",
                           name, got=value)
    try:
        return layersets.canonical_entries(names)
    except ValueError as e:
        raise SettingError("{0}: {why}", name, why=e) from None


def _weights(name, values, count=None, what=""):
    """Per-item weights: None, or a tuple of finite numbers >= 0 (one per item when ``count`` is given)."""
    if values is None:
        return None
    items = [values] if isinstance(values, numbers.Real) and not isinstance(values, bool) else \
        _items(name, values, "numbers")
    vals = tuple(_real(name, v, nonneg=True) for v in items)
    if count is not None and len(vals) != count:
        raise SettingError("{0} has {n} value(s) but there are {count} {what}; give one per {one}.", name,
                           n=len(vals), count=count, what=what, one=what[:-1])
    return vals


def _numbers(name, values, lo: float, hi: float, what: str) -> tuple[float, ...]:
    """One or more numbers in ``[lo, hi]`` (a single number is a list of one)."""
    items = [values] if isinstance(values, numbers.Real) and not isinstance(values, bool) else \
        _items(name, values, what)
    vals = tuple(_real(name, v) for v in items)
    if not vals or not all(lo <= v <= hi for v in vals):
        raise SettingError("{0} must be one or more " + what + ", got {got!r}.", name, got=values)
    return vals


def _apply_method(s: Settings) -> None:
    """Sets the fields of ``s.preset``'s optimizer preset and of ``s.method``'s preset that were not given
    explicitly to the presets' values (the two set different fields)."""
    _apply_optimizer_preset(s)
    if s.method is None:
        return
    _set(s, "method", _choice("method", s.method))
    preset = presets.get(s.method)
    names = {f.name for f in dataclasses.fields(s)}
    for name, value in preset.values.items():
        if name in s.explicit:
            continue
        if name not in names:
            raise SettingError("{method=} needs the setting {name}, which this version of nst_jax does not have: "
                               "choose another {method}.", "method", method=s.method, name=name)
        _set(s, name, value)
    kind = preset.values.get("style_loss")
    if kind is not None and "style_loss" not in s.explicit and kind not in terms.kinds("style"):
        raise SettingError("{method=} needs the style loss {kind!r}, which is not registered (registered: "
                           "{registered}): register it with nst_jax.terms.register, or choose another {method}.",
                           "method", method=s.method, kind=kind, registered=", ".join(terms.kinds("style")))


def _apply_optimizer_preset(s: Settings) -> None:
    if s.preset is None:
        return
    _set(s, "preset", _choice("preset", s.preset))
    # Explicit settings win, the optimizer too (--preset adam-no-gray --optimizer lbfgs runs L-BFGS; Adam's
    # constants are then unused), as with method presets: an output's settings (nst-jax --from) are all explicit,
    # and a flag given on top of them must be able to change any of them.
    values = optimizer_presets.get(s.preset).values
    for name, value in values.items():
        if name not in s.explicit:
            _set(s, name, value)


def _validate(s: Settings) -> None:
    for name in _CHOICES:
        _set(s, name, _choice(name, getattr(s, name)))
    for name in ("original_colors", "remat", "style_blur", "style_adjacent", "style_content_aware", "blur_on_stall"):
        _set(s, name, _flag(name, getattr(s, name)))
    _set(s, "weights", _path("weights", s.weights,
                             "a weights file path (.h5 or .npz), 'random', 'normalized', or None"))
    _set(s, "init_image", _path("init_image", s.init_image, "an image file path or None"))
    _set(s, "image_size", _integer("image_size", s.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE))
    for name, lo in (("num_iterations", 0), ("lbfgs_history", 1), ("chunk_size", 1), ("stall_iterations", 1),
                     ("print_every", 0),
                     ("save_every", 0)):
        _set(s, name, _integer(name, getattr(s, name), lo))
    _set(s, "seed", _integer("seed", s.seed, 0, _SEED_MAX))
    _set(s, "style_tile", _style_tile(s.style_tile))
    if s.scale_iterations is not None:
        _set(s, "scale_iterations", _integer("scale_iterations", s.scale_iterations, 0))
    for name in ("content_layers", "style_layers"):
        _set(s, name, _layers(name, getattr(s, name)))
    for name in ("content_weight", "style_weight", "tv_weight", "tolerance_grad", "tolerance_change",
                 "stall_threshold"):
        _set(s, name, _real(name, getattr(s, name), nonneg=True))
    _set(s, "activation_shift", _real("activation_shift", s.activation_shift))
    _set(s, "activation_power", _real("activation_power", s.activation_power))
    if s.activation_power < 1:
        raise SettingError("{0} must be >= 1 (1 = off; below 1 the gradient is infinite at 0), got {got!r}.",
                           "activation_power", got=s.activation_power)
    _set(s, "style_loss", _style_loss(s.style_loss))
    _set(s, "mrf_stride", _integer("mrf_stride", s.mrf_stride, 1, 64))
    _set(s, "mrf_rotations", _numbers("mrf_rotations", s.mrf_rotations, -45.0, 45.0,
                                      "angles in degrees between -45 and 45"))
    _set(s, "mrf_scales", _numbers("mrf_scales", s.mrf_scales, 0.25, 4.0, "scales between 0.25 and 4"))
    if s.aspect is not None:
        _set(s, "aspect", _positive("aspect", s.aspect))
    for name in ("style_scale", "epsilon", "blur_sigma"):
        _set(s, name, _positive(name, getattr(s, name)))
    if s.learning_rate is not None:
        _set(s, "learning_rate", _positive("learning_rate", s.learning_rate))
    for name in ("beta1", "beta2"):
        v = _real(name, getattr(s, name), nonneg=True)
        if v >= 1:
            raise SettingError("{0} must be in [0, 1), got {got!r}.", name, got=v)
        _set(s, name, v)
    _set(s, "content_layer_weights", _weights("content_layer_weights", s.content_layer_weights,
                                              len(s.content_layers), "content layers"))
    _set(s, "style_layer_weights", _weights("style_layer_weights", s.style_layer_weights,
                                            len(s.style_layers), "style layers"))
    fractions = _weights("style_mask_fractions", s.style_mask_fractions, len(s.style_layers), "style layers")
    if fractions is not None and not all(0 < q <= 1 for q in fractions):
        raise SettingError("{0} must be fractions in (0, 1] (1 passes the whole gradient), got {got}.",
                           "style_mask_fractions", got=fractions)
    _set(s, "style_mask_fractions", fractions)
    blend = _weights("style_blend_weights", s.style_blend_weights)
    if blend is not None and sum(blend) <= 0:
        raise SettingError("{0} must not all be 0.", "style_blend_weights")
    _set(s, "style_blend_weights", blend)
    _validate_scales(s)
    _validate_tiling(s)
    _validate_combinations(s)


def _validate_scales(s: Settings) -> None:
    values = s.scales
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = [values]
    items = _items("scales", values, "integers (long sides in pixels)")
    if not all(_is_integral(v) for v in items):
        raise SettingError("{0} must be a list of integers (long sides in pixels), got {got!r}.", "scales",
                           got=s.scales)
    vals = tuple(int(v) for v in items)
    if vals:
        if min(vals) < MIN_IMAGE_SIZE:
            raise SettingError("{0} must be >= {lo} pixels (VGG-19 pools four times), got {got}.", "scales",
                               lo=MIN_IMAGE_SIZE, got=vals)
        if any(b <= a for a, b in zip(vals, vals[1:])) or vals[-1] >= s.image_size:
            example = _coarse_example(s.image_size)
            raise SettingError("{scales} must increase and stay below {image_size=}, got {got}"
                               + ("; e.g. {scales=} for one coarse stage." if example else
                                  f"; scales are at least {MIN_IMAGE_SIZE} px, so coarse-to-fine needs a larger "
                                  "{image_size}."),
                               "scales", "image_size", image_size=s.image_size, got=vals, scales=example)
    _set(s, "scales", vals)


def _validate_tiling(s: Settings) -> None:
    """``tile`` and the settings only it reads; with it, ``scales`` belong to the base stage."""
    if s.tile is None:
        for name in ("tile_overlap", "tile_base_size", "tile_iterations", "tile_batch"):
            if getattr(s, name) != _DEFAULTS[name]:
                raise SettingError("{0} is only used with {tile} (tiled stylization): add e.g. {tile=} or leave "
                                   "{0} unset.", name, "tile", tile=512)
        return
    _set(s, "tile", _integer("tile", s.tile, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE))
    _set(s, "tile_overlap", _integer("tile_overlap", s.tile_overlap, 0))
    if s.tile_overlap >= s.tile:
        raise SettingError("{tile_overlap=} must be smaller than {tile=} (tiles must advance): lower "
                           "{tile_overlap} (e.g. to {hint}).", "tile_overlap", "tile", tile_overlap=s.tile_overlap,
                           tile=s.tile, hint=s.tile // 8)
    if s.tile_base_size is not None:
        _set(s, "tile_base_size", _integer("tile_base_size", s.tile_base_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE))
    for name, lo in (("tile_iterations", 0), ("tile_batch", 1)):
        if getattr(s, name) is not None:
            _set(s, name, _integer(name, getattr(s, name), lo))
    base = tile_base(s)
    if s.scales and s.scales[-1] >= base:
        raise SettingError("with {tile}, {scales} are the coarse-to-fine stages of the base stage, so they must "
                           "stay below its long side {base} (min of {image_size}, {tile_base_size} or {tile}), "
                           "got {got}.", "scales", "tile", "tile_base_size", "image_size", base=base, got=s.scales)
    if s.save_every:
        raise SettingError("{save_every} (snapshots) is not supported with {tile}: leave {save_every} at 0.",
                           "save_every", "tile")


def tile_base(s: Settings) -> int:
    """The long side of a tiled stylization's base stage: ``tile_base_size`` (default ``tile``), at most
    ``image_size``."""
    return min(s.image_size, s.tile_base_size if s.tile_base_size is not None else s.tile)


def _coarse_example(image_size: int) -> tuple[int, ...] | None:
    """A valid one-stage ``scales`` for ``image_size`` (about half of it), for messages; None if there is none."""
    half = max(image_size // 2, MIN_IMAGE_SIZE)
    return (half,) if half < image_size else None


def _style_tile(value) -> tuple[int, int]:
    items = _items("style_tile", value, "two integers (rows, columns)")
    if len(items) != 2 or not all(_is_integral(v) and 1 <= v <= MAX_STYLE_TILE for v in items):
        raise SettingError("{0} must be two integers (rows, columns), each 1..{hi}, got {got!r}.", "style_tile",
                           hi=MAX_STYLE_TILE, got=value)
    return int(items[0]), int(items[1])


def _is_integral(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, numbers.Integral):
        return True
    return isinstance(v, numbers.Real) and math.isfinite(v) and float(v).is_integer()


def _style_loss(value) -> str:
    allowed = terms.kinds("style")
    if not isinstance(value, str) or value not in allowed:
        raise SettingError("{0} must be one of {allowed}; got {got!r}.", "style_loss",
                           allowed=", ".join(repr(a) for a in allowed), got=value)
    return value


def _validate_combinations(s: Settings) -> None:
    """Settings that are each valid but do not go together (one would be ignored, or fail later)."""
    _validate_pairs(s)
    if s.activation_shift and s.style_loss not in terms.GRAM_KINDS:
        raise SettingError("{activation_shift} only shifts Gram matrices ({style_loss='gram'} or 'gram_cube'), got "
                           "{style_loss=}: leave {activation_shift} at 0.", "activation_shift", "style_loss",
                           style_loss=s.style_loss)
    for name in ("mrf_stride", "mrf_rotations", "mrf_scales"):
        if s.style_loss != "mrf" and getattr(s, name) != _DEFAULTS[name]:
            raise SettingError("{0} is only used with {style_loss='mrf'}, got {style_loss=}: add {style_loss='mrf'} "
                               "or leave {0} unset.", name, "style_loss", style_loss=s.style_loss)
    _validate_variants(s)
    if s.init == "image" and not s.init_image:
        raise SettingError("{init=} needs {init_image}: the path of the image to start from.",
                           "init", "init_image", init=s.init)
    if s.init_image and s.init != "image":
        raise SettingError("{init_image} is only used with {init='image'}, got {init=}: add {init='image'} or "
                           "leave {init_image} unset.", "init_image", "init", init=s.init)
    if s.lbfgs_linesearch != "none" and s.optimizer != "lbfgs":
        raise SettingError("{lbfgs_linesearch=} is only used with {optimizer='lbfgs'}, got {optimizer=}: "
                           "leave {lbfgs_linesearch} unset or use {optimizer='lbfgs'}.",
                           "lbfgs_linesearch", "optimizer", lbfgs_linesearch=s.lbfgs_linesearch,
                           optimizer=s.optimizer)
    if s.lbfgs_history_dtype != _DEFAULTS["lbfgs_history_dtype"] and (
            s.optimizer != "lbfgs" or s.lbfgs_linesearch not in ("none", "backtracking")):
        raise SettingError("{lbfgs_history_dtype=} is only used by neural-style's L-BFGS ({optimizer='lbfgs'} with "
                           "{lbfgs_linesearch='none'} or 'backtracking'), got {optimizer=}, {lbfgs_linesearch=}: "
                           "leave {lbfgs_history_dtype} unset or use that optimizer.", "lbfgs_history_dtype",
                           "optimizer", "lbfgs_linesearch", lbfgs_history_dtype=s.lbfgs_history_dtype,
                           optimizer=s.optimizer, lbfgs_linesearch=s.lbfgs_linesearch)
    for name in ("stall_iterations", "stall_threshold", "blur_sigma"):
        if not s.blur_on_stall and getattr(s, name) != _DEFAULTS[name]:
            raise SettingError("{0} is only used with {blur_on_stall}: add {blur_on_stall} or leave {0} unset.",
                               name, "blur_on_stall")
    if s.blur_on_stall and (s.optimizer != "lbfgs" or s.lbfgs_linesearch != "none"):
        raise SettingError("{blur_on_stall} restarts neural-style's L-BFGS ({optimizer='lbfgs'}, "
                           "{lbfgs_linesearch='none'}), got {optimizer=}, {lbfgs_linesearch=}: use that optimizer "
                           "or leave {blur_on_stall} off.", "blur_on_stall", "optimizer", "lbfgs_linesearch",
                           optimizer=s.optimizer, lbfgs_linesearch=s.lbfgs_linesearch)
    if s.scale_iterations is not None and not s.scales:
        example = _coarse_example(s.image_size)
        raise SettingError("{scale_iterations} is only used with {scales} (coarse-to-fine): "
                           + ("add e.g. {scales=} or " if example else "") + "leave {scale_iterations} unset.",
                           "scale_iterations", "scales", scales=example)
    style_px = int(s.image_size * s.style_scale)
    if style_px < _MIN_STYLE_SIZE:
        raise SettingError("{style_scale=} makes the style images {px} px (long side) at {image_size=}; they "
                           "must be at least {lo} px: use {style_scale} >= {need:.3g}.", "style_scale",
                           "image_size", style_scale=s.style_scale, image_size=s.image_size, px=style_px,
                           lo=_MIN_STYLE_SIZE, need=_MIN_STYLE_SIZE / s.image_size)
    if style_px > MAX_IMAGE_SIZE:
        raise SettingError("{style_scale=} makes the style images {px} px (long side) at {image_size=}; at "
                           "most {hi} px.", "style_scale", "image_size", style_scale=s.style_scale,
                           image_size=s.image_size, px=style_px, hi=MAX_IMAGE_SIZE)


def _validate_pairs(s: Settings) -> None:
    """Pair entries only where a statistic reads them; blur and adjacent offsets only for Gram matrices."""
    content_pairs = [e for e in s.content_layers if layersets.is_pair(e)]
    if content_pairs:
        raise SettingError("{0} takes single layers ('all' included), got the pair {pair!r}: pairs of layers and "
                           "the sets 'chain' and 'all-to-content' are style statistics ({1}).",
                           "content_layers", "style_layers", pair=content_pairs[0])
    for name in ("style_blur", "style_adjacent"):
        if getattr(s, name) and s.style_loss != "gram":
            raise SettingError("{0} only applies to Gram matrices ({style_loss='gram'}), got {style_loss=}: leave "
                               "{0} off.", name, "style_loss", style_loss=s.style_loss)
    pairs = [e for e in s.style_layers if layersets.is_pair(e)]
    if pairs and not terms.get(s.style_loss).pairs:
        raise SettingError("{style_loss=} reads single layers, but {style_layers} has the pair {pair!r}: use "
                           "{style_loss='gram'} (cross-layer Gram matrices) or single layers.",
                           "style_loss", "style_layers", style_loss=s.style_loss, pair=pairs[0])
    if s.style_blur:
        if not pairs:
            raise SettingError("{0} blurs the deeper map of a pair of layers, but {1} has no pair: add pairs "
                               "such as 'relu2_1:relu1_2' or the set 'chain', or leave {0} off.",
                               "style_blur", "style_layers")
        for entry in pairs:
            try:
                layersets.blur_count(entry)
            except ValueError as e:
                raise SettingError("{0} with {1}: {why}", "style_blur", "style_layers", why=e) from None


def _validate_variants(s: Settings) -> None:
    """Novak & Nikulin's experimental variants (§4): amplified activations, gradient masks, content-aware Gram
    matrices, Gram cubes; third-order statistics at most ``losses.MAX_STATISTIC_ENTRIES`` entries."""
    if s.activation_power != 1 and s.style_loss not in terms.GRAM_KINDS:
        raise SettingError("{activation_power} only amplifies the activations of Gram matrices ({style_loss='gram'} "
                           "or 'gram_cube'), got {style_loss=}: leave {activation_power} at 1.", "activation_power",
                           "style_loss", style_loss=s.style_loss)
    if s.style_mask_fractions is not None and not s.style_weight:
        raise SettingError("{0} masks the style gradient, but {1} is 0 (no style term): leave {0} unset.",
                           "style_mask_fractions", "style_weight")
    limit = losses.MAX_STATISTIC_ENTRIES
    if s.style_content_aware:
        if s.style_loss != "gram" or s.style_adjacent:
            raise SettingError("{0} weights Gram matrices ({style_loss='gram'}, without {1}), got {style_loss=}"
                               + (" with {1}" if s.style_adjacent else "") + ": leave {0} off.",
                               "style_content_aware", "style_adjacent", "style_loss", style_loss=s.style_loss)
        pairs = [e for e in s.style_layers if layersets.is_pair(e)]
        if pairs:
            raise SettingError("{0} reads single style layers, but {1} has the pair {pair!r}: use single layers "
                               "such as relu1_1 relu2_1 relu3_1.", "style_content_aware", "style_layers",
                               pair=pairs[0])
        kc = layersets.channels(layersets.CONTENT_LAYER)
        for layer in s.style_layers:
            k = layersets.channels(layer)
            if k * k * kc > limit:
                raise SettingError("{0}: the content-aware Gram matrix of {layer} has {k} x {k} x {kc} = {n:,} "
                                   "entries ({gb:.2f} GB in float32), more than {limit:,} "
                                   "(nst_jax.losses.MAX_STATISTIC_ENTRIES): leave {layer} out of {1} (layers up to "
                                   "256 channels: relu1_1 to relu3_4), or {0} off.", "style_content_aware",
                                   "style_layers", layer=layer, k=k, kc=kc, n=k * k * kc, gb=4 * k * k * kc / 1e9,
                                   limit=limit)
    if s.style_loss == "gram_cube" and s.style_weight:
        for layer in s.style_layers:
            k = layersets.channels(layer)
            if k ** 3 > limit:
                raise SettingError("{style_loss='gram_cube'}: the Gram cube of {layer} has {k}^3 = {n:,} entries "
                                   "({gb:.2f} GB in float32), more than {limit:,} "
                                   "(nst_jax.losses.MAX_STATISTIC_ENTRIES): leave {layer} out of {style_layers} "
                                   "(layers up to 256 channels: relu1_1 to relu3_4).", "style_loss", "style_layers",
                                   layer=layer, k=k, n=k ** 3, gb=4 * k ** 3 / 1e9, limit=limit)


def stages(s: Settings) -> list[tuple[int, int]]:
    """``[(long side, iterations), ...]`` of a stylization: the coarse-to-fine ``scales``, then ``image_size``."""
    coarse = s.num_iterations if s.scale_iterations is None else s.scale_iterations
    return [(size, coarse) for size in s.scales] + [(s.image_size, s.num_iterations)]
