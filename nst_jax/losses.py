"""Loss terms of neural style transfer as small pure functions.

Conventions follow jcjohnson/neural-style and its PyTorch port neural-style-pt,
so the same weights give the same pictures:

* features ``F`` are one image's activations ``(H, W, C)``;
* ``gram(F) = F^T F / (C H W)`` (neural-style-pt divides the Gram by the
  number of elements of the layer's output);
* content loss ``mean((F - P)^2)`` and style loss ``mean((G - A)^2)`` over the
  ``C x C`` entries (``nn.MSELoss``), each multiplied by its weight outside;
* total variation ``sum |x[i+1, j] - x[i, j]| + sum |x[i, j+1] - x[i, j]|``
  over the Caffe-space image (an L1 total variation, as neural-style-pt).

Every function works on one image; batches come from ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
