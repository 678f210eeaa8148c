"""Novak & Nikulin's experimental variants (§4 of the paper): gradient masks from the content image, amplified
activations, content-aware Gram matrices and Gram cubes.

The references are float64 NumPy written here from the formulas, not from nst_jax's code. With ``F`` flattened to
``(M, K)`` (``M`` pixels), ``f = sign(F) |F|^p + s`` (amplified, then shifted):

* Gram ``f^T f / (M K)``; Gram cube ``G[i, j, k] = sum_m f_i f_j f_k / (M K^(3/2))``;
* content-aware ``G[i, j, c] = sum_m f_i f_j up(C)_c / (M K)``, ``C`` a content layer's (unshifted) activations,
  ``up`` the nearest resize with half-pixel centres (output row ``i`` reads ``floor((2 i + 1) H_c / (2 H))``);
* gradient mask ``M = F(p) >= t``, ``t`` the ``ceil(q N)``-th largest of the layer's ``N`` entries; the masked
  style gradient of ``E = mean((G - A)^2)`` is ``M * 4 F (G - A) / (K^2 M K)``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import cli, images, layersets, losses, terms, weights
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective, content_masks, make_targets, style_targets, with_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
CONTENT = EXAMPLES / "tubingen.jpg"

# --------------------------------------------------------------------------------------------------
# Float64 references


def np_amplified(f, shift=0.0, power=1.0) -> np.ndarray:
    f = np.asarray(f, np.float64)
    return np.sign(f) * np.abs(f) ** power + shift


def np_gram(f, shift=0.0, power=1.0) -> np.ndarray:
    h, w, k = f.shape
    m = np_amplified(f, shift, power).reshape(h * w, k)
    return m.T @ m / (h * w * k)


def np_cube(f, shift=0.0, power=1.0) -> np.ndarray:
    h, w, k = f.shape
    m = np_amplified(f, shift, power).reshape(h * w, k)
    return np.einsum("mi,mj,mk->ijk", m, m, m) / (h * w * k ** 1.5)


def np_up(b: np.ndarray, h: int, w: int) -> np.ndarray:
    hb, wb = b.shape[:2]
    return b[(2 * np.arange(h) + 1) * hb // (2 * h)][:, (2 * np.arange(w) + 1) * wb // (2 * w)]


def np_content_aware(f, c, shift=0.0, power=1.0) -> np.ndarray:
    h, w, k = f.shape
    m = np_amplified(f, shift, power).reshape(h * w, k)
    weight = np_up(np.asarray(c, np.float64), h, w).reshape(h * w, -1)
    return np.einsum("mi,mj,mc->ijc", m, m, weight) / (h * w * k)


def np_mask(p, fraction) -> np.ndarray:
    n = math.ceil(round(fraction * p.size, 9))
    return p >= np.sort(p.reshape(-1))[::-1][n - 1]


def _maps(seed, *shapes, low=-1.0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, 2.0, s).astype(np.float32) for s in shapes]


def _close(got, ref, rtol=1e-5):
    np.testing.assert_allclose(np.asarray(got), ref, rtol=rtol, atol=rtol * np.abs(ref).max())


# --------------------------------------------------------------------------------------------------
# §4.2 Amplified activations


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0])
def test_amplified_gram_matches_float64(power):
    # negative inputs too (pre-ReLU conv outputs): sign(F)|F|^p
    a, b = _maps(0, (9, 7, 4), (5, 4, 3))
    for shift in (0.0, -1.0):
        _close(losses.cross_gram(jnp.asarray(a), jnp.asarray(a), shift, power=power), np_gram(a, shift, power))
        ref = np_amplified(a, shift, power).reshape(63, 4).T @ np_up(np_amplified(b, shift, power), 9, 7).reshape(
            63, 3) / (63 * math.sqrt(12))
        _close(losses.cross_gram(jnp.asarray(a), jnp.asarray(b), shift, power=power), ref)
    assert np.abs(np_gram(a, -1.0, power) - np_gram(a, -1.0)).max() > 0.01


def test_power_one_is_exactly_the_classic_gram():
    f = jnp.asarray(_maps(1, (11, 9, 6), low=0.0)[0])

    @jax.jit
    def before(f):  # the classic statistic as nst_jax computed it before the variants existed
        m = f.reshape(11 * 9, 6) - 1.0
        return jnp.matmul(m.T, m, preferred_element_type=jnp.float32) / (6 * 11 * 9)

    term = terms.Term.make("gram", "style", ("relu1_1",), shift=-1.0, precision=None, power=1.0)
    stat = jax.jit(lambda f: term.spec.make_target(f, term.entry_opts("relu1_1")))(f)
    assert np.array_equal(np.asarray(stat), np.asarray(before(f)))
    # the settings' default leaves the option out: the very term of before
    assert Objective.from_settings(Settings(activation_power=1)).terms == Objective.from_settings(Settings()).terms
    opts = dict(Objective.from_settings(Settings(activation_power=2)).term("style").options)
    assert opts == {"power": 2.0, "precision": None, "shift": 0.0}


def test_amplified_gradient_is_finite_at_zero():
    f = np.zeros((4, 3, 2))
    f[1, 1] = (0.5, 2.0)
    with jax.enable_x64(True):
        g = jax.grad(lambda f: jnp.sum(losses.cross_gram(f, f, -1.0, power=1.5)))(jnp.asarray(f, jnp.float64))
    g = np.asarray(g)
    assert np.isfinite(g).all()
    # d/dF of sum_ij (f^T f)_ij / n, f = F^1.5 - 1: 2 * 1.5 F^0.5 * rowsum(f) / n; 0 where F = 0
    amp = np_amplified(f, -1.0, 1.5).reshape(12, 2)
    ref = (2 * 1.5 * np.sqrt(f.reshape(12, 2)) * amp.sum(1, keepdims=True) / (12 * 2)).reshape(4, 3, 2)
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# §4.5 Gram cubes


@pytest.mark.parametrize("shift,power", [(0.0, 1.0), (-1.0, 1.0), (-0.5, 2.0)])
def test_gram_cube_matches_float64(shift, power):
    f = _maps(2, (7, 6, 5))[0]
    got = losses.gram_cube(jnp.asarray(f), shift, power=power)
    assert got.shape == (5, 5, 5)
    _close(got, np_cube(f, shift, power))


def test_gram_cube_in_chunks_is_the_same(monkeypatch):
    f = _maps(3, (7, 6, 5))[0]
    whole = np.asarray(losses.gram_cube(jnp.asarray(f), -1.0))
    monkeypatch.setattr(losses, "TRIPLE_CHUNK_ENTRIES", 7 * 6 * 5 * 2)  # chunks of 2 columns: 2 + 2 + 1
    chunked = np.asarray(jax.jit(lambda f: losses.gram_cube(f, -1.0))(jnp.asarray(f)))
    _close(chunked, np_cube(f, -1.0))
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)


def test_gram_cube_kind_and_its_loss():
    f, g = _maps(4, (6, 5, 3), (6, 5, 3))
    term = terms.Term.make("gram_cube", "style", ("relu1_1",), shift=-1.0)
    opts = term.entry_opts("relu1_1")
    target = term.spec.make_target(jnp.asarray(g), opts)
    loss = float(term.spec.loss(jnp.asarray(f), target, opts))
    assert loss == pytest.approx(np.mean((np_cube(f, -1.0) - np_cube(g, -1.0)) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="reads single layers"):
        terms.Term.make("gram_cube", "style", ("relu2_1:relu1_1",))


# --------------------------------------------------------------------------------------------------
# §4.4 Content-aware Gram matrices


@pytest.mark.parametrize("shift,power", [(0.0, 1.0), (-1.0, 1.0), (-1.0, 2.0)])
def test_content_aware_gram_matches_float64(shift, power):
    f, c = _maps(5, (9, 7, 4), (4, 3, 6), low=0.0)
    got = losses.content_aware_gram(jnp.asarray(f), jnp.asarray(c), shift, power=power)
    assert got.shape == (4, 4, 6)
    _close(got, np_content_aware(f, c, shift, power))
    # a constant unit weighting: every slice is the layer's Gram
    ones = losses.content_aware_gram(jnp.asarray(f), jnp.ones((2, 2, 3)), shift, power=power)
    for k in range(3):
        _close(ones[..., k], np_gram(f, shift, power))


@pytest.fixture(scope="module")
def params():
    return weights.random_params(0)


def _caffe(seed, h, w):
    return jnp.asarray(np.random.default_rng(seed).uniform(-100, 100, (h, w, 3)).astype(np.float32))


def test_content_aware_statistics_in_the_objective(params):
    s = Settings(style_layers=("relu1_2", "relu2_1"), style_content_aware=True, activation_shift=-1,
                 content_layers=("relu2_1",), tv_weight=0)
    obj = Objective.from_settings(s)
    term = obj.term("style")
    assert dict(term.options) == {"content_aware": "relu4_2", "precision": None, "shift": -1.0}
    assert term.reads("relu2_1") == ("relu2_1", "relu4_2") and "relu4_2" in obj.layers
    style = _caffe(0, 24, 20)
    stats = obj.statistics(params, style, "style")["style"]
    assert stats["relu1_2"].shape == (64, 64, 512) and stats["relu2_1"].shape == (128, 128, 512)
    f = obj.features(params, style)
    for layer in ("relu1_2", "relu2_1"):
        channels = [0, 77, 511]  # a few content channels (the whole reference would be slow in float64)
        ref = np_content_aware(f[layer], np.asarray(f["relu4_2"])[..., channels], -1.0)
        assert np.abs(ref).max() > 0
        _close(np.asarray(stats[layer])[..., channels], ref, rtol=2e-4)


# --------------------------------------------------------------------------------------------------
# §4.1 Gradient masks


def test_top_fraction_mask_matches_float64():
    p = _maps(6, (6, 5, 4))[0]  # 120 distinct entries
    for q in (0.25, 0.5, 1.0, 1e-3, 0.3):
        got = np.asarray(losses.top_fraction_mask(jnp.asarray(p), q))
        assert np.array_equal(got, np_mask(p, q))
        assert got.sum() == max(1, math.ceil(round(q * 120, 9)))
    relu = np.maximum(p, 0)  # ties at the threshold pass: with 0 as the threshold every zero passes
    assert np.asarray(losses.top_fraction_mask(jnp.asarray(relu), 0.9)).all()


def test_masked_style_gradient_matches_float64():
    rng = np.random.default_rng(7)
    f, p, s = (rng.uniform(0, 2, (6, 5, 4)) for _ in range(3))
    mask = np_mask(p, 0.25)
    h, w, k = f.shape
    a = np_gram(s, -1.0)
    g = np_gram(f, -1.0)
    ref_value = np.mean((g - a) ** 2)
    ref_grad = (4 * np_amplified(f, -1.0).reshape(-1, k) @ (g - a) / (k * k * h * w * k)).reshape(f.shape)
    with jax.enable_x64(True):
        fm = jnp.asarray(losses.top_fraction_mask(jnp.asarray(p), 0.25))
        assert np.array_equal(np.asarray(fm), mask)

        def loss(f, masked):
            f = losses.mask_gradient(f, fm) if masked else f
            return losses.style_loss(losses.gram(f, -1.0), jnp.asarray(a))

        value, grad = jax.value_and_grad(loss)(jnp.asarray(f), True)
        plain_value, plain_grad = jax.value_and_grad(loss)(jnp.asarray(f), False)
    assert float(value) == float(plain_value) == pytest.approx(ref_value, rel=1e-12)  # the value is unchanged
    np.testing.assert_allclose(np.asarray(plain_grad), ref_grad, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(np.asarray(grad), np.where(mask, ref_grad, 0.0), rtol=1e-10, atol=1e-15)
    assert (np.asarray(grad)[~mask] == 0).all() and (np.asarray(grad)[mask] != 0).all()


def test_masks_in_the_objective(params):
    s = Settings(style_layers=("relu1_1", "relu2_1:relu1_2"), style_mask_fractions=(0.5, 0.25),
                 content_layers=("relu2_1",), activation_shift=-1, tv_weight=0)
    obj = Objective.from_settings(s)
    assert obj.masked == (obj.term("style"),) and obj.term("style").mask_fractions == (0.5, 0.25)
    with pytest.raises(ValueError, match="'mask' has 1 fraction.*2 entries"):
        terms.Term.make("gram", "style", ("relu1_1", "relu2_1"), mask=(0.5,))
    content, style, x = _caffe(1, 30, 26), _caffe(2, 32, 32), _caffe(3, 30, 26)
    targets = make_targets(obj, params, content, [style], weights=s)
    masks = targets["style"]["mask"]
    fc = obj.features(params, content)
    assert set(masks) == {"relu1_1", "relu2_1:relu1_2"} and set(masks["relu2_1:relu1_2"]) == {"relu1_2", "relu2_1"}
    for entry, q in (("relu1_1", 0.5), ("relu2_1:relu1_2", 0.25)):
        for layer in layersets.members(entry):
            assert np.array_equal(np.asarray(masks[entry][layer]), np_mask(np.asarray(fc[layer]), q))
    plain = {**targets, "style": {k: v for k, v in targets["style"].items() if k != "mask"}}
    masked_terms, masked_grad = obj.value_and_grad(params, x, targets)
    plain_terms, plain_grad = obj.value_and_grad(params, x, plain)
    assert float(masked_terms.total) == pytest.approx(float(plain_terms.total), rel=1e-6)
    assert np.isfinite(np.asarray(masked_grad)).all()
    assert np.abs(np.asarray(masked_grad) - np.asarray(plain_grad)).max() > 1e-3 * np.abs(plain_grad).max()
    # every mask passes everything: the gradient of the unmasked loss
    full = {**targets, "style": {**targets["style"], "mask": jax.tree.map(jnp.ones_like, masks)}}
    np.testing.assert_allclose(np.asarray(obj.value_and_grad(params, x, full)[1]), np.asarray(plain_grad),
                               rtol=1e-5, atol=1e-6 * np.abs(plain_grad).max())
    # without a content image there is no mask
    with pytest.raises(ValueError, match="no content image was given.*style_mask_fractions"):
        texture = Objective.from_settings(s.replace(content_weight=0))
        with_weights(texture, s, style_targets(texture, params, [style]))
    assert content_masks(Objective.from_settings(Settings()), params, content) == {}


# --------------------------------------------------------------------------------------------------
# Settings


def test_settings_of_the_variants():
    s = Settings(activation_power=2, style_mask_fractions=(1, 0.5), style_layers=("relu1_1", "relu2_1"),
                 style_content_aware=True)
    assert (s.activation_power, s.style_mask_fractions, s.style_content_aware) == (2.0, (1.0, 0.5), True)
    assert Settings(style_loss="gram_cube", style_layers=("relu1_1", "relu3_1"), activation_shift=-1).style_loss == \
        "gram_cube"
    cases = [
        (dict(activation_power=0.5), "activation_power must be >= 1"),
        (dict(activation_power=2, style_loss="w2"), "activation_power only amplifies.*style_loss='w2'"),
        (dict(style_mask_fractions=(0.5,)), "style_mask_fractions has 1 value.*5 style layers"),
        (dict(style_mask_fractions=(0.5, 0, 1, 1, 1)), r"fractions in \(0, 1\]"),
        (dict(style_mask_fractions=(0.5, 1.5, 1, 1, 1)), r"fractions in \(0, 1\]"),
        (dict(style_mask_fractions=(1,) * 5, style_weight=0), "style_weight is 0"),
        (dict(style_content_aware=True), r"relu4_1 has 512 x 512 x 512 = 134,217,728 entries \(0.54 GB"),
        (dict(style_content_aware=True, style_layers="relu1_1", style_loss="w2"), "style_content_aware weights Gram"),
        (dict(style_content_aware=True, style_layers="relu1_1", style_adjacent=True), "with style_adjacent"),
        (dict(style_content_aware=True, style_layers="relu2_1:relu1_1"), "reads single style layers"),
        (dict(style_loss="gram_cube"), r"Gram cube of relu4_1 has 512\^3 = 134,217,728 entries \(0.54 GB"),
        (dict(style_loss="gram_cube", style_layers="relu2_1:relu1_1"), "style_loss='gram_cube' reads single"),
        (dict(style_loss="gram_cube", style_layers="relu1_1", style_adjacent=True), "style_adjacent only applies"),
    ]
    for kw, why in cases:
        with pytest.raises(SettingError, match=why):
            Settings(**kw)
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(Settings)}
    for name in ("activation_power", "style_mask_fractions", "style_content_aware", "style_adjacent"):
        assert "experimental" in helps[name].lower(), name
    assert "'gram_cube' (experimental" in helps["style_loss"]
    with pytest.raises(SettingError) as e:
        Settings(style_content_aware=True)
    assert e.value.render(lambda n: "--" + n.replace("_", "-")).startswith("--style-content-aware: the content")


# --------------------------------------------------------------------------------------------------
# End to end (random weights, small images, few layers)

RUN = dict(weights="random", image_size=32, num_iterations=8, print_every=4, init="content", conv_algorithm="direct",
           progress=False, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"), activation_shift=-1)
VARIANTS = {
    "mask": dict(style_mask_fractions=(0.5, 0.25)),
    "power": dict(activation_power=1.5),
    "content_aware": dict(style_content_aware=True, style_layers=("relu2_1",)),  # one layer: K^2 x 512 is slow
    "cube": dict(style_loss="gram_cube"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stylization_reduces_its_loss(variant):
    r = nst_jax.stylize(CONTENT, STYLE, **{**RUN, **VARIANTS[variant]})
    assert r.history[-1].total < 0.9 * r.history[0].total, [h.total for h in r.history]


def test_masked_batch_reduces_its_loss():
    photo = images.load_image(CONTENT)
    batch = nst_jax.stylize_batch([photo, photo[::-1]], STYLE, **VARIANTS["mask"], **{**RUN, "num_iterations": 4})
    for b in batch:
        assert b.history[-1].total < 0.9 * b.history[0].total, [h.total for h in b.history]


CLI = {
    "mask": ["--style-mask-fractions", "0.5", "0.25"],
    "power": ["--activation-power", "2"],
    "content_aware": ["--style-content-aware", "--style-layers", "relu2_1"],
    "cube": ["--style-loss", "gram_cube"],
}


@pytest.mark.parametrize("variant", list(CLI))
def test_cli_smoke(variant, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = cli.main(["--content", str(CONTENT), "--style", str(STYLE), "--output", str(out), "--weights", "random",
                     "--image-size", "32", "--num-iterations", "3", "--content-layers", "relu2_1", "--style-layers",
                     "relu1_1,relu2_1", "--conv-algorithm", "direct", "--init", "content", "--quiet", *CLI[variant]])
    # (a repeated flag: the last value counts)
    assert code == 0, capsys.readouterr().err
    settings = images.read_metadata(out)["settings"]
    assert {k: settings[k] for k in ("activation_power", "style_mask_fractions", "style_content_aware",
                                     "style_loss")} == {
        "activation_power": 2.0 if variant == "power" else 1.0,
        "style_mask_fractions": [0.5, 0.25] if variant == "mask" else None,
        "style_content_aware": variant == "content_aware",
        "style_loss": "gram_cube" if variant == "cube" else "gram"}


def test_cli_refuses_a_cube_too_large(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--content", str(CONTENT), "--style", str(STYLE), "--output", str(tmp_path / "o.png"),
                  "--style-loss", "gram_cube"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--style-loss gram_cube: the Gram cube of relu4_1" in err and "--style-layers" in err
