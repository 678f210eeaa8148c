"""Artifact measures (nst_jax.artifacts) on constructed images, checked against hand computations; the
optimizer preset adam-no-gray; and reflect padding lowering the border-line energy of a short run."""

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nst_jax
from nst_jax import artifacts, optim, optimizer_presets, presets, vgg
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective, make_targets

from conftest import EXAMPLES

RED = np.array([0.9, 0.1, 0.1])
GRAY = np.array([0.485, 0.456, 0.406])  # the ImageNet mean colour: what a gray spot is made of


def _border_energy_by_hand(img, width):
    h, w, _ = img.shape
    outer, inner = [], []
    for i in range(h - 1):
        for j in range(w - 1):
            d = 0.0
            for c in range(img.shape[2]):
                d += (img[i, j + 1, c] - img[i, j, c]) ** 2 + (img[i + 1, j, c] - img[i, j, c]) ** 2
            near = min(i, j, h - 2 - i, w - 2 - j) < width
            (outer if near else inner).append(d ** 0.5)
    return sum(outer) / len(outer) / (sum(inner) / len(inner))


def test_border_energy_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(12, 15, 3))
    for width in (1, 2, 3):
        assert artifacts.border_energy(img, width) == pytest.approx(_border_energy_by_hand(img, width), rel=1e-12)


def test_border_energy_sees_a_frame_of_lines():
    rng = np.random.default_rng(1)
    img = 0.5 + 0.02 * rng.standard_normal((64, 64, 3))  # faint texture inside
    img[:3, ::2] = 1.0  # lines along the borders: strong gradients in the outer pixels
    img[-3:, ::2] = 0.0
    img[::2, :3] = 1.0
    img[::2, -3:] = 0.0
    assert artifacts.border_energy(img, width=4) > 5
    plain = 0.5 + 0.02 * rng.standard_normal((64, 64, 3))
    assert 0.8 < artifacts.border_energy(plain, width=4) < 1.25  # no frame: borders like the interior
    assert artifacts.border_energy(np.full((40, 40, 3), 0.3)) == 1.0  # flat
    flat_inside = np.full((40, 40, 3), 0.3)
    flat_inside[0, ::2] = 1.0
    assert artifacts.border_energy(flat_inside) == float("inf")


def test_border_energy_refuses_bad_input():
    with pytest.raises(ValueError, match="width=10 leaves no interior"):
        artifacts.border_energy(np.zeros((20, 20, 3)), width=10)
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        artifacts.border_energy(np.zeros((20, 20, 3)), width=0)
    with pytest.raises(ValueError, match="NaN"):
        artifacts.border_energy(np.full((20, 20, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        artifacts.border_energy(np.zeros((2, 20, 20, 3)))


def _components_by_flood_fill(mask):
    """Sizes of the 4-connected components, by breadth-first search, in order of their first pixel."""
    seen = np.zeros_like(mask)
    sizes = []
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        seen[i, j] = True
        queue, n = deque([(i, j)]), 0
        while queue:
            y, x = queue.popleft()
            n += 1
            for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    queue.append((v, u))
        sizes.append(n)
    return sizes


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_label_components_agrees_with_a_flood_fill(density):
    mask = np.random.default_rng(int(density * 100)).uniform(size=(37, 41)) < density
    labels, sizes = artifacts.label_components(mask)
    assert list(sizes) == _components_by_flood_fill(mask)
    assert np.all((labels >= 0) == mask)
    spiral = np.zeros((21, 21), bool)  # one long winding component
    spiral[1, 1:20] = spiral[1:20, 19] = spiral[19, 3:20] = spiral[3:20, 3] = spiral[3, 3:17] = True
    assert list(artifacts.label_components(spiral)[1]) == [int(spiral.sum())]


def test_saturation_value_by_hand():
    img = np.array([[[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]])
    sat, val = artifacts.saturation_value(img)
    np.testing.assert_allclose(sat, [[1.0, 0.0]])
    np.testing.assert_allclose(val, [[0.5, 0.0]])
    s, v = artifacts.saturation_value(GRAY[None, None])
    assert s[0, 0] == pytest.approx(artifacts.MEAN_SATURATION) and v[0, 0] == pytest.approx(artifacts.MEAN_VALUE)


def test_gray_spots_counts_inserted_blobs_exactly():
    img = np.tile(RED, (48, 48, 1))
    img[2:5, 2:5] = GRAY  # 9 px
    img[10:12, 30:32] = GRAY  # 4 px: exactly min_size
    img[20, 20] = GRAY  # 1 px: noise, not a spot
    img[30:33, 5:8] = GRAY  # two blobs touching by an edge: one spot
    img[33:35, 7:9] = GRAY
    img[40:44, 40:44] = 0.02  # black and white are not gray
    img[40:44, 30:34] = 0.98
    img[25:28, 40:43] = [0.45, 0.5, 0.5]  # another mid gray (saturation 0.1): a spot
    img[14, 14], img[15, 15] = GRAY, GRAY  # touching by a corner only: two single pixels
    assert artifacts.gray_spots(img) == 4
    assert artifacts.gray_spots(img, min_size=1) == 7
    assert artifacts.gray_spots(img, min_size=5) == 3
    assert artifacts.gray_spots(img, max_size=9) == 3  # the merged blob has 13 px
    assert artifacts.gray_spots(img, saturation=0.15) == 1  # the ImageNet mean is S 0.163: only the 0.1 blob
    assert artifacts.gray_spots(np.tile(RED, (16, 16, 1))) == 0


def test_gray_spots_refuses_bad_input():
    img = np.tile(RED, (16, 16, 1))
    with pytest.raises(ValueError, match="min_size must be an integer >= 1"):
        artifacts.gray_spots(img, min_size=0)
    with pytest.raises(ValueError, match="saturation must be a number in"):
        artifacts.gray_spots(img, saturation=2)
    with pytest.raises(ValueError, match="max_size must be None or an integer >= min_size"):
        artifacts.gray_spots(img, min_size=4, max_size=2)
    with pytest.raises(ValueError, match="RGB"):
        artifacts.gray_spots(img[:, :, :2])


def test_grid_energy_sees_a_dot_grid_at_a_vgg_stride():
    rng = np.random.default_rng(2)
    # a smooth picture: noise blurred by a 5x5 box, twice
    base = rng.uniform(size=(128, 128))
    for _ in range(2):
        base = sum(np.roll(base, (dy, dx), (0, 1)) for dy in range(-2, 3) for dx in range(-2, 3)) / 25
    base = (base - base.min()) / (base.max() - base.min())
    img = np.repeat(base[:, :, None], 3, axis=2)
    clean = artifacts.grid_energy(img, period=16)
    dotted = img.copy()
    dotted[3::8, 5::8] += 0.15  # dots every 8 px: a harmonic of period 16
    assert 0.3 < clean < 3
    noise = artifacts.grid_energy(rng.uniform(size=(128, 128)), period=16)
    assert 0.7 < noise < 1.4  # the periodogram of noise is flat on average: about 1
    # the dots put peaks at the frequencies (i/8, j/8): every one of period 8's, a quarter of period 16's
    assert artifacts.grid_energy(dotted, period=8) > 100 * clean
    assert artifacts.grid_energy(dotted, period=16) > 5 * clean
    with pytest.raises(ValueError, match="at least 128 px"):
        artifacts.grid_energy(img[:100], period=32)


def test_grid_energy_of_a_pure_tone_by_hand():
    """A cosine at 1/16 cycles per pixel along x over faint noise: one grid frequency (and its mirror) of the
    255 has a huge ratio, so grid_energy(period=16) is about e^gamma (noise) times that ratio^(2/255)."""
    rng = np.random.default_rng(4)
    y = 1e-3 * rng.standard_normal((64, 64)) + 0.5 + 0.2 * np.cos(2 * np.pi * np.arange(64) / 16)[None, :]
    win = np.outer(np.hanning(66)[1:-1], np.hanning(66)[1:-1])
    p = np.abs(np.fft.fft2((y - y.mean()) * win)) ** 2
    rows, cols = (np.arange(16) * 4)[:, None], (np.arange(16) * 4)[None, :]
    ring = [(a, b) for a in range(-2, 3) for b in range(-2, 3) if max(abs(a), abs(b)) == 2]
    ratio = p[rows, cols] / np.mean([p[(rows + a) % 64, (cols + b) % 64] for a, b in ring], axis=0)
    expected = np.exp((np.log(ratio).sum() - np.log(ratio[0, 0])) / 255 + np.euler_gamma)
    assert artifacts.grid_energy(y, period=16) == pytest.approx(expected, rel=1e-9)
    assert ratio[0, 1] > 1e4 and ratio[0, 15] > 1e4  # bins 4 and 60: the tone and its mirror


def test_high_frequency_by_hand():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(float)  # all its power at the Nyquist frequency
    assert artifacts.high_frequency(checker) > 0.9
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    assert artifacts.high_frequency(ramp) < 1e-3
    assert artifacts.high_frequency(np.zeros((32, 32))) == 0.0


# ---- the optimizer preset


def test_adam_no_gray_sets_adam_beta1_and_epsilon_and_explicit_flags_win():
    s = Settings(preset="adam-no-gray")
    assert (s.optimizer, s.beta1, s.epsilon, s.beta2) == ("adam", 0.99, 0.1, 0.999)
    assert s.explicit == {"preset"}
    kept = Settings(preset="adam-no-gray", beta1=0.95, method="chain")
    assert (kept.optimizer, kept.beta1, kept.epsilon, kept.init, kept.pooling) == ("adam", 0.95, 0.1, "content", "avg")
    assert kept.replace(preset=None).optimizer == "lbfgs"  # the preset's values go with it
    back, ignored = Settings.from_dict(s.to_dict())  # what an output records reruns the same
    assert back == s and not ignored
    lbfgs = Settings(preset="adam-no-gray", optimizer="lbfgs")  # explicit wins, as --from's settings need
    assert (lbfgs.optimizer, lbfgs.beta1) == ("lbfgs", 0.99)
    with pytest.raises(SettingError, match="preset must be one of None, 'adam-no-gray'"):
        Settings(preset="adam")


def test_optimizer_presets_and_method_presets_set_different_fields():
    method_fields = set().union(*(set(p.values) for p in presets.PRESETS.values()))
    for p in optimizer_presets.PRESETS.values():
        assert not set(p.values) & method_fields, p.name
        Settings(preset=p.name)  # valid on its own


def test_adam_no_gray_state_steps_with_beta1_0_99_and_epsilon_0_1():
    """Two Adam steps of the preset's solver against the update written out in float64 from the same
    gradients: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, x -= lr m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)."""
    s = Settings(preset="adam-no-gray", weights="random", image_size=32, style_layers=("relu1_1", "relu2_1"),
                 content_layers=("relu2_1",), conv_algorithm="direct")
    spec = optim.SolverSpec.from_settings(s)
    assert (spec.optimizer, spec.beta1, spec.epsilon) == ("adam", 0.99, 0.1)
    params = nst_jax.api.get_params("random")
    obj = Objective.from_settings(s)
    rng = np.random.default_rng(3)
    content = vgg.preprocess(jnp.asarray(rng.uniform(size=(32, 32, 3)), jnp.float32))
    style = vgg.preprocess(jnp.asarray(rng.uniform(size=(32, 32, 3)), jnp.float32))
    targets = make_targets(obj, params, content, [style], weights=s)
    x0 = np.asarray(content + 5.0 * jax.random.normal(jax.random.key(0), content.shape))

    def two_steps(spec):
        states = []
        stepper = optim.single_image_stepper(obj, spec, params, targets, loop="step")
        # (x, gradient) at iterations 0, 1, 2, copied out: the step reuses the state's buffers
        optim.run(stepper, x0, 2, stops=[1, 2],
                  on_stop=lambda st, _: states.append((np.array(st.x, np.float64), np.array(st.grad, np.float64))))
        return states

    states = two_steps(spec)
    x = np.asarray(x0, np.float64)
    m = v = 0.0
    lr, b1, b2, eps = s.step_size, 0.99, 0.999, 0.1
    for t in (1, 2):
        g = states[t - 1][1]
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(states[t][0], x, rtol=1e-5, atol=1e-3)
    moved = two_steps(optim.SolverSpec.from_settings(s.replace(preset=None, optimizer="adam")))[2][0]
    assert np.max(np.abs(moved - x)) > 1.0  # beta1 0.9 / epsilon 1e-8 step elsewhere


# ---- reflect padding against border lines


def test_reflect_padding_lowers_border_energy():
    """A texture from noise with Adam, random weights, 64 px, style relu1_1-relu4_1, 30 iterations: zero padding
    leaves more change along the borders than reflect padding.

    Where the effect shows with random weights at this size: from the content image 30 iterations change the
    borders too little to tell, L-BFGS from noise barely moves in so few iterations, and with style layers up to
    relu3_1 only it comes and goes with the seed; with relu4_1 (a receptive field that reaches the padding from
    most of a 64 px image) Adam from noise shows it for every seed tried (0-3, with and without a content image),
    by 10-25% at width 2."""
    energy = {}
    for padding in ("zero", "reflect"):
        r = nst_jax.stylize(None, EXAMPLES / "starry_night.jpg", weights="random", image_size=64, content_weight=0,
                            style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"), conv_algorithm="direct",
                            num_iterations=30, optimizer="adam", init="random", padding=padding, progress=False,
                            print_every=0)
        energy[padding] = artifacts.border_energy(r.array, width=2)
    assert energy["zero"] > 1.1 * energy["reflect"], energy
