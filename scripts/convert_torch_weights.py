"""Converts a PyTorch VGG-19 state dict to nst_jax's canonical ``.npz`` (see ``weights/README.md``).

Usage::

    python scripts/convert_torch_weights.py vgg19-d01eb7cb.pth vgg19_caffe.npz --source caffe
    python scripts/convert_torch_weights.py vgg19-dcbb9e9d.pth vgg19_torchvision.npz --source torchvision
    NST_JAX_WEIGHTS=vgg19_caffe.npz nst-jax ...        # or load_vgg19("vgg19_caffe.npz")

Sources (both state dicts name the 16 convolutions ``features.N.weight`` / ``features.N.bias``):

* ``caffe``: neural-style-pt's ``vgg19-d01eb7cb.pth``, the VGG team's Caffe
  weights converted to PyTorch. Kernels OIHW, input BGR in the Caffe space (our
  input convention): only the OIHW -> HWIO transpose is needed. These are the
  same weights as the Keras file.
* ``torchvision``: ``torchvision.models.vgg19`` weights (``vgg19-dcbb9e9d.pth``),
  retrained by the PyTorch team (not the VGG team's weights; style-transfer
  results differ). Kernels OIHW, input RGB in [0, 1] normalized by
  ``(x - mean) / std``. Besides the transpose, ``conv1_1`` is re-expressed for
  Caffe-space BGR input (see :func:`torchvision_conv1_1_to_caffe`).

torch is needed only to read ``.pth`` files (``pip install torch`` or the
``torch`` extra); the conversion itself is NumPy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nst_jax.vgg import CONV_LAYERS, IMAGENET_BGR_MEAN, check_params, param_shapes
from nst_jax.weights import load_npz, save_npz

#: Index of each convolution in ``torchvision.models.vgg19().features`` (convs, ReLUs and pools interleaved);
#: neural-style-pt's Caffe conversion uses the same indices.
TORCH_FEATURE_INDEX = dict(zip(CONV_LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)))

#: torchvision's input normalization, RGB order, for images in [0, 1].
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

SOURCES = ("caffe", "torchvision")


def oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """PyTorch kernel (C_out, C_in, kH, kW) -> ours (kH, kW, C_in, C_out). Both are cross-correlations."""
    assert kernel.ndim == 4, kernel.shape
    out = np.transpose(kernel, (2, 3, 1, 0))
    assert out.shape == (kernel.shape[2], kernel.shape[3], kernel.shape[1], kernel.shape[0])
    return out


def torchvision_conv1_1_to_caffe(kernel_hwio_rgb: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-expresses torchvision's first convolution for Caffe-space BGR input.

    torchvision feeds ``t[c] = (rgb01[c] - mean[c]) / std[c]`` (c in R, G, B). Our input is
    ``x[j] = 255 * rgb01[2 - j] - M[j]`` (j in B, G, R; ``M`` the Caffe BGR mean), so
    ``t[c] = x[2 - c] / (255 std[c]) + (M[2 - c] / 255 - mean[c]) / std[c]``. Substituting into
    ``sum K[., c] t[c] + b`` gives a kernel with its input channels flipped (RGB -> BGR) and
    divided by ``255 std``, and the constant term folded into the bias.

    This is exact up to float rounding wherever the 3x3 window lies inside the image, and with
    reflect padding everywhere. With zero padding, a padded tap means "pixel = torchvision mean"
    in torchvision but "pixel = Caffe mean" here: the two means differ by less than 0.5/255 per
    channel, so conv1_1's one-pixel border differs by that much (negligible, but not zero).
    """
    assert kernel_hwio_rgb.shape == (3, 3, 3, 64), kernel_hwio_rgb.shape
    assert bias.shape == (64,), bias.shape
    k = kernel_hwio_rgb.astype(np.float64)
    mean = np.asarray(TORCHVISION_MEAN_RGB, np.float64)
    std = np.asarray(TORCHVISION_STD_RGB, np.float64)
    caffe_mean_rgb = np.asarray(IMAGENET_BGR_MEAN, np.float64)[::-1]
    offset_rgb = (caffe_mean_rgb / 255.0 - mean) / std  # t[c] when x = 0
    new_bias = bias.astype(np.float64) + np.einsum("hwco,c->o", k, offset_rgb)
    new_kernel = (k / (255.0 * std)[None, None, :, None])[:, :, ::-1, :]  # scale per RGB channel, then RGB -> BGR
    assert new_kernel.shape == kernel_hwio_rgb.shape
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def state_dict_to_params(state: Mapping[str, np.ndarray], source: str) -> dict:
    """The params pytree for a VGG-19 state dict of NumPy arrays (``features.N.weight`` OIHW, ``.bias``).

    Args:
        state: the state dict (classifier entries are ignored).
        source: ``"caffe"`` (BGR, Caffe-space input) or ``"torchvision"`` (RGB, normalized input).

    Raises:
        ValueError: unknown source, a missing convolution or a wrong shape (named).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    convs = {k for k in state if k.startswith("features.")}
    expected = {f"features.{i}.{p}" for i in TORCH_FEATURE_INDEX.values() for p in ("weight", "bias")}
    if convs != expected:
        raise ValueError(f"not a VGG-19 state dict: missing {sorted(expected - convs)}, unexpected "
                         f"{sorted(convs - expected)}. Expected torchvision's vgg19 or neural-style-pt's "
                         "vgg19-d01eb7cb.pth.")
    shapes = param_shapes()
    params: dict[str, dict[str, np.ndarray]] = {}
    for name, idx in TORCH_FEATURE_INDEX.items():
        weight = np.asarray(state[f"features.{idx}.weight"], np.float32)
        bias = np.asarray(state[f"features.{idx}.bias"], np.float32)
        k_hwio = shapes[name]["kernel"]
        if weight.shape != (k_hwio[3], k_hwio[2], k_hwio[0], k_hwio[1]):  # OIHW before the transpose
            raise ValueError(f"features.{idx}.weight ({name}) has shape {weight.shape}, expected OIHW "
                             f"{(k_hwio[3], k_hwio[2], k_hwio[0], k_hwio[1])}.")
        kernel = oihw_to_hwio(weight)
        if source == "torchvision" and name == "conv1_1":
            kernel, bias = torchvision_conv1_1_to_caffe(kernel, bias)
        params[name] = {"kernel": np.ascontiguousarray(kernel), "bias": bias}
    result = {"params": params}
    check_params(result)  # shapes after the transpose
    return result


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        sys.exit("reading .pth files needs PyTorch: pip install torch (CPU build is enough), "
                 "or pip install 'nst-jax[torch]'.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        sys.exit(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict() instead.")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="PyTorch state dict (.pth)")
    parser.add_argument("output", type=Path, help="canonical .npz to write")
    parser.add_argument("--source", choices=SOURCES, required=True,
                        help="caffe: neural-style-pt vgg19-d01eb7cb.pth (BGR, Caffe space); "
                             "torchvision: torchvision vgg19 (RGB, mean/std normalized)")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"input file not found: {args.input}")
    params = state_dict_to_params(_load_state_dict(args.input), args.source)
    save_npz(params, args.output)
    reloaded = load_npz(args.output)  # the written file reads back to the same arrays
    for name in CONV_LAYERS:
        for kind in ("kernel", "bias"):
            assert np.array_equal(reloaded["params"][name][kind], params["params"][name][kind]), (name, kind)
    print(f"wrote {args.output} ({args.source} VGG-19, Caffe-space BGR input)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
