"""Shared test setup: small, CPU-friendly, no network."""

import os
from pathlib import Path

import pytest

# Keras 3 is a test-only reference implementation; use its JAX backend (no TensorFlow needed).
os.environ.setdefault("KERAS_BACKEND", "jax")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED_IMAGES = ROOT.parent / "shared" / "images"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
    """Drops JAX's compiled programs after each test module: the suite compiles hundreds of different programs
    (every loss structure and image shape), and keeping them all would let one process grow for the whole run."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
