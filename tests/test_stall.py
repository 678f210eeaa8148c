"""Blur on stall (:class:`nst_jax.stall.BlurOnStall`): the blur against scipy in float64, the per-image decision
inside the compiled step (alone and vmapped), the L-BFGS history reset. Tiny images, random weights."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from nst_jax import api, batch, images, optim, stall, vgg
from nst_jax.config import Settings
from nst_jax.objective import Objective, make_targets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KW = dict(weights="random", image_size=32, num_iterations=8, conv_algorithm="direct",
          content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
K = 3


@pytest.fixture(scope="module")
def problem():
    s = Settings(**KW)
    photo = images.resize_long_side(images.load_image(EXAMPLES / "tubingen.jpg"), 32)
    other = np.ascontiguousarray(photo[::-1])
    params = api.get_params("random")
    obj = Objective.from_settings(s)
    styles = api.prepare_styles(EXAMPLES / "starry_night.jpg", s)
    style_caffe = [vgg.preprocess(jnp.asarray(st)) for st in styles]
    targets = [make_targets(obj, params, vgg.preprocess(jnp.asarray(c)), style_caffe, weights=s)
               for c in (photo, other)]
    x0 = [api.initial_image(s, c, styles) for c in (photo, other)]
    return optim.SolverSpec.from_settings(s), obj, params, targets, x0


def _single(problem, hook, n, i=0, on_stop=None):
    spec, obj, params, targets, x0 = problem
    return optim.run(optim.single_image_stepper(obj, spec, params, targets[i], "step", hook=hook), x0[i], n,
                     chunk_size=n, stops=list(range(1, n + 1)), on_stop=on_stop)


def _batched(problem, hook, n):
    spec, obj, params, targets, x0 = problem
    per_image, shared = batch.split_targets(targets)
    stepper = batch.batch_stepper(obj, spec, params, per_image, shared=shared, loop="step", hook=hook)
    return optim.run(stepper, jnp.stack(x0), n, chunk_size=n)


@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_gaussian_blur_is_scipys_mirror_filter(sigma):
    x = np.random.default_rng(0).normal(size=(9, 12, 3))
    want = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="mirror", truncate=stall.TRUNCATE)
    got = np.asarray(stall.gaussian_blur(jnp.asarray(x, jnp.float32), sigma), np.float64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a constant image is unchanged (normalized kernel)
    np.testing.assert_allclose(np.asarray(stall.gaussian_blur(jnp.full((5, 5, 1), 2.0), sigma)), 2.0, rtol=1e-6)


def test_the_blur_and_the_history_reset_at_a_stall(problem):
    # threshold 1: a window would have to remove the whole loss, so every full window is a stall
    hook = stall.BlurOnStall(iterations=K, threshold=1.0, sigma=1.0)
    plain = _single(problem, None, K)
    st = _single(problem, hook, K)
    want = ndimage.gaussian_filter(np.asarray(plain.x, np.float64), sigma=(1, 1, 0), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(np.asarray(st.x), want, atol=1e-3)
    lbfgs = st.opt_state[0]
    assert int(lbfgs.count) == 0 and int(lbfgs.stored) == 0 and float(lbfgs.h_diag) == 1.0
    assert int(plain.opt_state[0].count) == K  # without the hook the history goes on
    assert int(stall.blur_count(st)) == 1
    # the next iteration empties the history once more (its pair would mix in the stale gradient), then it fills
    nxt = _single(problem, hook, K + 2)
    assert int(stall.blur_count(nxt)) == 1
    assert int(nxt.opt_state[0].count) == 1  # reset at K + 1, one update since


def test_blur_count_follows_the_windows(problem):
    hook = stall.BlurOnStall(iterations=K, threshold=1.0)
    n = 11  # blurs at K, then a fresh window from the first loss after each blur: K + m (K + 1)
    assert int(stall.blur_count(_single(problem, hook, n))) == (n - K) // (K + 1) + 1


def test_no_stall_no_blur_and_the_plain_result(problem):
    # a window longer than the run never ends; threshold 0 counts only a rising loss as a stall
    for hook in (stall.BlurOnStall(iterations=50), stall.BlurOnStall(iterations=2, threshold=0.0)):
        st = _single(problem, hook, 6)
        plain = _single(problem, None, 6)
        if hook.iterations == 2:  # only if the loss fell over every window
            totals = []
            _single(problem, None, 6, on_stop=lambda s, e: totals.append(float(s.terms.total)))
            assert all(b < a for a, b in zip(totals[0::2], totals[2::2]))
        assert int(stall.blur_count(st)) == 0
        np.testing.assert_array_equal(np.asarray(st.x), np.asarray(plain.x))
        assert float(st.terms.total) == float(plain.terms.total)


def test_per_image_decision_in_a_batch(problem):
    # relative improvement of each image over its first window, from plain runs; a threshold between them
    gains = []
    for i in range(2):
        totals = []
        _single(problem, None, K, i=i, on_stop=lambda s, e: totals.append(float(s.terms.total)))
        gains.append((totals[0] - totals[K]) / abs(totals[0]))
    assert gains[0] != gains[1]
    hook = stall.BlurOnStall(iterations=K, threshold=float(np.mean(gains)))
    stalls = [g < hook.threshold for g in gains]
    alone = [_single(problem, hook, K + 1, i=i) for i in range(2)]
    assert [int(stall.blur_count(a)) for a in alone] == [int(s) for s in stalls]
    both = _batched(problem, hook, K + 1)
    np.testing.assert_array_equal(np.asarray(stall.blur_count(both)), [int(s) for s in stalls])
    for i, a in enumerate(alone):
        np.testing.assert_allclose(np.asarray(both.x[i]), np.asarray(a.x), atol=1e-2)


def test_bad_settings_and_optimizer_are_named(problem):
    with pytest.raises(ValueError, match="stall iterations"):
        stall.BlurOnStall(iterations=0)
    with pytest.raises(ValueError, match="sigma"):
        stall.BlurOnStall(sigma=0.0)
    with pytest.raises(ValueError, match="threshold"):
        stall.BlurOnStall(threshold=-1.0)
    with pytest.raises(ValueError, match="neural-style L-BFGS"):
        stall.reset_lbfgs_history(optim.SolverSpec(optimizer="adam"), jnp.asarray(True))


CONTENT = EXAMPLES / "tubingen.jpg"
RUN = dict(KW, num_iterations=2 * K + 1, print_every=K, blur_on_stall=True, stall_iterations=K)


def test_settings_through_stylize_and_stylize_batch():
    import nst_jax
    from nst_jax.stylizer import stylize_batch

    photo = images.resize_long_side(images.load_image(CONTENT), 32)
    other = np.ascontiguousarray(photo[::-1])
    style = EXAMPLES / "starry_night.jpg"
    # threshold 1: every window is a stall; blurs at K and 2K + 1 (the window restarts after a blur)
    alone = nst_jax.stylize(photo, style, stall_threshold=1.0, progress=False, **RUN)
    assert alone.blurs == 2 and [r.blurs for r in alone.history] == [0, 1, 1, 2]
    assert alone.history[-1].as_dict()["blurs"] == 2
    # without blur_on_stall: no hook, no count
    assert stall.settings_hook(Settings(**KW)) is None
    assert "blurs" not in optim.Record.from_terms(0, {"total": 1.0}, 0.0).as_dict()
    # a batch: each image its own count, and what it gets alone
    both = stylize_batch([photo, other], style, stall_threshold=1.0, progress=False, **RUN)
    assert [b.blurs for b in both] == [2, 2]
    assert abs(alone.loss - both[0].loss) <= 1e-3 * abs(alone.loss)
    assert np.abs(alone.array - both[0].array).max() <= 1 / 255
    with pytest.raises(ValueError, match="either hook"):
        nst_jax.stylize(photo, style, hook=lambda st: st, progress=False, **RUN)
