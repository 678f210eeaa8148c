"""Quick runs of the artifacts, inits and optimizers studies (random weights, 32 px, shallow layers): each writes
its section, pictures and plots, with the numbers its text quotes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from nst_jax import artifacts, images, study
from nst_jax.optim import Record
from nst_jax.study import optimizers as optimizer_studies

pytestmark = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                reason="the report's plots need matplotlib")


def test_studies_are_registered_with_their_seeds():
    assert {"artifacts", "inits", "optimizers"} <= set(study.names())
    assert study.STUDIES["artifacts"].seeds == ("001",)
    assert study.STUDIES["optimizers"].seeds == ("002", "004")


def test_steady_seconds_per_iteration_leaves_out_the_first_step():
    history = [Record(0, 9.0, 0, 0, 0, 0.5), Record(1, 5.0, 0, 0, 0, 10.5), Record(5, 3.0, 0, 0, 0, 11.3),
               Record(9, 2.0, 0, 0, 0, 12.1)]  # 10 s of compiling in the first step, then 0.2 s per iteration
    assert optimizer_studies.steady_seconds_per_iteration(history) == pytest.approx(0.2)
    assert optimizer_studies.steady_seconds_per_iteration(history[:2]) == pytest.approx(10.5)


def test_quick_artifacts_inits_optimizers(tmp_path):
    rep = study.run_studies(["artifacts", "inits", "optimizers"], tmp_path, weights="random", quick=True)
    by_name = {s.name: s.to_dict() for s in rep.sections}
    assert json.loads((tmp_path / "study.json").read_text())  # written
    runs = by_name["artifacts"]["numbers"]["runs"]
    assert set(runs) == {"content", "baseline", "reflect padding", "adam-no-gray", "tv_weight 0"}
    content = study.Context(tmp_path, 32, "random", *study.default_images()).content_image()
    # the content's numbers are the measures of the content image itself
    assert runs["content"]["border_energy"] == pytest.approx(artifacts.border_energy(content, 2))
    assert runs["content"]["gray_spots"] == artifacts.gray_spots(content)
    assert f"{runs['baseline']['border_energy']:.3g} with zero padding" in by_name["artifacts"]["text"]
    inits = by_name["inits"]["numbers"]["inits"]
    assert set(inits) == {"random", "content"}
    assert inits["content"]["initial_loss"] < inits["random"]["initial_loss"]  # the content term starts at 0
    opt = by_name["optimizers"]["numbers"]
    assert set(opt["runs"]) == {"L-BFGS lr 1", "Adam lr 10"}
    for d in opt["runs"].values():
        assert d["iterations_in_budget"] * d["seconds_per_iteration"] <= opt["budget_seconds"] * (1 + 1e-9)
    for section in rep.sections:
        for fig in section.figures:
            img = images.load_image(tmp_path / fig.path)
            assert min(img.shape[:2]) >= 64
