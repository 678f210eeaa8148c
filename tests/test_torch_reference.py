"""nst_jax against an independent PyTorch implementation (scripts/torch_reference.py).

On a tiny 48x40 problem with random VGG-19 weights: the objective's terms and gradient
equal neural-style-pt's math in PyTorch, and nst_jax's default L-BFGS (no line search)
follows torch.optim.LBFGS's iterates as neural-style-pt configures it.

How far the L-BFGS trajectories track (measured on this problem, 2 AMD EPYC cores): the
objectives agree to ~1e-7 relative in float32 and ~1e-16 in float64; L-BFGS then
amplifies rounding differences (summation order in the convolutions): float32 losses stay
within ~1e-6 relative for 10 iterations, float64 within ~1e-14 for 24. The float32 iterates
are more sensitive: how XLA fuses the layers around a convolution changes its rounding, and
with the reshape+max pooling the float32 iterates part by 3e-4 (relative L2) at iteration 3
and 2e-3 at 10 (with lax.reduce_window pooling: 6e-6 at 10), while the float64 iterates
still agree to ~1e-14. So the algorithm is pinned by the float64 run (tolerance 1e-10, far
below the 1e-3..1 gaps an algorithmic difference, e.g. a skipped curvature pair handled
differently, produces within one or two iterations); the float32 run checks losses to 1e-4
and iterates to 1e-2.

Needs torch (optional: ``pip install torch``, CPU build); skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import nst_jax  # noqa: E402
from nst_jax import optim, weights  # noqa: E402
from nst_jax.objective import Objective, make_targets  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import torch_reference as tr  # noqa: E402

H, W = 48, 40
TERMS = ("total", "content", "style", "tv")
TERM_RTOL = 1e-4
GRAD_MIN_COSINE = 0.9999
LBFGS_ITERATIONS = {"float32": 10, "float64": 12}
LBFGS_LOSS_RTOL = {"float32": 1e-4, "float64": 1e-11}
LBFGS_X_RTOL = {"float32": 1e-2, "float64": 1e-10}  # relative L2 distance of the iterates

def problem(dtype: str = "float32"):
    """Random weights, noise content/style images (Caffe-space scale), neural-style's tiny random init."""
    np_dtype = np.dtype(dtype)
    params = weights.random_params(0)
    rng = np.random.default_rng(1)
    content = (rng.random((H, W, 3)) * 255 - 120).astype(np_dtype)
    style = (rng.random((H, W, 3)) * 255 - 120).astype(np_dtype)
    x0 = (0.001 * rng.standard_normal((H, W, 3))).astype(np_dtype)
    # parity: pin full precision, XLA's convolution and torch's history storage
    settings = nst_jax.Settings(image_size=max(H, W), precision="highest", conv_algorithm="direct",
                                lbfgs_history_dtype="float32")
    objective = Objective.from_settings(settings)
    jparams = jax.tree.map(lambda a: jnp.asarray(a, np_dtype), params)
    targets = make_targets(objective, jparams, jnp.asarray(content), [jnp.asarray(style)], weights=settings)
    tobj = tr.TorchObjective(params, content, [style], content_weight=settings.content_weight,
                             style_weight=settings.style_weight, tv_weight=settings.tv_weight, dtype=dtype)
    return settings, objective, jparams, targets, tobj, x0


def lbfgs_trajectories(dtype: str, n: int, prob=None) -> dict:
    """Losses and iterates of n L-BFGS iterations of both implementations from the same x0."""
    settings, objective, params, targets, tobj, x0 = prob or problem(dtype)
    spec = optim.SolverSpec.from_settings(settings)
    assert spec.linesearch == "none" and spec.history == 100 and spec.learning_rate == 1.0
    stepper = optim.single_image_stepper(objective, spec, params, targets, loop="step")
    state = stepper.init(jnp.asarray(x0))
    jax_losses, jax_xs = [float(state.terms.total)], [np.asarray(state.x)]
    for _ in range(n):
        state = stepper.advance(state, 1)
        jax_losses.append(float(state.terms.total))
        jax_xs.append(np.asarray(state.x))

    img = tobj.image(x0).requires_grad_(True)
    torch_losses, torch_xs = [], []
    evaluate = tobj.closure_for(img, torch_losses)

    def closure():
        torch_xs.append(tr.to_hwc(img))
        return evaluate()

    tr.make_lbfgs(img, max_iter=n, history_size=100, lr=1.0).step(closure)  # neural-style-pt's use
    torch_xs.append(tr.to_hwc(img))
    torch_losses.append(tobj.total(torch_xs[-1]))
    assert len(torch_losses) == len(jax_losses) == n + 1
    loss_rel = [abs(a - b) / abs(b) for a, b in zip(jax_losses, torch_losses)]
    x_rel = [float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) for a, b in zip(jax_xs, torch_xs)]
    return {"jax": jax_losses, "torch": torch_losses, "loss_rel": loss_rel, "x_rel": x_rel}


@pytest.fixture(scope="module", autouse=True)
def float64_run():
    """Starts the float64 trajectories in a subprocess (jax_enable_x64 is process-wide) at the start of this
    module, so that it compiles and runs while the float32 tests do; :func:`test_lbfgs_follows_torch_float64`
    collects it."""
    n = LBFGS_ITERATIONS["float64"]
    code = ("import jax, json, sys; jax.config.update('jax_enable_x64', True); "
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import test_torch_reference as t; "
            f"print('RESULT' + json.dumps(t.lbfgs_trajectories('float64', {n})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def f32():
    return problem("float32")


@pytest.fixture(scope="module")
def f32_value_and_grad(f32):
    """nst_jax's and the reference's terms and gradients at x0 (one compile, shared by two tests)."""
    _, objective, params, targets, tobj, x0 = f32
    terms, g = jax.jit(objective.value_and_grad)(params, jnp.asarray(x0), targets)
    ref_terms, ref_g = tobj.value_and_grad(x0)
    return terms, np.asarray(g, np.float64).ravel(), ref_terms, ref_g.astype(np.float64).ravel()


def test_objective_terms_match_torch(f32_value_and_grad):
    terms, _, ref, _ = f32_value_and_grad
    for name in TERMS:
        got, want = float(getattr(terms, name)), ref[name]
        assert want > 0, name
        assert abs(got - want) <= TERM_RTOL * abs(want), (name, got, want)


def test_gradient_matches_torch(f32_value_and_grad):
    terms, g, ref_terms, ref_g = f32_value_and_grad
    cosine = g @ ref_g / (np.linalg.norm(g) * np.linalg.norm(ref_g))
    assert cosine > GRAD_MIN_COSINE, cosine
    assert np.linalg.norm(g - ref_g) <= 1e-3 * np.linalg.norm(ref_g)
    assert abs(float(terms.total) - ref_terms["total"]) <= TERM_RTOL * ref_terms["total"]


def test_torch_reference_layers_and_layout():
    """The reference's own conventions: OIHW weights, layer order, stops after the deepest layer asked for."""
    params = weights.random_params(0)
    w = tr.to_torch_weights(params)
    assert w["conv1_1"][0].shape == (64, 3, 3, 3) and w["conv5_4"][0].shape == (512, 512, 3, 3)
    k = params["params"]["conv2_1"]["kernel"]
    assert np.array_equal(w["conv2_1"][0].numpy()[7, 5], k[:, :, 5, 7])  # O=7, I=5 <- HWIO [:, :, 5, 7]
    x = tr.to_nchw(np.zeros((H, W, 3), np.float32))
    feats = tr.vgg_features(w, x, ["relu1_1", "pool2"])
    assert feats["relu1_1"].shape == (1, 64, H, W) and feats["pool2"].shape == (1, 128, H // 4, W // 4)


def test_lbfgs_follows_torch_float32(f32):
    r = lbfgs_trajectories("float32", LBFGS_ITERATIONS["float32"], f32)
    assert max(r["loss_rel"]) <= LBFGS_LOSS_RTOL["float32"], r
    assert max(r["x_rel"]) <= LBFGS_X_RTOL["float32"], r
    assert r["torch"][-1] < r["torch"][0]  # the run makes progress: not a trivially flat trajectory


def test_lbfgs_follows_torch_float64(float64_run):
    """Float64: rounding no longer hides anything, only algorithmic differences would remain."""
    out, err = float64_run.communicate(timeout=300)
    assert float64_run.returncode == 0, err[-3000:]
    r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[len("RESULT"):])
    assert max(r["loss_rel"]) <= LBFGS_LOSS_RTOL["float64"], r
    assert max(r["x_rel"]) <= LBFGS_X_RTOL["float64"], r
    assert r["torch"][-1] < r["torch"][0]
