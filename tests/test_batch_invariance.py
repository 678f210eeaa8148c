"""Batch invariance: with the default settings, an image's stylization is bit-identical whatever else is in its batch.

A batch job must not make an image's output depend on which other images happened to share its compiled
batch: its neighbours, its position, the batch size. neural-style's L-BFGS takes unit steps without a line
search and turns any last-bit difference in a gradient into visible pixel differences within a few
iterations, so equality is asserted bit for bit, not to a tolerance. On CPU the batch engine gets this by
running every image with the single-image program (:mod:`nst_jax.batch`): under ``jax.vmap``,
XLA:CPU's batched reductions and the Winograd products (the default convolution for the deep layers,
``conv_algorithm="auto"``) round differently for different batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import nst_jax
from nst_jax import batch, images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
SHAPE = (96, 128)  # 128 px long side; block 5 runs on 6x8 maps
# Default settings (conv_algorithm="auto", neural-style's L-BFGS); random weights keep it offline.
SETTINGS = dict(weights="random", image_size=max(SHAPE), num_iterations=15, print_every=5)

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu",
    reason="batch invariance is a CPU property: elsewhere batches are vmapped, and GPU/TPU libraries choose "
           "their algorithms per shape")


@pytest.fixture(scope="module")
def contents():
    """Four different 96x128 content images: three regions of a photo (one mirrored) and a painting."""
    tub = images.load_image(EXAMPLES / "tubingen.jpg")
    h, w = tub.shape[:2]
    regions = (tub[:, : int(w * 0.7)], tub[int(h * 0.3):, int(w * 0.2):][:, ::-1], tub[: int(h * 0.6)])
    return [batch.fit_to_size(np.ascontiguousarray(img), SHAPE)
            for img in (*regions, images.load_image(STYLE))]


def _assert_identical(result, reference, where):
    assert [r.iteration for r in result.history] == [r.iteration for r in reference.history] == [0, 5, 10, 15]
    for rec, ref in zip(result.history, reference.history):
        for name in ("total", "content", "style", "tv"):
            assert getattr(rec, name) == getattr(ref, name), f"{where}: {name} loss at iteration {rec.iteration}"
    diff = float(np.abs(result.array - reference.array).max()) * 255
    assert np.array_equal(result.array, reference.array), f"{where}: pixels differ by up to {diff:.3g}/255"


def test_each_image_is_bit_identical_alone_and_in_any_batch(contents):
    stylizer = batch.BatchStylizer(STYLE, batch_size=len(contents), **SETTINGS)
    assert stylizer.objective.conv_algorithm == "winograd"  # the CPU default under test

    def run(order):
        """Stylizes ``contents[order]`` as one compiled batch, in that order; results by image index."""
        (chunk, outcomes, _), = stylizer.iter_results([contents[i] for i in order])
        assert chunk == list(range(len(order)))
        return dict(zip(order, outcomes))

    alone = {i: run([i])[i] for i in range(len(contents))}
    # A batch of one is the single-image call.
    _assert_identical(nst_jax.stylize(contents[0], STYLE, progress=False, **SETTINGS), alone[0], "nst_jax.stylize")
    # Every image in a batch of 2, 3 or 4, in another position and with other neighbours than before.
    for order in ([0, 1], [2, 0], [1, 3, 2], [3, 2, 1, 0]):
        for i, result in run(order).items():
            _assert_identical(result, alone[i], f"image {i} in batch {order}")
