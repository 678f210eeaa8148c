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
