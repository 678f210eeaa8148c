"""Layer weighting (Novak & Nikulin §3.1, nst_jax/weighting.py) and ``nst-jax layers``: checked against the powers of
two written out here, not against the module's formulas."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nst_jax import cli, weighting
from nst_jax.config import SettingError, Settings
from nst_jax.objective import Objective

# The 16 conv layers (their ReLUs), shallow to deep, written out.
ALL16 = ["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
         "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1", "relu5_2", "relu5_3", "relu5_4"]
CHAIN = [f"{deep}:{shallow}" for shallow, deep in zip(ALL16, ALL16[1:])]


def test_all_16_layers_reproduce_the_papers_table():
    style = weighting.geometric(ALL16, "style", normalize=False)
    content = weighting.geometric(ALL16, "content", normalize=False)
    assert style == tuple(2.0 ** k for k in range(15, -1, -1))  # conv1_1: 2^15 ... conv5_4: 2^0
    assert content == tuple(2.0 ** k for k in range(1, 17))  # conv1_1: 2^1 ... conv5_4: 2^16
    assert sum(style) == 2 ** 16 - 1 and sum(content) == 2 ** 17 - 2
    expected_s = np.array([2.0 ** (16 - d) for d in range(1, 17)]) / (2 ** 16 - 1)
    expected_c = np.array([2.0 ** d for d in range(1, 17)]) / (2 ** 17 - 2)
    np.testing.assert_array_equal(weighting.geometric(ALL16, "style"), expected_s)
    np.testing.assert_array_equal(weighting.geometric(ALL16, "content"), expected_c)


def test_chain_links_halve_link_by_link():
    assert weighting.geometric(CHAIN, "style", normalize=False) == tuple(2.0 ** k for k in range(14, -1, -1))
    np.testing.assert_array_equal(weighting.geometric(CHAIN, "style"),
                                  np.array([2.0 ** (15 - d) for d in range(1, 16)]) / (2 ** 15 - 1))


def test_weights_follow_depth_not_list_order():
    shuffled = CHAIN[:]
    random.Random(0).shuffle(shuffled)
    by_entry = dict(zip(shuffled, weighting.geometric(shuffled, "style", normalize=False)))
    assert [by_entry[e] for e in CHAIN] == [2.0 ** k for k in range(14, -1, -1)]


def test_pairs_order_by_deeper_then_shallower_layer():
    # All-To-Content: relu4_2 with every conv layer; 9 pairs whose deeper member is relu4_2, then relu4_2 alone,
    # then the 6 pairs whose deeper member lies below it.
    entries = [f"relu4_2:{l}" for l in ALL16[:9]] + ["relu4_2"] + [f"{l}:relu4_2" for l in ALL16[10:]]
    assert weighting.geometric(entries, "style", normalize=False) == tuple(2.0 ** k for k in range(15, -1, -1))


def test_uniform_is_the_classic_objective():
    for s in (Settings(), Settings(layer_weighting="uniform", style_layers=ALL16, content_layers=ALL16)):
        w = Objective.from_settings(s).weights(s)
        np.testing.assert_array_equal(w["content"], [s.content_weight] * len(s.content_layers))
        np.testing.assert_array_equal(w["style"], [s.style_weight] * len(s.style_layers))
        np.testing.assert_array_equal(w["tv"], [s.tv_weight])


def test_geometric_in_the_objective_and_explicit_weights_win():
    s = Settings(layer_weighting="geometric", content_layers=ALL16, style_layers=ALL16, style_weight=3.0,
                 content_weight=7.0)
    w = Objective.from_settings(s).weights(s)
    np.testing.assert_allclose(w["style"], 3.0 * np.array([2.0 ** (16 - d) for d in range(1, 17)]) / (2 ** 16 - 1),
                               rtol=1e-15)
    np.testing.assert_allclose(w["content"], 7.0 * np.array([2.0 ** d for d in range(1, 17)]) / (2 ** 17 - 2),
                               rtol=1e-15)
    np.testing.assert_array_equal(w["tv"], [s.tv_weight])
    s = s.replace(style_layers=("relu1_1", "relu2_1"), style_layer_weights=(1.0, 5.0))
    w = Objective.from_settings(s).weights(s)
    np.testing.assert_array_equal(w["style"], [3.0, 15.0])
    np.testing.assert_allclose(w["content"][-1], 7.0 * 2 ** 16 / (2 ** 17 - 2), rtol=1e-15)


def test_bad_weighting_names_the_setting():
    with pytest.raises(SettingError, match="layer_weighting must be one of 'uniform', 'geometric'"):
        Settings(layer_weighting="exponential")


def _table(capsys, *argv) -> dict[str, list[str]]:
    assert cli.main(["layers", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["entry", "index", "channels", "side", "blurs", "content", "style"]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_layers_command_chain_geometric(capsys):
    rows = _table(capsys, "--layers", "chain", "--weighting", "geometric", "--image-size", "64")
    assert len(rows) == 16 + 15  # the content layers (those the links read) and the links
    assert rows["relu1_2:relu1_1"] == ["2:1", "64:64", "64:64", "1", "-", f"{2 ** 14 / (2 ** 15 - 1):.6g}"]
    assert rows["relu2_1:relu1_2"] == ["3:2", "128:64", "32:64", "1", "-", f"{2 ** 13 / (2 ** 15 - 1):.6g}"]
    assert rows["relu5_4:relu5_3"][-1] == f"{1 / (2 ** 15 - 1):.6g}"
    assert rows["relu1_1"] == ["1", "64", "64", "0", f"{2 / (2 ** 17 - 2):.6g}", "-"]
    assert rows["relu5_4"] == ["16", "512", "4", "0", f"{2 ** 16 / (2 ** 17 - 2):.6g}", "-"]


def test_layers_command_defaults_and_lists(capsys):
    rows = _table(capsys)
    assert list(rows) == ALL16 and all(r[-2:] == [f"{1 / 16:.6g}"] * 2 for r in rows.values())
    assert rows["relu3_1"][:3] == ["5", "256", "128"]  # 512 px: two poolings before block 3
    rows = _table(capsys, "--layers", "relu2_1:relu1_1,relu3_1", "--content-layers", "relu4_2",
                  "--image-size", "37")
    assert list(rows) == ["relu2_1:relu1_1", "relu3_1", "relu4_2"]
    assert rows["relu2_1:relu1_1"][:4] == ["3:1", "128:64", "18:37", "2"]  # odd sizes floor; two blurs
    assert rows["relu3_1"][1:] == ["256", "9", "0", "-", "0.5"] and rows["relu4_2"][-2:] == ["1", "-"]
    rows = _table(capsys, "--method", "classic-dense-conv4_2", "--weighting", "geometric")  # the flag wins
    assert len(rows) == 16 and rows["relu4_2"][-2:] == ["1", f"{2 ** 6 / (2 ** 16 - 1):.6g}"]


def test_layers_command_errors_name_its_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["layers", "--layers", "relu9_9"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--layers" in err and "relu9_9" in err and err.count("\n") == 1, err
