"""3x3 convolutions of VGG-19: XLA's direct convolution, or Winograd's minimal filtering F(2x2, 3x3).

Winograd (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes each
2x2 output tile from a 4x4 input tile with 16 element-wise products in a transformed domain instead
of 36: over a layer, 16 batched ``(tiles, C_in) @ (C_in, C_out)`` matrix products replace the 9
taps of the direct convolution, 2.25x fewer multiply-adds. The transforms around them are additions
(memory-bound), so it can only pay where the channel counts are large: on XLA:CPU it is faster than
``lax.conv_general_dilated`` forward+backward for layers with 256 and 512 input channels and slower with
64 and 128 (measured, see BENCHMARKS.md), hence :data:`WINOGRAD_MIN_CHANNELS`. The kernel transforms are
the same in every evaluation of a stylization, so they are computed once per set of weights
(:func:`winograd_kernels`, :func:`nst_jax.vgg.prepare_params`); computed inside every evaluation they cost
more than Winograd saves. With them precomputed it is the default on CPU (``Settings.conv_algorithm="auto"``,
see :func:`resolve_algorithm`); GPU/TPU libraries pick their own algorithm, so there the default is direct.

The backward pass (a ``custom_vjp``) is Winograd as well: the input gradient of a 3x3 "valid"
convolution is the "full" convolution of the output gradient with the flipped, transposed kernel.
The kernel gradient, which style transfer never asks for, is the direct convolution's.

Accuracy: in float32 the results differ from the direct convolution by about 1e-6 of the output's
magnitude (the transforms only add and halve), which is the order of float32 reassociation.

Batch invariance: in the library's batches on CPU, an image's convolutions give the same bits whatever
other images share its batch. The functions here do not ensure it by themselves: under ``jax.vmap``
(kernel unbatched) the 16 products become ``(16, B*tiles, C_in) @ (16, C_in, C_out)``, the batch folded into
the rows, and XLA:CPU's GEMM blocks and sums differently for different ``B`` (the rows of one image then
differ in their last bits from its own ``(16, tiles, C_in)`` product); vmapped reductions (the losses,
L-BFGS's dot products) depend on the batch size in the same way. Folding is what accelerators want (larger
GEMMs), so it is kept here; the CPU batch engine (:mod:`nst_jax.batch`) instead runs every image with the
single-image program, so that each image's products have its own shape, the one ``nst_jax.stylize`` uses
(tests/test_batch_invariance.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def resolve_algorithm(algorithm: str) -> str:
    """``"auto"`` -> the algorithm that measured fastest on the default backend (see BENCHMARKS.md):
    ``"winograd"`` on CPU (with the kernel transforms precomputed), ``"direct"`` on GPUs/TPUs (their libraries
    choose their own convolution algorithms). Other values are returned as they are."""
    if algorithm != "auto":
        return algorithm
    return "winograd" if jax.default_backend() == "cpu" else "direct"


#: Layers with fewer input channels than this use the direct convolution under "winograd" (measured).
WINOGRAD_MIN_CHANNELS = 256

# Kernel transform G of F(2x2, 3x3): U = G g G^T (4x4 per input/output channel pair).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def conv3x3_valid(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """Direct "valid" 3x3 convolution, NHWC x HWIO -> NHWC (``(H-2, W-2)`` output)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=precision)


def winograd_kernel(kernel: jax.Array) -> jax.Array:
    """The F(2x2, 3x3) kernel transform ``G g G^T`` of an HWIO kernel: ``(16, C_in, C_out)``."""
    return jnp.einsum("ai,ijco,bj->abco", _G, kernel, _G).reshape(16, kernel.shape[2], kernel.shape[3])


class WinogradKernels(NamedTuple):
    """A layer's kernel transform, computed once per set of weights (:func:`winograd_kernels`) instead of in
    every evaluation. The input gradient's (of the flipped, transposed kernel) is not stored: it is the same
    numbers, permuted (see :func:`_winograd_valid`)."""

    forward: jax.Array  # (16, C_in, C_out)


def winograd_kernels(kernel: jax.Array) -> WinogradKernels:
    """:class:`WinogradKernels` of an HWIO kernel."""
    return WinogradKernels(winograd_kernel(kernel))


# The flipped kernel's transform from the kernel's: G reverse(g) = P (G g) with P swapping rows 0 and 3 of the
# 4x4 transform (G's rows 1 and 2 are symmetric, rows 0 and 3 each other's mirror), so
# winograd_kernel(flip(g)) = P U P^T, i.e. U's 16 entries in the order _FLIP (an involution).
_FLIP = tuple(4 * p + q for p in (3, 1, 2, 0) for q in (3, 1, 2, 0))


#: The most bytes that one Winograd convolution's transformed input or products (``16 x tiles x channels``,
#: four times the layer's input or output) may take at once; a larger layer is convolved in strips of rows.
WINOGRAD_STRIP_BYTES = 64 << 20


def _winograd_valid(xp: jax.Array, u: jax.Array, precision, flipped: bool = False) -> jax.Array:
    """:func:`_winograd_tiles` (same arguments and result) in horizontal strips of output rows when the
    transformed domain of the whole layer would take more than :data:`WINOGRAD_STRIP_BYTES`.

    The transformed input and the 16 products are transients four times the size of the layer's input and
    output; at large images they were the largest buffers of the step (BENCHMARKS.md, "Compiler memory
    returned, Winograd in strips"). Each strip reads its rows of ``xp`` with the 2-row overlap the 3x3 window
    needs, and XLA runs the strips one after the other, so about one strip's transients are alive at once;
    the outputs are concatenated. The numbers are those of the whole layer (each output tile's products
    are the same, the matrix products only split into row blocks). Under ``jax.vmap`` the bound is per
    image. Layers within the bound (at 512x384 every layer of VGG-19) are convolved in one piece.
    """
    n, hp, wp, c = xp.shape
    th, tw = -(-(hp - 2) // 2), -(-(wp - 2) // 2)  # output tiles (2x2)
    c_max = max(c, u.shape[1], u.shape[2])
    tile_row_bytes = 16 * n * tw * c_max * jnp.dtype(xp.dtype).itemsize
    rows = max(1, WINOGRAD_STRIP_BYTES // tile_row_bytes)  # tile rows per strip
    if rows >= th:
        return _winograd_tiles(xp, u, precision, flipped)
    # Strip i makes output rows [2 rows i, 2 rows (i + 1)) from input rows [2 rows i, 2 rows (i + 1) + 2).
    return jnp.concatenate([_winograd_tiles(xp[:, 2 * rows * i:2 * rows * (i + 1) + 2], u, precision, flipped)
                            for i in range(-(-th // rows))], axis=1)


def _winograd_tiles(xp: jax.Array, u: jax.Array, precision, flipped: bool = False) -> jax.Array:
    """"Valid" 3x3 convolution of ``xp`` ``(N, H+2, W+2, C_in)`` by F(2x2, 3x3) with the transformed kernel
    ``u`` ``(16, C_in, C_out)`` -> ``(N, H, W, C_out)``. With ``flipped``: the convolution by the flipped,
    transposed kernel (the input gradient's) of the kernel whose transform ``u`` is (``(16, C_out, C_in)``
    then): the products use ``u`` transposed and its 16 entries permuted (``_FLIP``), which is done by
    ordering the input tiles' transforms and reading the products in that order, so no permuted or
    transposed copy of ``u`` is made."""
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
    order = _FLIP if flipped else range(16)
    v = jnp.stack([v[k] for k in order]).reshape(16, n * th * tw, c)
    u = u.astype(xp.dtype)
    if flipped:  # v[k] @ u[k]^T, contracting over u's last axis (C_in of the forward kernel)
        m = jax.lax.dot_general(v, u, (((2,), (2,)), ((0,), (0,))), precision=precision)
    else:
        m = jnp.matmul(v, u, precision=precision)
    m = m.reshape(16, n, th, tw, -1)
    m = [m[k] for k in order]  # _FLIP is its own inverse: entry k of the product is at position _FLIP[k]
    m = [m[4 * a:4 * a + 4] for a in range(4)]
    # Output transform A^T m A, A^T = [[1,1,1,0],[0,1,-1,-1]].
    s0 = [x + y + z for x, y, z in zip(m[0], m[1], m[2], strict=True)]
    s1 = [x - y - z for x, y, z in zip(m[1], m[2], m[3], strict=True)]
    y = jnp.stack([jnp.stack([s[0] + s[1] + s[2], s[1] - s[2] - s[3]], axis=3) for s in (s0, s1)], axis=2)
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _winograd(xp, kernel, transforms, precision):
    return _winograd_valid(xp, transforms.forward, precision)


def _winograd_fwd(xp, kernel, transforms, precision):
    return _winograd_valid(xp, transforms.forward, precision), (xp, kernel, transforms)


def _winograd_bwd(precision, res, dy):
    xp, kernel, transforms = res
    dxp = _winograd_valid(jnp.pad(dy, ((0, 0), (2, 2), (2, 2), (0, 0))), transforms.forward, precision, flipped=True)
    _, vjp_kernel = jax.vjp(lambda k: conv3x3_valid(xp, k, precision), kernel)
    # The transforms are functions of the kernel: its whole gradient is returned for the kernel itself.
    return dxp, vjp_kernel(dy)[0], jax.tree.map(jnp.zeros_like, transforms)


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


def winograd3x3_valid(xp: jax.Array, kernel: jax.Array, precision=None,
                      transforms: WinogradKernels | None = None) -> jax.Array:
    """"Valid" 3x3 convolution (NHWC x HWIO) by Winograd F(2x2, 3x3), forward and backward.

    ``transforms``: :func:`winograd_kernels` of ``kernel`` if already computed (they are the same in every
    evaluation of a stylization); computed here otherwise.
    """
    if transforms is None:
        transforms = winograd_kernels(kernel)
    return _winograd(xp, kernel, transforms, precision)


def conv3x3(x: jax.Array, kernel: jax.Array, *, padding: str = "zero", precision=None,
            algorithm: str = "direct", transforms: WinogradKernels | None = None) -> jax.Array:
    """VGG's 3x3 convolution (stride 1, output the input's size) without bias.

    Args:
        x: ``(N, H, W, C_in)``.
        kernel: ``(3, 3, C_in, C_out)`` (cast to ``x``'s dtype).
        padding: ``"zero"`` or ``"reflect"``.
        precision: a ``jax.lax.Precision`` or None.
        algorithm: ``"direct"`` (XLA's convolution) or ``"winograd"`` (F(2x2, 3x3) for layers with at
            least :data:`WINOGRAD_MIN_CHANNELS` input channels, direct below).
        transforms: with ``"winograd"``, the kernel's precomputed :func:`winograd_kernels` (optional).
    """
    kernel = kernel.astype(x.dtype)
    winograd = algorithm == "winograd" and x.shape[-1] >= WINOGRAD_MIN_CHANNELS
    if padding == "zero" and not winograd:
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=precision)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect" if padding == "reflect" else "constant")
    if winograd:
        return winograd3x3_valid(xp, kernel, precision, transforms)
    return conv3x3_valid(xp, kernel, precision)
