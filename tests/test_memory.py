"""What the backward pass keeps and what the optimizer state holds: the memory savings, each checked against
the plain computation's values (float64 numpy) and against XLA's accounting of the compiled program."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import hostmem, losses, vgg


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_relu_values_and_gradient_from_its_output():
    x = np.array([-2.0, -0.5, 0.0, 0.0, 0.25, 3.0], np.float32)
    g = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32)
    y, vjp = jax.vjp(vgg.relu, jnp.asarray(x))
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    # The derivative is 0 at 0 (as jax.nn.relu's): the mask is y > 0, i.e. x > 0.
    np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], np.where(x > 0, g, 0))
    # Forward-mode agrees.
    _, t = jax.jvp(vgg.relu, (jnp.asarray(x),), (jnp.asarray(g),))
    np.testing.assert_array_equal(t, np.where(x > 0, g, 0))


def test_vgg_gradient_unchanged_by_the_relu():
    # The network's image gradient with vgg.relu equals the one with jax.nn.relu (same mask, same operations).
    rng = np.random.default_rng(0)
    weights = {name: (jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.1, jnp.float32),
                      jnp.asarray(rng.standard_normal(cout) * 0.1, jnp.float32))
               for name, (cin, cout) in list(vgg.CONV_CHANNELS.items())[:4]}
    x = jnp.asarray(rng.standard_normal((1, 32, 32, 3)) * 50, jnp.float32)

    def loss(img):
        f = vgg.forward(weights, img, ("relu1_2", "relu2_1"))
        return sum(jnp.sum(losses.gram(v[0]) ** 2) for v in f.values())

    ours = jax.jit(jax.grad(loss))(x)
    orig = vgg.relu
    try:
        vgg.relu = jax.nn.relu
        ref = jax.jit(jax.grad(loss))(x)
    finally:
        vgg.relu = orig
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref))))


def test_self_gram_value_and_gradient_against_float64():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((50, 6)).astype(np.float32)
    w = rng.standard_normal((6, 6)).astype(np.float32)  # not symmetric: both halves of the gradient matter
    f64, w64 = f.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(losses.self_gram(jnp.asarray(f)), f64.T @ f64, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda a: jnp.sum(losses.self_gram(a) * w))(jnp.asarray(f))
    # d/dF sum(W * F^T F) = F (W + W^T)
    np.testing.assert_allclose(grad, f64 @ (w64 + w64.T), rtol=1e-5, atol=1e-4)


def test_self_gram_backward_needs_no_activation_sized_temporary():
    # The product rule's gradient f g^T + f g holds two (M, K) products at once; self_gram's f (g + g^T) one,
    # which is the output. XLA's accounting of the compiled gradient says so.
    f = jnp.ones((128 * 128, 64))
    target = jnp.ones((64, 64))
    ours = _temp_bytes(jax.grad(lambda a: jnp.sum((losses.self_gram(a) - target) ** 2)), f)
    plain = _temp_bytes(jax.grad(lambda a: jnp.sum((jnp.matmul(a.T, a) - target) ** 2)), f)
    assert ours < 0.25 * f.nbytes <= plain, (ours, plain, f.nbytes)


_HEAP_CHECK = """
import numpy as np
from nst_jax import hostmem

def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])

big = np.ones(16 * 2**20 // 8)
del big  # glibc raises its mmap threshold to 16 MiB: the blocks below come from the heap from now on
blocks = [np.ones(2**20 // 8) for _ in range(200)]  # 200 MiB of 1 MiB blocks in the heap
keep = [np.ones(2**19 // 8) for _ in range(4)]  # on top of them: the heap's end cannot shrink past these
del blocks
before = rss()
did = hostmem.compact()
print(did, (before - rss()) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_compact_returns_freed_heap_memory(setting):
    # In a fresh process: 200 MiB freed in the middle of the heap stays in RSS until compact() returns it
    # (NST_JAX_MALLOC_COMPACT=0: nothing is returned).
    env = {**os.environ, "NST_JAX_MALLOC_COMPACT": setting, "PYTHONPATH": str(Path(hostmem.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", _HEAP_CHECK], capture_output=True, text=True, env=env, check=True)
    did, returned_mib = out.stdout.split("\n")[-2].split()
    assert did == str(setting == "1")
    if setting == "1":
        assert int(returned_mib) >= 150, out.stdout
    else:
        assert int(returned_mib) < 10, out.stdout


@pytest.mark.skipif(hostmem._libc() is None, reason="glibc's allocator only")
def test_compacting_after_compiles_trims_after_each_compilation_within_it(monkeypatch):
    # The listener reacts to jax's own compile event (the name is jax's, not ours: this checks that it still
    # fires), only inside the context, and nested contexts keep it until the outermost one ends.
    calls = []
    monkeypatch.setattr(hostmem, "compact", lambda: calls.append(1) or True)
    monkeypatch.setattr(hostmem, "COMPILE_TRIM_SECONDS", 0.0)

    def compile_new():  # a function jit has not seen, so that it compiles
        return jax.jit(lambda a: a * len(calls) + 1.0)(jnp.ones(3)).block_until_ready()

    compile_new()
    assert calls == []
    with hostmem.compacting_after_compiles():
        with hostmem.compacting_after_compiles():
            compile_new()
        assert len(calls) == 1
        compile_new()
        assert len(calls) == 2
    compile_new()
    assert len(calls) == 2
    monkeypatch.setattr(hostmem, "COMPILE_TRIM_SECONDS", 1e9)  # shorter compilations are let be
    with hostmem.compacting_after_compiles():
        compile_new()
    assert len(calls) == 2


def _two_loop(pairs, g):
    """neural-style's L-BFGS direction (float64) from the stored pairs, oldest first."""
    q, al = g.copy(), []
    for s, y in reversed(pairs):
        a = (s @ q) / (y @ s)
        al.append(a)
        q -= a * y
    s, y = pairs[-1]
    r = q * (y @ s) / (y @ y)
    for (s, y), a in zip(pairs, reversed(al)):
        r += (a - (y @ r) / (y @ s)) * s
    return r


def test_bfloat16_history_direction_against_float64():
    import ml_dtypes

    from nst_jax import optim

    rng = np.random.default_rng(0)
    n = 64
    m = rng.standard_normal((n, n))
    hess, b = m @ m.T / n + np.eye(n), rng.standard_normal(n)
    tx = optim.scale_by_lbfgs_neural_style(3, "bfloat16")
    x = rng.standard_normal(n).astype(np.float32)
    state = tx.init(jnp.asarray(x))
    assert state.s_memory.dtype == state.y_memory.dtype == jnp.uint16  # bfloat16's bit patterns
    assert state.rho_memory.dtype == jnp.float32
    pairs, prev = [], None
    for k in range(6):
        g = (hess @ x - b).astype(np.float32)
        d, state = tx.update(jnp.asarray(g), state, jnp.asarray(x))
        g64 = g.astype(np.float64)
        if prev is None:
            expected = min(1.0, 1.0 / np.abs(g64).sum()) * g64
        else:
            # each pair rounded to bfloat16 once, when stored; the last 3 kept
            rounded = [np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
                       for v in (x - prev[0], g - prev[1])]
            pairs = (pairs + [tuple(rounded)])[-3:]
            expected = _two_loop(pairs, g64)
        np.testing.assert_allclose(d, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(), err_msg=f"update {k}")
        prev = (x, g)
        x = (x - 0.5 * np.asarray(d)).astype(np.float32)


def test_bfloat16_history_halves_the_state():
    from nst_jax import Settings, optim
    from nst_jax.objective import Objective

    s = Settings(image_size=32, lbfgs_history=7)
    x = jax.ShapeDtypeStruct((24, 32, 3), jnp.float32)

    def history_bytes(dtype):
        spec = optim.SolverSpec.from_settings(s.replace(lbfgs_history_dtype=dtype))
        state = jax.eval_shape(optim.scale_by_lbfgs_neural_style(spec.history, spec.history_dtype).init, x)
        assert Objective.from_settings(s) is not None
        return sum(v.size * v.dtype.itemsize for v in (state.s_memory, state.y_memory))

    assert history_bytes("float32") == 2 * 7 * 24 * 32 * 3 * 4
    assert history_bytes("bfloat16") == 2 * 7 * 24 * 32 * 3 * 2
