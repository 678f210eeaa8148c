"""scripts/memory_breakdown.py at 64 px: each component is positive and the sizes follow from the shapes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import memory_breakdown as mb  # noqa: E402


def _shape_hw(size: int) -> tuple[int, int]:
    """tubingen's canvas at long side ``size``, computed here from the file (W >= H)."""
    w, h = Image.open(ROOT / "examples" / "tubingen.jpg").size
    assert w >= h
    return round(h * size / w), size


def test_components_follow_from_the_shapes():
    res = mb.jax_components(mb.settings_for(64), mb.content_aspect(), compile=False)
    h, w = _shape_hw(64)
    assert tuple(res["shape_hw"]) == (h, w)
    image = h * w * 3 * 4  # float32
    assert res["image"] == image
    # the two ring buffers: history_size pairs of image-sized float32 arrays, by construction
    assert res["lbfgs_history"] == 2 * 100 * image // 2  # bfloat16 (the default), 2 bytes a value
    # the rest of the state: x, grad, the previous x and grad, 100 rho values, scalars and the loss terms
    assert 4 * image + 100 * 4 <= res["step_state_other"] <= 4 * image + 100 * 4 + 256
    assert res["state"] == res["lbfgs_history"] + res["step_state_other"]
    # VGG-19's 16 convolutions: 3x3 kernels and biases, float32
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    assert res["params"] == 4 * sum(9 * a * b + b for a, b in zip(chans[:-1], chans[1:]))
    # Winograd F(2x2, 3x3): 16 values per kernel's 9, for the layers from conv3_2 (>= 256 input channels)
    # up to conv5_1 (the deepest style layer), the forward kernel transform only (one array)
    winograd_layers = [(256, 256)] * 3 + [(256, 512)] + [(512, 512)] * 4
    assert res["winograd"] == sum(16 * a * b * 4 for a, b in winograd_layers)
    # activations up to relu5_1: one per conv (its ReLU's output), per block
    n_convs, widths = (2, 2, 4, 4, 1), (64, 128, 256, 512, 512)
    act, hh, ww = 0, h, w
    for b, (n, c) in enumerate(zip(n_convs, widths)):
        act += n * hh * ww * c
        if b < 4:
            hh, ww = hh // 2, ww // 2
    assert res["deepest_layer"] == "relu5_1"
    assert res["activations"] == 4 * act
    # the Gram targets of 5 style layers dominate (C x C each) and the content target relu4_2
    grams = sum(c * c for c in (64, 128, 256, 512, 512))
    assert res["targets"] >= 4 * (grams + (h // 8) * (w // 8) * 512)


def test_compiled_step_accounting_small_network():
    # A shallow loss (relu1_1 only) keeps the compilation short; the accounting is the same.
    s = mb.settings_for(32, content_layers="relu1_1", style_layers="relu1_1")
    res = mb.jax_components(s, mb.content_aspect())
    step = res["step"]
    for key in ("argument", "output", "temp"):
        assert step[key] > 0, key
    # the step's state is donated: its outputs are written in place of the state argument
    assert step["alias"] == res["state"]
    assert step["argument"] >= res["state"] + res["targets"]
    assert step["peak"] == step["argument"] + step["output"] + step["temp"] - step["alias"]
    assert res["lbfgs_history"] == 2 * 100 * int(np.prod(res["shape_hw"])) * 3 * 2  # bfloat16


def test_markdown_lists_each_size_and_side():
    res = {"date": "d", "machine": "m", "command": "c", "weights": "random", "history": 100, "sizes": [64],
           "jax": {"64": {"shape_hw": [48, 64], "params": 2 * mb.MB, "step": {"temp": mb.MB}}},
           "torch": {"64": {"params": 3 * mb.MB}}}
    text = mb.markdown(res)
    assert "| component (MB) | ours 64 | PyTorch 64 |" in text
    assert "| VGG-19 params (16 convolutions) | 2.0 | 3.0 |" in text
    assert "| compiled step: temporaries | 1.0 | - |" in text
    assert "Winograd" not in text  # a component neither side has is left out
