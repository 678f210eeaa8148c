"""Blur on stall: an in-step hook (:data:`nst_jax.optim.Hook`) that blurs an image whose loss has stopped falling.

A practitioner's study (reconstructing an image from relu5_1 alone) found plain L-BFGS stuck early in a local
minimum full of high-frequency edges; blurring the image whenever the loss stalled, and going on, reached a far
lower loss. :class:`BlurOnStall` does this inside the compiled step, per image: it watches the loss over windows
of ``iterations`` iterations and, when a window improved the loss by less than ``threshold`` of its start,
replaces the image by a Gaussian blur of it and empties the L-BFGS history (its pairs describe the landscape
around the image before the jump).

Bookkeeping per image lives in ``State.extra`` (:class:`StallState`): the loss at the start of the window, the
iterations since, whether the previous iteration blurred, and the number of blurs. All decisions are selects on
these, so the hook vmaps over a batch with each image deciding alone.

Only neural-style's L-BFGS (``optimizer='lbfgs'``, ``lbfgs_linesearch='none'``) is supported: its history is
emptied by resetting its counters (:func:`reset_lbfgs_history`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nst_jax import optim

from nst_jax.config import Settings

__all__ = ["BlurOnStall", "StallState", "blur_count", "gaussian_blur", "gaussian_kernel", "reset_lbfgs_history",
           "settings_hook"]

#: The kernel reaches this many sigmas each side (scipy.ndimage.gaussian_filter's default ``truncate``).
TRUNCATE = 3.0


class StallState(NamedTuple):
    """The per-image bookkeeping of :class:`BlurOnStall` (in ``State.extra``)."""

    reference: jax.Array  # float: the loss at the start of the current window
    since: jax.Array  # int32: iterations since the window started
    pending: jax.Array  # bool: the previous iteration blurred (its loss is that of the image before the blur)
    blurs: jax.Array  # int32: blurs so far


def gaussian_kernel(sigma: float, size: int | None = None) -> jax.Array:
    """The normalized 1-D Gaussian of ``sigma`` pixels, radius ``int(TRUNCATE * sigma + 0.5)`` (as scipy's),
    cut to at most ``size - 1`` so that reflect padding of an axis of ``size`` pixels is defined."""
    radius = int(TRUNCATE * sigma + 0.5)
    if size is not None:
        radius = min(radius, size - 1)
    k = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (k / sigma) ** 2)
    return w / jnp.sum(w)


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of an image ``(H, W, C)`` over its two spatial axes, reflect padding (the edge
    pixel is not repeated: scipy's ``mode='mirror'``)."""
    for axis in (0, 1):
        w = gaussian_kernel(sigma, x.shape[axis])
        r = (w.shape[0] - 1) // 2
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        p = jnp.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(w[k] * jax.lax.slice_in_dim(p, k, k + n, axis=axis) for k in range(2 * r + 1))
    return x


def reset_lbfgs_history(opt_state, where: jax.Array):
    """Neural-style L-BFGS state with its history emptied where ``where`` (a traced bool): no stored pairs, the
    next update a first step (scaled gradient) that stores no pair. Only its scalar counters change (a select
    of the history buffers would copy them); the stale pairs are never read again."""
    def reset(s):
        if not isinstance(s, optim.NeuralStyleLBFGSState):
            return s
        return s._replace(count=jnp.where(where, jnp.zeros_like(s.count), s.count),
                          stored=jnp.where(where, jnp.zeros_like(s.stored), s.stored),
                          h_diag=jnp.where(where, jnp.ones_like(s.h_diag), s.h_diag))

    is_lbfgs = lambda s: isinstance(s, optim.NeuralStyleLBFGSState)  # noqa: E731
    if not any(is_lbfgs(s) for s in jax.tree.leaves(opt_state, is_leaf=is_lbfgs)):
        raise ValueError("blur_on_stall needs neural-style L-BFGS (optimizer='lbfgs', lbfgs_linesearch='none'), "
                         "whose history it empties after a blur; choose that optimizer or turn blur_on_stall off.")
    return jax.tree.map(reset, opt_state, is_leaf=is_lbfgs)


@dataclass(frozen=True)
class BlurOnStall:
    """In-step hook: blur the image when its loss improved by less than ``threshold`` (relative) over
    ``iterations`` iterations. Frozen and hashable: equal settings reuse the compiled step.

    After a blur the loss and gradient in the state are still those of the image before it (the step does not
    evaluate twice). So the history is emptied at the blur and once more at the next iteration, whose update is
    a gradient step with that stale gradient; from then on every stored pair is of real evaluations. The next
    window starts at the first loss evaluated after the blur.

    Attributes:
        iterations: window length K (>= 1).
        threshold: relative improvement over a window below which it is a stall (>= 0).
        sigma: Gaussian standard deviation in pixels (> 0).
    """

    iterations: int = 5
    threshold: float = 1e-3
    sigma: float = 1.0

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"stall iterations must be an integer >= 1, got {self.iterations!r}.")
        if not self.threshold >= 0:
            raise ValueError(f"stall threshold must be >= 0, got {self.threshold!r}.")
        if not self.sigma > 0:
            raise ValueError(f"blur sigma must be > 0 (pixels), got {self.sigma!r}.")

    def init_extra(self, state: optim.State) -> StallState:
        """The bookkeeping at iteration 0: the window starts at the initial loss."""
        return StallState(state.terms.total, jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                          jnp.zeros((), jnp.int32))

    def __call__(self, state: optim.State) -> optim.State:
        st: StallState = state.extra
        loss = state.terms.total
        since = st.since + 1
        full = since >= self.iterations
        stalled = full & ~st.pending & (st.reference - loss < self.threshold * jnp.abs(st.reference))
        restart = full | st.pending  # a window ends, or the first real loss after a blur starts one
        extra = StallState(jnp.where(restart, loss, st.reference), jnp.where(restart, 0, since), stalled,
                           st.blurs + stalled.astype(jnp.int32))
        x = jnp.where(stalled, gaussian_blur(state.x, self.sigma), state.x)
        # A finished image's history is not restored by the step (see optim.step); resetting its counters is
        # harmless: a finished image never updates again.
        opt_state = reset_lbfgs_history(state.opt_state, stalled | st.pending)
        return state._replace(x=x, opt_state=opt_state, extra=extra)


def blur_count(state: optim.State):
    """The blurs per image of a state run with :class:`BlurOnStall` (an int array, batch-shaped), else None."""
    return state.extra.blurs if isinstance(state.extra, StallState) else None


def settings_hook(s: Settings, hook: optim.Hook | None = None) -> optim.Hook | None:
    """The in-step hook of a run: ``hook`` (a caller's), or :class:`BlurOnStall` from the settings'
    ``blur_on_stall``, ``stall_iterations``, ``stall_threshold`` and ``blur_sigma``; the one place where the
    settings become a hook (:func:`nst_jax.stylize` and :class:`nst_jax.batch.BatchStylizer` use it).

    Raises:
        ValueError: both a ``hook`` and ``blur_on_stall`` (one hook per step).
    """
    if not s.blur_on_stall:
        return hook
    if hook is not None:
        raise ValueError("blur_on_stall is an in-step hook itself: pass either hook=... or blur_on_stall, not both.")
    return BlurOnStall(s.stall_iterations, s.stall_threshold, s.blur_sigma)
