"""An independent PyTorch (eager) implementation of nst_jax's objective, for parity checks and benchmarks.

This is neural-style-pt's math written from its definitions, sharing nothing with
``nst_jax`` but the params pytree (so both run the same network):

* VGG-19's 16 convolutions from ``params["params"]["convB_I"]["kernel"]`` (HWIO,
  float32, input channels in BGR order: the Caffe weights) transposed to
  PyTorch's OIHW; ``F.conv2d(padding=1)``, ReLU, ``F.max_pool2d(2, 2)`` (or
  ``F.avg_pool2d``). Input: one Caffe-space image (BGR, 0..255, ImageNet mean
  subtracted), NCHW.
* content loss ``cw * MSE(F, P)``; Gram ``F F^T / (C H W)`` (neural-style-pt's
  ``GramMatrix(input).div(input.nelement())``); style loss ``sw * MSE(G, A)``;
  total variation ``tvw * (sum |dy| + sum |dx|)`` on the Caffe-space image.
* :func:`lbfgs`: ``torch.optim.LBFGS(max_iter=N, tolerance_grad=-1,
  tolerance_change=-1, history_size=100, lr=1)`` driven by one ``step(closure)``
  call, as neural-style-pt does; :func:`adam`: ``torch.optim.Adam`` stepped N times.

Images cross the boundary as NumPy ``(H, W, 3)`` Caffe-space arrays (nst_jax's
layout); the NCHW conversion happens here.

torch is an optional, benchmark/test-only dependency: ``pip install torch`` (CPU
build) or the ``torch`` extra. Used by ``scripts/benchmark.py --reference torch``
and ``tests/test_torch_reference.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: VGG-19's blocks: (block, number of 3x3 convolutions, output channels). Written out here, not imported,
#: so that this reference stays independent of nst_jax.vgg.
_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 4, 256), (4, 4, 512), (5, 4, 512))

#: Every named output of the network, in order: convB_I, reluB_I, ..., poolB.
LAYER_SEQUENCE: tuple[str, ...] = tuple(
    name for b, n, _ in _BLOCKS
    for name in [x for i in range(1, n + 1) for x in (f"conv{b}_{i}", f"relu{b}_{i}")] + [f"pool{b}"])

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def to_torch_weights(params: Mapping, dtype: torch.dtype = torch.float32
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """nst_jax params pytree -> ``{convB_I: (weight OIHW, bias)}`` torch tensors.

    Layout change (asserted): our kernels are HWIO ``(3, 3, C_in, C_out)``; ``F.conv2d`` wants OIHW
    ``(C_out, C_in, 3, 3)``. Both are cross-correlations, so a transpose is all it takes. conv1_1's input
    channels stay in BGR order: the reference is fed Caffe-space BGR images too.
    """
    p = params["params"]
    out = {}
    c_in = 3
    for b, n, c_out in _BLOCKS:
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            kernel = np.asarray(p[name]["kernel"], np.float32)
            bias = np.asarray(p[name]["bias"], np.float32)
            assert kernel.shape == (3, 3, c_in, c_out), (name, kernel.shape)
            assert bias.shape == (c_out,), (name, bias.shape)
            oihw = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))  # HWIO -> OIHW
            assert oihw.shape == (c_out, c_in, 3, 3), (name, oihw.shape)
            out[name] = (torch.from_numpy(oihw).to(dtype), torch.from_numpy(bias).to(dtype))
            c_in = c_out
    assert len(out) == 16, len(out)
    return out


def vgg_features(weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
                 layers: Sequence[str], pooling: str = "max") -> dict[str, torch.Tensor]:
    """Activations ``{layer: (1, C, H, W)}`` of a Caffe-space NCHW image; stops after the deepest layer."""
    wanted = set(layers)
    unknown = wanted - set(LAYER_SEQUENCE)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; valid: {LAYER_SEQUENCE}")
    last = max(LAYER_SEQUENCE.index(name) for name in wanted)
    feats = {}
    for name in LAYER_SEQUENCE[: last + 1]:
        if name.startswith("conv"):
            w, b = weights[name]
            x = F.conv2d(x, w, b, padding=1)
        elif name.startswith("relu"):
            x = F.relu(x)
        elif pooling == "max":
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        else:
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        if name in wanted:
            feats[name] = x
    return feats


def gram(f: torch.Tensor) -> torch.Tensor:
    """neural-style-pt's GramMatrix divided by ``input.nelement()``: ``F F^T / (C H W)``."""
    _, c, h, w = f.shape
    flat = f.reshape(c, h * w)
    return torch.mm(flat, flat.t()) / f.nelement()


def tv(x: torch.Tensor) -> torch.Tensor:
    """neural-style-pt's TVLoss without the weight: ``sum |x[i+1,j] - x[i,j]| + sum |x[i,j+1] - x[i,j]|``."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum() + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum()


def to_nchw(x_hwc, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """nst_jax's ``(H, W, 3)`` Caffe-space image -> ``(1, 3, H, W)`` tensor (a copy)."""
    a = np.asarray(x_hwc, np.float64 if dtype == torch.float64 else np.float32)
    assert a.ndim == 3 and a.shape[-1] == 3, a.shape
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))[None]).to(dtype)


def to_hwc(t: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` tensor -> ``(H, W, 3)`` NumPy array."""
    return t.detach()[0].permute(1, 2, 0).contiguous().cpu().numpy()


class TorchObjective:
    """The neural-style loss of one image against fixed targets, in PyTorch eager mode.

    Args:
        params: nst_jax params pytree (see :func:`to_torch_weights`).
        content: ``(H, W, 3)`` Caffe-space content image.
        styles: Caffe-space style images (blended with equal weights, or ``blend_weights``).
        content_weight, style_weight, tv_weight: neural-style's ``-content_weight`` etc.
        dtype: ``"float32"`` or ``"float64"``.
        device: torch device of the computation (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, params, content, styles, *, content_layers=CONTENT_LAYERS, style_layers=STYLE_LAYERS,
                 content_weight=5.0, style_weight=100.0, tv_weight=1e-3, pooling="max", blend_weights=None,
                 dtype: str = "float32", device: str = "cpu"):
        self.dtype = _DTYPES[dtype]
        self.device = torch.device(device)
        self.weights = {k: (w.to(self.device), b.to(self.device))
                        for k, (w, b) in to_torch_weights(params, self.dtype).items()}
        self.content_layers, self.style_layers = tuple(content_layers), tuple(style_layers)
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.pooling = pooling
        self.layers = tuple(n for n in LAYER_SEQUENCE if n in set(self.content_layers) | set(self.style_layers))
        with torch.no_grad():
            cf = vgg_features(self.weights, self.image(content), self.content_layers, pooling)
            self.content_targets = {k: v.detach() for k, v in cf.items()}
            blend = list(blend_weights) if blend_weights is not None else [1.0] * len(styles)
            blend = [b / sum(blend) for b in blend]
            self.style_targets = {}
            for s, b in zip(styles, blend):
                sf = vgg_features(self.weights, self.image(s), self.style_layers, pooling)
                for k in self.style_layers:
                    g = gram(sf[k]) * b
                    self.style_targets[k] = g if k not in self.style_targets else self.style_targets[k] + g

    def image(self, x_hwc) -> torch.Tensor:
        """An ``(H, W, 3)`` NumPy image as this objective's ``(1, 3, H, W)`` tensor (dtype, device)."""
        return to_nchw(x_hwc, self.dtype).to(self.device)

    def terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms ``{"total", "content", "style", "tv"}`` of a ``(1, 3, H, W)`` image."""
        feats = vgg_features(self.weights, x, self.layers, self.pooling)
        content = sum(self.content_weight * F.mse_loss(feats[k], self.content_targets[k])
                      for k in self.content_layers)
        style = sum(self.style_weight * F.mse_loss(gram(feats[k]), self.style_targets[k])
                    for k in self.style_layers)
        tvl = self.tv_weight * tv(x)
        return {"total": content + style + tvl, "content": content, "style": style, "tv": tvl}

    def value_and_grad(self, x_hwc) -> tuple[dict[str, float], np.ndarray]:
        """Loss terms (floats) and the gradient of the total w.r.t. an ``(H, W, 3)`` image (NumPy)."""
        x = self.image(x_hwc).requires_grad_(True)
        t = self.terms(x)
        t["total"].backward()
        return {k: float(v.detach()) for k, v in t.items()}, to_hwc(x.grad)

    def closure_for(self, img: torch.Tensor, record: list | None = None):
        """neural-style-pt's ``feval``: zero the gradient, evaluate, backpropagate, return the loss."""
        def closure():
            if img.grad is not None:
                img.grad.zero_()
            loss = self.terms(img)["total"]
            loss.backward()
            if record is not None:
                record.append(float(loss.detach()))
            return loss
        return closure

    def total(self, x_hwc) -> float:
        """The total loss at an ``(H, W, 3)`` image (no gradient)."""
        with torch.no_grad():
            return float(self.terms(self.image(x_hwc))["total"])


def make_lbfgs(img: torch.Tensor, max_iter: int, history_size: int = 100, lr: float = 1.0) -> torch.optim.LBFGS:
    """torch.optim.LBFGS configured as neural-style-pt configures it (no line search, no tolerances)."""
    return torch.optim.LBFGS([img], lr=lr, max_iter=max_iter, tolerance_grad=-1, tolerance_change=-1,
                             history_size=history_size)


def lbfgs(objective: TorchObjective, x0, num_iterations: int, *, history_size: int = 100, lr: float = 1.0,
          final_loss: bool = True) -> tuple[np.ndarray, list[float], float]:
    """Runs neural-style-pt's L-BFGS for ``num_iterations`` from ``x0`` (one ``optimizer.step(closure)``).

    Returns:
        ``(x_N, losses, seconds)``: the final image ``(H, W, 3)``; ``losses[k]`` is the total loss at
        iterate ``x_k`` for ``k = 0..N`` (``losses[N]`` is one extra evaluation after the run, not timed,
        when ``final_loss``); ``seconds`` is the wall time of the ``step`` call.
    """
    img = objective.image(x0).requires_grad_(True)
    losses: list[float] = []
    opt = make_lbfgs(img, num_iterations, history_size, lr)
    t0 = time.perf_counter()
    opt.step(objective.closure_for(img, losses))  # evaluates x_0 .. x_{N-1}, moves to x_N
    seconds = time.perf_counter() - t0
    x_final = to_hwc(img)
    if final_loss:
        losses.append(objective.total(x_final))
    return x_final, losses, seconds


def adam(objective: TorchObjective, x0, num_iterations: int, *, lr: float = 10.0, betas=(0.9, 0.999),
         eps: float = 1e-8) -> tuple[np.ndarray, list[float], float]:
    """neural-style-pt's Adam loop (``optimizer.step(feval)`` N times). Returns ``(x_N, losses, seconds)``."""
    img = objective.image(x0).requires_grad_(True)
    losses: list[float] = []
    opt = torch.optim.Adam([img], lr=lr, betas=betas, eps=eps)
    closure = objective.closure_for(img, losses)
    t0 = time.perf_counter()
    for _ in range(num_iterations):
        opt.step(closure)
    seconds = time.perf_counter() - t0
    return to_hwc(img), losses, seconds
