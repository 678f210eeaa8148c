"""nst_jax.conv: Winograd F(2x2, 3x3) equals XLA's direct convolution, forward and backward."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import conv, vgg, weights
from nst_jax.config import Settings
from nst_jax.objective import Objective, make_targets


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.mark.parametrize("shape,padding", [((2, 7, 9, 256), "zero"), ((1, 8, 6, 256), "reflect"),
                                           ((1, 5, 5, 512), "zero"), ((3, 4, 3, 256), "reflect")])
def test_winograd_equals_direct_forward_and_gradients(shape, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 24)) * 0.05, jnp.float32)
    yd = conv.conv3x3(x, k, padding=padding)
    yw = conv.conv3x3(x, k, padding=padding, algorithm="winograd")
    assert yw.shape == yd.shape == shape[:3] + (24,)
    assert _rel(yw, yd) < 1e-5
    ct = jnp.asarray(rng.standard_normal(yd.shape), jnp.float32)

    def grads(alg):
        f = lambda x, k: jnp.vdot(jnp.tanh(conv.conv3x3(x, k, padding=padding, algorithm=alg)), ct)  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1)))(x, k)

    (gxd, gkd), (gxw, gkw) = grads("direct"), grads("winograd")
    assert _rel(gxw, gxd) < 1e-5 and _rel(gkw, gkd) < 1e-5
    # vmap over images equals the batched call exactly (each image is its own tiles)
    vm = jax.vmap(lambda xi: conv.conv3x3(xi[None], k, padding=padding, algorithm="winograd")[0])(x)
    np.testing.assert_allclose(np.asarray(vm), np.asarray(yw), rtol=1e-6, atol=1e-6 * float(jnp.abs(yw).max()))


@pytest.mark.parametrize("shape", [(2, 13, 9, 256), (1, 8, 6, 256), (1, 2, 5, 256)])
def test_winograd_strips_equal_the_whole_layer(monkeypatch, shape):
    # Strips of one tile row (the smallest), odd and even heights: the same output and input gradient as the
    # layer in one piece.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 256, 16)) * 0.05, jnp.float32)
    ct = jnp.asarray(rng.standard_normal(shape[:3] + (16,)), jnp.float32)

    def value_and_grad():
        f = lambda x: jnp.vdot(jnp.tanh(conv.conv3x3(x, k, algorithm="winograd")), ct)  # noqa: E731
        return conv.conv3x3(x, k, algorithm="winograd"), jax.grad(f)(x)

    y, g = value_and_grad()
    monkeypatch.setattr(conv, "WINOGRAD_STRIP_BYTES", 1)
    ys, gs = value_and_grad()
    np.testing.assert_allclose(ys, y, rtol=1e-6, atol=1e-6 * float(jnp.abs(y).max()))
    np.testing.assert_allclose(gs, g, rtol=1e-6, atol=1e-6 * float(jnp.abs(g).max()))


def test_winograd_strips_bound_the_transients(monkeypatch):
    # XLA's temporaries of a layer's value and input gradient (block 3 of a 512x384 image): the transformed
    # input and the products of the whole layer are 50 MB each; in strips of 16 MB the temporaries are
    # about two thirds (the layer's own input, output and gradient stay).
    x = jax.ShapeDtypeStruct((1, 96, 128, 256), jnp.float32)
    kernel = jax.ShapeDtypeStruct((3, 3, 256, 256), jnp.float32)

    def temp_bytes():
        def input_grad(x, k):
            t = conv.winograd_kernels(k)
            return jax.grad(lambda x: jnp.sum(conv.conv3x3(x, k, algorithm="winograd", transforms=t) ** 2))(x)
        return jax.jit(input_grad).lower(x, kernel).compile().memory_analysis().temp_size_in_bytes

    whole = temp_bytes()
    monkeypatch.setattr(conv, "WINOGRAD_STRIP_BYTES", 16 << 20)
    strips = temp_bytes()
    assert whole > 100 << 20 and strips < 0.8 * whole, (strips, whole)


def test_flipped_transform_is_the_flipped_kernels():
    # The input gradient's convolution by the flipped, transposed kernel, from the forward transform permuted,
    # equals the one from that kernel's own transform (the same numbers, so to float32 rounding).
    rng = np.random.default_rng(3)
    dy = jnp.asarray(rng.standard_normal((1, 7, 6, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.float32)
    pad = jnp.pad(dy, ((0, 0), (2, 2), (2, 2), (0, 0)))
    flipped = conv.winograd_kernel(jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2))
    ref = conv.conv3x3_valid(pad, jnp.flip(k, (0, 1)).transpose(0, 1, 3, 2))
    got = conv._winograd_valid(pad, conv.winograd_kernel(k), None, flipped=True)
    np.testing.assert_allclose(got, conv._winograd_valid(pad, flipped, None), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_small_channel_layers_stay_direct():
    x = jnp.ones((1, 8, 8, 128))
    k = jnp.full((3, 3, 128, 16), 0.01)
    np.testing.assert_array_equal(np.asarray(conv.conv3x3(x, k, algorithm="winograd")),
                                  np.asarray(conv.conv3x3(x, k)))


def test_unknown_algorithm_is_an_error():
    with pytest.raises(ValueError, match="conv_algorithm"):
        vgg.forward({}, jnp.zeros((1, 32, 32, 3)), ("relu1_1",), conv_algorithm="fft")


def test_objective_value_and_gradient_match_direct():
    params = weights.random_params(0)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-100, 100, (40, 48, 3)), jnp.float32)
    c = jnp.asarray(rng.uniform(-100, 100, (40, 48, 3)), jnp.float32)
    out = {}
    for alg in ("direct", "winograd"):
        s = Settings(content_layers=("relu4_2",), style_layers=("relu1_1", "relu3_1", "relu4_1", "relu5_1"),
                     content_weight=5.0, style_weight=100.0, tv_weight=1e-3, conv_algorithm=alg)
        obj = Objective.from_settings(s)
        targets = make_targets(obj, params, c, [c * 0.5], weights=s)
        out[alg] = jax.jit(obj.value_and_grad)(params, x, targets)
    (td, gd), (tw, gw) = out["direct"], out["winograd"]
    assert list(tw) == list(td) == ["total", "content", "style", "tv"]
    for name in td:
        assert float(tw[name]) == pytest.approx(float(td[name]), rel=1e-5)
    # Through 16 layers, ReLUs whose input is within rounding of 0 switch either way, so the gradients
    # of two float32 implementations part more than the values: measured 3.4e-4 relative L2 here (the
    # PyTorch reference and nst_jax's direct convolution: ~2e-3 at 256 px, see BENCHMARKS.md).
    assert float(jnp.linalg.norm(gw - gd) / jnp.linalg.norm(gd)) < 2e-3
    cosine = float(jnp.vdot(gw, gd) / (jnp.linalg.norm(gw) * jnp.linalg.norm(gd)))
    assert cosine > 0.99999


def test_prepared_params_give_the_same_loss_without_transforming_kernels_per_evaluation():
    """Objective.prepare computes the Winograd kernel transforms once: the same terms and gradient, no kernel
    transform left in the evaluation's program, and preparing twice changes nothing."""
    params = weights.random_params(0)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-100, 100, (24, 32, 3)), jnp.float32)
    s = Settings(content_layers=("relu4_2",), style_layers=("relu3_1", "relu4_1"), content_weight=1.0,
                 style_weight=10.0, tv_weight=0.0, conv_algorithm="winograd")
    obj = Objective.from_settings(s)
    targets = make_targets(obj, params, x * 0.3, [x * 0.5], weights=s)
    prepared = obj.prepare(params)
    assert vgg.WINOGRAD_KEY in prepared["params"]["conv4_1"] and vgg.WINOGRAD_KEY not in prepared["params"]["conv2_1"]
    again = obj.prepare(prepared)
    (u,) = prepared["params"]["conv4_1"][vgg.WINOGRAD_KEY]  # the forward transform only
    np.testing.assert_array_equal(u, conv.winograd_kernel(params["params"]["conv4_1"]["kernel"]))
    assert u.shape == (16, 256, 512)
    (t0, g0), (t1, g1) = (jax.jit(obj.value_and_grad)(p, x, targets) for p in (params, prepared))
    for name in t0:
        assert float(t1[name]) == pytest.approx(float(t0[name]), rel=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(jnp.abs(g0).max()))

    def kernel_transforms(p):  # einsums with the 4x3 transform matrix G on a (3, 3, C_in, C_out) kernel
        text = str(jax.make_jaxpr(obj.value_and_grad)(p, x, targets))
        return text.count("f32[4,3]")

    assert kernel_transforms(params) > 0 and kernel_transforms(prepared) == 0
    assert again is prepared and dataclasses.replace(obj, conv_algorithm="direct").prepare(params) is params


def test_auto_is_winograd_on_cpu():
    assert conv.resolve_algorithm("auto") == ("winograd" if jax.default_backend() == "cpu" else "direct")
    assert conv.resolve_algorithm("direct") == "direct"


def test_float64_agrees_to_rounding():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        from nst_jax import conv
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((1, 9, 7, 256)))
        k = jnp.asarray(rng.standard_normal((3, 3, 256, 8)) * 0.05)
        yd, yw = conv.conv3x3(x, k), conv.conv3x3(x, k, algorithm="winograd")
        assert yw.dtype == jnp.float64
        print(float(jnp.abs(yw - yd).max() / jnp.abs(yd).max()))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.strip()) < 1e-13


def test_bfloat16_input_keeps_dtype():
    x = jnp.ones((1, 6, 6, 256), jnp.bfloat16)
    k = jnp.full((3, 3, 256, 4), 0.01, jnp.float32)
    y = conv.conv3x3(x, k, algorithm="winograd")
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(conv.conv3x3(x, k), np.float32), rtol=2e-2)
