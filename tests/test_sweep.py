"""``nst-jax sweep``: every combination of some loss weights in one vmapped call, as a labelled grid + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nst_jax import api, cli, images, sweep
from nst_jax.config import Settings

ROOT = Path(__file__).parents[1]
CONTENT = str(ROOT / "examples" / "tubingen.jpg")
STYLE = str(ROOT / "examples" / "starry_night.jpg")
# shallow layers and few iterations, as tests/test_cli.py (compiled functions are shared within a pytest session)
FAST = ["--weights", "random", "--image-size", "48", "--content-layers", "relu2_1", "--style-layers",
        "relu1_1,relu2_1", "--num-iterations", "4", "--conv-algorithm", "direct", "--quiet"]
WEIGHTS = [10.0, 100.0, 1000.0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid.png"
    code = cli.main(["sweep", "--content", CONTENT, "--style", STYLE, "--style-weight", *map(str, WEIGHTS),
                     *FAST, "--output", str(out)])
    assert code == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_grid_and_losses(swept):
    out, record = swept
    assert (record["rows"], record["cols"]) == (1, 3)
    assert [c["weights"] for c in record["cells"]] == [{"style_weight": w} for w in WEIGHTS]
    assert all(c["iterations"] == 4 for c in record["cells"])
    totals = [c["loss"]["total"] for c in record["cells"]]
    assert len(set(totals)) == 3
    assert all(set(c["loss"]) >= {"total", "content", "style", "tv"} for c in record["cells"])
    grid = images.load_image(out)
    (x0, y0, w, h), (x2, _, _, _) = record["cells"][0]["box"], record["cells"][2]["box"]
    assert (h, w) == (36, 48)  # the content image's shape at --image-size 48
    assert grid.shape[0] > h and grid.shape[1] >= x2 + w > 3 * w  # labels above, three cells side by side
    assert np.all(grid[: y0 - 1, x0: x0 + w].min(axis=(0, 1)) < 0.5)  # some dark label pixels above the cell
    assert record["settings"]["image_size"] == 48 and "style_weight" not in record["settings"]
    assert images.read_metadata(out)["sweep"]["cells"][1]["weights"] == {"style_weight": 100.0}


def test_cells_equal_single_runs(swept):
    out, record = swept
    grid = images.load_image(out)
    base = Settings(weights="random", image_size=48, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
                    num_iterations=4, conv_algorithm="direct")
    for cell in (record["cells"][0], record["cells"][2]):
        x, y, w, h = cell["box"]
        single = api.stylize(CONTENT, STYLE, base, progress=False, **cell["weights"])
        assert np.abs(grid[y:y + h, x:x + w] - single.array).max() <= 1 / 255
        assert cell["loss"]["total"] == pytest.approx(single.loss, rel=1e-4)


def test_two_axes_make_rows_and_columns():
    assert cli.SWEEPABLE == sweep.SWEEPABLE  # the command line sweeps what the library can
    axes = {"style_weight": (10.0, 1e3), "tv_weight": (0.0, 1e-3, 1e-2)}
    cells = sweep.combinations(axes)
    assert len(cells) == 6 and cells[1] == {"style_weight": 10.0, "tv_weight": 1e-3}
    assert sweep.grid_shape(axes) == (2, 3)
    assert sweep.grid_shape({"style_weight": (1.0,), "tv_weight": (0.0, 1.0)}) == (1, 2)
    grid, boxes = sweep.labelled_grid([np.zeros((20, 30, 3), np.float32)] * 6, [sweep.label(c) for c in cells], 2, 3)
    assert boxes[4][0] == boxes[1][0] and boxes[4][1] > boxes[1][1] + 20  # same column, next row
    assert np.all(grid[boxes[5][1]:boxes[5][1] + 20, boxes[5][0]:boxes[5][0] + 30] == 0)


def _sweep_fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(["sweep", "--content", CONTENT, "--style", STYLE, *FAST, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("nst-jax sweep: error: "), err
    return err


def test_errors(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert "--style-weight" in _sweep_fails(["--output", str(out)], capsys)  # nothing swept
    assert "--style-weight must be" in _sweep_fails(["--style-weight", "1", "-1", "--output", str(out)], capsys)
    out.with_suffix(".json").write_text("{}")  # someone else's file where the losses would go
    err = _sweep_fails(["--style-weight", "1", "--output", str(out)], capsys)
    assert "grid.json" in err and "--overwrite" in err
    assert "replace an input" in _sweep_fails(["--style-weight", "1", "--output", CONTENT], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]
