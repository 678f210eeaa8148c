"""``nst-jax study`` (nst_jax/study/): the registry, the report folder (index.md, a self-contained index.html,
study.json), the measures against hand computations, the command line's errors, and quick real runs."""

from __future__ import annotations

import html.parser
import importlib.util
import json

import numpy as np
import pytest

from nst_jax import cli, images, study
from nst_jax.optim import Record
from nst_jax.study import measures

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the report's plots need matplotlib")


def _history(values):
    return [Record(i, float(v), float(v), 0.0, 0.0, 0.1 * i) for i, v in enumerate(values)]


@pytest.fixture
def fake_study(monkeypatch):
    """A registered study that draws a grid and two plots from made-up pictures and losses (no network)."""
    monkeypatch.setattr(study, "STUDIES", dict(study.STUDIES))

    @study.study("fake", title="A fake study", seeds=("000",))
    def fake(ctx: study.Context) -> study.Section:
        rng = np.random.default_rng(0)
        cells = [[rng.random((ctx.size, ctx.size, 3), dtype=np.float32) for _ in range(3)] for _ in range(2)]
        grid = ctx.grid(cells, ["row a", "row b"], ["x", "y", "z"], "grid", caption="random cells",
                        notes=[["1", "2", "3"], ["4", "5", "6"]])
        hist = {"down": _history([4, 2, 1]), "flat": _history([3, 3, 3])}
        return study.Section(ctx.title, "Made up: `down` fell to **0.25** of its start.",
                             [study.Table(["run", "final"], [["down", 1.0], ["flat", 3.0]])],
                             [grid, ctx.curves(hist, "iteration", "curves", "losses"),
                              ctx.curves(hist, "seconds", "time", "losses", relative=True)],
                             {"final": {"down": 1.0, "flat": 3.0}})
    return fake


def test_registry_has_the_studies_in_order():
    assert study.names()[:5] == ("reconstruction", "texture", "stall", "color", "style_tile")
    assert study.resolve("all") == list(study.names())
    assert study.resolve(["texture", "reconstruction", "texture"]) == ["texture", "reconstruction"]
    assert study.STUDIES["reconstruction"].seeds == ("004",)


def test_unknown_study_names_the_known_ones():
    with pytest.raises(study.UnknownStudyError, match=r"unknown study 'nope'.*reconstruction, texture"):
        study.resolve(["reconstruction", "nope"])
    with pytest.raises(study.UnknownStudyError, match="no study named"):
        study.resolve([])


def test_register_rejects_bad_or_taken_names(fake_study):
    for bad in ("all", "Bad", "a-b"):
        with pytest.raises(ValueError, match="lowercase identifier"):
            study.study(bad, title="x")
    with pytest.raises(ValueError, match="already registered"):
        study.study("fake", title="again")


class _Sources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href")]


@needs_matplotlib
def test_report_files_self_contained_and_numbers(fake_study, tmp_path):
    out = tmp_path / "report"
    rep = study.run_studies(["fake"], out, weights="random", quick=True, command="nst-jax study fake")
    assert set(rep.files) == {"markdown", "html", "json"}
    assert sorted(p.name for p in out.iterdir()) == ["fake-curves.png", "fake-grid.png", "fake-time.png",
                                                    "index.html", "index.md", "study.json"]
    page = (out / "index.html").read_text()
    parser = _Sources()
    parser.feed(page)
    assert len(parser.refs) == 3 and all(v.startswith("data:image/png;base64,") for _, _, v in parser.refs)
    assert "<b>0.25</b>" in page and "<code>down</code>" in page and "<td>3</td>" in page
    md = (out / "index.md").read_text()
    assert "![random cells" in md and "(fake-grid.png)" in md and "| down | 1 |" in md
    record = json.loads((out / "study.json").read_text())
    assert record["command"] == "nst-jax study fake" and record["weights"]["source"] == "random"
    assert record["machine"]["cpu"]["cores"] >= 1 and record["size"] == study.QUICK_SIZE
    (section,) = record["studies"]
    assert section["numbers"] == {"final": {"down": 1.0, "flat": 3.0}} and section["seeds"] == ["000"]
    assert section["figures"][0]["path"] == "fake-grid.png" and "enlarged 4x" in section["figures"][0]["caption"]
    # the grid: 2 x 3 cells of 32 px shown 4x (128 px), labels above each
    grid = images.load_image(out / "fake-grid.png")
    assert grid.shape[0] > 2 * 128 and grid.shape[1] > 3 * 128
    for name in ("index.md", "index.html", "study.json", "fake-grid.png"):
        assert images.is_own_output(out / name)
    # a second run replaces its own files
    study.run_studies(["fake"], out, weights="random", quick=True)


@needs_matplotlib
def test_refuses_to_replace_a_foreign_file(fake_study, tmp_path):
    (tmp_path / "index.html").write_text("<p>mine</p>")
    with pytest.raises(images.ImageError, match="not written by nst_jax"):
        study.run_studies(["fake"], tmp_path, weights="random", quick=True)
    assert (tmp_path / "index.html").read_text() == "<p>mine</p>" and not (tmp_path / "fake-grid.png").exists()
    study.run_studies(["fake"], tmp_path, weights="random", quick=True, overwrite=True)
    assert images.is_own_output(tmp_path / "index.html")


def test_without_matplotlib_a_clear_error(fake_study, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    with pytest.raises(study.MissingExtraError, match=r"nst-jax\[report\]"):
        study.run_studies(["fake"], tmp_path, weights="random", quick=True)
    assert not list(tmp_path.iterdir())


def test_bad_size_and_scale(tmp_path):
    with pytest.raises(ValueError, match="size must be .* from 32"):
        study.run_studies(["texture"], tmp_path, size=16)
    with pytest.raises(ValueError, match="iterations_scale must be a positive number"):
        study.run_studies(["texture"], tmp_path, iterations_scale=0)


def test_cli_list_and_errors(capsys, tmp_path):
    assert cli.main(["study", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in study.names())
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "nope", "--output-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "reconstruction" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli.main(["study", "texture"])
    assert "--output-dir is required" in capsys.readouterr().err


def test_measures_against_hand_computations():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 5, 3)), rng.random((6, 5, 3))
    assert measures.rmse(a, b) == pytest.approx(np.sqrt(((a - b) ** 2).sum() / a.size))
    # a uniform shift of every channel by d moves every quantile by d: the distance is d
    assert measures.color_distance(a * 0.5, a * 0.5 + 0.25) == pytest.approx(0.25)
    assert measures.color_distance(a, a[::-1, ::-1]) == pytest.approx(0.0, abs=1e-12)  # same pixels, other places
    # gradient: a horizontal ramp of slope 0.1 in every channel -> luma slope 0.1 (weights sum to 1)
    ramp = np.repeat(np.tile(np.arange(8) * 0.1, (8, 1))[..., None], 3, axis=2)
    assert measures.mean_gradient(ramp) == pytest.approx(0.1)
    # a pure cosine of 1/4 cycle per pixel along x: all its power is at radius 0.25
    x = np.arange(16)
    wave = np.repeat(np.tile(0.5 + 0.5 * np.cos(2 * np.pi * x / 4), (16, 1))[..., None], 3, axis=2)
    assert measures.texture_scale(wave) == pytest.approx(0.25)
    stripes = np.repeat(np.tile(0.5 + 0.5 * np.cos(2 * np.pi * x / 8), (16, 1))[..., None], 3, axis=2)
    assert measures.texture_scale(stripes) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="different shapes"):
        measures.rmse(a, b[:5])


@needs_matplotlib
def test_quick_reconstruction(tmp_path):
    rep = study.run_studies(["reconstruction"], tmp_path, weights="random", quick=True)
    numbers = rep.section("reconstruction").numbers
    assert list(numbers["layers"]) == ["conv1_1", "conv2_1"] and numbers["iterations"] == study.QUICK_ITERATIONS
    for d in numbers["layers"].values():
        assert d["final_loss"] < d["initial_loss"] and 0 < d["pixel_rmse"] < 1
    grid = images.load_image(tmp_path / "reconstruction-grid.png")
    assert grid.shape[1] > 3 * 128  # content + two layers, shown at 128 px
    text = rep.section("reconstruction").text
    assert f"{numbers['layers']['conv1_1']['pixel_rmse']:.3g}" in text  # the text quotes the measured numbers


def test_settled_at_and_trend():
    from nst_jax.study.layers import trend
    from nst_jax.study.stalls import settled_at

    # falls to 10, then within 1% of the final 9.95 from iteration 3 on (10 <= 9.95 * 1.01)
    history = [Record(i, v, v, 0.0, 0.0, 0.0, terms={"content": v}) for i, v in enumerate([50, 20, 11, 10, 9.95])]
    assert settled_at(history) == 3
    assert settled_at(history, within=0.001) == 4
    assert trend([1, 2, 3]) == "rises at every step" and trend([3, 2, 1]) == "falls at every step"
    assert trend([1, 3, 2, 4]) == "rises at 2 of 3 steps"
