"""The objective against an independent float64 NumPy implementation (VGG-19 forward pass included).

The reference below is written from the conventions of neural-style-pt, not from
nst_jax's code: Caffe-space images (BGR, 0..255, ImageNet mean subtracted), 3x3
convolutions with zero padding, ReLU, 2x2 max/avg pooling with floor, content loss
``cw * mean((F - F_c)^2)``, Gram ``F^T F / (C H W)`` (of ``F + s`` with an activation
shift ``s``), style loss ``sw * mean((G - sum_i b_i G_i)^2)`` with ``b`` normalized to
sum 1, and an L1 total variation of the Caffe-space image times ``tv_weight``.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import objective, vgg, weights
from nst_jax.config import Settings
from nst_jax.objective import Objective, make_targets

# --------------------------------------------------------------------------------------------------
# Independent float64 reference

_BGR_MEAN = np.array([103.939, 116.779, 123.68])
_VGG19_BLOCKS = [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]  # (block, convolutions)


def np_caffe(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> BGR, 0..255, mean subtracted (float64)."""
    return np.asarray(rgb, np.float64)[..., ::-1] * 255.0 - _BGR_MEAN


def np_conv3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation, stride 1, zero padding 1: explicit padding + a sum over the 9 shifts."""
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
    return out + bias


def np_pool(x: np.ndarray, kind: str) -> np.ndarray:
    """2x2 pooling, stride 2, odd rows/columns dropped (floor)."""
    h, w, c = x.shape
    x = x[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
    return x.max(axis=(1, 3)) if kind == "max" else x.mean(axis=(1, 3))


def np_vgg19(params, x: np.ndarray, pooling: str) -> dict[str, np.ndarray]:
    """Every named activation of VGG-19 on one Caffe-space (H, W, 3) image, in float64."""
    out = {}
    for b, n in _VGG19_BLOCKS:
        for i in range(1, n + 1):
            p = params["params"][f"conv{b}_{i}"]
            x = np_conv3x3(x, np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64))
            out[f"conv{b}_{i}"] = x
            x = np.maximum(x, 0.0)
            out[f"relu{b}_{i}"] = x
        x = np_pool(x, pooling)
        out[f"pool{b}"] = x
    return out


def np_gram(f: np.ndarray, shift: float) -> np.ndarray:
    h, w, c = f.shape
    m = f.reshape(h * w, c) + shift
    return m.T @ m / (c * h * w)


def np_objective(params, x, content, styles, *, pooling, content_layers, content_weights, style_layers,
                 style_weights, tv_weight, blend=None, shift=0.0) -> dict[str, float]:
    """The weighted loss terms of Caffe-space ``x`` (all inputs float64 Caffe-space arrays)."""
    blend = np.ones(len(styles)) if blend is None else np.asarray(blend, np.float64)
    blend = blend / blend.sum()
    fx = np_vgg19(params, x, pooling)
    fc = np_vgg19(params, content, pooling)
    fs = [np_vgg19(params, s, pooling) for s in styles]
    content_term = sum(w * np.mean((fx[l] - fc[l]) ** 2) for l, w in zip(content_layers, content_weights))
    style_term = 0.0
    for l, w in zip(style_layers, style_weights):
        target = sum(b * np_gram(f[l], shift) for b, f in zip(blend, fs))
        style_term += w * np.mean((np_gram(fx[l], shift) - target) ** 2)
    tv = tv_weight * (np.abs(x[1:] - x[:-1]).sum() + np.abs(x[:, 1:] - x[:, :-1]).sum())
    return {"content": content_term, "style": style_term, "tv": tv, "total": content_term + style_term + tv}


# --------------------------------------------------------------------------------------------------
# Fixtures

CONTENT_HW = (40, 36)
STYLE_HW = [(32, 44), (48, 40)]


@pytest.fixture(scope="module")
def params():
    return weights.random_params(seed=0)


@pytest.fixture(scope="module")
def imgs():
    rng = np.random.default_rng(1234)
    content = rng.uniform(0, 1, CONTENT_HW + (3,))
    styles = [rng.uniform(0, 1, hw + (3,)) for hw in STYLE_HW]
    # the image being optimized: somewhere between the content and noise, in Caffe space
    x = (np_caffe(content) + rng.normal(0, 30, CONTENT_HW + (3,))).astype(np.float32)
    return content, styles, x


CASES = {
    "max-1style-defaults": dict(
        settings=dict(pooling="max"), styles=[0]),
    "avg-2styles-blend-3-7-layer-weights-shift": dict(
        settings=dict(pooling="avg", content_layers=("relu2_2", "relu4_2"), content_layer_weights=(2.0, 0.5),
                      style_layer_weights=(1.0, 0.5, 2.0, 0.25, 4.0), style_blend_weights=(3, 7),
                      content_weight=3.0, style_weight=50.0, tv_weight=0.01, activation_shift=-1.0),
        styles=[0, 1]),
    "max-2styles-equal-conv-and-pool-layers": dict(
        settings=dict(pooling="max", content_layers=("conv3_1", "relu5_1", "relu1_2"),
                      style_layers=("relu1_1", "pool2", "conv4_3"), style_weight=1e3, tv_weight=0.1,
                      activation_shift=0.5),
        styles=[1, 0]),
    "avg-1style-big-no-tv": dict(
        settings=dict(pooling="avg", tv_weight=0.0, content_layers=("relu3_3",)), styles=[1]),
}

#: Largest relative error per case and term, reported at the end of the module (pytest -s prints it).
MAX_REL_ERR: dict[str, dict[str, float]] = {}


def _jax_terms(s: Settings, params, content, styles, x):
    obj = Objective.from_settings(s)
    with jax.default_matmul_precision("highest"):
        targets = make_targets(obj, params, vgg.preprocess(jnp.asarray(content, jnp.float32)),
                               [vgg.preprocess(jnp.asarray(st, jnp.float32)) for st in styles],
                               s.style_blend_weights, weights=s)
        terms = objective.loss(obj, params, jnp.asarray(x), targets)
    return obj, targets, terms


@pytest.mark.parametrize("case", list(CASES))
def test_objective_matches_float64_numpy_reference(case, params, imgs):
    content, all_styles, x = imgs
    spec = CASES[case]
    s = Settings(weights="random", **spec["settings"])
    styles = [all_styles[i] for i in spec["styles"]]
    _, _, terms = _jax_terms(s, params, content, styles, x)

    cw = s.content_layer_weights or (1.0,) * len(s.content_layers)
    sw = s.style_layer_weights or (1.0,) * len(s.style_layers)
    ref = np_objective(params, np.asarray(x, np.float64), np_caffe(content), [np_caffe(st) for st in styles],
                       pooling=s.pooling, content_layers=s.content_layers,
                       content_weights=[s.content_weight * w for w in cw], style_layers=s.style_layers,
                       style_weights=[s.style_weight * w for w in sw], tv_weight=s.tv_weight,
                       blend=s.style_blend_weights, shift=s.activation_shift)
    errs = {}
    for name in ("content", "style", "tv", "total"):
        got, want = float(getattr(terms, name)), ref[name]
        errs[name] = abs(got - want) / abs(want) if want else abs(got)
        if name != "tv" or s.tv_weight:
            assert want > 0, f"{case}: the reference {name} term is 0; the case does not test it"
    MAX_REL_ERR[case] = errs
    print(f"\n{case}: relative errors " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    for name, err in errs.items():
        assert err < 1e-5, f"{case}: {name} = {float(getattr(terms, name))!r}, reference {ref[name]!r}"


def test_reference_detects_convention_changes(params, imgs):
    """The comparison can fail: the other pooling changes the terms far beyond 1e-5."""
    content, styles, x = imgs
    s = Settings(weights="random", **CASES["max-1style-defaults"]["settings"])  # compiled above: no new compile
    _, _, terms = _jax_terms(s, params, content, styles[:1], x)
    avg = np_objective(params, np.asarray(x, np.float64), np_caffe(content), [np_caffe(styles[0])],
                       pooling="avg", content_layers=s.content_layers, content_weights=[5.0],
                       style_layers=s.style_layers, style_weights=[100.0] * 5, tv_weight=1e-3)
    assert abs(float(terms.content) - avg["content"]) / avg["content"] > 1e-3
    assert abs(float(terms.style) - avg["style"]) / avg["style"] > 1e-3


def test_blend_weights_are_normalized(params, imgs):
    content, styles, _ = imgs
    s = Settings(weights="random", style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",))
    obj = Objective.from_settings(s)
    c = vgg.preprocess(jnp.asarray(content, jnp.float32))
    ss = [vgg.preprocess(jnp.asarray(st, jnp.float32)) for st in styles]
    t37 = make_targets(obj, params, c, ss, (3, 7), weights=s)["style"]["target"]
    t_frac = make_targets(obj, params, c, ss, (0.3, 0.7), weights=s)["style"]["target"]
    t_equal = make_targets(obj, params, c, ss, weights=s)["style"]["target"]
    g0 = objective.style_statistics(obj, params, ss[0])["style"]
    g1 = objective.style_statistics(obj, params, ss[1])["style"]
    for layer in s.style_layers:
        np.testing.assert_allclose(t37[layer], t_frac[layer], rtol=1e-6)
        np.testing.assert_allclose(t37[layer], 0.3 * g0[layer] + 0.7 * g1[layer], rtol=1e-5)
        np.testing.assert_allclose(t_equal[layer], 0.5 * (g0[layer] + g1[layer]), rtol=1e-5)
    with pytest.raises(ValueError, match="blend weights"):
        make_targets(obj, params, c, ss, (1.0,), weights=s)
    with pytest.raises(ValueError, match="not all be 0"):
        make_targets(obj, params, c, ss, (0.0, 0.0), weights=s)


def test_per_layer_weights_multiply():
    s = Settings(content_layers=("relu1_1", "relu2_1"), content_layer_weights=(2, 3), content_weight=5,
                 style_layers=("relu1_1", "relu3_1"), style_layer_weights=(0.5, 4), style_weight=10)
    w = Objective.from_settings(s).weights(s)
    np.testing.assert_array_equal(w["content"], [10.0, 15.0])
    np.testing.assert_array_equal(w["style"], [5.0, 40.0])
    np.testing.assert_array_equal(w["tv"], [1e-3])
    assert Objective.from_settings(Settings()).weights(Settings())["content"].tolist() == [5.0]


# --------------------------------------------------------------------------------------------------
# jit == eager, and no recompilation

_SMALL = dict(weights="random", content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), tv_weight=0.01)


@pytest.fixture(scope="module")
def small_problem(params, imgs):
    content, styles, x = imgs
    s = Settings(**_SMALL)
    obj = Objective.from_settings(s)
    targets = make_targets(obj, params, vgg.preprocess(jnp.asarray(content, jnp.float32)),
                           [vgg.preprocess(jnp.asarray(styles[0], jnp.float32))], weights=s)
    return obj, targets, jnp.asarray(x)


def test_jit_equals_eager(params, small_problem):
    obj, targets, x = small_problem
    jitted = objective.loss(obj, params, x, targets)
    with jax.disable_jit():
        eager = obj.loss(params, x, targets)
    for name in ("total", "content", "style", "tv"):
        np.testing.assert_allclose(float(getattr(jitted, name)), float(getattr(eager, name)), rtol=1e-5,
                                   err_msg=name)
    terms, grad = jax.jit(obj.value_and_grad)(params, x, targets)
    np.testing.assert_allclose(float(terms.total), float(jitted.total), rtol=1e-5)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    # the gradient is that of the total: a small step along -grad lowers the loss
    lower = objective.loss(obj, params, x - 1e-3 * grad / jnp.max(jnp.abs(grad)), targets)
    assert float(lower.total) < float(jitted.total)


def test_no_recompile_on_second_call(params, small_problem, caplog):
    obj, targets, x = small_problem
    objective.loss(obj, params, x, targets)  # compiled (or already compiled by another test)
    before = objective.loss._cache_size()
    same = Objective.from_settings(Settings(**_SMALL))  # equal settings, a new (equal, hashable) object
    assert same == obj and hash(same) == hash(obj)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        objective.loss(same, params, x + 1.0, targets)
        objective.loss(obj, params, 2.0 * x, jax.tree.map(lambda t: t * 1.5, targets))
    assert objective.loss._cache_size() == before
    assert not [r for r in caplog.records if "Compiling" in r.getMessage() and "loss" in r.getMessage()]
    # ...and the counters do move when something static changes (the test can fail)
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        objective.loss(Objective.from_settings(Settings(**{**_SMALL, "activation_shift": 0.5})), params, x, targets)
    assert objective.loss._cache_size() == before + 1
    assert [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_max_relative_errors_summary():
    """Prints the per-term maximum relative errors of the reference comparison (run with -s)."""
    if not MAX_REL_ERR:
        pytest.skip("the reference comparison did not run")
    worst = {k: max(e[k] for e in MAX_REL_ERR.values()) for k in ("content", "style", "tv", "total")}
    print("\nmax relative error vs float64 NumPy: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert max(worst.values()) < 1e-5
