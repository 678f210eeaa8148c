"""The command line: flags generated from Settings, a smoke run, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nst_jax import cli, images, optimizer_presets, presets
from nst_jax.config import Settings

ROOT = Path(__file__).parents[1]
CONTENT = str(ROOT / "examples" / "tubingen.jpg")
STYLE = str(ROOT / "examples" / "starry_night.jpg")
# the layers of test_api.py's runs (compiled functions are shared within a pytest session)
FAST = ["--weights", "random", "--image-size", "64", "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1", "--quiet"]


def _settings_of(argv: list[str]) -> Settings:
    ns = cli.build_parser().parse_args(["--content", "c.jpg", "--style", "s.jpg", "--output", "o.png", *argv])
    return cli.settings_from_args(ns)


# --------------------------------------------------------------------------------------------------
# Smoke run


def test_smoke_run_writes_png_with_settings_and_snapshots(tmp_path, capsys):
    out = tmp_path / "out.png"
    # (shallow layers: the full network's compilation would double the time of this file)
    code = cli.main(["--content", CONTENT, "--style", STYLE, "--output", str(out), "--weights", "random",
                     "--image-size", "64", "--num-iterations", "6", "--save-every", "3", "--print-every", "3",
                     "--content-layers", "relu2_1", "--style-layers", "relu1_1", "relu2_1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "out_3.png"]
    meta = images.read_metadata(out)
    assert meta["settings"] == Settings(weights="random", image_size=64, num_iterations=6, save_every=3,
                                        print_every=3, content_layers=("relu2_1",),
                                        style_layers=("relu1_1", "relu2_1")).to_dict()
    assert meta["iterations"] == 6
    assert images.read_metadata(tmp_path / "out_3.png")["iteration"] == 3
    assert images.load_image(out).shape == (48, 64, 3)
    assert f"wrote {out}" in captured.out and "64x48" in captured.out and "6 iterations" in captured.out
    assert f"snapshot {tmp_path / 'out_3.png'}" in captured.out
    # a summary in a fixed order: the snapshots, then the output, last
    assert captured.out.strip().splitlines()[-1].startswith(f"wrote {out}")
    assert "Traceback" not in captured.err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "nst_jax", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: nst-jax")
    assert "--style-blend-weights" in out.stdout and "(default: 512)" in out.stdout


def test_help_shows_every_meaningful_default(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(Settings):
        assert cli._flag(f.name) in text
    for shown in ("(default: 512)", "(default: lbfgs)", "(default: relu4_2)",
                  "(default: relu1_1,relu2_1,relu3_1,relu4_1,relu5_1)", "(default: 0.001)"):
        assert shown in text
    for noise in ("(default: None)", "(default: )", "(default: False)"):
        assert noise not in text


# --------------------------------------------------------------------------------------------------
# Flags == Settings fields

# One non-default value per setting: the flags that set it and the value it must get.
NON_DEFAULT = {
    "method": (["--method", "classic"], "classic"),
    "preset": (["--preset", "adam-no-gray"], "adam-no-gray"),
    "image_size": (["--image-size", "100"], 100),
    "style_scale": (["--style-scale", "0.5"], 0.5),
    "style_blend_weights": (["--style-blend-weights", "3", "7"], (3.0, 7.0)),
    "original_colors": (["--original-colors"], True),
    "aspect": (["--aspect", "1.5"], 1.5),
    "color_transfer": (["--color-transfer", "histogram"], "histogram"),
    "style_tile": (["--style-tile", "2x3"], (2, 3)),
    "content_layers": (["--content-layers", "relu1_1", "block2_conv1"], ("relu1_1", "relu2_1")),
    "style_layers": (["--style-layers", "relu1_1,relu3_1"], ("relu1_1", "relu3_1")),
    "content_weight": (["--content-weight", "2.5"], 2.5),
    "style_weight": (["--style-weight", "7"], 7.0),
    "tv_weight": (["--tv-weight", "0"], 0.0),
    "content_layer_weights": (["--content-layer-weights", "2"], (2.0,)),
    "style_layer_weights": (["--style-layer-weights", "1", "2", "3", "4", "5"], (1.0, 2.0, 3.0, 4.0, 5.0)),
    "layer_weighting": (["--layer-weighting", "geometric"], "geometric"),
    "activation_shift": (["--activation-shift", "-1"], -1.0),
    "style_blur": (["--style-blur", "--style-layers", "relu2_1:relu1_2"], True),
    "style_adjacent": (["--style-adjacent"], True),
    "activation_power": (["--activation-power", "2"], 2.0),
    "style_mask_fractions": (["--style-mask-fractions", "1", "0.8", "0.6", "0.4", "0.2"], (1.0, 0.8, 0.6, 0.4, 0.2)),
    "style_content_aware": (["--style-content-aware", "--style-layers", "relu1_1,relu2_1"], True),
    "style_loss": (["--style-loss", "w2"], "w2"),
    "mrf_stride": (["--style-loss", "mrf", "--mrf-stride", "2"], 2),
    "mrf_rotations": (["--style-loss", "mrf", "--mrf-rotations", "-7.5", "0", "7.5"], (-7.5, 0.0, 7.5)),
    "mrf_scales": (["--style-loss", "mrf", "--mrf-scales", "0.9", "1"], (0.9, 1.0)),
    "weights": (["--weights", "random"], "random"),
    "pooling": (["--pooling", "avg"], "avg"),
    "padding": (["--padding", "reflect"], "reflect"),
    "precision": (["--precision", "highest"], "highest"),
    "remat": (["--remat"], True),
    "num_iterations": (["--num-iterations", "7"], 7),
    "optimizer": (["--optimizer", "adam"], "adam"),
    "learning_rate": (["--learning-rate", "0.5"], 0.5),
    "beta1": (["--beta1", "0.99"], 0.99),
    "beta2": (["--beta2", "0.9"], 0.9),
    "epsilon": (["--epsilon", "0.1"], 0.1),
    "lbfgs_history": (["--lbfgs-history", "5"], 5),
    "lbfgs_history_dtype": (["--lbfgs-history-dtype", "float32"], "float32"),
    "lbfgs_linesearch": (["--lbfgs-linesearch", "zoom"], "zoom"),
    "tolerance_grad": (["--tolerance-grad", "1e-5"], 1e-5),
    "tolerance_change": (["--tolerance-change", "1e-9"], 1e-9),
    "init": (["--init", "content"], "content"),
    "init_image": (["--init", "image", "--init-image", "start.png"], "start.png"),
    "seed": (["--seed", "3"], 3),
    "loop": (["--loop", "chunk"], "chunk"),
    "chunk_size": (["--chunk-size", "5"], 5),
    "blur_on_stall": (["--blur-on-stall"], True),
    "stall_iterations": (["--blur-on-stall", "--stall-iterations", "7"], 7),
    "stall_threshold": (["--blur-on-stall", "--stall-threshold", "0.01"], 0.01),
    "blur_sigma": (["--blur-on-stall", "--blur-sigma", "2"], 2.0),
    "print_every": (["--print-every", "7"], 7),
    "save_every": (["--save-every", "2"], 2),
    "scales": (["--scales", "128", "256"], (128, 256)),
    "scale_iterations": (["--scales", "256", "--scale-iterations", "40"], 40),
    "dtype": (["--dtype", "bfloat16"], "bfloat16"),
    "conv_algorithm": (["--conv-algorithm", "winograd"], "winograd"),
    "tile": (["--tile", "256"], 256),
    "tile_overlap": (["--tile", "256", "--tile-overlap", "32"], 32),
    "tile_base_size": (["--tile", "256", "--tile-base-size", "384"], 384),
    "tile_iterations": (["--tile", "256", "--tile-iterations", "20"], 20),
    "tile_batch": (["--tile", "256", "--tile-batch", "4"], 4),
}


def test_flags_match_settings_fields_exactly():
    parser = cli.build_parser()
    groups = [g for g in parser._action_groups if g.title.endswith(" settings")]
    flags = {a.dest: a.option_strings for g in groups for a in g._group_actions}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert set(flags) == set(fields)  # every field has a flag and every flag a field
    for name, options in flags.items():
        assert cli._flag(name) in options
    # the other flags are the inputs and outputs, not settings
    others = {a.dest for a in parser._actions} - set(flags)
    assert others == {"help", "version", "content", "style", "output", "size", "overwrite", "quiet", "from_output",
                      "command"}
    # defaults are the dataclass's: no flag given -> Settings()
    assert _settings_of([]) == Settings()
    assert set(NON_DEFAULT) == set(fields)  # a new setting needs a line in NON_DEFAULT


# Settings that are only used together with another one (setting them alone is an error).
NEEDS = {"init_image": "init", "stall_iterations": "blur_on_stall", "stall_threshold": "blur_on_stall",
         "blur_sigma": "blur_on_stall", "scale_iterations": "scales", "mrf_stride": "style_loss",
         "mrf_rotations": "style_loss",
         "mrf_scales": "style_loss", "style_blur": "style_layers", "style_content_aware": "style_layers",
         "tile_overlap": "tile", "tile_base_size": "tile", "tile_iterations": "tile", "tile_batch": "tile"}


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_each_flag_sets_its_field(name):
    argv, expected = NON_DEFAULT[name]
    s = _settings_of(argv)
    assert getattr(s, name) == expected != getattr(Settings(), name)
    changed = [f.name for f in dataclasses.fields(Settings) if getattr(s, f.name) != getattr(Settings(), f.name)]
    preset = set(presets.get(expected).values) if name == "method" else set()  # a method sets its preset's fields
    if name == "preset":  # so does an optimizer preset
        preset = set(optimizer_presets.get(expected).values)
    assert {name, NEEDS.get(name, name)} <= set(changed) <= {name, NEEDS.get(name, name)} | preset


def test_boolean_flags_can_be_turned_off():
    assert _settings_of(["--original-colors", "--no-original-colors"]).original_colors is False
    assert _settings_of(["--no-remat"]).remat is False


# --------------------------------------------------------------------------------------------------
# Bad input: a clear message naming the input, exit code 2, no traceback, no output file


def _fails(argv, tmp_path, capsys, *, inputs=()):
    out = tmp_path / "out" / "result.png"
    argv = [a.replace("{out}", str(out)) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(out)]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    assert err.startswith("nst-jax: error: ") or "usage: nst-jax" in err
    assert not out.exists() and not out.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)  # nothing else was written
    return err


def test_missing_content_file(tmp_path, capsys):
    err = _fails(["--content", str(tmp_path / "nope.jpg"), "--style", STYLE, *FAST], tmp_path, capsys)
    assert "content image" in err and "nope.jpg" in err


def test_unreadable_file(tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    err = _fails(["--content", CONTENT, "--style", str(bad), *FAST], tmp_path, capsys, inputs=["notes.jpg"])
    assert "style image" in err and "notes.jpg" in err


def test_style_blend_weight_count_mismatch(tmp_path, capsys):
    err = _fails(["--content", CONTENT, "--style", STYLE, "--style", CONTENT, "--style-blend-weights", "1", *FAST],
                 tmp_path, capsys)
    assert "--style-blend-weights" in err and "2 style image" in err


@pytest.mark.parametrize("flag, value, name", [
    ("--style-weight", "-1", "--style-weight must be"),
    ("--content-weight", "nan", "--content-weight must be"),
    ("--tv-weight", "inf", "--tv-weight must be"),
    ("--image-size", "8", "--image-size must be"),
    ("--style-layers", "relu9_9", "relu9_9"),
    ("--content-layers", "fc7", "fc7"),
    ("--optimizer", "sgd", "--optimizer"),
    ("--init", "noise", "--init"),
    ("--lbfgs-linesearch", "wolfe", "--lbfgs-linesearch"),
    ("--num-iterations", "ten", "--num-iterations"),
    ("--learning-rate", "0", "--learning-rate must be"),
])
def test_bad_setting(flag, value, name, tmp_path, capsys):
    err = _fails(["--content", CONTENT, "--style", STYLE, *FAST, flag, value], tmp_path, capsys)
    assert name in err and value in err


def test_init_image_required_for_init_image(tmp_path, capsys):
    err = _fails(["--content", CONTENT, "--style", STYLE, *FAST, "--init", "image"], tmp_path, capsys)
    assert "--init image needs --init-image" in err


def test_output_directory_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file")
    out = blocker / "sub" / "result.png"
    with pytest.raises(SystemExit) as e:
        cli.main(["--content", CONTENT, "--style", STYLE, *FAST, "--num-iterations", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "file.txt" in err and "is a file" in err
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"] and blocker.read_text() == "a regular file"


def test_unsupported_output_extension(tmp_path, capsys):
    err = _fails(["--content", CONTENT, "--style", STYLE, *FAST, "--output", str(tmp_path / "out.xyz")],
                 tmp_path, capsys)
    assert "out.xyz" in err


def test_non_finite_loss(tmp_path, capsys):
    out = tmp_path / "result.png"
    with pytest.raises(SystemExit) as e:
        cli.main(["--content", CONTENT, "--style", STYLE, *FAST, "--optimizer", "adam", "--learning-rate", "1e30",
                  "--num-iterations", "4", "--print-every", "1", "--save-every", "1", "--output", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.startswith("nst-jax: error: ")
    assert "non-finite" in err and not out.exists()
    partials = sorted(tmp_path.glob("*.partial-*"))
    if "(the starting image)" in err:  # nothing finite to keep
        assert not partials
    else:  # the last finite iterate is kept as a partial file the message names, never as the output
        assert len(partials) == 1 and str(partials[0]) in err and "not a finished result" in err
        assert images.read_metadata(partials[0])["partial"] is True


# --------------------------------------------------------------------------------------------------
# Subcommands; content or style left out


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("stylize", "batch", "sweep", "layers", "compare", "serve"):
        assert f"    {command} " in out


def test_serve_without_the_web_extra_names_the_install_command():
    # the web extra's modules made unimportable: the CLI still loads, and serve says what to install
    code = ("import sys; sys.modules['starlette'] = None; from nst_jax import cli; "
            "assert 'nst_jax.web' not in sys.modules; sys.exit(cli.main(['serve', '--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "nst-jax serve: error: nst-jax serve needs the web extra (starlette is not installed): "
        "pip install -e '.[web]' (from a clone) or pip install 'nst-jax[web]'"]


def test_stylize_subcommand_is_the_default():
    argv = ["--content", "c.jpg", "--style", "s.jpg", "--output", "o.png", "--image-size", "100"]
    plain, named = cli.build_parser().parse_args(argv), cli.build_parser().parse_args(["stylize", *argv])
    assert plain.command is None and named.command == "stylize"
    assert cli.settings_from_args(plain) == cli.settings_from_args(named) == Settings(image_size=100)
    assert (plain.content, plain.style, plain.output) == (named.content, named.style, named.output)


def test_cli_and_batch_cli_do_not_import_each_other():
    code = ("import sys, nst_jax.batch_cli; assert 'nst_jax.cli' not in sys.modules, 'batch_cli imports cli'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("size_flags, shape", [
    (["--size", "48x64"], (48, 64, 3)),
    (["--size", "64x40"], (64, 40, 3)),
    (["--image-size", "64", "--aspect", "1.5"], (42, 64, 3)),
])
def test_texture_without_content(size_flags, shape, tmp_path, capsys):
    out = tmp_path / "texture.png"
    no_size = [a for a in FAST if a not in ("--image-size", "64")]
    code = cli.main(["--style", STYLE, "--content-weight", "0", *size_flags, *no_size, "--num-iterations", "2",
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert images.load_image(out).shape == shape
    meta = images.read_metadata(out)["settings"]
    assert meta["content_weight"] == 0 and meta["image_size"] == max(shape[:2])


def test_reconstruction_without_style(tmp_path, capsys):
    out = tmp_path / "reconstruction.png"
    code = cli.main(["stylize", "--content", CONTENT, "--style-weight", "0", *FAST, "--num-iterations", "2",
                     "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    assert images.load_image(out).shape == (48, 64, 3)


@pytest.mark.parametrize("argv, expected", [
    (["--style", STYLE, *FAST], "--content is missing: pass --content IMAGE, or --content-weight 0"),
    (["--content", CONTENT, *FAST], "--style is missing: pass --style IMAGE, or --style-weight 0"),
    (["--style", STYLE, "--content-weight", "0", "--init", "content", *FAST], "--init"),
    (["--content", CONTENT, "--style", STYLE, "--aspect", "2", *FAST], "--aspect"),
    (["--content", CONTENT, "--style", STYLE, "--size", "48x64", *FAST], "--size sets the canvas of a texture"),
    (["--style", STYLE, "--content-weight", "0", "--size", "48x64", *FAST], "--size replaces --image-size"),
    (["--style", STYLE, "--content-weight", "0", "--size", "64x8", "--quiet"], "argument --size"),
    (["--style", STYLE, "--content-weight", "0", "--size", "big", "--quiet"], "argument --size: must be HxW"),
    (["--style", STYLE, "--content-weight", "0", "--style-weight", "0", "--tv-weight", "0", "--quiet"],
     "nothing to optimize"),
])
def test_missing_or_contradictory_inputs(argv, expected, tmp_path, capsys):
    err = _fails(argv, tmp_path, capsys)
    assert expected in err


def test_missing_output_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--content", CONTENT, "--style", STYLE, *FAST])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--output is required" in err


def test_flags_before_the_command_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--quiet", "batch", "--style", STYLE, "--inputs", str(tmp_path), "--output-dir",
                  str(tmp_path / "o")])
    assert e.value.code == 2 and "put the command first: nst-jax batch" in capsys.readouterr().err
