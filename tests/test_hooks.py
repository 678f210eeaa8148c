"""In-step hooks (``optim.Hook``): a pure ``hook(state) -> state`` that runs inside the compiled step, after the
update, for one image (jit) and for a batch (vmap of the same step). Tiny images, random weights."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import api, batch, images, optim, vgg
from nst_jax.config import Settings
from nst_jax.objective import Objective, make_targets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
LAYERS = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
KW = dict(weights="random", image_size=32, num_iterations=6, print_every=3, progress=False, conv_algorithm="direct",
          **LAYERS)
LIMIT = 5.0  # Caffe space (0-255 scale): tight enough that the optimizer runs into it
K = 3


def clip(state: optim.State) -> optim.State:
    """Keeps the image inside [-LIMIT, LIMIT]: an elementwise select, so it vmaps."""
    return state._replace(x=jnp.clip(state.x, -LIMIT, LIMIT))


def zero_at_k(state: optim.State) -> optim.State:
    """Replaces the image by zeros at iteration ``K`` (per image: a select on its own iteration count)."""
    return state._replace(x=jnp.where(state.iteration == K, jnp.zeros_like(state.x), state.x))


@pytest.fixture(scope="module")
def problem():
    s = Settings(**{k: v for k, v in KW.items() if k != "progress"})
    photo = images.resize_long_side(images.load_image(EXAMPLES / "tubingen.jpg"), 32)
    other = np.ascontiguousarray(photo[::-1])
    params = api.get_params("random")
    obj = Objective.from_settings(s)
    styles = api.prepare_styles(STYLE, s)
    style_caffe = [vgg.preprocess(jnp.asarray(st)) for st in styles]
    targets = [make_targets(obj, params, vgg.preprocess(jnp.asarray(c)), style_caffe, weights=s)
               for c in (photo, other)]
    x0 = [api.initial_image(s, c, styles) for c in (photo, other)]
    return s, obj, params, targets, x0, (photo, other)


def _single(problem, hook, loop, n=KW["num_iterations"]):
    s, obj, params, targets, x0, _ = problem
    spec = optim.SolverSpec.from_settings(s)
    return [optim.run(optim.single_image_stepper(obj, spec, params, t, loop, hook=hook), x, n, chunk_size=n)
            for t, x in zip(targets, x0)]


def _batched(problem, hook, loop, n=KW["num_iterations"]):
    s, obj, params, targets, x0, _ = problem
    spec = optim.SolverSpec.from_settings(s)
    per_image, shared = batch.split_targets(targets)
    stepper = batch.batch_stepper(obj, spec, params, per_image, shared=shared, loop=loop, hook=hook)
    return optim.run(stepper, jnp.stack(x0), n, chunk_size=n)


@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_hook_changes_the_state_inside_the_compiled_step(problem, loop):
    plain = _single(problem, None, loop)
    clipped = _single(problem, clip, loop)
    for p, c in zip(plain, clipped):
        assert float(jnp.max(jnp.abs(p.x))) > LIMIT  # the hook matters here...
        assert float(jnp.max(jnp.abs(c.x))) <= LIMIT  # ...and held at every iteration it ran
        assert int(c.iteration) == KW["num_iterations"]
    # the same hook in the batched (vmapped) step gives each image what it gets alone
    both = _batched(problem, clip, loop)
    for i, c in enumerate(clipped):
        np.testing.assert_allclose(np.asarray(both.x[i]), np.asarray(c.x), atol=1e-3 * LIMIT)


@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_hook_acts_at_one_iteration_per_image(problem, loop):
    # K iterations: the hook ran last at iteration K, inside the step (also mid-chunk): the image is zeros
    for state in _single(problem, zero_at_k, loop, n=K):
        assert not np.any(np.asarray(state.x))
    state = _batched(problem, zero_at_k, loop, n=K)
    assert not np.any(np.asarray(state.x))
    # one more iteration: the hook leaves it alone, the optimizer moves on from zeros
    for state in _single(problem, zero_at_k, loop, n=K + 1):
        assert np.any(np.asarray(state.x))


def test_no_hook_is_the_plain_step(problem):
    s, obj, params, targets, x0, _ = problem
    spec = optim.SolverSpec.from_settings(s)
    state = optim.init(obj, spec, params, x0[0], targets[0])
    plain = jax.make_jaxpr(lambda st: optim.step(obj, spec, params, st, targets[0]))(state)
    none = jax.make_jaxpr(lambda st: optim.step(obj, spec, params, st, targets[0], None))(state)
    assert str(plain) == str(none)
    # a stepper without a hook runs the very compiled step a direct call does (no second cache entry)
    _single(problem, None, "step", n=1)
    size = optim._step_jit._cache_size()
    optim._step_jit(obj, spec, obj.prepare(params), optim._init_jit(obj, spec, obj.prepare(params), x0[0],
                                                                   targets[0]), targets[0])
    assert optim._step_jit._cache_size() == size


def test_hook_through_stylize_and_stylize_batch(problem):
    _, _, _, _, _, contents = problem
    alone = [nst_jax.stylize(c, STYLE, hook=clip, **KW) for c in contents]
    plain = nst_jax.stylize(contents[0], STYLE, **KW)
    batched = batch.stylize_batch(list(contents), STYLE, hook=clip, **KW)
    bound = np.asarray(vgg.deprocess(jnp.full((3,), LIMIT)))  # per channel, the most a clipped image can be
    assert np.all(alone[0].array.max(axis=(0, 1)) <= bound + 1e-6)
    assert np.any(plain.array.max(axis=(0, 1)) > bound + 1e-6)
    for a, b in zip(alone, batched):
        assert abs(a.loss - b.loss) <= 1e-3 * abs(a.loss)
        assert np.abs(a.array - b.array).max() <= 1 / 255
