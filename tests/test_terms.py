"""Loss terms as data: the registry, the Wasserstein-2 style loss against float64 SciPy, a statistic added from
outside the library, and the targets/weights pytree.

The W2 reference is written from crowsonkb/style-transfer-pytorch's ``StyleLossW2``, not from nst_jax's code:
per layer ``mean_c (mu - mu_s)^2 + tr(S_s + S - 2 sqrtm(sqrtm(S_s) S sqrtm(S_s))) / C`` with biased
covariances plus ``1e-4 I``, several styles blended through their means and second raw moments.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import nst_jax
from nst_jax import batch, cli, losses, objective, sqrtm, terms, weights
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective, Terms, make_targets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
CONTENT = EXAMPLES / "tubingen.jpg"
EPS = 1e-4

# --------------------------------------------------------------------------------------------------
# Float64 reference (NumPy + SciPy)


def np_moments(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(f, np.float64).reshape(-1, f.shape[-1])
    return m.mean(0), m.T @ m / len(m)


def np_w2(f: np.ndarray, mean_s: np.ndarray, second_s: np.ndarray) -> float:
    """W2 loss of activations ``f`` against a style given by its (blended) mean and second raw moment."""
    c = f.shape[-1]
    mean, second = np_moments(f)
    cov = second - np.outer(mean, mean) + EPS * np.eye(c)
    cov_s = second_s - np.outer(mean_s, mean_s) + EPS * np.eye(c)
    root_s = scipy.linalg.sqrtm(cov_s).real
    cross = scipy.linalg.sqrtm(root_s @ cov @ root_s).real
    return float(np.mean((mean - mean_s) ** 2) + np.trace(cov_s + cov - 2 * cross) / c)


def _features(rng, shape, scale=1.0, shift=0.0):
    """Activations with correlated channels (a random mixing), like a layer's."""
    h, w, c = shape
    mix = rng.normal(size=(c, c)) / np.sqrt(c) + np.eye(c)
    return (scale * rng.normal(size=(h * w, c)) @ mix + shift).reshape(h, w, c).astype(np.float32)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    x = _features(rng, (12, 10, 16), 3.0, 1.0)
    styles = [_features(rng, (9, 14, 16), 2.0, 4.0), _features(rng, (16, 8, 16), 5.0, -2.0)]
    return x, styles


# --------------------------------------------------------------------------------------------------
# W2


def test_w2_matches_float64_scipy(feats):
    x, styles = feats
    for style in styles:
        target = terms.get("w2").blend([losses.moments(jnp.asarray(style))], jnp.ones(1), {})
        got = float(jax.jit(losses.w2_loss)(jnp.asarray(x), target))
        want = np_w2(x, *np_moments(style))
        assert got == pytest.approx(want, rel=1e-4)
        # the image's own statistics give ~0 (the loss is a distance)
        own = terms.get("w2").blend([losses.moments(jnp.asarray(style))], jnp.ones(1), {})
        assert abs(float(losses.w2_loss(jnp.asarray(style), own))) < 1e-4 * want


def test_w2_blends_means_and_second_moments_not_covariances(feats):
    x, styles = feats
    stats = [losses.moments(jnp.asarray(st)) for st in styles]
    target = terms.get("w2").blend(stats, jnp.asarray([0.3, 0.7]), {})
    (m0, s0), (m1, s1) = (np_moments(st) for st in styles)
    mean, second = 0.3 * m0 + 0.7 * m1, 0.3 * s0 + 0.7 * s1
    cov = second - np.outer(mean, mean) + EPS * np.eye(16)
    np.testing.assert_allclose(target["mean"], mean, rtol=1e-5, atol=1e-5)
    root = np.asarray(target["cov_sqrt"], np.float64)
    np.testing.assert_allclose(root @ root, cov, rtol=1e-4, atol=1e-4 * np.abs(cov).max())
    assert float(target["cov_trace"]) == pytest.approx(np.trace(cov), rel=1e-5)
    # blending covariances instead would lose the spread between the two styles' means
    cov_mix = sum(b * (s - np.outer(m, m)) for b, (m, s) in zip((0.3, 0.7), ((m0, s0), (m1, s1))))
    assert np.abs(cov - EPS * np.eye(16) - cov_mix).max() > 0.1 * np.abs(cov).max()
    assert float(jax.jit(losses.w2_loss)(jnp.asarray(x), target)) == pytest.approx(np_w2(x, mean, second),
                                                                                     rel=1e-4)


def test_w2_gradient_matches_finite_differences_in_float64():
    rng = np.random.default_rng(3)
    x = _features(rng, (4, 3, 5), 1.0, 0.5).astype(np.float64)
    mean_s, second_s = np_moments(_features(rng, (5, 4, 5), 2.0, 1.0))
    with jax.enable_x64(True):
        target = losses.w2_target({"mean": jnp.asarray(mean_s), "second": jnp.asarray(second_s)})
        assert target["cov_sqrt"].dtype == jnp.float64
        value, grad = jax.value_and_grad(losses.w2_loss)(jnp.asarray(x), target)
        grad = np.asarray(grad)
    assert float(value) == pytest.approx(np_w2(x, mean_s, second_s), rel=1e-9)
    h = 1e-5
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        fd[idx] = (np_w2(x + e, mean_s, second_s) - np_w2(x - e, mean_s, second_s)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_newton_schulz_square_root_and_its_inverse():
    rng = np.random.default_rng(4)
    b = rng.normal(size=(8, 8))
    a = b @ b.T + 0.1 * np.eye(8)
    root, inverse = sqrtm.newton_schulz(jnp.asarray(a, jnp.float32))
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(a).real, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(root) @ np.asarray(inverse), np.eye(8), atol=1e-4)
    batched = jax.vmap(sqrtm.trace_sqrtm)(jnp.stack([jnp.asarray(a, jnp.float32)] * 2))  # vmaps
    assert np.allclose(batched, np.trace(scipy.linalg.sqrtm(a).real), rtol=1e-5)


def test_w2_end_to_end_reduces_its_loss_alone_and_in_a_batch():
    kw = dict(weights="random", image_size=32, num_iterations=10, print_every=5, style_loss="w2",
              style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",), style_weight=1.0,
              conv_algorithm="direct", progress=False)
    r = nst_jax.stylize(CONTENT, STYLE, **kw)
    styles = [rec.style for rec in r.history]
    assert r.settings.style_loss == "w2" and np.all(np.isfinite(styles))
    assert styles[-1] < 0.5 * styles[0], styles
    flipped = np.ascontiguousarray(np.asarray(r.array)[:, ::-1])  # any second image
    b = batch.stylize_batch([CONTENT, flipped], STYLE, **kw)  # the Newton-Schulz loop under vmap
    # The same loss at the same image; the iterates then part (batched matrix products round otherwise, and
    # 20 Newton-Schulz iterations and L-BFGS amplify it: measured 1e-3 relative loss after 10 iterations).
    assert b[0].history[0].style == pytest.approx(r.history[0].style, rel=1e-5)
    assert b[0].loss == pytest.approx(r.loss, rel=1e-2)
    assert b[1].history[-1].style < 0.5 * b[1].history[0].style


def test_style_loss_setting_and_flag():
    parser = cli.build_parser()
    ns = parser.parse_args(["--content", "c.png", "--style", "s.png", "--output", "o.png", "--style-loss", "w2"])
    assert cli.settings_from_args(ns).style_loss == "w2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--content", "c.png", "--style", "s.png", "--output", "o.png", "--style-loss", "nope"])
    with pytest.raises(SettingError, match="style_loss"):
        Settings(style_loss="nope")
    with pytest.raises(SettingError, match="activation_shift"):
        Settings(style_loss="w2", activation_shift=-1.0)
    obj = Objective.from_settings(Settings(style_loss="w2"))
    assert obj.term("style").kind == "w2"


# --------------------------------------------------------------------------------------------------
# The registry, the targets pytree and Terms


def test_builtin_terms_and_targets_pytree():
    assert {"mse", "gram", "w2", "tv"} <= set(terms.kinds())
    assert set(terms.kinds("style")) >= {"gram", "w2", "mrf"} and terms.kinds(None) == ("tv",)
    s = Settings(weights="random", content_layers=("relu1_1", "relu2_1"), content_layer_weights=(2, 3),
                 style_layers=("relu1_1",), style_weight=10, tv_weight=0.5)
    obj = Objective.from_settings(s)
    assert [(t.kind, t.name, t.layers) for t in obj.terms] == [
        ("mse", "content", ("relu1_1", "relu2_1")), ("gram", "style", ("relu1_1",)), ("tv", "tv", (terms.INPUT,))]
    assert hash(obj) == hash(Objective.from_settings(s.replace(style_weight=3.0, content_layer_weights=(1, 1))))
    params = weights.random_params(0)
    img = jnp.asarray(np.random.default_rng(0).uniform(-100, 100, (32, 32, 3)), jnp.float32)
    t = make_targets(obj, params, img, [img * 0.5], weights=s)
    assert set(t) == {"content", "style", "tv"}
    np.testing.assert_allclose(t["content"]["weight"], [10.0, 15.0])
    assert t["content"]["weight"].dtype == jnp.float32 and t["tv"]["target"] == {}
    value = objective.loss(obj, params, img + 1.0, t)
    assert set(value) == {"total", "content", "style", "tv"}
    assert float(value.total) == pytest.approx(float(value.content + value.style + value.tv), rel=1e-6)
    # a per-layer weight scales that layer's term only: doubling both content weights doubles the content term
    doubled = {**t, "content": {**t["content"], "weight": 2 * t["content"]["weight"]}}
    assert float(objective.loss(obj, params, img + 1.0, doubled).content) == pytest.approx(2 * float(value.content),
                                                                                          rel=1e-6)
    with pytest.raises(ValueError, match="needs a target"):
        make_targets(obj, params, None, [img], weights=s)
    with pytest.raises(ValueError, match="weight"):
        make_targets(obj, params, img, [img], weights={"content": [1.0], "style": [1.0], "tv": [1.0]})


def test_terms_mapping_pytree_and_record():
    t = Terms(jnp.float32(3.0), style=jnp.float32(2.0), mean=jnp.float32(1.0))
    assert list(t) == ["total", "style", "mean"] and float(t.mean) == 1.0
    assert float(t.content) == 0.0 and float(t.tv) == 0.0  # absent classic terms read as 0
    legacy = Terms(1.0, 2.0, 3.0, 4.0)
    assert [legacy[k] for k in ("total", "content", "style", "tv")] == [1.0, 2.0, 3.0, 4.0]
    doubled = jax.jit(lambda t: jax.tree.map(lambda v: 2 * v, t))(t)
    assert isinstance(doubled, Terms) and float(doubled["mean"]) == 2.0
    rec = nst_jax.Record.from_terms(5, jax.device_get(t), 0.5)
    assert (rec.iteration, rec.total, rec.content, rec.style, rec.tv) == (5, 3.0, 0.0, 2.0, 0.0)
    assert rec.terms == {"style": 2.0, "mean": 1.0} and rec.as_dict()["terms"] == {"style": 2.0, "mean": 1.0}
    with pytest.raises(AttributeError, match="no loss term"):
        _ = t.gram


def test_register_checks_and_unknown_kind():
    with pytest.raises(ValueError, match="unknown loss term kind 'nope'"):
        terms.get("nope")
    with pytest.raises(ValueError, match="make_target"):
        terms.register("broken", lambda f, t, o: jnp.sum(f), source="style")
    with pytest.raises(ValueError, match="total"):
        terms.Term.make("gram", "total", ("relu1_1",))
    stats = [{"a": jnp.ones((2, 3))}, {"a": jnp.zeros((1, 3))}]
    assert terms.concatenate(stats, [0.5, 0.5])["a"].shape == (3, 3)  # the hook for banks of samples


# --------------------------------------------------------------------------------------------------
# A statistic registered here, outside the library: mean-activation matching


def _mean_loss(features, target, options):
    return jnp.mean(jnp.square(jnp.mean(features, axis=(0, 1)) - target))


@pytest.fixture(scope="module")
def mean_kind():
    terms.register("mean_activation", _mean_loss, make_target=lambda f, o: jnp.mean(f, axis=(0, 1)))
    yield "mean_activation"
    terms.unregister("mean_activation")  # leave the registry as the other tests expect


TOY = dict(weights="random", image_size=32, style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",),
           num_iterations=8, print_every=4, conv_algorithm="direct", progress=False)


def test_registered_statistic_stylizes_under_jit_and_vmap(mean_kind):
    rng = np.random.default_rng(5)
    contents = [rng.random((24, 32, 3), np.float32), rng.random((24, 32, 3), np.float32)]
    style = rng.random((32, 32, 3), np.float32) * 0.5
    singles = [nst_jax.stylize(c, style, style_loss=mean_kind, **TOY) for c in contents]  # jitted steps
    for r in singles:
        assert r.history[-1].style < 0.5 * r.history[0].style, [h.style for h in r.history]
    batched = batch.stylize_batch(contents, style, style_loss=mean_kind, **TOY)  # vmap of the same step
    for s, b in zip(singles, batched):
        assert b.settings.style_loss == mean_kind
        assert b.loss == pytest.approx(s.loss, rel=1e-3)
        assert np.abs(b.array - s.array).max() <= 1 / 255
