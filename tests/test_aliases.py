"""neural-style's command line runs unchanged: its flag names map onto ours, hardware options are noted and
dropped, and options that would change the result without an equivalent are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from nst_jax import aliases, cli, images
from nst_jax.flags import settings_from_args

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONTENT, STYLE = EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg"


def _settings(argv):
    parser = cli.build_parser()
    translated, notes = aliases.translate(argv)
    return settings_from_args(parser.parse_args(translated)), parser.parse_args(translated), notes


def test_neural_style_command_line_gives_the_same_settings_as_our_flags():
    theirs = ["-style_image", str(STYLE), "-content_image", str(CONTENT), "-output_image", "out.png",
              "-image_size", "256", "-num_iterations", "500", "-style_weight", "1e3", "-content_weight", "10",
              "-tv_weight", "0.0001", "-init", "image", "-init_image", str(CONTENT), "-optimizer", "adam",
              "-learning_rate", "5", "-original_colors", "1", "-pooling", "avg", "-style_scale", "0.5",
              "-print_iter", "10", "-save_iter", "0", "-seed", "123", "-content_layers", "relu4_2",
              "-style_layers", "relu1_1,relu2_1", "-lbfgs_num_correction", "50",
              "-gpu", "c", "-backend", "nn", "-cudnn_autotune"]
    ours = ["--style", str(STYLE), "--content", str(CONTENT), "--output", "out.png", "--image-size", "256",
            "--num-iterations", "500", "--style-weight", "1e3", "--content-weight", "10", "--tv-weight", "0.0001",
            "--init", "image", "--init-image", str(CONTENT), "--optimizer", "adam", "--learning-rate", "5",
            "--original-colors", "--pooling", "avg", "--style-scale", "0.5", "--print-every", "10",
            "--save-every", "0", "--seed", "123", "--content-layers", "relu4_2", "--style-layers", "relu1_1,relu2_1",
            "--lbfgs-history", "50"]
    s_theirs, ns_theirs, notes = _settings(theirs)
    s_ours, ns_ours, _ = _settings(ours)
    assert s_theirs == s_ours
    assert (ns_theirs.content, ns_theirs.style, ns_theirs.output) == (ns_ours.content, ns_ours.style, ns_ours.output)
    assert [n.split(":")[0] for n in notes] == ["-gpu c", "-backend nn", "-cudnn_autotune"]
    assert all("not needed" in n for n in notes)


def test_several_styles_with_blend_weights_and_random_seed():
    s, ns, notes = _settings(["-style_image", f"{STYLE},{CONTENT}", "-style_blend_weights", "3,7",
                              "-content_image", str(CONTENT), "-seed", "-1", "-original_colors", "0"])
    assert ns.style == [str(STYLE), str(CONTENT)] and s.style_blend_weights == (3.0, 7.0)
    assert s.seed == 0 and not s.original_colors and "reproducible" in notes[0]


def test_a_neural_style_pt_readme_command_runs_unchanged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NST_JAX_WEIGHTS", "random")
    out = tmp_path / "profile.png"
    rc = cli.main(["-style_image", str(STYLE), "-content_image", str(CONTENT), "-output_image", str(out),
                   "-image_size", "48", "-num_iterations", "3", "-gpu", "c", "-backend", "nn", "-print_iter", "1"])
    assert rc == 0 and out.is_file()
    err = capsys.readouterr().err
    assert "nst-jax: note: -gpu c: not needed" in err and "nst-jax: note: -backend nn: not needed" in err
    assert images.read_metadata(out)["settings"]["num_iterations"] == 3


@pytest.mark.parametrize("argv, fragment", [
    (["-normalize_gradients"], "-normalize_gradients is not supported"),
    (["-model_file", "vgg19.pth"], "--weights FILE"),
    (["-original_colors", "yes"], "-original_colors takes 0 or 1"),
    (["-image_size"], "-image_size needs a value"),
])
def test_options_that_cannot_be_honoured_are_refused(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["-content_image", str(CONTENT), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
