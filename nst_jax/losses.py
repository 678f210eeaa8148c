"""Loss terms of neural style transfer as small pure functions.

Conventions follow jcjohnson/neural-style and its PyTorch port neural-style-pt,
so the same weights give the same pictures:

* features ``F`` are one image's activations ``(H, W, C)``;
* ``gram(F) = F^T F / (C H W)`` (neural-style-pt divides the Gram by the
  number of elements of the layer's output); the cross-layer Gram of two layers
  (Novak & Nikulin) ``F_a^T up(F_b) / (M_a sqrt(K_a K_b))`` reduces to it for a
  layer with itself (:func:`cross_gram`);
* content loss ``mean((F - P)^2)`` and style loss ``mean((G - A)^2)`` over the
  ``C x C`` entries (``nn.MSELoss``), each multiplied by its weight outside;
* total variation ``sum |x[i+1, j] - x[i, j]| + sum |x[i, j+1] - x[i, j]|``
  over the Caffe-space image (an L1 total variation, as neural-style-pt);
* the Wasserstein-2 style loss of crowsonkb/style-transfer-pytorch: the squared W2 distance between
  Gaussians with the activations' means and covariances (:func:`w2_loss`);
* Novak & Nikulin's experimental variants (§4 of the paper): amplified activations (:func:`amplify`), the
  gradient mask from the content image (:func:`top_fraction_mask`, :func:`mask_gradient`), Gram cubes
  (:func:`gram_cube`) and content-aware Gram matrices (:func:`content_aware_gram`).

Every function works on one image; batches come from ``jax.vmap``. How these become the terms of an
objective (targets, weights, blending) is :mod:`nst_jax.terms`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from nst_jax import sqrtm

#: The W2 loss's ridge: ``eps * I`` is added to every covariance (crowsonkb/style-transfer-pytorch's 1e-4).
W2_EPS = 1e-4
#: Newton-Schulz iterations of the W2 loss's matrix square root.
W2_ITERATIONS = sqrtm.ITERATIONS
#: The most entries a third-order statistic (:func:`gram_cube`, :func:`content_aware_gram`) may have: 2^26, 256 MiB
#: in float32 for each of the target, the image's statistic and its gradient. Settings refuse larger ones
#: (relu4_1's Gram cube and its content-aware Gram with relu4_2 have 2^27 entries).
MAX_STATISTIC_ENTRIES = 2**26
#: Entries of the largest intermediate :func:`triple_correlation` holds at once (``pixels x K_a x chunk``).
TRIPLE_CHUNK_ENTRIES = 2**24


def gram(features: jax.Array, shift: float = 0.0, precision=None) -> jax.Array:
    """Normalized Gram matrix of one layer's activations (:func:`cross_gram` of the layer with itself).

    Args:
        features: ``(H, W, C)`` activations.
        shift: added to every activation first; Novak & Nikulin's activation
            shift (``s = -1`` in the paper). ``0`` gives the classic Gram.
        precision: matmul precision (``jax.lax.Precision`` or ``None``).

    Returns:
        ``(C, C)`` matrix ``(F + s)^T (F + s) / (C H W)``.
    """
    return cross_gram(features, features, shift, precision)


def cross_gram(shallow: jax.Array, deep: jax.Array, shift: float = 0.0, precision=None, *, blur: int = 0,
               adjacent: bool = False, power: float = 1.0) -> jax.Array:
    """Normalized cross-layer Gram matrix of two layers' activations (Novak & Nikulin §3.4-3.6, §4.3).

    ``G = (F_a + s)^T blur^n(up(F_b + s)) / (M_a sqrt(K_a K_b))`` with ``F`` flattened to ``(M, K)`` (``M``
    pixels, ``K`` channels): ``up`` resizes the deeper map to the shallower one's exact size by nearest
    neighbour (``jax.image.resize``; odd sizes included), ``blur`` is a 3x3 box filter (:func:`box_blur`).
    The shift comes first, then the upsampling, then the blurs. With ``shallow is deep`` and no blur this is
    the classic normalized Gram ``(F + s)^T (F + s) / (C H W)`` of neural-style-pt, computed the same way.
    With ``power`` p != 1 both factors are amplified activations (:func:`amplify`) before the shift:
    ``(sign(F)|F|^p + s)``.

    Args:
        shallow: ``(H_a, W_a, K_a)`` activations of the shallower layer (the larger map).
        deep: ``(H_b, W_b, K_b)`` activations of the deeper layer, ``H_b <= H_a``, ``W_b <= W_a``.
        shift: the activation shift ``s``, added to both factors.
        precision: matmul precision (``jax.lax.Precision`` or ``None``).
        blur: how many times the upsampled deeper map is blurred (``|l - k|`` for conv layers l, k; §3.6).
        adjacent: also correlate each position of the shallower map with the 8 neighbours in the deeper one
            (§4.3, "adjacent activations"; experimental): one Gram per offset ``(dy, dx)`` in ``{-1, 0, 1}^2``,
            ``G[i, j, 1 + dy, 1 + dx] = sum_{y, x} A_i(y, x) B_j(y + dy, x + dx)`` with zero fill outside the
            map, each normalized as above.
        power: the exponent of amplified activations (§4.2; experimental); 1 leaves them as they are.

    Returns:
        ``(K_a, K_b)``, or ``(K_a, K_b, 3, 3)`` with ``adjacent``; in at least float32.
    """
    h, w, ka = shallow.shape
    kb = deep.shape[-1]
    a = _shifted(amplify(shallow, power), shift)
    b = a if deep is shallow else _shifted(amplify(deep, power), shift)
    if b.shape[:2] != (h, w):
        b = jax.image.resize(b, (h, w, kb), "nearest")
    # Low-precision (bf16) features are multiplied as they are but accumulated and returned in float32.
    out = jnp.promote_types(jnp.promote_types(shallow.dtype, deep.dtype), jnp.float32)
    if blur:
        b = box_blur(b.astype(out), blur)
    # C H W exactly (an integer) for a layer with itself, as neural-style-pt divides.
    norm = h * w * ka if ka == kb else h * w * math.sqrt(ka * kb)
    f = a.reshape(h * w, ka)
    if not adjacent and b is a:
        return self_gram(f, precision, out) / norm
    if not adjacent:
        return jnp.matmul(f.T, b.reshape(h * w, kb), precision=precision, preferred_element_type=out) / norm
    padded = jnp.pad(b, ((1, 1), (1, 1), (0, 0)))
    rows = [jnp.stack([jnp.matmul(f.T, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w].reshape(h * w, kb),
                                  precision=precision, preferred_element_type=out) for dx in (-1, 0, 1)], axis=-1)
            for dy in (-1, 0, 1)]
    return jnp.stack(rows, axis=-2) / norm


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def self_gram(f: jax.Array, precision=None, out=jnp.float32) -> jax.Array:
    """``f^T f`` of a ``(M, K)`` matrix (unnormalized), accumulated and returned in ``out``.

    Its gradient is one matrix product, ``f (g + g^T)``, where differentiating ``f^T f`` as a product of two
    factors gives two (``f g^T + f g``), each as large as the layer's activations: at the shallow layers of a
    large image those are the largest temporaries of the backward pass.
    """
    return jnp.matmul(f.T, f, precision=precision, preferred_element_type=out)


def _self_gram_fwd(f, precision, out):
    return self_gram(f, precision, out), f


def _self_gram_bwd(precision, out, f, g):
    return (jnp.matmul(f, (g + g.T).astype(out), precision=precision, preferred_element_type=out).astype(f.dtype),)


self_gram.defvjp(_self_gram_fwd, _self_gram_bwd)


def _shifted(features: jax.Array, shift: float) -> jax.Array:
    return features + shift if shift else features


def amplify(features: jax.Array, power: float = 1.0) -> jax.Array:
    """Amplified activations (Novak & Nikulin §4.2, experimental): ``sign(F) |F|^p``, i.e. ``F^p`` for ReLU outputs
    (the sign keeps pre-ReLU conv outputs defined for any p). Strong responses grow relative to weak ones, and
    the gradient of a statistic of them is scaled by ``p |F|^(p-1)``. ``power == 1`` returns ``features`` itself,
    so every statistic is then computed exactly as without the option."""
    if power == 1:
        return features
    return jnp.sign(features) * jnp.abs(features) ** power


def triple_correlation(a: jax.Array, b: jax.Array, c: jax.Array, precision=None) -> jax.Array:
    """``T[i, j, k] = sum_m a[m, i] b[m, j] c[m, k]`` of three ``(M, K)`` matrices (unnormalized), in at least
    float32.

    No two-factor product avoids an intermediate with ``M`` rows, so the third factor's columns go in chunks:
    each chunk is one matrix product ``(a * c_k)^T b``, with at most :data:`TRIPLE_CHUNK_ENTRIES` entries in
    ``a * c_k`` at once (one chunk, no loop, for small maps).

    Returns:
        ``(K_a, K_b, K_c)``.
    """
    out = jnp.promote_types(jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), c.dtype), jnp.float32)
    a, b, c = a.astype(out), b.astype(out), c.astype(out)
    m, ka = a.shape
    kc = c.shape[1]

    def one(column):  # (M,) one column of c -> (K_a, K_b)
        return jnp.matmul((a * column[:, None]).T, b, precision=precision, preferred_element_type=out)

    chunk = max(1, TRIPLE_CHUNK_ENTRIES // max(1, m * ka))
    t = jax.vmap(one)(c.T) if chunk >= kc else jax.lax.map(one, c.T, batch_size=chunk)  # (K_c, K_a, K_b)
    return jnp.moveaxis(t, 0, -1)


def gram_cube(features: jax.Array, shift: float = 0.0, precision=None, power: float = 1.0) -> jax.Array:
    """Gram cube of one layer (Novak & Nikulin §4.5, "triple correlations"; experimental).

    ``G[i, j, k] = sum_{y, x} f_i f_j f_k / (M K^(3/2))`` with ``f = sign(F)|F|^p + s`` (:func:`amplify`, then the
    activation shift), ``M = H W`` pixels, ``K`` channels: the mean over pixels of the triple product divided by
    ``K^(3/2)``, as the Gram ``F^T F / (K M)`` is the mean of the double product divided by ``K``, so that the two
    are of a comparable scale. ``K^3`` entries (relu1_1: 262144, relu3_1: 16.8M); settings refuse more than
    :data:`MAX_STATISTIC_ENTRIES`.

    Args:
        features: ``(H, W, K)`` activations.
        shift: the activation shift ``s``.
        precision: matmul precision.
        power: the exponent of amplified activations (1: none).

    Returns:
        ``(K, K, K)``, in at least float32.
    """
    h, w, k = features.shape
    f = _shifted(amplify(features, power), shift).reshape(h * w, k)
    return triple_correlation(f, f, f, precision) / (h * w * k ** 1.5)


def content_aware_gram(features: jax.Array, content: jax.Array, shift: float = 0.0, precision=None,
                       power: float = 1.0) -> jax.Array:
    """Content-aware Gram matrices of one layer (Novak & Nikulin §4.4; experimental).

    ``G[i, j, c] = sum_{y, x} f_i(y, x) f_j(y, x) up(C_c)(y, x) / (M K)`` with ``f = sign(F)|F|^p + s`` the
    (amplified, then shifted) style factors, ``C`` the activations of a content layer (relu4_2), unshifted so the
    weighting stays non-negative, ``up`` the nearest resize to the style layer's size (as :func:`cross_gram`):
    slice ``c`` is the layer's Gram with every position weighted by content feature ``c`` there. With ``C`` all
    ones every slice is the classic Gram ``f^T f / (K M)``. ``K^2 K_C`` entries (relu3_1 with relu4_2: 33.5M);
    settings refuse more than :data:`MAX_STATISTIC_ENTRIES`.

    Args:
        features: ``(H, W, K)`` activations of the style layer.
        content: ``(H_c, W_c, K_C)`` activations of the content layer, ``H_c <= H``, ``W_c <= W``.
        shift: the activation shift ``s`` of the style factors.
        precision: matmul precision.
        power: the exponent of amplified activations of the style factors (1: none).

    Returns:
        ``(K, K, K_C)``, in at least float32.
    """
    h, w, k = features.shape
    kc = content.shape[-1]
    if content.shape[:2] != (h, w):
        content = jax.image.resize(content, (h, w, kc), "nearest")
    f = _shifted(amplify(features, power), shift).reshape(h * w, k)
    return triple_correlation(f, f, content.reshape(h * w, kc), precision) / (h * w * k)


def top_fraction_mask(features: jax.Array, fraction: float) -> jax.Array:
    """The gradient mask of Novak & Nikulin §4.1 (experimental) from one layer of the content image: ``F >= t``
    with ``t`` the ``n``-th largest entry of the whole layer, ``n = ceil(fraction * F.size)`` (at least 1), so
    that the fraction ``fraction`` of its largest entries passes. Entries equal to ``t`` pass too: where many
    activations are 0 (ReLU), a ``t`` of 0 passes all of them.

    Returns:
        A boolean array of ``features``' shape.
    """
    flat = features.reshape(-1)
    n = min(flat.size, max(1, math.ceil(fraction * flat.size * (1 - 1e-12))))  # 0.3 * 10 is 3.0000000000000004
    threshold = jnp.sort(flat)[flat.size - n]
    return features >= threshold


def mask_gradient(features: jax.Array, mask: jax.Array) -> jax.Array:
    """``M * F + stop_gradient((1 - M) * F)`` for a boolean mask ``M`` (as a select): the same values, but a loss
    of the result passes gradient to ``F`` only where ``M`` is true (Novak & Nikulin §4.1's masked style
    gradient)."""
    return jnp.where(mask, features, jax.lax.stop_gradient(features))


def box_blur(features: jax.Array, times: int = 1) -> jax.Array:
    """``times`` passes of a 3x3 mean filter over the spatial axes of ``(H, W, C)`` activations: zero padding,
    every output divided by 9 (at the borders too), same size out. The blur of Novak & Nikulin's blurred
    correlations (§3.6): a deeper feature is correlated with the average of the shallower one over the 3x3
    patch it was computed from."""
    for _ in range(times):
        padded = jnp.pad(features, ((1, 1), (1, 1), (0, 0)))
        rows = padded[:-2] + padded[1:-1] + padded[2:]  # separable: 3 rows, then 3 columns
        features = (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 9
    return features


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference between activations and the content target (unweighted), in at least float32."""
    out = jnp.promote_types(jnp.promote_types(features.dtype, target.dtype), jnp.float32)
    return jnp.mean(jnp.square(features.astype(out) - target.astype(out)))


def style_loss(gram_matrix: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared difference between two Gram matrices over their entries (``C x C``; ``K_a x K_b`` for a
    cross-layer Gram, times 9 with adjacent offsets; ``K^3`` for a Gram cube, ``K^2 K_C`` for content-aware
    Gram matrices) (unweighted)."""
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
