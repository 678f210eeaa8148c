"""3x3 convolutions of VGG-19: XLA's direct convolution, or Winograd's minimal filtering F(2x2, 3x3).

Winograd (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes each
2x2 output tile from a 4x4 input tile with 16 element-wise products in a transformed domain instead
of 36: over a layer, 16 batched ``(tiles, C_in) @ (C_in, C_out)`` matrix products replace the 9
taps of the direct convolution, 2.25x fewer multiply-adds. The transforms around them are additions
(memory-bound), so it can only pay where the channel counts are large. On XLA:CPU (2-core AVX2
machine, see BENCHMARKS.md) single layers with 256 and 512 input channels ran 1.2-2x faster
forward+backward than ``lax.conv_general_dilated``, and slower with 64 and 128; the whole objective
measured 2% faster at 512 px and 8% slower at 256 px, so it is an option
(``Settings.conv_algorithm="winograd"``), not the default. GPU/TPU libraries pick their own algorithm.

The backward pass (a ``custom_vjp``) is Winograd as well: the input gradient of a 3x3 "valid"
convolution is the "full" convolution of the output gradient with the flipped, transposed kernel.
The kernel gradient, which style transfer never asks for, is the direct convolution's.

Accuracy: in float32 the results differ from the direct convolution by about 1e-6 of the output's
magnitude (the transforms only add and halve), which is the order of float32 reassociation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

#: Layers with fewer input channels than this use the direct convolution under "winograd" (measured).
WINOGRAD_MIN_CHANNELS = 256

# Kernel transform G of F(2x2, 3x3): U = G g G^T (4x4 per input/output channel pair).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def conv3x3_valid(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """Direct "valid" 3x3 convolution, NHWC x HWIO -> NHWC (``(H-2, W-2)`` output)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


def _winograd_valid(xp: jax.Array, kernel: jax.Array, precision) -> jax.Array:
    """"Valid" 3x3 convolution of ``xp`` ``(N, H+2, W+2, C_in)`` by F(2x2, 3x3) -> ``(N, H, W, C_out)``."""
    n, hp, wp, c = xp.shape
    h, w = hp - 2, wp - 2
    th, tw = -(-h // 2), -(-w // 2)  # output tiles; odd sizes are padded by one and cropped
    xp = jnp.pad(xp, ((0, 0), (0, 2 * th - h), (0, 2 * tw - w), (0, 0)))
    # Input transform B^T d B of every 4x4 tile (stride 2), B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]].
    d = [[xp[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)] for i in range(4)]
    rows = [[d[0][j] - d[2][j], d[1][j] + d[2][j], d[2][j] - d[1][j], d[1][j] - d[3][j]] for j in range(4)]
    v = []
    for r in range(4):
        t = [rows[j][r] for j in range(4)]
        v += [t[0] - t[2], t[1] + t[2], t[2] - t[1], t[1] - t[3]]
    v = jnp.stack(v).reshape(16, n * th * tw, c)
    u = jnp.einsum("ai,ijco,bj->abco", _G, kernel, _G).reshape(16, c, kernel.shape[-1]).astype(xp.dtype)
    m = jnp.matmul(v, u, precision=precision).reshape(4, 4, n, th, tw, -1)
    # Output transform A^T m A, A^T = [[1,1,1,0],[0,1,-1,-1]].
    s0, s1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]
    y = jnp.stack([jnp.stack([s[0] + s[1] + s[2], s[1] - s[2] - s[3]], axis=3) for s in (s0, s1)], axis=2)
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd(xp, kernel, precision):
    return _winograd_valid(xp, kernel, precision)


def _winograd_fwd(xp, kernel, precision):
    return _winograd_valid(xp, kernel, precision), (xp, kernel)


def _winograd_bwd(precision, res, dy):
    xp, kernel = res
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dxp = _winograd_valid(jnp.pad(dy, ((0, 0), (2, 2), (2, 2), (0, 0))), flipped, precision)
    _, vjp_kernel = jax.vjp(lambda k: conv3x3_valid(xp, k, precision), kernel)
    return dxp, vjp_kernel(dy)[0]


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


def winograd3x3_valid(xp: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """"Valid" 3x3 convolution (NHWC x HWIO) by Winograd F(2x2, 3x3), forward and backward."""
    return _winograd(xp, kernel, precision)


def conv3x3(x: jax.Array, kernel: jax.Array, *, padding: str = "zero", precision=None,
            algorithm: str = "direct") -> jax.Array:
    """VGG's 3x3 convolution (stride 1, output the input's size) without bias.

    Args:
        x: ``(N, H, W, C_in)``.
        kernel: ``(3, 3, C_in, C_out)`` (cast to ``x``'s dtype).
        padding: ``"zero"`` or ``"reflect"``.
        precision: a ``jax.lax.Precision`` or None.
        algorithm: ``"direct"`` (XLA's convolution) or ``"winograd"`` (F(2x2, 3x3) for layers with at
            least :data:`WINOGRAD_MIN_CHANNELS` input channels, direct below).
    """
    kernel = kernel.astype(x.dtype)
    winograd = algorithm == "winograd" and x.shape[-1] >= WINOGRAD_MIN_CHANNELS
    if padding == "zero" and not winograd:
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=precision)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect" if padding == "reflect" else "constant")
    return (winograd3x3_valid if winograd else conv3x3_valid)(xp, kernel, precision)
