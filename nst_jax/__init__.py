"""nst_jax: neural style transfer (Gatys et al., neural-style, Novak & Nikulin) in JAX.

Quick use::

    import nst_jax
    result = nst_jax.stylize("photo.jpg", "painting.jpg", image_size=256, num_iterations=300)
    result.image.save("out.png")
"""

from nst_jax.api import Result, stylize
from nst_jax.batch import stylize_batch, stylize_grid
from nst_jax.config import SettingError, Settings
from nst_jax.modes import reconstruct, texture
from nst_jax.optim import NonFiniteLossError, Record
from nst_jax.vgg import CONV_LAYERS, LAYERS, FeatureExtractor, deprocess, preprocess
from nst_jax.weights import WeightsError, load_vgg19

__all__ = [
    "CONV_LAYERS", "LAYERS", "FeatureExtractor", "NonFiniteLossError", "Record", "Result", "SettingError", "Settings",
    "WeightsError", "deprocess", "load_vgg19", "preprocess", "reconstruct", "stylize", "stylize_batch",
    "stylize_grid", "texture",
]
__version__ = "0.1.0"
