"""Optimizers and loops: loss reduction, L-BFGS against torch.optim.LBFGS's algorithm, compilation, stopping."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nst_jax import api, images, optim, vgg
from nst_jax.config import Settings
from nst_jax.objective import Objective, Terms, make_targets

EXAMPLES = Path(__file__).parents[1] / "examples"

# --------------------------------------------------------------------------------------------------
# A pure-NumPy torch.optim.LBFGS (line_search_fn=None), written from torch/optim/lbfgs.py's algorithm


def torch_lbfgs_reference(grad_fn, x0, steps: int, *, lr: float = 1.0, history: int = 5):
    """Iterates ``x_0 .. x_steps`` of torch.optim.LBFGS without line search, in float64.

    Two-loop recursion over at most ``history`` pairs, initial inverse Hessian
    ``H_diag = y.s / y.y`` of the newest stored pair, pairs with ``y.s <= 1e-10``
    skipped, first step ``t = min(1, 1/|g|_1) * lr`` along ``-g``, then ``t = lr``.
    Also returns the iterations whose pair was skipped.
    """
    x = np.array(x0, np.float64)
    xs, skipped = [x.copy()], []
    old_y, old_s, ro = [], [], []
    h_diag, d, t, g_prev = 1.0, None, None, None
    for k in range(1, steps + 1):
        g = np.asarray(grad_fn(x), np.float64)
        if k == 1:
            d = -g
        else:
            y, s = g - g_prev, d * t
            ys = y @ s
            if ys > 1e-10:
                if len(old_y) == history:
                    old_y.pop(0), old_s.pop(0), ro.pop(0)
                old_y.append(y), old_s.append(s), ro.append(1.0 / ys)
                h_diag = ys / (y @ y)
            else:
                skipped.append(k)
            q, al = -g, [0.0] * len(old_y)
            for i in reversed(range(len(old_y))):
                al[i] = (old_s[i] @ q) * ro[i]
                q = q - al[i] * old_y[i]
            r = q * h_diag
            for i in range(len(old_y)):
                be = (old_y[i] @ r) * ro[i]
                r = r + (al[i] - be) * old_s[i]
            d = r
        g_prev = g
        t = min(1.0, 1.0 / np.abs(g).sum()) * lr if k == 1 else lr
        x = x + t * d
        xs.append(x.copy())
    return np.array(xs), skipped


def _ours(f, x0, steps, *, lr=1.0, history=5):
    """Iterates of nst_jax's neural-style L-BFGS (the transformation the 'none' variant uses)."""
    tx = optax.chain(optim.scale_by_lbfgs_neural_style(history), optax.scale(-lr))
    x = jnp.asarray(x0)
    state = tx.init(x)
    grad, update = jax.jit(jax.grad(f)), jax.jit(tx.update)
    xs = [np.asarray(x)]
    for _ in range(steps):
        u, state = update(grad(x), state, x)
        x = optax.apply_updates(x, u)
        xs.append(np.asarray(x))
    return np.array(xs)


def _quadratic(x):
    # ill-conditioned (eigenvalues 1..~60) so that 20 iterations do not converge to rounding level
    n = x.shape[0]
    a = jnp.diag(jnp.linspace(1.0, 50.0, n)) + 2.0 * jnp.ones((n, n)) / n
    return 0.5 * x @ a @ x - jnp.sum(x * jnp.arange(1.0, n + 1.0))


def _wavy(x):
    # bounded below, non-convex: L-BFGS meets pairs with y.s < 0 (negative curvature) along the way
    return jnp.sum(jnp.cos(x)) + 0.05 * jnp.sum(x ** 2) + 0.02 * jnp.sum((x[1:] - x[:-1]) ** 2)


LBFGS_CASES = {
    # name: (function, start, learning rate, iterations whose curvature pair must be skipped)
    "quadratic": (_quadratic, np.linspace(-1.0, 2.0, 8), 1.0, None),
    "quadratic-lr0.5": (_quadratic, np.linspace(3.0, -1.0, 8), 0.5, None),
    "negative-curvature-mid-run": (_wavy, np.array([-2.51, 2.13, 2.17, 2.26, -0.17]), 1.0, [4, 5, 6, 9]),
    "negative-curvature-first-pair": (_wavy, np.array([0.52, 2.04, 1.36, -0.81, -0.31]), 1.0, [2, 11]),
}


@pytest.mark.parametrize("case", list(LBFGS_CASES))
def test_neural_style_lbfgs_matches_torch_algorithm(case):
    f, x0, lr, must_skip = LBFGS_CASES[case]
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(f))
        ref, skipped = torch_lbfgs_reference(lambda x: grad(jnp.asarray(x)), x0, 20, lr=lr, history=5)
        got = _ours(f, jnp.asarray(x0, jnp.float64), 20, lr=lr, history=5)
        assert got.dtype == np.float64
        f_ref, f_got = float(f(jnp.asarray(ref[-1]))), float(f(jnp.asarray(got[-1])))
    if must_skip is not None:
        assert skipped == must_skip  # the case exercises what it is named after
    assert f_ref < float(f(jnp.asarray(x0, jnp.float32)))
    scale = np.abs(ref).max(axis=1, keepdims=True)
    np.testing.assert_allclose(got / scale, ref / scale, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert f_got == pytest.approx(f_ref, rel=1e-6, abs=1e-9)


def test_neural_style_lbfgs_vmap_equals_loop():
    """Batches are vmap of the single-image update: images skipping pairs at different iterations stay apart."""
    starts = np.stack([LBFGS_CASES["negative-curvature-mid-run"][1], LBFGS_CASES["negative-curvature-first-pair"][1]])
    with jax.enable_x64(True):
        tx = optim.scale_by_lbfgs_neural_style(5)
        grad = jax.grad(_wavy)

        @jax.jit
        @jax.vmap
        def run20(x):
            def body(carry, _):
                x, state = carry
                u, state = tx.update(grad(x), state, x)
                return (x - u, state), None
            return jax.lax.scan(body, (x, tx.init(x)), None, length=20)[0][0]

        batched = np.asarray(run20(jnp.asarray(starts)))
        singles = [_ours(_wavy, jnp.asarray(x0), 20)[-1] for x0 in starts]
    np.testing.assert_allclose(batched, np.stack(singles), rtol=1e-9, atol=1e-12)


def test_first_step_is_l1_scaled_gradient():
    g = jnp.asarray([3.0, -1.0, 0.5, 0.5])  # |g|_1 = 5
    tx = optim.scale_by_lbfgs_neural_style(10)
    update = jax.jit(tx.update)
    direction, _ = update(g, tx.init(jnp.zeros(4)), jnp.zeros(4))
    np.testing.assert_allclose(direction, g / 5.0, rtol=1e-6)
    small = g / 100.0  # |g|_1 = 0.05 < 1: not scaled up
    direction, _ = update(small, tx.init(jnp.zeros(4)), jnp.zeros(4))
    np.testing.assert_allclose(direction, small, rtol=1e-6)


def test_frozen_update_leaves_the_state_unchanged():
    tx = optim.scale_by_lbfgs_neural_style(3)
    update = jax.jit(tx.update)
    x = jnp.linspace(-1.0, 2.0, 8)
    state = tx.init(x)
    for _ in range(6):  # more pairs than slots: the ring buffer has wrapped
        u, state = update(jax.grad(_quadratic)(x), state, x)
        x = x - u
    assert int(state.stored) == 3 and int(state.newest) == 1
    _, frozen = update(jax.grad(_quadratic)(x), state, x, frozen=jnp.asarray(True))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(frozen), strict=True):
        np.testing.assert_array_equal(a, b)
    _, moved = update(jax.grad(_quadratic)(x), state, x, frozen=jnp.asarray(False))
    assert int(moved.count) == int(state.count) + 1


class _Quadratic:
    """A stand-in for Objective (same methods) whose loss costs nothing: the step's memory is the optimizer's."""

    def loss(self, params, x, targets):
        v = jnp.sum((x - targets) ** 2)
        return Terms(v, v, 0.0 * v, 0.0 * v)

    def value_and_grad(self, params, x, targets):
        return self.loss(params, x, targets), jax.grad(lambda z: self.loss(params, z, targets).total)(x)

    def prepare(self, params):
        return params

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Quadratic)


def test_lbfgs_step_updates_the_history_in_place():
    """XLA's buffer assignment of a jitted step: the donated history is written in place, never copied.

    (With a select of the whole buffers for the done-freeze, XLA kept two copies of each: temporaries of
    4 x the history.)"""
    spec = optim.SolverSpec(history=20)
    x = jax.ShapeDtypeStruct((64, 48, 3), jnp.float32)
    state = jax.eval_shape(lambda x: optim.init(_Quadratic(), spec, None, x, x), x)
    history_bytes = 20 * 64 * 48 * 3 * 4
    assert state.opt_state[0].s_memory.shape == (20, 64, 48, 3)
    ma = optim._step_jit.lower(_Quadratic(), spec, None, state, x).compile().memory_analysis()
    assert ma.alias_size_in_bytes >= 2 * history_bytes  # both buffers are outputs written over the inputs
    assert ma.temp_size_in_bytes < history_bytes  # a copy of either buffer would be as large


def _torch_function(case):
    import torch

    if case.startswith("quadratic"):
        def f(x):
            n = x.shape[0]
            a = torch.diag(torch.linspace(1.0, 50.0, n, dtype=x.dtype)) + 2.0 * torch.ones(n, n, dtype=x.dtype) / n
            return 0.5 * x @ a @ x - torch.sum(x * torch.arange(1.0, n + 1.0, dtype=x.dtype))
        return f
    return lambda x: torch.sum(torch.cos(x)) + 0.05 * torch.sum(x ** 2) + 0.02 * torch.sum((x[1:] - x[:-1]) ** 2)


@pytest.mark.parametrize("case", list(LBFGS_CASES))
def test_neural_style_lbfgs_matches_real_torch(case):
    """Against torch.optim.LBFGS itself, as neural-style-pt configures it (skipped without torch)."""
    torch = pytest.importorskip("torch")
    f, x0, lr, _ = LBFGS_CASES[case]
    tf = _torch_function(case)
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=lr, max_iter=20, history_size=5, tolerance_grad=-1, tolerance_change=-1)
    xs = []

    def closure():
        opt.zero_grad()
        loss = tf(x)
        loss.backward()
        xs.append(x.detach().numpy().copy())
        return loss

    opt.step(closure)
    xs.append(x.detach().numpy().copy())  # closure saw x_0 .. x_19; x_20 is the final point
    with jax.enable_x64(True):
        got = _ours(f, jnp.asarray(x0, jnp.float64), 20, lr=lr, history=5)
    np.testing.assert_allclose(got, np.array(xs), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# On the style-transfer objective (random weights, shallow layers to keep the tests fast)

# (the layers of test_api.py's runs: at 64 px the compiled functions are shared)
LAYERS = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
TINY = dict(image_size=32, **LAYERS)
# the line-search variants compile the loss inside while_loops: the smallest network keeps that cheap
LS = dict(image_size=32, content_layers=("relu1_2",), style_layers=("relu1_1", "relu1_2"))


@functools.lru_cache(maxsize=None)
def problem(image_size: int = 64, **kw):
    """(objective, params, targets, random x0, content in Caffe space) for tubingen + starry_night."""
    s = Settings(weights="random", image_size=image_size, **{**LAYERS, **kw})
    content = images.resize_long_side(images.load_image(EXAMPLES / "tubingen.jpg"), image_size)
    styles = api.prepare_styles(EXAMPLES / "starry_night.jpg", s)
    params = api.get_params("random")
    obj = Objective.from_settings(s)
    content_caffe = vgg.preprocess(jnp.asarray(content))
    targets = make_targets(obj, params, content_caffe, [vgg.preprocess(jnp.asarray(st)) for st in styles], weights=s)
    return obj, params, targets, api.initial_image(s, content, styles), content_caffe


def solve(spec: optim.SolverSpec, n: int, *, every: int = 10, loop: str = "step", image_size: int = 64,
          x0=None, chunk_size: int = 25, **kw):
    """Runs ``n`` iterations; returns the final state and the totals at 0, every, 2 every, ..., n."""
    obj, params, targets, x_random, _ = problem(image_size, **kw)
    stepper = optim.single_image_stepper(obj, spec, params, targets, loop)
    totals = []
    state = optim.run(stepper, x_random if x0 is None else x0, n, chunk_size=chunk_size,
                      stops=optim.checkpoints(n, every),
                      on_stop=lambda st, _: totals.append(float(st.terms.total)))
    return state, totals


def _assert_reduces(totals, what):
    """Monotonically enough: below half the start, the best loss improves at most checkpoints and late."""
    assert totals[-1] < 0.5 * totals[0], f"{what}: {totals}"
    improved = np.diff(np.minimum.accumulate(totals)) < 0
    assert improved.mean() >= 2 / 3, f"{what}: the best loss improved at too few checkpoints: {totals}"
    half = len(totals) // 2
    assert min(totals[half:]) < min(totals[:half + 1]), f"{what}: no progress in the second half: {totals}"


# neural-style's L-BFGS from 0.001 * noise starts slowly with random weights (its first step is
# g / |g|_1 and the network is homogeneous), as torch's does; from the content image it converges fast.
@pytest.mark.parametrize("spec, init", [
    (optim.SolverSpec(), "content"),
    (optim.SolverSpec(optimizer="adam", learning_rate=10.0), "content"),
    (optim.SolverSpec(optimizer="adam", learning_rate=10.0), "random"),
], ids=["lbfgs-none-content", "adam-content", "adam-random"])
def test_optimizers_reduce_the_loss(spec, init):
    obj, params, targets, x_random, content = problem(64)
    state, totals = solve(spec, 30, every=5, x0=content if init == "content" else x_random)
    _assert_reduces(totals, f"{spec.optimizer} from {init}")
    if spec.optimizer == "lbfgs":  # no line search, yet every checkpoint is better than the last here
        assert np.all(np.diff(totals) < 0), totals
    assert int(state.iteration) == 30


def test_lbfgs_none_follows_real_torch_on_the_style_objective():
    """torch.optim.LBFGS (neural-style-pt's settings) driven by our loss and gradient, against our 'none' loop."""
    torch = pytest.importorskip("torch")
    obj, params, targets, _, content = problem(**TINY)
    x0 = content + 20.0 * jax.random.normal(jax.random.key(0), content.shape)  # a noisy start: not flat
    value_and_grad = jax.jit(lambda x: obj.value_and_grad(params, x, targets))
    x = torch.tensor(np.asarray(x0), requires_grad=True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=12, history_size=100, tolerance_grad=-1, tolerance_change=-1)
    torch_losses = []

    def closure():
        terms, g = value_and_grad(jnp.asarray(x.detach().numpy()))
        x.grad = torch.tensor(np.asarray(g))
        torch_losses.append(float(terms.total))
        return torch.tensor(float(terms.total))

    opt.step(closure)  # evaluates x_0 .. x_11
    _, ours = solve(optim.SolverSpec(), 11, every=1, x0=x0, **TINY)
    assert ours[-1] < 0.5 * ours[0]
    np.testing.assert_allclose(ours, torch_losses, rtol=5e-3)  # float32 drift


@pytest.mark.filterwarnings("ignore:JAXopt is no longer maintained:DeprecationWarning")
def test_lbfgs_line_search_variants():
    """'zoom' (optax) and 'jaxopt' are set up as the same algorithm: close losses after 30 iterations;
    'backtracking' reduces the loss too."""
    obj, params, targets, _, content = problem(**LS)
    final = {}
    for ls in ("zoom", "jaxopt", "backtracking"):
        _, totals = solve(optim.SolverSpec(linesearch=ls), 30, every=5, x0=content, **LS)
        _assert_reduces(totals, ls)
        final[ls] = totals[-1]
    assert abs(final["zoom"] - final["jaxopt"]) / min(final["zoom"], final["jaxopt"]) < 0.05, final


def _optax_zoom_iterates(f, x0, steps, lr=1.0):
    """optax.lbfgs with optax's zoom line search as 'zoom' sets it up, driven as optax documents it."""
    ls = optax.scale_by_zoom_linesearch(optim._MAX_LINESEARCH_STEPS, max_learning_rate=1.0,
                                        initial_guess_strategy="one")
    tx = optax.lbfgs(learning_rate=None if lr == 1.0 else lr, memory_size=5, linesearch=ls)
    value_and_grad = optax.value_and_grad_from_state(f)

    @jax.jit
    def update(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state

    x, state, xs, trials = jnp.asarray(x0), tx.init(jnp.asarray(x0)), [], []
    for _ in range(steps):
        x, state = update(x, state)
        xs.append(np.asarray(x))
        trials.append(int(optax.tree.get(state, "num_linesearch_steps")))
    return np.array(xs), trials


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


ZOOM_CASES = {  # optax's zoom rejects the first trial at some iterations of each (asserted)
    "quadratic": LBFGS_CASES["quadratic"][:3],
    "negative-curvature-mid-run": LBFGS_CASES["negative-curvature-mid-run"][:3],
    "rosenbrock": (_rosenbrock, np.array([-1.2, 1.0, -0.5, 0.8, 1.5]), 1.0),
}


@pytest.mark.parametrize("case", ZOOM_CASES)
def test_zoom_first_trial_outside_the_loop_equals_optax_zoom(case):
    """'zoom' evaluates the first trial itself and runs optax's search only when optax would go on: the same
    iterates as optax.lbfgs + optax's zoom, with both paths taken along the way; the step's terms and
    gradient are the loss at the new point."""
    f, x0, lr = ZOOM_CASES[case]
    n = 15
    with jax.enable_x64(True):  # the same arithmetic in a different order: equal to float64 rounding
        expected, trials = _optax_zoom_iterates(f, x0, n, lr)
        assert 1 in trials and max(trials) > 1, trials  # the first trial accepted and rejected at least once

        def terms_and_grad(z):
            value, grad = jax.value_and_grad(f)(z)
            return Terms(value, value, jnp.zeros_like(value), jnp.zeros_like(value)), grad

        tx = optim._transformation(optim.SolverSpec(linesearch="zoom", learning_rate=lr, history=5))

        @jax.jit
        def update(x, state, value, grad):
            updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=f,
                                       terms_and_grad_fn=terms_and_grad)
            return optax.apply_updates(x, updates), state

        x = jnp.asarray(x0)
        state, (value, grad) = tx.init(x), jax.value_and_grad(f)(x)
        ours = []
        for _ in range(n):
            x, state = update(x, state, value, grad)
            value, grad = state[-1].terms.total, state[-1].zoom.grad
            np.testing.assert_allclose(value, f(x), rtol=1e-12)
            np.testing.assert_allclose(grad, jax.grad(f)(x), rtol=1e-10, atol=1e-12)
            ours.append(np.asarray(x))
        np.testing.assert_allclose(np.array(ours), expected, rtol=1e-10, atol=1e-12)

        # Under vmap, with the members' first trials accepted and rejected at different iterations.
        other = np.asarray(x0)[::-1] * 0.7
        expected_other, trials_other = _optax_zoom_iterates(f, other, n, lr)
        assert trials_other != trials, (trials, trials_other)
        xb = jnp.stack([jnp.asarray(x0), jnp.asarray(other)])
        sb, (vb, gb) = jax.vmap(tx.init)(xb), jax.vmap(jax.value_and_grad(f))(xb)
        batched = jax.jit(jax.vmap(update))
        for i in range(n):
            xb, sb = batched(xb, sb, vb, gb)
            vb, gb = sb[-1].terms.total, sb[-1].zoom.grad
            np.testing.assert_allclose(xb, np.stack([expected[i], expected_other[i]]), rtol=1e-8, atol=1e-10)


def test_zoom_step_evaluates_the_loss_once_outside_loops():
    """The 'zoom' step's jaxpr holds as many convolutions outside loops as the 'none' step (one value+grad:
    the first trial); optax's search and the re-evaluation after it sit inside a while loop."""
    obj, params, targets, x0, _ = problem(**LS)

    def top_level(spec):
        state = optim.init(obj, spec, params, x0, targets)
        eqns = jax.make_jaxpr(lambda st: optim.step(obj, spec, params, st, targets))(state).jaxpr.eqns
        return (sum(e.primitive.name == "conv_general_dilated" for e in eqns),
                [e for e in eqns if e.primitive.name == "while"])

    none_convs, _ = top_level(optim.SolverSpec())
    zoom_convs, zoom_loops = top_level(optim.SolverSpec(linesearch="zoom"))
    assert none_convs > 0 and zoom_convs == none_convs, (zoom_convs, none_convs)
    assert any("conv_general_dilated" in str(e.params["body_jaxpr"]) for e in zoom_loops)


def test_backtracking_shrinks_a_direction_far_too_long():
    """A first step 500x too long must still be cut down to a decrease (optax's defaults reach only 1/87)."""
    def f(x):
        return 1e5 * jnp.sum(x ** 2)  # at x = 1e-3 the first L-BFGS step (length 1) is 500x too long

    tx = optim._transformation(optim.SolverSpec(linesearch="backtracking"))
    x = jnp.asarray([1e-3])
    state = tx.init(x)
    values = [float(f(x))]
    update = jax.jit(functools.partial(tx.update, value_fn=f))
    for _ in range(4):
        value, grad = jax.value_and_grad(f)(x)
        updates, state = update(grad, state, x, value=value, grad=grad)
        x = optax.apply_updates(x, updates)
        values.append(float(f(x)))
    assert values[1] < values[0] and np.all(np.diff(values) <= 0), values
    # ...and the next search starts at the quasi-Newton step 1 again instead of at the small step it found
    assert values[-1] < 1e-6 * values[0], values


# --------------------------------------------------------------------------------------------------
# Compilation, stopping, errors

@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_no_recompilation_between_chunks_or_runs(loop):
    spec = optim.SolverSpec(history=5)
    jitted = [optim._init_jit, optim._step_jit, optim._steps_jit]
    before = [f._cache_size() for f in jitted]
    # 7 iterations, stops at 2, 4, 6, 7, chunks of at most 3: advances of 2, 2, 2 and 1 (a traced n)
    state, totals = solve(spec, 7, every=2, loop=loop, chunk_size=3, **TINY)
    assert int(state.iteration) == 7 and len(totals) == 5
    after_first = [f._cache_size() for f in jitted]
    grown = [a - b for a, b in zip(after_first, before)]
    assert grown[0] <= 1 and (grown[2] if loop == "chunk" else grown[1]) <= 1  # one compile for every n
    # a second run: same shapes, a new start, an equal (rebuilt) spec, advances of 3, 3 and 1
    obj, _, _, x0, _ = problem(**TINY)
    state2, _ = solve(optim.SolverSpec(history=5), 7, every=3, loop=loop, chunk_size=3, x0=x0 + 1.0, **TINY)
    assert int(state2.iteration) == 7
    assert [f._cache_size() for f in jitted] == after_first
    assert not np.allclose(np.asarray(state2.x), np.asarray(state.x))


def test_early_stop_at_the_optimum():
    """Content-only loss started at the content image: done at iteration 0, the loop never advances."""
    kw = dict(TINY, style_weight=0.0, tv_weight=0.0)
    obj, params, targets, _, content = problem(**kw)
    stepper = optim.single_image_stepper(obj, optim.SolverSpec(history=5), params, targets, "step")
    calls = []

    def advance(state, n):
        calls.append(n)
        return stepper.advance(state, n)

    seen = []
    state = optim.run(optim.Stepper(stepper.init, advance), content, 50, stops=optim.checkpoints(50, 10),
                      on_stop=lambda st, _: seen.append(int(st.iteration)))
    assert bool(state.done) and int(state.iteration) == 0 and float(state.terms.total) == 0.0
    assert calls == [] and seen == [0]
    # a finished image is frozen by step (what vmapped batches rely on)
    moved = optim._step_jit(obj, optim.SolverSpec(history=5), params, state._replace(x=state.x + 0.0), targets)
    np.testing.assert_array_equal(np.asarray(moved.x), np.asarray(content))
    assert int(moved.iteration) == 0


def test_tolerance_grad_stops_early():
    obj, params, targets, x0, _ = problem(**TINY)
    spec = optim.SolverSpec(history=5, tolerance_grad=1e30)
    state = optim.run(optim.single_image_stepper(obj, spec, params, targets, "step"), x0, 10)
    assert bool(state.done) and int(state.iteration) == 0


def test_non_finite_loss_raises_from_adam_with_a_huge_learning_rate():
    spec = optim.SolverSpec(optimizer="adam", learning_rate=1e30)
    with pytest.raises(optim.NonFiniteLossError, match="non-finite"):
        solve(spec, 4, every=1)  # (64 px: compiled once for this, test_api and test_cli)


def test_non_finite_loss_raises_at_iteration_0_from_an_infinite_weight():
    obj, params, targets, x0, _ = problem(**TINY)
    inf_targets = {**targets, "tv": {**targets["tv"], "weight": jnp.full_like(targets["tv"]["weight"], jnp.inf)}}
    stepper = optim.single_image_stepper(obj, optim.SolverSpec(history=5), params, inf_targets, "step")
    with pytest.raises(optim.NonFiniteLossError, match="iteration 0"):
        optim.run(stepper, x0, 5)


def test_checkpoints():
    assert optim.checkpoints(10) == [10]
    assert optim.checkpoints(10, 3) == [3, 6, 9, 10]
    assert optim.checkpoints(10, 5, 2) == [2, 4, 5, 6, 8, 10]
    assert optim.checkpoints(10, 0, 0) == [10]
    assert optim.checkpoints(6, 3, 3) == [3, 6]
    assert optim.checkpoints(0, 5) == []
    assert optim.checkpoints(4, 10) == [4]
