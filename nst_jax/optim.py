"""Optimizers and compiled optimization loops.

One pure, single-image step::

    state = init(objective, spec, params, x0, targets)
    state = step(objective, spec, params, state, targets)

and a driver, :func:`run`, that advances the state ``n`` iterations per
compiled call and hands the state to Python only between calls (for progress,
history and snapshots). Batches are ``jax.vmap`` of the same ``init``/``step``
(see :mod:`nst_jax.batch`); there is no second, batched copy of the math.

Loop form (a measured, per-backend choice, see BENCHMARKS.md): on XLA:CPU a
convolution inside a ``while``/``scan`` body runs several times slower than
outside one (jax-ml/jax#12868), so on CPU each iteration is one jitted call
driven from Python ("step"); on GPU/TPU a ``fori_loop`` of up to
``chunk_size`` iterations runs per call ("chunk"). The iteration count of a
chunk is a traced value, so neither form recompiles between calls.

Optimizers:

* ``lbfgs`` with ``linesearch="none"`` (default): neural-style's L-BFGS, i.e.
  ``torch.optim.LBFGS`` as jcjohnson/neural-style and neural-style-pt use it:
  unit steps (times the learning rate) with no line search, a first step of
  ``min(1, 1/|g|_1) * lr`` along ``-g``, the initial inverse Hessian
  ``y.s / y.y`` of the newest pair, and curvature pairs with ``y.s <= 1e-10``
  skipped; the two-loop recursion runs over the stored pairs only, and the
  history buffers are updated in place (:func:`scale_by_lbfgs_neural_style`).
* ``lbfgs`` with ``"zoom"``: ``optax.lbfgs`` with optax's zoom line search,
  started at step 1 and capped at 1 as ``jaxopt.LBFGS`` is; the first trial
  is evaluated outside any loop and, when accepted (most iterations), is the
  iteration's only evaluation (:func:`scale_by_zoom_linesearch_first_trial`).
* ``lbfgs`` with ``"backtracking"``: the direction of ``"none"`` (pairs with
  ``y.s <= 1e-10`` skipped) with optax's Armijo backtracking line search.
* ``lbfgs`` with ``"jaxopt"``: ``jaxopt.LBFGS`` (zoom line search) with the
  settings of ``"zoom"``. jaxopt is archived upstream; kept as an independent
  reference.
* ``adam``: ``optax.adam``.

Size: the steppers (three L-BFGS variants, Adam), their shared state layout, the NaN rollback and the
driver of both loop forms change together (a field of the state touches all of them), so they stay in one
module rather than being spread over several that would import each other's internals.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst_jax.config import Settings
from nst_jax.objective import Objective, Terms

#: torch.optim.LBFGS skips curvature pairs with y.s below this.
_CURVATURE_EPS = 1e-10
#: Line-search steps per iteration of the zoom-based L-BFGS variants ('zoom' and 'jaxopt').
_MAX_LINESEARCH_STEPS = 20


@dataclass(frozen=True)
class SolverSpec:
    """The optimizer's settings; hashable (a static ``jit`` argument)."""

    optimizer: str = "lbfgs"
    learning_rate: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    history: int = 100
    linesearch: str = "none"
    history_dtype: str = "float32"
    tolerance_grad: float = 0.0
    tolerance_change: float = 0.0

    @classmethod
    def from_settings(cls, s: Settings) -> "SolverSpec":
        return cls(optimizer=s.optimizer, learning_rate=s.step_size, beta1=s.beta1, beta2=s.beta2,
                   epsilon=s.epsilon, history=s.lbfgs_history, linesearch=s.lbfgs_linesearch,
                   history_dtype=s.lbfgs_history_dtype,
                   tolerance_grad=s.tolerance_grad, tolerance_change=s.tolerance_change)


class State(NamedTuple):
    """Optimization state of one image (or, under ``vmap``, of each image of a batch)."""

    x: jax.Array  # the image, Caffe space, (H, W, 3)
    opt_state: Any
    terms: Terms  # loss terms at x
    grad: jax.Array  # gradient of terms.total at x
    iteration: jax.Array  # int32: iterations done by this image
    done: jax.Array  # bool: converged (or non-finite); frozen from then on
    # int32: -1 while the loss is finite; else the iteration whose loss was NaN/inf (0: the initial image).
    # That iteration is rolled back: x, terms, grad and iteration stay those of the last finite one.
    nonfinite: jax.Array
    # Per-image state owned by the in-step hook (its ``init_extra(state)`` makes the initial one); () without.
    extra: Any = ()


#: An in-step hook: ``hook(state) -> state``, applied inside the compiled step after each update (e.g. to
#: change the image or the optimizer state when an image stalls). It is static (part of the compiled
#: structure: pass the same function object to reuse the compiled step) and pure; written for one image, it
#: is vmapped over a batch, so it must decide per image with selects (``jnp.where``), never Python ``if``.
#: A hook that keeps per-image bookkeeping across iterations has an ``init_extra(state) -> pytree`` method:
#: :func:`init` stores its result in ``State.extra`` and the hook reads and replaces it there.
Hook = Callable[[State], State]


class NeuralStyleLBFGSState(NamedTuple):
    """State of :func:`scale_by_lbfgs_neural_style`. The memory is a ring buffer of ``memory_size`` pairs."""

    count: jax.Array  # int32: updates done (0 before the first)
    params: Any  # the parameters and the gradient of the previous update
    grads: Any
    s_memory: Any  # (memory_size, ...) per leaf: steps s = x_k - x_{k-1}
    y_memory: Any  # (memory_size, ...) per leaf: gradient differences y = g_k - g_{k-1}
    rho_memory: jax.Array  # (memory_size,): 1 / y.s of each stored pair
    stored: jax.Array  # int32: pairs stored (<= memory_size)
    newest: jax.Array  # int32: slot of the newest stored pair
    h_diag: jax.Array  # initial inverse Hessian y.s / y.y of the newest stored pair (1 before any)


def _vdot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def scale_by_lbfgs_neural_style(memory_size: int = 100,
                                history_dtype: str | None = None) -> optax.GradientTransformationExtraArgs:
    """L-BFGS direction of ``torch.optim.LBFGS`` without line search (chain with ``optax.scale(-lr)``).

    The algorithm of torch/optim/lbfgs.py, step for step (checked against ``torch.optim.LBFGS`` in
    tests/test_optim.py):

    * the first direction is ``min(1, 1/|g|_1) * g`` (torch scales its first step by the L1 norm);
    * a curvature pair ``(s, y)`` with ``y.s <= 1e-10`` is not stored, and the initial inverse Hessian
      ``y.s / y.y`` stays that of the newest stored pair (1 before any);
    * the two-loop recursion runs over the stored pairs only (torch's lists), newest first.

    Memory: the two ring buffers of ``memory_size`` pairs are written in one slot per update and only
    read otherwise, so a jitted step with donated state updates them in place (no copy of the history).
    With ``history_dtype="bfloat16"`` they are stored in bfloat16, as its bit patterns (``uint16``: half the
    bytes; None: the params' dtype).
    Each pair is rounded once, when it is stored, and every quantity of the pair (``y.s``, ``y.y``, the
    recursion's products) is computed in float32 from the rounded pair, so that the stored pairs are an exact
    curvature history of their own and the recursion's dot products and updates are float32 as before.

    ``update(grads, state, params, frozen=None)``: with ``frozen`` true (a traced bool, e.g. an image of a
    batch that has converged) the state is returned unchanged, without a full-buffer select.
    """

    # bfloat16 pairs are kept as their bit patterns (uint16): XLA:CPU otherwise widens the whole bfloat16
    # buffers to float32 around their in-place updates and the loops that read them (a float32 copy of the
    # history in every step, measured with compiled.memory_analysis()).
    stored_dtype = jnp.uint16 if history_dtype == "bfloat16" else history_dtype

    def store(v, mem):  # a new pair's array -> its stored form (rho_memory stays in its own dtype)
        if history_dtype == "bfloat16" and mem.dtype == jnp.uint16:
            return jax.lax.bitcast_convert_type(v.astype(jnp.bfloat16), jnp.uint16)
        return v.astype(mem.dtype)

    def load(m, like):  # a stored array -> the dtype of ``like``
        if history_dtype == "bfloat16":
            m = jax.lax.bitcast_convert_type(m, jnp.bfloat16)
        return m.astype(like.dtype)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        mem = jax.tree.map(lambda p: jnp.zeros((memory_size, *p.shape), stored_dtype or p.dtype), params)
        dtype = jax.tree.leaves(params)[0].dtype
        return NeuralStyleLBFGSState(
            count=jnp.zeros((), jnp.int32), params=zeros, grads=zeros, s_memory=mem,
            y_memory=jax.tree.map(jnp.zeros_like, mem), rho_memory=jnp.zeros((memory_size,), dtype),
            stored=jnp.zeros((), jnp.int32), newest=jnp.full((), memory_size - 1, jnp.int32),
            h_diag=jnp.ones((), dtype))

    def update(grads, state, params=None, frozen=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("scale_by_lbfgs_neural_style needs the current params.")
        frozen = jnp.zeros((), bool) if frozen is None else jnp.asarray(frozen)
        s = jax.tree.map(jnp.subtract, params, state.params)
        y = jax.tree.map(jnp.subtract, grads, state.grads)
        if history_dtype is not None:  # the pair as it will be stored (a no-op for the params' own dtype)
            s, y = (jax.tree.map(lambda v, m: load(store(v, m), v), t, state.s_memory) for t in (s, y))
        ys = _vdot(y, s)
        learn = (state.count > 0) & (ys > _CURVATURE_EPS) & ~frozen
        slot = jnp.where(learn, (state.newest + 1) % memory_size, state.newest)
        # One dynamic-update-slice per buffer, of either the new pair or the slot's own content.
        put = lambda mem, v: mem.at[slot].set(jnp.where(learn, store(v, mem), mem[slot]))  # noqa: E731
        s_mem = jax.tree.map(put, state.s_memory, s)
        y_mem = jax.tree.map(put, state.y_memory, y)
        rho_mem = put(state.rho_memory, 1.0 / ys)
        stored = jnp.where(learn, jnp.minimum(state.stored + 1, memory_size), state.stored)
        h_diag = jnp.where(learn, ys / _vdot(y, y), state.h_diag)

        # Two-loop recursion over the stored pairs, as torch computes it with q = -g (here q = g: the
        # result is the negated direction, with the same rounding). The buffers travel through the loops
        # as loop state so that they are read in place and handed on as the new state.
        def newest_first(k, carry):
            q, al, s_m, y_m = carry
            i = (slot - k) % memory_size
            a = _vdot(jax.tree.map(lambda m, u: load(m[i], u), s_m, q), q) * rho_mem[i]
            q = jax.tree.map(lambda u, m: u + (-a) * load(m[i], u), q, y_m)
            return q, al.at[k].set(a), s_m, y_m

        def oldest_first(j, carry):
            r, al, s_m, y_m = carry
            k = stored - 1 - j
            i = (slot - k) % memory_size
            be = _vdot(jax.tree.map(lambda m, u: load(m[i], u), y_m, r), r) * rho_mem[i]
            r = jax.tree.map(lambda u, m: u + (al[k] - be) * load(m[i], u), r, s_m)
            return r, al, s_m, y_m

        al0 = jnp.zeros((memory_size,), rho_mem.dtype)
        q, al, s_mem, y_mem = jax.lax.fori_loop(0, stored, newest_first, (grads, al0, s_mem, y_mem))
        r = jax.tree.map(lambda u: u * h_diag, q)
        r, _, s_mem, y_mem = jax.lax.fori_loop(0, stored, oldest_first, (r, al, s_mem, y_mem))

        first = state.count == 0
        scale = jnp.minimum(1.0, 1.0 / sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads)))
        direction = jax.tree.map(lambda g, d: jnp.where(first, scale * g, d), grads, r)
        keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(frozen, o, n), old, new)  # noqa: E731
        new_state = NeuralStyleLBFGSState(
            count=jnp.where(frozen, state.count, state.count + 1),
            params=keep(state.params, params), grads=keep(state.grads, grads),
            s_memory=s_mem, y_memory=y_mem, rho_memory=rho_mem, stored=stored,
            newest=slot, h_diag=h_diag)
        return direction, new_state

    return optax.GradientTransformationExtraArgs(init, update)


class ZoomFirstTrialState(NamedTuple):
    """State of :func:`scale_by_zoom_linesearch_first_trial`: optax's, plus the loss terms at the new point."""

    zoom: optax.ScaleByZoomLinesearchState  # learning_rate, value and grad at the new point, info
    terms: Terms


def scale_by_zoom_linesearch_first_trial(max_linesearch_steps: int, slope_rtol: float = 1e-4,
                                         curv_rtol: float = 0.9,
                                         approx_dec_rtol: float = 1e-6) -> optax.GradientTransformationExtraArgs:
    """optax's zoom line search, started at step 1 and capped at 1, with its first trial outside any loop.

    optax evaluates every trial inside a ``while_loop``, where XLA:CPU's convolutions run several times
    slower (see the module docstring), and the step then evaluates the accepted point once more. Most
    L-BFGS iterations accept the quasi-Newton step 1 at the first trial, so here that trial is computed in
    straight-line code, loss terms included, and accepted by optax's own rule for this setup (sufficient
    decrease, with the approximate-Wolfe alternative, and either the curvature condition or a slope that is
    still negative at the cap). Only a rejected trial runs ``optax.scale_by_zoom_linesearch`` (from the
    start, as it would have), in a ``while_loop`` that otherwise runs zero times, under ``vmap`` too. The
    iterates are optax's; the value, gradient and terms at the new point are in the state
    (``.zoom.value``, ``.zoom.grad``, ``.terms``).

    ``update`` takes ``value``/``grad`` at ``params``, ``value_fn`` (the scalar loss) and
    ``terms_and_grad_fn`` (``z -> (terms, grad)``, ``terms.total`` the loss).
    """
    zoom = optax.scale_by_zoom_linesearch(max_linesearch_steps, max_learning_rate=1.0, slope_rtol=slope_rtol,
                                          curv_rtol=curv_rtol, approx_dec_rtol=approx_dec_rtol,
                                          initial_guess_strategy="one")

    def init(params):
        nan = jnp.full((), jnp.nan, jnp.float32)
        return ZoomFirstTrialState(zoom.init(params), Terms(nan, nan, nan, nan))

    def update(updates, state, params, *, value, grad, value_fn, terms_and_grad_fn):
        # The first trial, step 1, and optax's errors for it (zoom_linesearch's decrease/curvature errors).
        terms, new_grad = terms_and_grad_fn(optax.apply_updates(params, updates))
        slope_init = optax.tree.real(optax.tree.vdot(updates, grad))
        slope = optax.tree.real(optax.tree.vdot(new_grad, updates))
        decrease = terms.total - value - slope_rtol * slope_init
        approx = jnp.maximum(slope - (2 * slope_rtol - 1.0) * slope_init,
                             terms.total - value - approx_dec_rtol * jnp.abs(value))
        decrease = jnp.maximum(jnp.minimum(approx, decrease), 0.0)
        curvature = jnp.maximum(jnp.abs(slope) - curv_rtol * jnp.abs(slope_init), 0.0)
        decrease, curvature = (jnp.where(jnp.isnan(e), jnp.inf, e) for e in (decrease, curvature))
        # optax stops after this trial when both errors are 0, or when the decrease holds, the cap 1 is
        # reached and the slope is still negative (no interval found).
        accepted = (decrease <= 0.0) & ((curvature <= 0.0) | (slope < 0.0))
        info = state.zoom.info._replace(num_linesearch_steps=jnp.ones_like(state.zoom.info.num_linesearch_steps),
                                        decrease_error=decrease, curvature_error=curvature)
        first = ZoomFirstTrialState(optax.tree.cast_like(
            state.zoom._replace(learning_rate=jnp.ones_like(state.zoom.learning_rate), value=terms.total,
                                grad=new_grad, info=info), state.zoom), terms)

        def search(carry):
            _, out = carry
            scaled, zoom_state = zoom.update(updates, state.zoom, params, value=value, grad=grad, value_fn=value_fn)
            t, g = terms_and_grad_fn(optax.apply_updates(params, scaled))
            return jnp.ones_like(accepted), out._replace(
                zoom=optax.tree.cast_like(zoom_state._replace(value=t.total, grad=g), out.zoom), terms=t)

        _, new_state = jax.lax.while_loop(lambda c: ~c[0], search, (accepted, first))
        return optax.tree.scale(new_state.zoom.learning_rate, updates), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _transformation(spec: SolverSpec) -> optax.GradientTransformation:
    if spec.optimizer == "adam":
        return optax.adam(spec.learning_rate, b1=spec.beta1, b2=spec.beta2, eps=spec.epsilon)
    # "float32": the pairs in the image's own dtype, as torch keeps them (float64 for a float64 image)
    history_dtype = None if spec.history_dtype == "float32" else spec.history_dtype
    if spec.linesearch == "none":
        return optax.chain(scale_by_lbfgs_neural_style(spec.history, history_dtype),
                           optax.scale(-spec.learning_rate))
    if spec.linesearch == "zoom":
        # optax.lbfgs (direction, scaling), with the line search set up as jaxopt.LBFGS's (see _jaxopt_solver):
        # try the quasi-Newton step 1 first and never go beyond it. optax's default zoom may extrapolate past
        # 1; then 'zoom' and 'jaxopt' are no longer the same algorithm (measured: 26% apart after 50 iterations).
        scaling = optax.scale(-1.0) if spec.learning_rate == 1.0 else optax.scale_by_learning_rate(spec.learning_rate)
        return optax.chain(optax.scale_by_lbfgs(memory_size=spec.history), scaling,
                           scale_by_zoom_linesearch_first_trial(_MAX_LINESEARCH_STEPS))
    if spec.linesearch == "backtracking":
        # The loss used to freeze here, for two reasons:
        # * optax.lbfgs keeps curvature pairs with y.s < 0 (only a Wolfe line search rules them out, and
        #   Armijo backtracking is not one). Near a random start the style loss is concave (-2 <G(x), A>
        #   dominates while G(x) ~ 0), the inverse Hessian estimate becomes indefinite and its directions
        #   point uphill. So the direction is neural-style's, which skips those pairs as torch does.
        # * optax's defaults (decrease_factor 0.8, here 20 steps) shrink a step at most to 0.8^20 = 1/87; a
        #   direction ~100x too long fails the search, the failed step is taken anyway and its tiny learning
        #   rate is remembered (x1.5 per round at most). Halving up to 30 times reaches 1e-9, and every
        #   search starts again at the quasi-Newton step 1 (increase_factor=inf, as documented by optax).
        ls = optax.scale_by_backtracking_linesearch(max_backtracking_steps=30, decrease_factor=0.5,
                                                    increase_factor=math.inf, store_grad=True)
        return optax.chain(scale_by_lbfgs_neural_style(spec.history, history_dtype),
                           optax.scale(-spec.learning_rate), ls)
    raise ValueError(f"unknown L-BFGS line search {spec.linesearch!r}.")


def _jaxopt_solver(objective: Objective, spec: SolverSpec):
    import jaxopt  # archived upstream; imported only when chosen

    def fun(x, params, targets):
        t = objective.loss(params, x, targets)
        return t.total, t

    # Start every line search at step 1 (jaxopt's default "increase" starts at 1.5x the previous step) with
    # optax's number of steps: the same settings as lbfgs_linesearch='zoom'.
    return jaxopt.LBFGS(fun=fun, has_aux=True, history_size=spec.history, maxiter=2**31 - 1,
                        tol=0.0, linesearch="zoom", linesearch_init="max", max_stepsize=1.0,
                        maxls=_MAX_LINESEARCH_STEPS)


def init(objective: Objective, spec: SolverSpec, params, x0: jax.Array, targets, hook: Hook | None = None) -> State:
    """Evaluates the initial image and builds the optimizer state (pure; vmap-able); with a ``hook`` that has
    an ``init_extra`` method, its initial bookkeeping goes into ``State.extra``."""
    terms, grad = objective.value_and_grad(params, x0, targets)
    if spec.optimizer == "lbfgs" and spec.linesearch == "jaxopt":
        opt_state = _jaxopt_solver(objective, spec).init_state(x0, params, targets)
    else:
        opt_state = _transformation(spec).init(x0)
        if spec.optimizer == "lbfgs" and spec.linesearch == "zoom":  # its state holds terms: this objective's
            opt_state = (*opt_state[:-1], opt_state[-1]._replace(terms=jax.tree.map(
                lambda t: jnp.full_like(t, jnp.nan), terms)))
    finite = jnp.isfinite(terms.total)
    done = _converged(spec, terms.total, terms.total + jnp.inf, grad) | ~finite
    nonfinite = jnp.where(finite, jnp.full((), -1, jnp.int32), jnp.zeros((), jnp.int32))  # int32, not weak
    state = State(x0, opt_state, terms, grad, jnp.zeros((), jnp.int32), done, nonfinite)
    init_extra = getattr(hook, "init_extra", None)
    return state if init_extra is None else state._replace(extra=init_extra(state))


def _converged(spec: SolverSpec, value, prev_value, grad):
    small_grad = jnp.max(jnp.abs(grad)) <= spec.tolerance_grad
    small_change = jnp.abs(value - prev_value) < spec.tolerance_change
    return small_grad | small_change


def step(objective: Objective, spec: SolverSpec, params, state: State, targets,
         hook: Hook | None = None) -> State:
    """One optimizer iteration of one image (pure; vmap-able). A finished image is returned unchanged.

    An iteration whose loss is NaN/inf is not taken: the image keeps its last finite ``x``, ``terms``,
    ``grad`` and ``iteration``, is marked done, and ``nonfinite`` records the iteration. So the last good
    image and the exact iteration survive whatever the loop form (a compiled chunk included).

    ``hook``, if given, maps the new state to the one kept (see :data:`Hook`): it runs inside the compiled
    step, after the update and the non-finite roll-back, before a finished image is restored (so a
    finished image stays as it was; only neural-style L-BFGS's self-freezing history is not restored, a
    hook must leave it alone for finished images). Without a hook the step is unchanged (no extra
    operations).
    """
    # scale_by_lbfgs_neural_style freezes itself when told (see the end of this function).
    frozen = {"frozen": state.done} if spec.optimizer == "lbfgs" and spec.linesearch == "none" else {}
    if spec.optimizer == "lbfgs" and spec.linesearch == "jaxopt":
        x, opt_state = _jaxopt_solver(objective, spec).update(state.x, state.opt_state, params, targets)
        terms, grad = opt_state.aux, opt_state.grad
    elif spec.optimizer == "lbfgs" and spec.linesearch == "zoom":
        # The line search returns the terms and gradient at the point it accepts.
        updates, opt_state = _transformation(spec).update(
            state.grad, state.opt_state, state.x, value=state.terms.total, grad=state.grad,
            value_fn=lambda z: objective.loss(params, z, targets).total,
            terms_and_grad_fn=lambda z: objective.value_and_grad(params, z, targets))
        x = optax.apply_updates(state.x, updates)
        terms, grad = opt_state[-1].terms, opt_state[-1].zoom.grad
    else:
        extra = frozen
        if spec.optimizer == "lbfgs" and spec.linesearch != "none":  # backtracking
            extra = dict(value=state.terms.total, grad=state.grad,
                         value_fn=lambda z: objective.loss(params, z, targets).total)
        updates, opt_state = _transformation(spec).update(state.grad, state.opt_state, state.x, **extra)
        x = optax.apply_updates(state.x, updates)
        terms, grad = objective.value_and_grad(params, x, targets)
    finite = jnp.isfinite(terms.total)
    done = _converged(spec, terms.total, state.terms.total, grad) | ~finite
    # A non-finite iteration is rolled back (image-sized selects; the optimizer state, which may be the large
    # L-BFGS history, is not: the image is frozen from now on and never uses it).
    back = lambda old, n: jax.tree.map(lambda o, v: jnp.where(finite, v, o), old, n)  # noqa: E731
    new = State(back(state.x, x), opt_state, back(state.terms, terms), back(state.grad, grad),
                jnp.where(finite, state.iteration + 1, state.iteration), done,
                jnp.where(finite, state.nonfinite, state.iteration + 1), state.extra)
    if hook is not None:  # static: without a hook, not a single operation more
        new = hook(new)
    # A finished image keeps its state. Neural-style's L-BFGS state froze itself (told by frozen=): a select
    # of its whole history buffers here would make XLA keep a second copy of them.
    self_frozen = lambda n: bool(frozen) and isinstance(n, NeuralStyleLBFGSState)  # noqa: E731
    return jax.tree.map(lambda old, n: n if self_frozen(n) else _keep_if(state.done, old, n),
                        state, new, is_leaf=self_frozen)


def _keep_if(done, old, new):
    return jax.tree.map(lambda o, n: jnp.where(done, o, n), old, new)


def steps(objective: Objective, spec: SolverSpec, params, state: State, targets, n,
          hook: Hook | None = None) -> State:
    """``n`` iterations (``n`` may be traced) as one ``fori_loop``; ``hook`` as for :func:`step`."""
    return jax.lax.fori_loop(0, n, lambda _, s: step(objective, spec, params, s, targets, hook), state)


def default_loop() -> str:
    """The loop form that measured fastest on the default backend: 'step' on CPU, 'chunk' elsewhere."""
    return "step" if jax.default_backend() == "cpu" else "chunk"


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames="hook")
def _init_jit(objective, spec, params, x0, targets, hook=None):
    return init(objective, spec, params, x0, targets, hook)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames="hook", donate_argnums=(3,))
def _step_jit(objective, spec, params, state, targets, hook=None):
    return step(objective, spec, params, state, targets, hook)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames="hook", donate_argnums=(3,))
def _steps_jit(objective, spec, params, state, targets, n, hook=None):
    return steps(objective, spec, params, state, targets, n, hook)


class Stepper(NamedTuple):
    """Compiled entry points of one problem: ``init(x0)`` and ``advance(state, n)``; ``per_iteration``: whether
    ``advance`` makes one compiled call per iteration (the "step" loop form), so that advancing one iteration
    at a time costs nothing extra."""

    init: Callable[[jax.Array], State]
    advance: Callable[[State, int], State]
    per_iteration: bool = False


def single_image_stepper(objective: Objective, spec: SolverSpec, params, targets, loop: str = "auto",
                         hook: Hook | None = None) -> Stepper:
    """Compiled ``init``/``advance`` for one image with the chosen loop form; ``hook``: see :func:`step`."""
    loop = default_loop() if loop == "auto" else loop
    params = objective.prepare(params)  # once, not in every iteration
    with_hook = {} if hook is None else {"hook": hook}  # no hook: the very program (and cache entry) as before

    def advance(state, n):
        if loop == "step":
            for _ in range(n):
                state = _step_jit(objective, spec, params, state, targets, **with_hook)
            return state
        return _steps_jit(objective, spec, params, state, targets, jnp.asarray(n, jnp.int32), **with_hook)

    return Stepper(lambda x0: _init_jit(objective, spec, params, x0, targets, **with_hook), advance, loop == "step")


@dataclass(frozen=True)
class Record:
    """Progress of one image at one iteration (weighted loss terms, seconds since start).

    With coarse-to-fine ``scales`` the iteration counts on across the stages and ``size`` says which
    stage (long side) the record belongs to.
    """

    iteration: int
    total: float
    content: float
    style: float
    tv: float
    elapsed: float
    size: int | None = None  # long side of the image at this record (differs between coarse-to-fine stages)
    terms: Mapping[str, float] = field(default_factory=dict, hash=False)  # every weighted term, by name
    blurs: int | None = None  # blur_on_stall: blurs so far (counted on across stages); None without it

    @classmethod
    def from_terms(cls, iteration: int, terms: Mapping, elapsed: float, size: int | None = None,
                   blurs: int | None = None) -> "Record":
        """The record of one image's :class:`~nst_jax.objective.Terms` (host values), every term by name."""
        named = {k: float(v) for k, v in terms.items() if k != "total"}
        return cls(iteration, float(terms["total"]), named.get("content", 0.0), named.get("style", 0.0),
                   named.get("tv", 0.0), elapsed, size, named, blurs)

    def as_dict(self) -> dict:
        return dict(iteration=self.iteration, total=self.total, content=self.content, style=self.style,
                    tv=self.tv, elapsed=self.elapsed, size=self.size, terms=dict(self.terms),
                    **({} if self.blurs is None else {"blurs": self.blurs}))


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite at ``iteration``; no image is written from such a state.

    The optimization stops there and keeps its last finite state (see :func:`step`), so the image of the
    iteration before is available, e.g. to write as a partial result.

    Attributes:
        iteration: the first iteration whose loss was NaN/inf (exact, also inside a compiled chunk; 0: the
            initial image). :func:`nst_jax.stylize` counts on across coarse-to-fine stages, as its history.
        last_good_iteration: the iteration of ``last_good`` (``iteration - 1``), or None.
        last_good: the image at ``last_good_iteration``, or None if no iteration had a finite loss. From
            :func:`run` the Caffe-space ``state.x``; from :func:`nst_jax.stylize` the RGB image, float32
            ``(H, W, 3)`` in [0, 1] at full size (what it would have returned after that iteration).
        loss: the non-finite loss at iteration 0 (NaN, inf or -inf); None later (that iteration is rolled
            back, only its non-finiteness is kept).
        last_good_loss: the loss at ``last_good_iteration``, or None.
        partial: where ``last_good`` was written (:func:`nst_jax.stylize` with an output), or None.
    """

    def __init__(self, iteration: int, loss: float | None = None, *, last_good=None,
                 last_good_loss: float | None = None, label: str | None = None, partial=None):
        self.iteration, self.loss, self.last_good, self.last_good_loss = iteration, loss, last_good, last_good_loss
        self.last_good_iteration = iteration - 1 if last_good is not None else None
        self.label, self.partial = label, partial
        value = f"non-finite ({'NaN or infinite' if loss is None else loss})"
        text = f"the loss became {value} at iteration {iteration}"
        if last_good is None:
            text += (" (the starting image); check the inputs and the loss weights (a NaN/inf in an image or an "
                     "infinite weight), or lower the loss weights")
        else:
            kept = (f"was written to '{partial}' (not a finished result; --init image --init-image resumes from it)"
                    if partial is not None else "is on this error as .last_good (not written as a result)")
            text += (f"; the last finite loss ({last_good_loss:.6g}) was at iteration {iteration - 1}, whose image "
                     f"{kept}. Lower the learning rate or the loss weights (with L-BFGS, optimizer='adam' is "
                     "more forgiving)")
        super().__init__(f"{label}: {text}." if label else f"{text}.")

    def __reduce__(self):  # picklable (e.g. from a worker process) with its attributes
        return functools.partial(type(self), last_good=self.last_good, last_good_loss=self.last_good_loss,
                                 label=self.label, partial=self.partial), (self.iteration, self.loss)

    def shifted(self, offset: int) -> "NonFiniteLossError":
        """The same error with its iterations counted from ``offset`` (the iterations of earlier stages)."""
        if not offset:
            return self
        return type(self)(self.iteration + offset, self.loss, last_good=self.last_good,
                          last_good_loss=self.last_good_loss, label=self.label, partial=self.partial)

    @classmethod
    def from_state(cls, state: "State", index: int | None = None, *, label: str | None = None
                   ) -> "NonFiniteLossError":
        """The error of a state whose loss became non-finite (``index``: which image of a batched state)."""
        pick = (lambda a: a) if index is None else (lambda a: a[index])  # noqa: E731
        nonfinite, total, x = jax.device_get((pick(state.nonfinite), pick(state.terms.total), pick(state.x)))
        nonfinite = int(nonfinite)
        if nonfinite == 0:  # the initial image itself: nothing good to keep
            return cls(0, float(total), label=label)
        return cls(nonfinite, last_good=np.asarray(x), last_good_loss=float(total), label=label)


def checkpoints(num_iterations: int, *everys: int) -> list[int]:
    """Iterations at which Python looks at the state: multiples of each ``every`` and the last one."""
    stops = {num_iterations}
    for e in everys:
        if e > 0:
            stops.update(range(e, num_iterations, e))
    return sorted(i for i in stops if i > 0)


def run(stepper: Stepper, x0: jax.Array, num_iterations: int, *, chunk_size: int = 25,
        stops: list[int] | None = None, on_stop: Callable[[State, float], None] | None = None,
        raise_nonfinite: bool = True, on_advance: Callable[[int, State], None] | None = None) -> State:
    """Drives ``stepper`` for ``num_iterations``, calling ``on_stop(state, elapsed)`` at iteration 0 and at
    each of ``stops``; stops early once every image is done. ``on_advance(iterations, state)``, if given, is
    called after every compiled call (each iteration in the "step" loop form) with the iterations run so far
    (a host int: no device transfer), e.g. for a progress bar.

    An image whose loss becomes NaN/inf stops at its last finite iteration (:func:`step`). Python sees it
    at the next stop; ``raise_nonfinite=False`` (batches) leaves it in ``state.nonfinite`` and goes on with
    the others.

    Raises:
        NonFiniteLossError: (``raise_nonfinite``) the loss of the image (the first such of a batch) became
            NaN/inf; it carries the exact iteration and the last finite image.
    """
    t0 = time.perf_counter()
    state = stepper.init(x0)
    if raise_nonfinite:
        _check_finite(state)
    if on_stop:
        on_stop(state, time.perf_counter() - t0)
    stops = stops if stops is not None else [num_iterations]
    it = 0
    for stop in (s for s in stops if 0 < s <= num_iterations):
        if bool(jnp.all(state.done)):
            break
        # one iteration per call where that is free ("step" form), so that on_advance sees every iteration
        per_call = 1 if on_advance is not None and stepper.per_iteration else chunk_size
        while it < stop:
            n = min(per_call, stop - it)
            state = stepper.advance(state, n)
            it += n
            if on_advance is not None:
                on_advance(it, state)
        if raise_nonfinite:
            _check_finite(state)
        if on_stop:
            on_stop(state, time.perf_counter() - t0)
    return state


def _check_finite(state: State) -> None:
    failed = np.flatnonzero(np.asarray(state.nonfinite).reshape(-1) >= 0)
    if failed.size:
        raise NonFiniteLossError.from_state(state, None if np.ndim(state.nonfinite) == 0 else int(failed[0]))
