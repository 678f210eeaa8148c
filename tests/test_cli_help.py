"""The command line reads like a tool: the subcommands listed in the top-level help, options grouped by topic,
defaults shown only where they say something, --version, and a short hint when run without arguments."""

from __future__ import annotations

import re

import pytest

import nst_jax
from nst_jax import cli
from nst_jax.config import SECTIONS, section_of


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command_with_one_line(capsys):
    text = _help(["--help"], capsys)
    for command in cli.COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", text, re.M), command
    assert "examples:" in text


def test_options_are_grouped_by_topic_and_defaults_are_not_noise(capsys):
    text = _help(["--help"], capsys)
    for topic, _ in SECTIONS:
        assert f"{topic} settings:" in text
    assert "(default: None)" not in text and "(default: )" not in text and "(default: False)" not in text
    assert "(default: 512)" in text  # a meaningful one stays
    groups = [line for line in text.splitlines() if line.endswith("settings:")]
    assert groups == [f"{t} settings:" for t, _ in SECTIONS]


def test_every_setting_has_a_topic():
    assert section_of("image_size") == "images" and section_of("style_weight") == "losses"
    assert section_of("pooling") == "network" and section_of("optimizer") == "optimization"
    assert section_of("save_every") == "output"


def test_version(capsys):
    assert _help(["--version"], capsys).strip() == f"nst-jax {nst_jax.__version__}"


def test_no_arguments_gives_a_short_hint(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert len(text.strip().splitlines()) <= 5 and "nst-jax --help" in text and "batch" in text
