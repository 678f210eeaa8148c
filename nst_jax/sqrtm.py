"""Square roots of symmetric positive semi-definite matrices, for the Wasserstein-2 style loss.

* :func:`newton_schulz`: the coupled Newton-Schulz iteration (Higham 2008, eq. 6.35), after scaling by the
  Frobenius norm. Matrix products only, so it runs on any accelerator and under ``vmap`` (``jax.scipy``'s
  ``sqrtm`` is CPU-only and has no batching rule worth using).
* :func:`trace_sqrtm`: ``tr(sqrt(A))`` with the exact, cheap gradient ``A^(-1/2) / 2``, taken from the
  inverse square root the coupled iteration computes anyway, instead of differentiating through the
  iterations.
* :func:`sqrtm_eigh`: the square root by an eigendecomposition, for targets (computed once, no gradient).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

#: Newton-Schulz iterations. A scaled eigenvalue ``l / |A|_F`` grows ~2.25x per iteration while small, then
#: converges quadratically: 20 iterations resolve eigenvalues down to ~1e-7 |A|_F; smaller ones count as ~0.
#: More do not help in float32: an ``A`` formed in float32 has eigenvalues of rounding noise (measured
#: +-5e-9 |A|_F for rank-deficient covariances, e.g. deep layers of small images), and the iteration
#: multiplies a negative one by ~2.25 per step until it diverges (after ~24 iterations). Measured on VGG-19
#: activations at 32-128 px, ``tr(sqrt(A))`` is then within ~1e-3 (mostly 1e-4) of float64's.
ITERATIONS = 20

_HIGHEST = jax.lax.Precision.HIGHEST  # an iteration amplifies rounding: no reduced-precision (TF32) passes


def newton_schulz(a: jax.Array, iterations: int = ITERATIONS) -> tuple[jax.Array, jax.Array]:
    """``(sqrt(A), inverse sqrt(A))`` of a symmetric positive semi-definite ``(n, n)`` matrix.

    With ``Y_0 = A / |A|_F``, ``Z_0 = I``: ``T = (3 I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``; then ``Y``
    tends to ``sqrt(Y_0)`` and ``Z`` to its inverse (scaled back by ``|A|_F``). Eigenvalues far below float32's
    resolution stay underestimated (their square roots too), which also keeps the inverse bounded.
    """
    n = a.shape[-1]
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    norm = jnp.sqrt(jnp.sum(jnp.square(a)))
    norm = jnp.where(norm > 0, norm, 1.0)  # A = 0: sqrt 0, and a finite (meaningless) inverse
    eye = jnp.eye(n, dtype=a.dtype)

    def body(_, yz):
        y, z = yz
        t = 0.5 * (3.0 * eye - jnp.matmul(z, y, precision=_HIGHEST))
        return jnp.matmul(y, t, precision=_HIGHEST), jnp.matmul(t, z, precision=_HIGHEST)

    y, z = jax.lax.fori_loop(0, iterations, body, (a / norm, eye))
    root = jnp.sqrt(norm)
    return y * root, z / root


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def trace_sqrtm(a: jax.Array, iterations: int = ITERATIONS) -> jax.Array:
    """``tr(sqrt(A))`` of a symmetric positive semi-definite matrix (:func:`newton_schulz`).

    The gradient is ``d tr(sqrt(A)) / dA = A^(-1/2) / 2``, with the inverse square root of the same
    iteration: exact where the iteration has converged, bounded where it has not (eigenvalues below
    float32's resolution), and it costs no backward pass through the iterations.
    """
    return jnp.trace(newton_schulz(a, iterations)[0])


def _trace_sqrtm_fwd(a, iterations):
    root, inverse = newton_schulz(a, iterations)
    return jnp.trace(root), inverse


def _trace_sqrtm_bwd(iterations, inverse, g):
    return (g * 0.25 * (inverse + inverse.T),)  # symmetrized: A^(-1/2) / 2


trace_sqrtm.defvjp(_trace_sqrtm_fwd, _trace_sqrtm_bwd)


def sqrtm_eigh(a: jax.Array) -> jax.Array:
    """The symmetric square root of a symmetric positive semi-definite matrix by ``eigh`` (negative rounding
    noise in the eigenvalues clipped to 0). For targets, computed once; not differentiated."""
    a = 0.5 * (a + a.T)
    vals, vecs = jnp.linalg.eigh(a)
    return jnp.matmul(vecs * jnp.sqrt(jnp.maximum(vals, 0.0)), vecs.T, precision=_HIGHEST)
