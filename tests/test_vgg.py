"""VGG-19: parity with Keras's own VGG19 on the same weights, hand-checked small cases, jit behaviour, errors."""

from __future__ import annotations

import os

# Keras 3 (the independent reference) defaults to TensorFlow: choose JAX before anything imports keras.
os.environ["KERAS_BACKEND"] = "jax"

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nst_jax import vgg, weights  # noqa: E402

H, W = 37, 45  # odd and non-square: exercises SAME padding and VALID pooling's flooring
RELU_AND_POOL = tuple(n for n in vgg.LAYERS if not n.startswith("conv"))
PARITY_RTOL = 1e-5

# Keras 3.15 + NumPy 2 warn about their own __array__ (not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def keras_name(layer: str) -> str:
    """``relu4_2`` -> ``block4_conv2`` (Keras's conv output includes the ReLU); ``pool4`` -> ``block4_pool``."""
    if layer.startswith("pool"):
        return f"block{layer[4:]}_pool"
    b, i = layer[4:].split("_")
    return f"block{b}_conv{i}"


def write_keras_2016_h5(path: Path, layer_weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Writes ``{keras layer: (kernel, bias)}`` exactly like the original 2016 no-top file (Keras 1).

    Root attribute ``layer_names`` (bytes), one group per layer including the input
    and pools (empty ``weight_names``), datasets ``blockB_convI_W_1:0`` / ``_b_1:0``.
    """
    names = ["input_1"]
    for b, n, _ in vgg.BLOCKS:
        names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            g = f.create_group(name)
            if name not in layer_weights:
                g.attrs["weight_names"] = np.array([])
                continue
            wn = [f"{name}_W_1:0", f"{name}_b_1:0"]
            g.attrs["weight_names"] = np.array([n.encode() for n in wn])
            for n, value in zip(wn, layer_weights[name]):
                g.create_dataset(n, data=value)
    return path


def count_convs(jaxpr) -> int:
    """Number of ``conv_general_dilated`` equations, including those in nested jaxprs."""
    total = 0
    for eqn in jaxpr.eqns:
        total += eqn.primitive.name == "conv_general_dilated"
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += count_convs(inner)
    return total


# ------------------------------------------------------------------------------------------------------------
# Parity with Keras


@pytest.fixture(scope="module")
def keras_reference(tmp_path_factory):
    """Keras VGG19 with deterministic random weights, saved by Keras in every layout we read, and its outputs."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend before this module")
    model = keras.applications.VGG19(weights=None, include_top=False, input_shape=(H, W, 3))
    rng = np.random.default_rng(1234)
    layer_weights = {}
    for layer in model.layers:
        if "_conv" in layer.name:
            kernel, bias = (np.asarray(w) for w in layer.get_weights())
            fan_in = np.prod(kernel.shape[:3])
            kernel = rng.normal(0, np.sqrt(2 / fan_in), kernel.shape).astype(np.float32)
            bias = rng.normal(0, 10.0, bias.shape).astype(np.float32)  # non-trivial next to activations ~100
            layer.set_weights([kernel, bias])
            layer_weights[layer.name] = (kernel, bias)
    assert len(layer_weights) == 16

    folder = tmp_path_factory.mktemp("keras")
    files = {"keras3_native": folder / "vgg19.weights.h5", "keras3_legacy_model": folder / "vgg19_model.h5",
             "keras1_2016": folder / "vgg19_2016.h5"}
    model.save_weights(files["keras3_native"])  # Keras 3's own format
    model.save(files["keras3_legacy_model"])  # legacy HDF5 writer: layer_names/weight_names in model_weights
    try:  # the same legacy writer at the file root, as Keras 2's save_weights("x.h5") did
        from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group
    except ImportError:
        pass
    else:
        files["keras3_legacy_weights"] = folder / "vgg19_legacy_weights.h5"
        with h5py.File(files["keras3_legacy_weights"], "w") as f:
            save_weights_to_hdf5_group(f, model)
    write_keras_2016_h5(files["keras1_2016"], layer_weights)

    rgb255 = rng.integers(0, 256, size=(2, H, W, 3)).astype(np.float32)
    caffe = keras.applications.vgg19.preprocess_input(rgb255.copy())  # RGB 0..255 -> BGR, mean subtracted
    probe = keras.Model(model.input, [model.get_layer(keras_name(n)).output for n in RELU_AND_POOL])
    with jax.default_matmul_precision("highest"):
        outputs = [np.asarray(o) for o in probe(caffe)]
    return {"files": files, "layer_weights": layer_weights, "rgb01": rgb255 / 255.0,
            "outputs": dict(zip(RELU_AND_POOL, outputs))}


@pytest.mark.parametrize("layout", ["keras3_native", "keras3_legacy_model", "keras3_legacy_weights", "keras1_2016"])
def test_parity_with_keras(keras_reference, layout):
    """Every ReLU and pool output matches Keras: max |ours - keras| / max |keras| per layer <= 1e-5."""
    path = keras_reference["files"].get(layout)
    if path is None:
        pytest.skip(f"this Keras has no writer for the {layout} layout")
    fx = weights.load_vgg19(path, precision="highest")
    for keras_layer, (kernel, bias) in keras_reference["layer_weights"].items():
        ours = fx.params["params"][vgg.canonical_layer(keras_layer).replace("relu", "conv")]
        np.testing.assert_array_equal(np.asarray(ours["kernel"]), kernel)
        np.testing.assert_array_equal(np.asarray(ours["bias"]), bias)
    with jax.default_matmul_precision("highest"):
        feats = fx.features(keras_reference["rgb01"], RELU_AND_POOL)
    errors = {}
    for layer in RELU_AND_POOL:
        ref, got = keras_reference["outputs"][layer], np.asarray(feats[layer])
        assert got.shape == ref.shape, layer
        scale = np.abs(ref).max()
        assert scale > 0 and (ref > 0).mean() > 0.01, f"{layer}: degenerate reference activations"
        errors[layer] = float(np.abs(got - ref).max() / scale)
    print(f"\n{layout}: max relative error {max(errors.values()):.2e} (at {max(errors, key=errors.get)})")
    bad = {k: v for k, v in errors.items() if v > PARITY_RTOL}
    assert not bad, f"relative errors above {PARITY_RTOL}: {bad}"


def test_keras_aliases_in_features(keras_reference):
    fx = weights.load_vgg19(keras_reference["files"]["keras1_2016"], precision="highest")
    img = keras_reference["rgb01"][:1]
    alias = fx.features(img, ["block4_conv2", "block4_pool"])
    canon = fx.features(img, ["relu4_2", "pool4"])
    assert list(alias) == ["block4_conv2", "block4_pool"]  # the keys as asked
    for a, c in (("block4_conv2", "relu4_2"), ("block4_pool", "pool4")):
        np.testing.assert_array_equal(np.asarray(alias[a]), np.asarray(canon[c]))
    both = fx.features(img, "relu4_2, block4_conv2")  # the same layer twice, by two names
    assert list(both) == ["relu4_2", "block4_conv2"]
    np.testing.assert_array_equal(np.asarray(both["relu4_2"]), np.asarray(both["block4_conv2"]))


def test_features_keeps_the_requested_order(random_fx):
    img = np.zeros((1, 16, 16, 3), np.float32)
    assert list(random_fx.features(img, ["relu2_1", "relu1_1"])) == ["relu2_1", "relu1_1"]


# ------------------------------------------------------------------------------------------------------------
# Hand-checked small cases


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, mode: str) -> np.ndarray:
    """3x3 stride-1 convolution (cross-correlation, as Caffe/Keras/XLA) on NHWC; ``mode`` is np.pad's."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode)
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += xp[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx].astype(np.float64)
    return out + bias


def np_pool(x: np.ndarray, kind: str) -> np.ndarray:
    """2x2 stride-2 pooling; a trailing odd row/column is dropped (VALID, as Keras)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if kind == "max" else x.mean(axis=(2, 4))


@pytest.fixture(scope="module")
def block1():
    """Weights of block 1 as ``forward`` takes them, and a tiny Caffe-space input."""
    rng = np.random.default_rng(5)
    w = {name: (rng.normal(0, 0.2, (3, 3, cin, cout)).astype(np.float32),
                rng.normal(0, 1.0, (cout,)).astype(np.float32))
         for name, (cin, cout) in vgg.CONV_CHANNELS.items() if name.startswith("conv1_")}
    x = rng.normal(0, 50, (1, 5, 7, 3)).astype(np.float32)
    return w, x


def test_conv_bias_relu_by_hand(block1):
    w, x = block1
    out = vgg.forward(w, jnp.asarray(x), ("conv1_1", "relu1_1"), precision="highest")
    ref = np_conv(x, *w["conv1_1"], mode="constant")
    np.testing.assert_allclose(np.asarray(out["conv1_1"]), ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out["relu1_1"]), np.maximum(ref, 0), rtol=1e-5, atol=1e-3)
    # The crafted case: one tap, one channel. Output = bias + x at the neighbour, zero beyond the border.
    k = np.zeros((3, 3, 3, 64), np.float32)
    k[0, 0, 2, 0] = 1.0  # top-left tap of input channel 2 -> output channel 0
    b = np.full(64, -1.0, np.float32)
    one = np.arange(1, 36, dtype=np.float32).reshape(1, 5, 7, 1) * np.ones(3, np.float32)
    out = vgg.forward({"conv1_1": (k, b), "conv1_2": w["conv1_2"]}, jnp.asarray(one), ("relu1_1",))
    expect = np.zeros((5, 7))
    expect[1:, 1:] = one[0, :-1, :-1, 2]
    np.testing.assert_array_equal(np.asarray(out["relu1_1"])[0, :, :, 0], np.maximum(expect - 1.0, 0))


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_block1_pooling_and_padding_by_hand(block1, pooling, padding):
    w, x = block1
    mode = {"zero": "constant", "reflect": "reflect"}[padding]
    h = np.maximum(np_conv(x, *w["conv1_1"], mode=mode), 0)
    h = np.maximum(np_conv(h, *w["conv1_2"], mode=mode), 0)
    ref = np_pool(h, pooling)
    out = vgg.forward(w, jnp.asarray(x), ("pool1",), pooling=pooling, padding=padding, precision="highest")
    assert out["pool1"].shape == (1, 2, 3, 64)
    np.testing.assert_allclose(np.asarray(out["pool1"]), ref, rtol=1e-5, atol=1e-3 * np.abs(ref).max())


def test_pooling_and_padding_change_the_result(block1):
    w, x = block1
    outs = {(p, q): np.asarray(vgg.forward(w, jnp.asarray(x), ("pool1",), pooling=p, padding=q)["pool1"])
            for p in ("max", "avg") for q in ("zero", "reflect")}
    assert not np.allclose(outs["max", "zero"], outs["avg", "zero"])
    assert not np.allclose(outs["max", "zero"], outs["max", "reflect"])


# ------------------------------------------------------------------------------------------------------------
# jit behaviour


@pytest.fixture(scope="module")
def random_fx():
    return weights.load_vgg19("random")


@pytest.mark.parametrize("layer, convs", [("relu1_1", 1), ("relu4_2", 10), ("relu5_4", 16), ("pool5", 16)])
def test_stops_at_the_deepest_requested_layer(random_fx, layer, convs):
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: random_fx.apply(p, x, (layer,)))(random_fx.params, x)
    assert count_convs(jaxpr.jaxpr) == convs


def test_remat_does_not_change_the_graph_size():
    fx = weights.load_vgg19("random", remat=True)
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: fx.apply(p, x, ("relu4_2",)))(fx.params, x)
    assert count_convs(jaxpr.jaxpr) == 10


def test_features_is_jitted_and_not_recompiled(random_fx, caplog):
    fx = weights.FeatureExtractor(random_fx.params)  # fresh counter
    rng = np.random.default_rng(0)
    img = rng.random((1, 19, 23, 3), dtype=np.float32)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        first = fx.features(img, "relu2_1")
        second = fx.features(img * 0.5, "relu2_1")  # same shapes, new values
        third = fx.features(img * 0.5, ["relu2_1"])  # same request, spelled differently
    compiles = [r for r in caplog.records if "Compiling" in r.getMessage() and "_features_impl" in r.getMessage()]
    assert fx.trace_count == 1
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
    assert not np.allclose(np.asarray(first["relu2_1"]), np.asarray(second["relu2_1"]))
    np.testing.assert_array_equal(np.asarray(second["relu2_1"]), np.asarray(third["relu2_1"]))
    fx.features(img[:, :-1], "relu2_1")  # a new shape does compile again
    assert fx.trace_count == 2


def test_jit_equals_eager(random_fx):
    img = np.random.default_rng(1).random((1, 16, 16, 3), dtype=np.float32)
    jitted = random_fx.features(img, "relu2_2")["relu2_2"]
    with jax.disable_jit():
        eager = random_fx.features(img, "relu2_2")["relu2_2"]
    # XLA fuses differently under jit: compare relative to the layer's scale, not per element.
    scale = float(jnp.abs(eager).max())
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=1e-5 * scale)


# ------------------------------------------------------------------------------------------------------------
# Errors


def test_unknown_layer_lists_valid_names(random_fx):
    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=r"unknown VGG-19 layer 'relu6_1'.*Valid layers: conv1_1.*relu4_2"):
        random_fx.features(img, "relu6_1")


@pytest.mark.parametrize("shape, dtype, match", [
    ((8, 8), np.float32, r"shape \(N, H, W, 3\) or \(H, W, 3\)"),
    ((1, 1, 8, 8, 3), np.float32, r"shape \(N, H, W, 3\)"),
    ((1, 8, 8, 4), np.float32, "3 \\(RGB\\) channels"),
    ((8, 8, 1), np.float32, "3 \\(RGB\\) channels"),
    ((1, 8, 8, 3), np.uint8, "floating point.*uint8"),
])
def test_bad_images(random_fx, shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        random_fx.features(np.zeros(shape, dtype), "relu1_1")


def test_single_image_gets_a_batch_axis(random_fx):
    img = np.random.default_rng(2).random((8, 8, 3), dtype=np.float32)
    assert random_fx.features(img, "relu1_1")["relu1_1"].shape == (1, 8, 8, 64)


@pytest.mark.parametrize("shape", [(2, 9, 7, 5), (1, 6, 8, 3)])
def test_max_pool_gradient_goes_to_each_windows_first_maximum(shape):
    # Against XLA's select-and-scatter (lax.reduce_window's gradient: the first maximum of each window in
    # row-major order, as Caffe and PyTorch), with many ties: ReLU zeros and values rounded to a few levels.
    from nst_jax.vgg import pool2x2

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0), jnp.float32)
    g = jnp.asarray(rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)

    def reference(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    np.testing.assert_array_equal(pool2x2(x), reference(x))
    ours = jax.vjp(pool2x2, x)[1](g)[0]
    np.testing.assert_array_equal(ours, jax.vjp(reference, x)[1](g)[0])
    assert float(jnp.sum(ours != 0)) == g.size  # one element per window
