"""``nst-jax compare`` (nst_jax/compare.py): every method on every style, the grid, the curves and the tables; the
methods that differ only in loss weights in one batch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from nst_jax import api, cli, compare, images, stylizer
from nst_jax.config import SettingError, Settings

ROOT = Path(__file__).parents[1]
CONTENT = str(ROOT / "examples" / "tubingen.jpg")
STYLES = [str(ROOT / "examples" / "starry_night.jpg"), str(ROOT / "examples" / "tubingen.jpg")]
METHODS = ["classic", "chain", "chain-uniform"]
# Shallow layers for speed, given explicitly: they replace every preset's layers, so chain and chain-uniform
# differ only in their per-layer weights (geometric vs uniform) and share a batch; classic (shift 0) runs alone.
FAST = ["--weights", "random", "--image-size", "48", "--content-layers", "relu2_1", "--style-layers",
        "relu1_1,relu2_1:relu1_2", "--num-iterations", "4", "--conv-algorithm", "direct", "--quiet"]
SETTINGS = Settings(weights="random", image_size=48, content_layers=("relu2_1",),
                    style_layers=("relu1_1", "relu2_1:relu1_2"), num_iterations=4, conv_algorithm="direct")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    calls = {"batch": [], "single": 0}
    batch, single = stylizer.stylize_batch, api.stylize

    def counted_batch(contents, *args, **kw):
        calls["batch"].append(len(contents))
        return batch(contents, *args, **kw)

    def counted_single(*args, **kw):
        calls["single"] += 1
        return single(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stylizer, "stylize_batch", counted_batch)
        mp.setattr(api, "stylize", counted_single)
        code = cli.main(["compare", "--content", CONTENT, "--style", STYLES[0], "--style", STYLES[1],
                         "--methods", ",".join(METHODS), *FAST, "--output-dir", str(out)])
    assert code == 0
    return out, json.loads((out / "compare.json").read_text()), calls


def test_batched_group_is_one_call_per_style(compared):
    _, record, calls = compared
    assert calls == {"batch": [2, 2], "single": 2}  # chain + chain-uniform together; classic alone; per style
    runs = {(r["method"], r["col"]): r for r in record["runs"]}
    assert runs["chain", 0]["batch"] == ["chain", "chain-uniform"] and runs["classic", 1]["batch"] == ["classic"]
    assert runs["chain", 0]["wall_seconds"] == runs["chain-uniform", 0]["wall_seconds"]
    # their weights differ (geometric 2/3, 1/3 vs uniform 1, 1), so do their losses
    assert runs["chain", 0]["loss"]["style"] != runs["chain-uniform", 0]["loss"]["style"]


def test_outputs_rows_and_cells(compared):
    out, record, _ = compared
    assert (record["rows"], record["cols"]) == (3, 2) and len(record["runs"]) == 6
    assert record["methods"] == METHODS and record["styles"] == ["starry_night", "tubingen"]
    assert [(r["method"], r["col"]) for r in record["runs"]] == [(m, j) for m in METHODS for j in (0, 1)]
    for r in record["runs"]:
        assert r["iterations"] == 4 and np.isfinite(r["loss"]["total"]) and r["wall_seconds"] > 0
        assert [h["iteration"] for h in r["history"]] == [0, 1, 2, 3, 4]  # print_every: every iteration here
        assert r["seconds_per_iteration"] > 0
    # explicit flags win over the presets, and the record says so
    assert record["settings"]["chain"]["style_layers"] == ["relu1_1", "relu2_1:relu1_2"]
    assert record["settings"]["chain"]["pooling"] == "avg" and record["settings"]["chain"]["activation_shift"] == -1
    assert record["overridden"]["classic"] == ["content_layers", "style_layers"]
    table = (out / "compare.md").read_text().splitlines()
    assert table[0].startswith("<!-- nst_jax ") and images.is_own_output(out / "compare.md")
    assert sum(line.startswith("| `") for line in table) == 6
    grid = images.load_image(out / "compare.png")
    boxes = [r["box"] for r in record["runs"]]
    assert all((b[2], b[3]) == (48, 36) for b in boxes)  # the content image at --image-size 48
    assert boxes[2][1] > boxes[0][1] + 36 and boxes[1][0] > boxes[0][0] + 48  # rows: methods; columns: styles
    x, y, w, h = boxes[0]
    assert grid.shape[0] >= boxes[-1][1] + h and np.all(grid[: y - 1, x: x + w].min(axis=(0, 1)) < 0.5)  # a label
    assert (out / "losses.png").is_file() == HAS_MATPLOTLIB
    if HAS_MATPLOTLIB:
        assert images.is_own_output(out / "losses.png") and images.load_image(out / "losses.png").shape[0] > 200


def test_batched_cell_equals_its_single_run(compared):
    out, record, _ = compared
    grid = images.load_image(out / "compare.png")
    cell = next(r for r in record["runs"] if r["method"] == "chain-uniform" and r["col"] == 0)
    single = api.stylize(CONTENT, STYLES[0], SETTINGS.replace(print_every=1), method="chain-uniform", progress=False)
    x, y, w, h = cell["box"]
    assert np.abs(grid[y:y + h, x:x + w] - single.array).max() <= 1 / 255
    assert cell["loss"]["total"] == pytest.approx(single.loss, rel=1e-4)


def test_groups_of_the_presets():
    settings = compare.method_settings(Settings(), ["classic", "chain", "classic-shifted", "chain-uniform",
                                                    "chain-unshifted"])
    assert compare.batch_groups(settings) == [("classic",), ("chain", "chain-uniform"), ("classic-shifted",),
                                              ("chain-unshifted",)]
    with pytest.raises(SettingError, match="repeated: chain"):
        compare.method_settings(Settings(), ["chain", "chain"])
    with pytest.raises(SettingError, match="method='chain' is set"):
        compare.method_settings(Settings(method="chain"), ["classic"])


def test_without_matplotlib_no_plot_and_a_warning(compared, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    with pytest.warns(compare.NoPlotWarning, match="matplotlib is not installed"):
        out = compare.compare(CONTENT, STYLES[:1], ["chain"], SETTINGS, output_dir=tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["compare.json", "compare.md", "compare.png"]
    assert "plot" not in out.files


def test_refuses_a_foreign_file_and_bad_methods(tmp_path, capsys):
    (tmp_path / "compare.md").write_text("my notes\n")
    base = ["compare", "--content", CONTENT, "--style", STYLES[0], *FAST, "--output-dir", str(tmp_path)]
    for methods, expected in (("classic", "compare.md' already exists and was not written by nst_jax"),
                              ("chain,gatys", "unknown method(s) 'gatys'")):
        with pytest.raises(SystemExit) as e:
            cli.main(base + ["--methods", methods])
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err, err
    assert (tmp_path / "compare.md").read_text() == "my notes\n"
