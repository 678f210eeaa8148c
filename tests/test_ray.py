"""Tests for nst_jax.ray_job: the batch job on a local two-CPU Ray cluster with two actors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from nst_jax import batch, images  # noqa: E402
from nst_jax.ray_job import run_ray_job  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
KW = dict(weights="random", image_size=64, num_iterations=3, output_size=(48, 64), batch_size=2,
          style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"))
GOOD = ["a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg"]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray_in")
    tub, night = Image.open(EXAMPLES / "tubingen.jpg"), Image.open(EXAMPLES / "starry_night.jpg")
    tub.resize((64, 48)).save(folder / "a.jpg")
    tub.crop((100, 0, 500, 400)).resize((48, 48)).save(folder / "b.png")
    night.resize((64, 44)).save(folder / "c.jpg")
    night.crop((0, 0, 300, 500)).resize((36, 60)).save(folder / "d.jpg")
    tub.crop((0, 50, 400, 350)).resize((60, 45)).save(folder / "e.jpg")
    data = (folder / "a.jpg").read_bytes()
    (folder / "f_corrupt.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local_out")
    batch.run_job(inputs, STYLE, out, progress=False, **KW)
    return out


def test_ray_job_does_each_image_once_like_the_local_job(cluster, inputs, local, tmp_path):
    out = tmp_path / "ray_out"
    summary = run_ray_job(inputs, STYLE, out, num_actors=2, ray_batch_size=3, num_cpus_per_actor=1,
                          progress=False, **KW)
    assert ray.is_initialized()  # a cluster it did not start is left running
    data = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert data["runner"] == "ray" and not data["interrupted"]
    rows = {Path(r["input"]).name: r for r in data["images"]}
    assert len(data["images"]) == 6 and data["totals"]["ok"] == 5 and data["totals"]["failed"] == 1
    assert [rows[n]["status"] for n in GOOD] == ["ok"] * 5  # each good image done exactly once
    assert len({rows[n]["worker"] for n in GOOD}) == 2  # by both actors
    bad = rows["f_corrupt.jpg"]
    assert bad["status"] == "failed" and "truncated or corrupt" in bad["error"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([Path(n).stem + ".png" for n in GOOD] + [batch.SUMMARY_NAME, batch.JOURNAL_NAME])
    for name in GOOD:
        png = Path(name).stem + ".png"
        a, b = images.load_image(out / png), images.load_image(local / png)
        assert np.abs(a - b).max() <= 1 / 255, name
        assert rows[name]["loss"] == pytest.approx(json.loads((local / batch.SUMMARY_NAME).read_text())
                                                   ["images"][GOOD.index(name)]["loss"], rel=1e-3)
    assert summary.exit_code == 1

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    again = run_ray_job(inputs, STYLE, out, num_actors=2, ray_batch_size=3, progress=False, **KW)
    assert again.count("skipped") == 5 and again.count("failed") == 1 and again.count("ok") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"} == mtimes
