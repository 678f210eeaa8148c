"""scripts/max_image_size.py: XLA's memory estimate, the search for the largest size, the command line.

The objective reads VGG-19 only up to relu2_1 (two blocks), which keeps every compilation around a
second on CPU; the estimator and the search are the same code as for the full network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import nst_jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import max_image_size as mis  # noqa: E402

SHALLOW = {"content_layers": ("relu2_1",), "style_layers": ("relu1_1", "relu2_1")}
STEP = 64
MB = 2**20


@pytest.fixture(scope="module")
def settings():
    return nst_jax.Settings(weights="random", **SHALLOW)


def xla(settings, size, remat=False, phases=mis.PHASES):
    return mis.estimate(settings, size, remat=remat, aspect=(4, 3), phases=phases)


def test_estimate_grows_with_size_and_remat_changes_only_temporaries(settings):
    small, large = xla(settings, 64), xla(settings, 128)
    assert large["shape_hw"] == [96, 128] and small["shape_hw"] == [48, 64]
    assert large["complete"] and set(large["phases"]) == {"step", "init", "content_targets", "style_grams"}
    assert 0 < small["xla_bytes"] < large["xla_bytes"]
    step = large["phases"]["step"]
    assert step["peak"] == step["argument"] + step["output"] + step["temp"] - step["alias"]
    # The L-BFGS state (two history buffers of 100 x H x W x 3, 2 bytes each in bfloat16 by default, 4 in
    # float32) is an argument of the step, and it is donated: the new state is written in its place.
    history = 2 * 100 * 96 * 128 * 3 * (2 if settings.lbfgs_history_dtype == "bfloat16" else 4)
    assert step["argument"] >= history and step["alias"] >= history
    # remat recomputes activations in the backward pass: same arguments and outputs, other temporaries. (On
    # XLA:CPU they are not smaller, so neither is the estimate; the direction is not asserted.)
    r = xla(settings, 128, remat=True, phases=["step"])["phases"]["step"]
    assert (r["argument"], r["output"], r["alias"]) == (step["argument"], step["output"], step["alias"])
    assert r["temp"] > 0
    # Whether the temporaries differ depends on XLA's scheduling; with every default layer they do.
    deep = nst_jax.Settings(weights="random")
    d, dr = (xla(deep, 64, remat=flag, phases=["step"])["phases"]["step"]["temp"] for flag in (False, True))
    assert d != dr


def test_search_returns_the_largest_size_within_the_budget(settings):
    step = ["step"]  # the phase with the largest peak; the others are not compiled here
    e128, e192 = xla(settings, 128, phases=step)["xla_bytes"], xla(settings, 192, phases=step)["xla_bytes"]
    assert e128 < e192
    baseline = 100 * MB
    budget = baseline + (e128 + e192) / 2
    found = mis.search(settings, budget, remat=False, baseline_bytes=baseline, aspect=(4, 3), step=STEP,
                       max_size=256, phases=step)
    assert found["size"] == 128 and found["estimate"]["xla_bytes"] == e128
    assert found["next_size"] == 192 and baseline + found["next_estimate"]["xla_bytes"] > budget
    assert not found["capped"]
    # Everything fits: the answer is the cap; nothing fits: None.
    assert mis.search(settings, budget, remat=False, aspect=(4, 3), step=STEP, max_size=128, phases=step)["capped"]
    assert mis.search(settings, 1.0, remat=False, aspect=(4, 3), step=STEP, max_size=256, phases=step)["size"] is None


def test_largest_fitting_is_exact_on_a_monotone_rule():
    calls = []

    def fits(n):
        calls.append(n)
        return n <= 1000

    assert mis.largest_fitting(fits, step=64, max_size=8192, start=64) == 960
    assert len(calls) == len(set(calls)) <= 12
    assert mis.largest_fitting(lambda n: True, step=64, max_size=500) == 448
    assert mis.largest_fitting(lambda n: False, step=64, max_size=500) is None


def test_shapes():
    assert mis.image_shape(128, mis.parse_aspect("4:3")) == (96, 128)
    assert mis.image_shape(128, mis.parse_aspect("3:4")) == (128, 96)
    assert mis.smallest_size(16, (4, 3)) == 32
    with pytest.raises(ValueError):
        mis.parse_aspect("wide")


def test_command_line_writes_json(tmp_path, settings, capsys):
    out, md = tmp_path / "max.json", tmp_path / "max.md"
    budget = (xla(settings, 64)["xla_bytes"] + xla(settings, 128)["xla_bytes"]) / 2 / MB  # cached above
    assert mis.main(["--budget-mb", f"{budget:.3f}", "--baseline-mb", "0", "--no-verify", "--remat", "off",
                     "--step", "64", "--max-size", "128", "--content-layers", "relu2_1",
                     "--style-layers", "relu1_1", "relu2_1", "--out", str(out), "--md", str(md)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["size"] == 64 and row["shape_hw"] == [48, 64] and row["remat"] is False
    assert row["estimated_mb"] <= budget < row["next_estimated_mb"] and row["fits"] is None
    assert result["settings"]["optimizer"] == "lbfgs" and result["settings"]["lbfgs_history"] == 100
    assert result["machine"]["backend"] and "max_image_size.py" in result["command"]
    assert "| largest size (W x H) |" in md.read_text() and "64 (64 x 48)" in capsys.readouterr().out


def test_a_size_whose_run_does_not_fit_steps_down_to_one_that_does(tmp_path, settings, monkeypatch):
    """The estimate finds 128 px; its (stand-in) run measures above the budget, so 64 px is run and reported."""
    budget = (xla(settings, 128)["xla_bytes"] + xla(settings, 192)["xla_bytes"]) / 2 / MB
    runs = []

    def fake_spawn(cfg):
        assert cfg["kind"] == "verify"
        runs.append(cfg["size"])
        peak = budget + 100.0 if cfg["size"] > 64 else budget - 1.0
        return {"size": cfg["size"], "remat": cfg["remat"], "shape_hw": list(mis.image_shape(cfg["size"], (4, 3))),
                "iterations": cfg["iterations"], "peak_rss_mb": peak, "peak_rss_after_warmup_mb": peak,
                "run_peak_rss_mb": peak, "warmup_s": 0.0, "run_s": 0.0, "final_loss": 1.0, "backend": "cpu"}

    monkeypatch.setattr(mis, "spawn", fake_spawn)
    out, md = tmp_path / "max.json", tmp_path / "max.md"
    assert mis.main(["--budget-mb", f"{budget:.3f}", "--baseline-mb", "0", "--remat", "off", "--step", "64",
                     "--max-size", "192", "--content-layers", "relu2_1", "--style-layers", "relu1_1", "relu2_1",
                     "--out", str(out), "--md", str(md)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["size"] == 128 and row["fits"] is False and runs == [128, 64]
    assert row["verified_size"] == 64 and row["verified_shape_hw"] == [48, 64] and row["step_down"] == [64]
    assert "| NO | 64 (64 x 48, " in md.read_text()


def test_tile_stage_reports_one_tiles_measured_peak_per_budget(tmp_path, settings, monkeypatch):
    """--tile-stage T runs one T x T stylization (square, the settings searched) and says per budget whether it fits."""
    budget = (xla(settings, 64)["xla_bytes"] + xla(settings, 128)["xla_bytes"]) / 2 / MB
    runs = []

    def fake_spawn(cfg):
        runs.append((cfg["size"], tuple(cfg["aspect"])))
        square = tuple(cfg["aspect"]) == (1, 1)
        peak = budget + 50.0 if square else budget - 1.0
        shape = [cfg["size"]] * 2 if square else list(mis.image_shape(cfg["size"], (4, 3)))
        return {"size": cfg["size"], "remat": cfg["remat"], "shape_hw": shape, "iterations": cfg["iterations"],
                "peak_rss_mb": peak, "peak_rss_after_warmup_mb": peak, "run_peak_rss_mb": peak, "warmup_s": 0.0,
                "run_s": 0.0, "final_loss": 1.0, "backend": "cpu"}

    monkeypatch.setattr(mis, "spawn", fake_spawn)
    out, md = tmp_path / "max.json", tmp_path / "max.md"
    assert mis.main(["--budget-mb", f"{budget:.3f}", "--baseline-mb", "0", "--remat", "off", "--step", "64",
                     "--max-size", "128", "--content-layers", "relu2_1", "--style-layers", "relu1_1", "relu2_1",
                     "--tile-stage", "96", "--out", str(out), "--md", str(md)]) == 0
    assert runs == [(64, (4, 3)), (96, (1, 1))]
    result = json.loads(out.read_text())
    assert result["tile_stage"]["tile"] == 96 and result["tile_stage"]["runs"][0]["measured_mb"] == budget + 50.0
    text = md.read_text()
    assert f"one 96 x 96 tile peaks at {budget + 50:.0f} MB" in text
    assert f"budget {budget:.0f} MB, remat off: untiled up to 64 x 48; tiled (`--tile 96`): any size, its tile " \
           f"({budget + 50:.0f} MB measured) does not fit" in text
