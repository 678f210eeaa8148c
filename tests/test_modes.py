"""``nst_jax.reconstruct`` and ``nst_jax.texture`` (and their subcommands): small images, random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nst_jax
from nst_jax import cli, images, modes

EXAMPLES = Path(__file__).parents[1] / "examples"
CONTENT = EXAMPLES / "tubingen.jpg"
STYLE = EXAMPLES / "starry_night.jpg"


@pytest.mark.parametrize("layer", ["conv1_1", "relu1_1"])
def test_reconstruction_from_a_first_layer_recovers_the_image(layer):
    r = nst_jax.reconstruct(CONTENT, layer, weights="random", image_size=48, num_iterations=50, print_every=25,
                            progress=False)
    s = r.settings
    assert (s.content_layers, s.style_weight, s.tv_weight, s.init) == ((layer,), 0.0, 0.0, "random")
    assert set(r.history[-1].terms) == {"content"}
    assert r.history[-1].total < 0.01 * r.history[0].total
    # conv1_1 (27 inputs -> 64 channels) is invertible: the image itself comes back, not only a low loss
    content = images.resize_long_side(images.load_image(CONTENT), 48)
    assert np.abs(r.array - content).mean() < 1e-3
    assert np.abs(r.history[0].total) > 0  # it started away from the content (noise)


def test_reconstruction_layer_names():
    assert modes.reconstruction_layer("conv4_2") == "conv4_2"  # before the ReLU
    assert modes.reconstruction_layer("relu4_2") == "relu4_2"
    assert modes.reconstruction_layer("block4_conv2") == "relu4_2"  # Keras's output includes the ReLU
    assert len(modes.RECONSTRUCTION_LAYERS) == 32
    with pytest.raises(ValueError, match="'pool4' is not a convolution layer"):
        modes.reconstruction_layer("pool4")
    with pytest.raises(ValueError, match="unknown VGG-19 layer 'conv9_9'"):
        modes.reconstruction_layer("conv9_9")


def test_reconstruct_keeps_given_settings_and_refuses_the_ones_it_sets():
    r = nst_jax.reconstruct(CONTENT, "conv2_1", weights="random", image_size=48, num_iterations=0, tv_weight=0.5,
                            init="content", progress=False)
    assert (r.settings.tv_weight, r.settings.init, r.settings.content_layers) == (0.5, "content", ("conv2_1",))
    with pytest.raises(TypeError, match="reconstruct sets content_layers"):
        nst_jax.reconstruct(CONTENT, "conv2_1", content_layers=("relu1_1",))
    base = nst_jax.Settings(tv_weight=0.25)  # explicit in a Settings: kept too
    assert modes.reconstruct(CONTENT, "relu1_1", base, weights="random", image_size=48, num_iterations=0,
                             progress=False).settings.tv_weight == 0.25


def test_texture_needs_no_content_and_reduces_its_loss():
    r = nst_jax.texture(STYLE, layers="relu1_1,relu2_1", size=(40, 56), weights="random", optimizer="adam",
                        num_iterations=20, print_every=10, progress=False)
    assert r.array.shape == (40, 56, 3)
    assert r.settings.content_weight == 0 and r.settings.style_layers == ("relu1_1", "relu2_1")
    assert "content" not in r.history[-1].terms
    assert r.history[-1].total < 0.5 * r.history[0].total
    with pytest.raises(TypeError, match="size replaces image_size"):
        nst_jax.texture(STYLE, size=(40, 56), image_size=64)
    with pytest.raises(TypeError, match="texture sets content_weight"):
        nst_jax.texture(STYLE, content_weight=1.0)
    with pytest.raises(ValueError, match="size must be"):
        nst_jax.texture(STYLE, size=(8, 56))


@pytest.mark.parametrize("hw", [(37, 61), (61, 37)])
def test_texture_canvas_is_exactly_the_size(hw):
    h, w = hw
    r = nst_jax.texture(STYLE, layers=("relu1_1",), size=(h, w), weights="random", num_iterations=0,
                        progress=False)
    assert r.array.shape == (h, w, 3)


def test_cli_reconstruct_and_texture(tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert cli.main(["reconstruct", "--content", str(CONTENT), "--layer", "conv1_1", "--output", str(out),
                     "--weights", "random", "--image-size", "48", "--num-iterations", "2", "--quiet"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert images.read_metadata(out)["settings"]["content_layers"] == ["conv1_1"]
    tex = tmp_path / "tex.png"
    assert cli.main(["texture", "--style", str(STYLE), "--layers", "relu1_1,relu2_1", "--size", "40x56",
                     "--output", str(tex), "--weights", "random", "--num-iterations", "2", "--quiet"]) == 0
    assert images.load_image(tex).shape == (40, 56, 3)
    with pytest.raises(SystemExit) as e:
        cli.main(["reconstruct", "--content", str(CONTENT), "--layer", "pool4", "--output", str(out),
                  "--weights", "random"])
    assert e.value.code == 2 and "not a convolution layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the flags a mode sets are not offered
        cli.main(["reconstruct", "--content", str(CONTENT), "--layer", "conv1_1", "--output", str(out),
                  "--style-weight", "1"])
    with pytest.raises(SystemExit) as e:
        cli.main(["texture", "--style", str(STYLE), "--size", "40x56", "--image-size", "64", "--output", str(tex)])
    assert "--size replaces --image-size" in capsys.readouterr().err
