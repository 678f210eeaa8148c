"""Loss terms of neural style transfer as small pure functions.

Conventions follow jcjohnson/neural-style and its PyTorch port neural-style-pt,
so the same weights give the same pictures:

* features ``F`` are one image's activations ``(H, W, C)``;
* ``gram(F) = F^T F / (C H W)`` (neural-style-pt divides the Gram by the
  number of elements of the layer's output);
* content loss ``mean((F - P)^2)`` and style loss ``mean((G - A)^2)`` over the
  ``C x C`` entries (``nn.MSELoss``), each multiplied by its weight outside;
* total variation ``sum |x[i+1, j] - x[i, j]| + sum |x[i, j+1] - x[i, j]|``
  over the Caffe-space image (an L1 total variation, as neural-style-pt);
* the Wasserstein-2 style loss of crowsonkb/style-transfer-pytorch: the squared W2 distance between
  Gaussians with the activations' means and covariances (:func:`w2_loss`).

Every function works on one image; batches come from ``jax.vmap``. How these become the terms of an
objective (targets, weights, blending) is :mod:`nst_jax.terms`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from nst_jax import sqrtm

#: The W2 loss's ridge: ``eps * I`` is added to every covariance (crowsonkb/style-transfer-pytorch's 1e-4).
W2_EPS = 1e-4
#: Newton-Schulz iterations of the W2 loss's matrix square root.
W2_ITERATIONS = sqrtm.ITERATIONS


def gram(features: jax.Array, shift: float = 0.0, precision=None) -> jax.Array:
    """Normalized Gram matrix of one layer's activations.

    Args:
        features: ``(H, W, C)`` activations.
        shift: added to every activation first; Novak & Nikulin's activation
            shift (``s = -1`` in the paper). ``0`` gives the classic Gram.
        precision: matmul precision (``jax.lax.Precision`` or ``None``).

    Returns:
        ``(C, C)`` matrix ``(F + s)^T (F + s) / (C H W)``.
    """
    h, w, c = features.shape
    f = features.reshape(h * w, c)
    if shift:
        f = f + shift
    # Low-precision (bf16) features are multiplied as they are but accumulated and returned in float32.
    out = jnp.promote_types(features.dtype, jnp.float32)
    return jnp.matmul(f.T, f, precision=precision, preferred_element_type=out) / (c * h * w)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference between activations and the content target (unweighted), in at least float32."""
    out = jnp.promote_types(jnp.promote_types(features.dtype, target.dtype), jnp.float32)
    return jnp.mean(jnp.square(features.astype(out) - target.astype(out)))


def style_loss(gram_matrix: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference between two Gram matrices over their ``C x C`` entries (unweighted)."""
    return jnp.mean(jnp.square(gram_matrix - target))


def tv_loss(image: jax.Array) -> jax.Array:
    """L1 total variation of one ``(H, W, C)`` image: sum of absolute neighbour differences."""
    dy = image[1:, :, :] - image[:-1, :, :]
    dx = image[:, 1:, :] - image[:, :-1, :]
    return jnp.sum(jnp.abs(dy)) + jnp.sum(jnp.abs(dx))


def blend_grams(grams: list[jax.Array], weights) -> jax.Array:
    """Weighted sum of Gram matrices (several style images); ``weights`` must already sum to 1."""
    out = grams[0] * weights[0]
    for g, b in zip(grams[1:], weights[1:]):
        out = out + g * b
    return out


def moments(features: jax.Array) -> dict[str, jax.Array]:
    """Mean and second raw moment of one layer's activations over its pixels, in at least float32.

    Unlike covariances, these average across images, so they are what several style images blend.

    Returns:
        ``{"mean": (C,) E[f], "second": (C, C) E[f f^T]}``.
    """
    h, w, c = features.shape
    f = features.reshape(h * w, c).astype(jnp.promote_types(features.dtype, jnp.float32))
    second = jnp.matmul(f.T, f, precision=jax.lax.Precision.HIGHEST) / (h * w)
    return {"mean": jnp.mean(f, axis=0), "second": second}


def w2_target(stats: dict[str, jax.Array], eps: float = W2_EPS) -> dict[str, jax.Array]:
    """The W2 loss's target from (blended) :func:`moments`: the style covariance ``S_s = E[f f^T] - mu mu^T +
    eps I`` enters the loss only through its trace and its square root, both computed here, once.

    Returns:
        ``{"mean": (C,), "cov_sqrt": (C, C) sqrt(S_s), "cov_trace": () tr(S_s)}``.
    """
    mean, second = stats["mean"], stats["second"]
    cov = second - jnp.outer(mean, mean) + eps * jnp.eye(mean.shape[0], dtype=second.dtype)
    return {"mean": mean, "cov_sqrt": sqrtm.sqrtm_eigh(cov), "cov_trace": jnp.trace(cov)}


def w2_loss(features: jax.Array, target: dict[str, jax.Array], eps: float = W2_EPS,
            iterations: int = W2_ITERATIONS) -> jax.Array:
    """Squared Wasserstein-2 distance between Gaussians fitted to the activations and to the style (unweighted).

    ``mean_c (mu - mu_s)^2 + tr(S_s + S - 2 sqrt(sqrt(S_s) S sqrt(S_s))) / C`` with the covariances
    ``S = E[(f - mu)(f - mu)^T] + eps I`` (crowsonkb/style-transfer-pytorch's ``StyleLossW2``). The square
    root is a Newton-Schulz iteration (:func:`nst_jax.sqrtm.trace_sqrtm`).

    Args:
        features: ``(H, W, C)`` activations.
        target: :func:`w2_target` of the style.
        eps: the ridge added to the covariance (the target's own was added when it was made).
        iterations: Newton-Schulz iterations.
    """
    h, w, c = features.shape
    f = features.reshape(h * w, c).astype(jnp.promote_types(features.dtype, jnp.float32))
    mean = jnp.mean(f, axis=0)
    centered = f - mean  # the covariance from centered activations: no cancellation against mu mu^T
    cov = jnp.matmul(centered.T, centered, precision=jax.lax.Precision.HIGHEST) / (h * w)
    cov = cov + eps * jnp.eye(c, dtype=cov.dtype)
    root = target["cov_sqrt"]
    m = jnp.matmul(jnp.matmul(root, cov, precision=jax.lax.Precision.HIGHEST), root,
                   precision=jax.lax.Precision.HIGHEST)
    m = 0.5 * (m + m.T)
    mean_term = jnp.mean(jnp.square(mean - target["mean"]))
    cov_term = (target["cov_trace"] + jnp.trace(cov) - 2.0 * sqrtm.trace_sqrtm(m, iterations)) / c
    return mean_term + cov_term
