"""How results look: short text reprs, HTML with the picture and a loss table, labelled grids of batches, loss
plots, the progress bar (compiling phase, per-iteration updates, final losses kept), and the live preview."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import display

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CONTENT, STYLE = EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg"
SMALL = dict(weights="random", image_size=48, num_iterations=4, print_every=2, progress=False)


@pytest.fixture(scope="module")
def result():
    return nst_jax.stylize(CONTENT, STYLE, **SMALL)


def _pngs_in(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_result_text_repr_is_one_short_line(result):
    text = repr(result)
    assert "\n" not in text and len(text) < 300
    assert text.startswith("Result(48x36") and "4 iterations" in text and "loss" in text
    assert "array(" not in text and "[[" not in text


def test_result_html_shows_the_picture_and_the_losses(result):
    html = result._repr_html_()
    pictures = _pngs_in(html)
    assert len(pictures) == 1 and pictures[0].size == (48, 36)
    np.testing.assert_array_equal(np.asarray(pictures[0].convert("RGB")), nst_jax.images.to_uint8(result.array))
    assert "<table" in html and ">content<" in html and ">style<" in html and ">total<" in html
    assert f"{result.history[-1].total:.4g}" in html


def test_batch_and_grid_display_as_labelled_pictures_not_arrays():
    results = nst_jax.stylize_batch([CONTENT, CONTENT], STYLE, loss_weights=[{"style_weight": 10},
                                                                            {"style_weight": 1000}], **SMALL)
    assert isinstance(results, list) and len(results) == 2
    text = repr(results)
    assert len(text.splitlines()) == 3 and "tubingen.jpg" in text and "[[" not in text
    html = results._repr_html_()
    assert len(_pngs_in(html)) == 2 and "tubingen.jpg" in html
    assert "tubingen.jpg: style_weight 10<" in html and "tubingen.jpg: style_weight 1000<" in html  # sweep cells

    grid = nst_jax.stylize_grid([CONTENT], [STYLE, STYLE], **SMALL)
    assert len(grid) == 1 and len(grid[0]) == 2 and isinstance(grid[0][0], nst_jax.Result)
    html = grid._repr_html_()
    assert len(_pngs_in(html)) == 2 and "starry_night.jpg" in html and "tubingen.jpg" in html
    assert len(repr(grid).splitlines()) == 3


def test_plot_draws_every_term(result):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = result.plot()
    labels = {line.get_label() for line in ax.get_lines()}
    assert labels == {"total", "content", "style", "tv"}
    xs = ax.get_lines()[0].get_xdata()
    assert list(xs) == [r.iteration for r in result.history]
    ax = result.plot(x="time")
    assert ax.get_xlabel() == "time (s)"
    with pytest.raises(ValueError, match="x must be"):
        result.plot(x="seconds")


def test_progress_bar_says_compiling_moves_every_iteration_and_stays(capsys, monkeypatch):
    import tqdm.auto
    import tqdm.std

    class EveryFrame(tqdm.std.tqdm):  # draws every update (tqdm otherwise skips frames within 0.1 s)
        def __init__(self, *a, **k):
            super().__init__(*a, mininterval=0, miniters=1, **k)

    monkeypatch.setattr(tqdm.auto, "tqdm", EveryFrame)
    nst_jax.stylize(CONTENT, STYLE, **{**SMALL, "progress": True, "num_iterations": 6, "print_every": 0,
                                       "loop": "step"})
    err = capsys.readouterr().err
    frames = re.split(r"[\r\n]", err)
    assert any(f.startswith("compiling") for f in frames)
    counts = {int(m.group(1)) for f in frames for m in [re.search(r"\| (\d+)/6 ", f)] if m}
    # print_every 0 records only the first and last iteration; the bar still moved in between
    assert {0, 6} <= counts and len(counts - {0, 6}) >= 1
    assert err.rstrip().endswith("]") or "6/6" in frames[-1] or "6/6" in err.splitlines()[-1]
    last = [f for f in frames if "6/6" in f][-1]
    assert "loss=" in last and "content=" in last and "style=" in last


def test_preview_is_a_no_op_outside_a_notebook(result):
    p = display.Preview()
    assert not p.active
    p.update(result.array, "caption")  # nothing happens, no error
    r = nst_jax.stylize(CONTENT, STYLE, preview_every=2, **SMALL)
    assert r.array.shape == result.array.shape
    with pytest.raises(ValueError, match="preview_every"):
        nst_jax.stylize(CONTENT, STYLE, preview_every=-1, **SMALL)


def test_preview_updates_one_display_in_place(monkeypatch, result):
    pytest.importorskip("IPython")
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj._repr_html_())

    class Shell:  # stands in for a notebook kernel's shell
        pass

    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell())
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: (shown.append(obj._repr_html_()),
                                                                                  Handle())[1])
    nst_jax.stylize(CONTENT, STYLE, preview_every=2, **SMALL)
    assert "compiling" in shown[0]
    assert len(shown) == 1 + 2 + 1  # placeholder, iterations 2 and 4, final
    assert all(len(_pngs_in(h)) == 1 for h in shown[1:])
    assert "iteration 2" in shown[1] and "final" in shown[-1]
