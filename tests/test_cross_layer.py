"""Cross-layer style statistics (Novak & Nikulin §3.4-3.6, §4.3): pair entries, the cross-layer Gram with its
nearest upsampling, blurred and adjacent-offset correlations, and the named layer sets.

The references are float64 NumPy written here from the formulas, not from nst_jax's code: for a shallower map
``A`` ``(H_a, W_a, K_a)`` and a deeper one ``B``, ``G = (A + s)^T blur^n(up(B + s)) / (H_a W_a sqrt(K_a K_b))``,
``up`` the nearest resize with half-pixel centres (output row ``i`` reads input row ``floor((i + 1/2) H_b /
H_a)``, as ``jax.image.resize``), ``blur`` a 3x3 mean with zero padding; the adjacent variant
``G[i, j, 1 + dy, 1 + dx] = sum_{y, x} A_i(y, x) B_j(y + dy, x + dx)`` with zero fill; the style loss the mean
squared difference over all entries.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import images, layersets, losses, optim, terms, weights
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective, make_targets

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
CONTENT = EXAMPLES / "tubingen.jpg"

# --------------------------------------------------------------------------------------------------
# Float64 references


def np_up(b: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest resize to ``(h, w)``: output index ``i`` reads ``floor((2 i + 1) n / (2 m))`` (exact integers)."""
    hb, wb = b.shape[:2]
    rows = (2 * np.arange(h) + 1) * hb // (2 * h)
    cols = (2 * np.arange(w) + 1) * wb // (2 * w)
    return b[rows][:, cols]


def np_blur(b: np.ndarray) -> np.ndarray:
    """One 3x3 mean: each output the sum of the 3x3 neighbourhood (zero outside) over 9."""
    h, w = b.shape[:2]
    out = np.zeros_like(b)
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        out[y, x] += b[y + dy, x + dx]
    return out / 9


def np_cross_gram(a, b, shift=0.0, blur=0, adjacent=False) -> np.ndarray:
    a = np.asarray(a, np.float64) + shift
    b = np.asarray(b, np.float64) + shift
    h, w, ka = a.shape
    kb = b.shape[-1]
    b = np_up(b, h, w)
    for _ in range(blur):
        b = np_blur(b)
    norm = h * w * np.sqrt(ka * kb)
    if not adjacent:
        return np.einsum("yxi,yxj->ij", a, b) / norm
    g = np.zeros((ka, kb, 3, 3))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            moved = np.zeros_like(b)  # moved[y, x] = b[y + dy, x + dx], zero outside
            for y in range(h):
                for x in range(w):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        moved[y, x] = b[y + dy, x + dx]
            g[:, :, 1 + dy, 1 + dx] = np.einsum("yxi,yxj->ij", a, moved) / norm
    return g


def _maps(seed=0, a=(15, 13, 5), b=(7, 6, 4)):
    rng = np.random.default_rng(seed)
    # ReLU-like: non-negative, sparse
    return (np.maximum(rng.normal(size=a), 0).astype(np.float32),
            np.maximum(rng.normal(size=b) + 0.3, 0).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# The statistic


def test_nearest_upsampling_reference_on_odd_sizes():
    # the reference's index formula, spelled out for 7 -> 15: each input row is repeated 2 or 3 times
    assert np_up(np.arange(7)[:, None, None], 15, 1)[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6]


@pytest.mark.parametrize("shift", [0.0, -1.0])
@pytest.mark.parametrize("sizes", [((15, 13, 5), (7, 6, 4)), ((9, 7, 5), (9, 7, 3)), ((8, 8, 3), (4, 4, 6))])
def test_cross_gram_matches_float64(sizes, shift):
    a, b = _maps(1, *sizes)
    g = np.asarray(losses.cross_gram(jnp.asarray(a), jnp.asarray(b), shift))
    ref = np_cross_gram(a, b, shift)
    assert g.shape == (sizes[0][2], sizes[1][2])
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("blur", [1, 3])
def test_blurred_cross_gram_matches_float64(blur):
    a, b = _maps(2)
    for shift in (0.0, -1.0):  # the shift comes before the zero-padded blur: it matters at the borders
        g = np.asarray(losses.cross_gram(jnp.asarray(a), jnp.asarray(b), shift, blur=blur))
        ref = np_cross_gram(a, b, shift, blur=blur)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
        assert np.abs(ref - np_cross_gram(a, b, shift, blur=blur - 1)).max() > 1e-3 * np.abs(ref).max()
    x = np.random.default_rng(3).normal(size=(5, 4, 2))
    ref = x
    for _ in range(blur):
        ref = np_blur(ref)
    np.testing.assert_allclose(np.asarray(losses.box_blur(jnp.asarray(x, jnp.float32), blur)), ref, atol=1e-6)


def test_adjacent_offsets_match_float64():
    a, b = _maps(4, (9, 7, 3), (5, 4, 2))
    g = np.asarray(losses.cross_gram(jnp.asarray(a), jnp.asarray(b), -1.0, adjacent=True))
    ref = np_cross_gram(a, b, -1.0, adjacent=True)
    assert g.shape == (3, 2, 3, 3)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    # with a blur too (order: shift, upsample, blur, offsets)
    g = np.asarray(losses.cross_gram(jnp.asarray(a), jnp.asarray(b), -1.0, blur=1, adjacent=True))
    np.testing.assert_allclose(g, np_cross_gram(a, b, -1.0, blur=1, adjacent=True), rtol=1e-5,
                               atol=1e-6 * np.abs(ref).max())
    # a single layer (a = b): its own Gram at offset (0, 0)
    g = np.asarray(losses.cross_gram(jnp.asarray(a), jnp.asarray(a), 0.5, adjacent=True))
    ref = np_cross_gram(a, a, 0.5, adjacent=True)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    f = a.reshape(-1, 3).astype(np.float64) + 0.5
    np.testing.assert_allclose(ref[:, :, 1, 1], f.T @ f / (3 * 9 * 7), rtol=1e-12)


def test_a_layer_with_itself_is_exactly_the_classic_gram():
    f = jnp.asarray(_maps(5, (11, 9, 6))[0])

    @jax.jit
    def before(f):  # the classic statistic as nst_jax computed it before cross-layer terms existed
        m = f.reshape(11 * 9, 6) - 1.0
        return jnp.matmul(m.T, m, preferred_element_type=jnp.float32) / (6 * 11 * 9)

    for fn in (lambda f: losses.gram(f, -1.0), lambda f: losses.cross_gram(f, f, -1.0)):
        assert np.array_equal(np.asarray(jax.jit(fn)(f)), np.asarray(before(f)))
    # the registered kind, for a single entry, through the options the objective passes
    term = terms.Term.make("gram", "style", ("relu1_1",), shift=-1.0, precision=None)
    stat = jax.jit(lambda f: term.spec.make_target(f, term.entry_opts("relu1_1")))(f)
    assert np.array_equal(np.asarray(stat), np.asarray(before(f)))
    # two equal (not identical) arrays: the same numbers
    np.testing.assert_allclose(np.asarray(losses.cross_gram(f, f + 0.0, -1.0)), np.asarray(before(f)), rtol=1e-6)


def test_gradient_through_upsampling_and_blur_matches_finite_differences():
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        a = jnp.asarray(rng.normal(size=(5, 4, 2)))
        b = jnp.asarray(rng.normal(size=(3, 2, 3)))
        probe = jnp.asarray(rng.normal(size=(2, 3)))

        def scalar(b):
            return jnp.sum(jnp.sin(losses.cross_gram(a, b, -1.0, blur=2)) * probe)

        grad = np.asarray(jax.grad(scalar)(b))
        assert grad.dtype == np.float64
        eps = 1e-6
        fd = np.zeros(b.shape)
        for idx in np.ndindex(b.shape):
            step = np.zeros(b.shape)
            step[idx] = eps
            fd[idx] = (float(scalar(b + step)) - float(scalar(b - step))) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.abs(fd).min() > 0  # every input reaches the output (the blur spreads the upsampled map)


# --------------------------------------------------------------------------------------------------
# Entries and named sets

# Novak & Nikulin §5's chain links, as listed there (deeper member first), with the conv indices 1..16.
CHAIN = [("conv1_2", "conv1_1"), ("conv2_1", "conv1_2"), ("conv2_2", "conv2_1"), ("conv3_1", "conv2_2"),
         ("conv3_2", "conv3_1"), ("conv3_3", "conv3_2"), ("conv3_4", "conv3_3"), ("conv4_1", "conv3_4"),
         ("conv4_2", "conv4_1"), ("conv4_3", "conv4_2"), ("conv4_4", "conv4_3"), ("conv5_1", "conv4_4"),
         ("conv5_2", "conv5_1"), ("conv5_3", "conv5_2"), ("conv5_4", "conv5_3")]
ORDER = ["1_1", "1_2", "2_1", "2_2", "3_1", "3_2", "3_3", "3_4", "4_1", "4_2", "4_3", "4_4", "5_1", "5_2", "5_3",
         "5_4"]


def test_chain_links_and_their_blur_counts():
    links = layersets.chain_pairs()
    for link in links:
        print(link, layersets.blur_count(link))
    expected = [f"{d.replace('conv', 'relu')}:{s.replace('conv', 'relu')}" for d, s in CHAIN]
    assert list(links) == expected and len(links) == 15
    assert [layersets.blur_count(link) for link in links] == [1] * 15
    assert layersets.ALL_CONV == tuple(f"relu{n}" for n in ORDER)
    assert [layersets.conv_index(f"conv{n}") for n in ORDER] == list(range(1, 17))


def test_all_to_content_pairs():
    pairs = layersets.all_to_content_pairs()
    assert len(pairs) == 16
    expected = [f"relu4_2:relu{n}" for n in ORDER[:9]] + ["relu4_2"] + [f"relu{n}:relu4_2" for n in ORDER[10:]]
    assert list(pairs) == expected
    assert [layersets.blur_count(p) for p in pairs] == [abs(i - 10) for i in range(1, 17)]
    assert layersets.all_to_content_pairs("block3_conv1")[0] == "relu3_1:relu1_1"


def test_entries_are_canonicalized():
    c = layersets.canonical_entries
    assert c("relu1_2:relu2_1") == c("relu2_1:relu1_2") == c("block2_conv1:block1_conv2") == ("relu2_1:relu1_2",)
    assert c(["relu1_1:relu1_1"]) == ("relu1_1",)  # a layer with itself is the plain entry
    assert c(" relu1_1 , chain") == ("relu1_1", *layersets.chain_pairs())
    assert c("chain,relu2_1:relu1_2,all")[:15] == layersets.chain_pairs()  # duplicates dropped, order kept
    assert len(c("chain,all")) == 31 and len(c("all,all-to-content")) == 31  # relu4_2 counted once
    assert layersets.members("relu2_1:relu1_2") == ("relu1_2", "relu2_1")  # (shallow, deep)
    by_depth = sorted(["relu3_1", "relu2_1:relu1_1", "relu3_1:relu1_1", "relu1_2"], key=layersets.depth)
    assert by_depth == ["relu1_2", "relu2_1:relu1_1", "relu3_1", "relu3_1:relu1_1"]  # stable for equal depths
    for bad, why in (("relu1_1:", "must name two"), ("a:b:c", "must name two"), ("relu9_9:relu1_1", "relu9_9"),
                     ("chains", "layer sets: 'all', 'chain', 'all-to-content'")):
        with pytest.raises(ValueError, match=why):
            c(bad)
    with pytest.raises(ValueError, match="pool1.*conv/relu"):
        layersets.blur_count("relu2_1:pool1")


def test_settings_accept_sets_and_pairs_and_check_them():
    s = Settings(style_layers="chain", content_layers="all", style_blur=True, activation_shift=-1)
    assert s.style_layers == layersets.chain_pairs() and s.content_layers == layersets.ALL_CONV
    assert Settings(style_layers=("relu1_1", "block2_conv1:relu1_1")).style_layers == ("relu1_1", "relu2_1:relu1_1")
    assert Settings(style_layers="all-to-content", style_layer_weights=[1] * 16).style_layer_weights == (1.0,) * 16
    cases = [
        (dict(style_blur=True), "style_blur blurs the deeper map of a pair.*style_layers has no pair"),
        (dict(style_blur=True, style_layers="all"), "has no pair"),
        (dict(style_blur=True, style_layers="chain", style_loss="w2"), "style_blur only applies to Gram"),
        (dict(style_adjacent=True, style_loss="w2"), "style_adjacent only applies to Gram"),
        (dict(style_layers="chain", style_loss="w2"), "style_loss='w2' reads single layers.*'relu1_2:relu1_1'"),
        (dict(content_layers="relu2_1:relu1_1"), "content_layers takes single layers"),
        (dict(content_layers="chain"), "content_layers takes single layers"),
        (dict(style_blur=True, style_layers="pool1:relu2_1"), "style_blur with style_layers.*'pool1'"),
        (dict(style_layers="chain", style_layer_weights=(1.0,) * 5), "5 value.*15 style layers"),
        (dict(style_layers="relu1_1:"), "style_layers: pair entry 'relu1_1:' must name two"),
    ]
    for kw, why in cases:
        with pytest.raises(SettingError, match=why):
            Settings(**kw)
    with pytest.raises(SettingError) as e:
        Settings(style_blur=True)
    assert e.value.render(lambda n: "--" + n.replace("_", "-")).startswith("--style-blur blurs")


def test_terms_with_pairs():
    t = terms.Term.make("gram", "style", ["relu1_1:relu2_1", "relu1_1"])
    assert t.layers == ("relu2_1:relu1_1", "relu1_1")
    with pytest.raises(ValueError, match="kind 'mse' reads single layers.*'relu2_1:relu1_1'"):
        terms.Term.make("mse", "content", ["relu2_1:relu1_1"])
    with pytest.raises(ValueError, match="reads single layers"):
        terms.Term.make("w2", "style", ["relu2_1:relu1_1"])
    with pytest.raises(ValueError, match="'layer' is reserved"):
        terms.Term.make("gram", "style", ["relu1_1"], layer="x")


# --------------------------------------------------------------------------------------------------
# In the objective

@pytest.fixture(scope="module")
def params():
    return weights.random_params(0)


def _caffe(seed, h, w):
    return jnp.asarray(np.random.default_rng(seed).uniform(-100, 100, (h, w, 3)).astype(np.float32))


def test_objective_loss_of_pair_entries_matches_float64(params):
    s = Settings(style_layers=("relu3_1:relu1_2", "relu2_2:relu2_1", "relu1_1"), style_layer_weights=(2, 3, 5),
                 content_layers="relu2_1", activation_shift=-1, style_blur=True, style_weight=7.0, tv_weight=0)
    obj = Objective.from_settings(s)
    assert obj.layers == ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1")
    assert obj.source_layers("style") == ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1")
    x, content, style = _caffe(0, 37, 45), _caffe(1, 37, 45), _caffe(2, 41, 33)
    targets = make_targets(obj, params, content, [style], weights=s)
    assert targets["style"]["target"]["relu3_1:relu1_2"].shape == (64, 256)
    fx, fs = obj.features(params, x), obj.features(params, style)
    expected = 0.0
    for entry, weight, blur in (("relu3_1:relu1_2", 2, 3), ("relu2_2:relu2_1", 3, 1), ("relu1_1", 5, 0)):
        shallow, deep = layersets.members(entry) if ":" in entry else (entry, entry)
        gx = np_cross_gram(fx[shallow], fx[deep], -1.0, blur)
        gs = np_cross_gram(fs[shallow], fs[deep], -1.0, blur)
        expected += 7.0 * weight * np.mean((gx - gs) ** 2)
    got = float(obj.loss(params, x, targets).style)
    assert got == pytest.approx(expected, rel=1e-4)


def test_adjacent_statistics_in_the_objective(params):
    s = Settings(style_layers=("relu1_2:relu1_1", "relu2_1"), style_adjacent=True, content_weight=0, tv_weight=0)
    obj = Objective.from_settings(s)
    assert dict(obj.term("style").options) == {"adjacent": True, "precision": None, "shift": 0.0}
    style = _caffe(3, 20, 18)
    stats = obj.statistics(params, style, "style")["style"]
    assert stats["relu1_2:relu1_1"].shape == (64, 64, 3, 3) and stats["relu2_1"].shape == (128, 128, 3, 3)
    f = obj.features(params, style)
    np.testing.assert_allclose(np.asarray(stats["relu2_1"]), np_cross_gram(f["relu2_1"], f["relu2_1"], adjacent=True),
                               rtol=1e-4, atol=1e-6)
    # the classic settings give the classic term (no blur/adjacent options)
    assert dict(Objective.from_settings(Settings()).term("style").options) == {"precision": None, "shift": 0.0}


# --------------------------------------------------------------------------------------------------
# End to end (random weights, small images)

RUN = dict(weights="random", image_size=32, num_iterations=10, print_every=5, init="content", conv_algorithm="direct",
           progress=False)
CHAIN_BLURRED = dict(style_layers="chain", activation_shift=-1, style_blur=True)


def test_chain_blurred_stylization_reduces_its_loss():
    r = nst_jax.stylize(CONTENT, STYLE, **CHAIN_BLURRED, **RUN)
    assert r.settings.style_layers == layersets.chain_pairs()
    assert r.history[-1].total < 0.5 * r.history[0].total, [h.total for h in r.history]


def test_chain_blurred_batch_reduces_its_loss():
    photo = images.load_image(CONTENT)
    batch = nst_jax.stylize_batch([photo, photo[:, ::-1]], STYLE, **CHAIN_BLURRED, **RUN)
    assert len(batch) == 2
    for b in batch:
        assert b.history[-1].total < 0.5 * b.history[0].total, [h.total for h in b.history]


def test_all_to_content_stylization_reduces_its_loss():
    r = nst_jax.stylize(CONTENT, STYLE, style_layers="all-to-content", content_layers="all", activation_shift=-1,
                        **{**RUN, "num_iterations": 5})
    assert len(r.settings.style_layers) == 16 and len(r.settings.content_layers) == 16
    assert r.history[-1].total < 0.9 * r.history[0].total, [h.total for h in r.history]


SMALL = dict(weights="random", image_size=32, content_layers=("relu2_1",), num_iterations=3, print_every=3,
             loop="step", progress=False, style_layers=("relu2_1:relu1_2", "relu1_1"), style_blur=True)


def test_changing_weights_of_pair_terms_does_not_recompile(caplog):
    first = nst_jax.stylize(CONTENT, STYLE, **SMALL)
    jitted = [optim._init_jit, optim._step_jit]
    before = [f._cache_size() for f in jitted]
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        other = nst_jax.stylize(CONTENT, STYLE, **{**SMALL, "style_weight": 1e3, "style_layer_weights": (2.0, 0.5)})
    assert [f._cache_size() for f in jitted] == before
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not [m for m in compiled if "_init_jit" in m or "_step_jit" in m], compiled
    assert other.history[0].style != pytest.approx(first.history[0].style, rel=1e-3)  # the new weights were used
