"""Tests for batch jobs over folders: ``nst-jax batch`` and nst_jax.batch.run_job.

Settings match tests/test_batch.py's (64 px, relu1_1..relu4_1, random weights) and ``--output-size
48x64`` with batches of 2, so the compiled batch of test_batch.py's bucket test is reused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import batch, batch_cli, cli, images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
FLAGS = ["--weights", "random", "--image-size", "64", "--num-iterations", "3", "--style-layers",
         "relu1_1,relu2_1,relu3_1,relu4_1", "--output-size", "48x64", "--batch-size", "2", "--quiet"]
GOOD = ["a.jpg", "b.png", "c.jpg", "d.jpg"]
BAD = {"corrupt.jpg": "truncated or corrupt", "notes.png": "not an image", "tiny.png": "too small"}


def make_folder(folder: Path) -> Path:
    """Four good images of different sizes and three bad ones."""
    folder.mkdir(parents=True, exist_ok=True)
    tub, night = Image.open(EXAMPLES / "tubingen.jpg"), Image.open(EXAMPLES / "starry_night.jpg")
    tub.resize((64, 48)).save(folder / "a.jpg")
    tub.crop((100, 0, 500, 400)).resize((50, 50)).save(folder / "b.png")
    night.resize((80, 56)).save(folder / "c.jpg")
    night.crop((0, 0, 300, 500)).resize((36, 60)).save(folder / "d.jpg")
    data = (folder / "a.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (folder / "notes.png").write_text("not a picture\n")  # a text file named .png
    Image.new("RGB", (1, 1), "red").save(folder / "tiny.png")  # a 1x1 image
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def finished(inputs, tmp_path_factory):
    """One complete CLI run (through ``nst-jax batch``): (exit code, output dir)."""
    out = tmp_path_factory.mktemp("out")
    rc = cli.main(["batch", "--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(out), *FLAGS])
    return rc, out


def _summary(out: Path) -> dict:
    return json.loads((out / batch.SUMMARY_NAME).read_text())


def test_job_writes_good_images_and_lists_bad_ones(finished, inputs):
    rc, out = finished
    assert rc == 1  # some inputs failed
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([Path(n).stem + ".png" for n in GOOD] + [batch.SUMMARY_NAME, batch.JOURNAL_NAME])
    summary = _summary(out)
    rows = {Path(r["input"]).name: r for r in summary["images"]}
    assert summary["totals"] | {"seconds": 0, "images_per_second": 0, "seconds_per_image": 0} == {
        "images": 7, "ok": 4, "failed": 3, "skipped": 0, "pending": 0, "seconds": 0, "images_per_second": 0,
        "seconds_per_image": 0}
    for name in GOOD:
        row = rows[name]
        assert row["status"] == "ok" and row["error"] is None and row["iterations"] == 3
        assert np.isfinite(row["loss"]) and row["seconds"] > 0
        img = images.load_image(row["output"])
        assert img.shape == (48, 64, 3)
        meta = images.read_metadata(row["output"])
        assert meta["settings"]["num_iterations"] == 3 and meta["loss"] == pytest.approx(row["loss"])
    for name, reason in BAD.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["error"], rows[name]
        assert rows[name]["output"] is None
    assert summary["settings"]["image_size"] == 64 and not summary["interrupted"]


def test_same_pixels_as_stylize_batch(finished, inputs):
    _, out = finished
    st = batch.BatchStylizer(STYLE, weights="random", image_size=64, num_iterations=3, output_size=(48, 64),
                             style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"), batch_size=2)
    results = st.stylize([inputs / "a.jpg", inputs / "b.png"], progress=False)
    for name, r in zip(["a", "b"], results):
        written = images.load_image(out / f"{name}.png")
        assert np.abs(written - images.to_uint8(r.array) / 255.0).max() <= 1e-6


def test_interrupted_job_resumes_without_redoing(inputs, tmp_path):
    out = tmp_path / "out"
    seen = []

    def stop_after_first(row):
        seen.append(row)
        if row.status == "ok":
            raise KeyboardInterrupt  # Ctrl-C right after the first output is written

    with pytest.raises(KeyboardInterrupt):
        batch.run_job(inputs, STYLE, out, weights="random", image_size=64, num_iterations=3, output_size="48x64",
                      batch_size=2, style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1"), progress=False,
                      callback=stop_after_first)
    first = [r for r in seen if r.status == "ok"]
    assert len(first) == 1
    done = sorted(p.name for p in out.iterdir() if p.name not in (batch.SUMMARY_NAME, batch.JOURNAL_NAME))
    assert done == [Path(first[0].output).name]  # only complete files, no temp files
    summary = _summary(out)
    assert summary["interrupted"] and summary["totals"]["ok"] == 1 and summary["totals"]["pending"] >= 3
    mtime = os.stat(first[0].output).st_mtime_ns

    rc = batch_cli.main(["--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(out), *FLAGS])
    assert rc == 1
    assert os.stat(first[0].output).st_mtime_ns == mtime  # not redone
    summary = _summary(out)
    rows = {Path(r["input"]).name: r["status"] for r in summary["images"]}
    assert rows[Path(first[0].input).name] == "skipped"
    assert sorted(rows.values()) == sorted(["skipped", "ok", "ok", "ok", "failed", "failed", "failed"])
    assert sorted(p.name for p in out.iterdir()) == sorted([Path(n).stem + ".png" for n in GOOD] +
                                                           [batch.SUMMARY_NAME, batch.JOURNAL_NAME])
    rc = batch_cli.main(["--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(out), *FLAGS])
    assert rc == 1 and _summary(out)["totals"]["skipped"] == 4  # a third run has nothing left but the bad ones


def test_ctrl_c_exit_code(monkeypatch, tmp_path, capsys, inputs):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "run_job", interrupted)
    rc = batch_cli.main(["--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(tmp_path), *FLAGS])
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err


def test_nan_loss_fails_that_image_only(inputs, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg"):
        shutil.copy(inputs / name, folder / name)
    prepare = batch.BatchStylizer.prepare

    def poisoned(self, content, label="content image"):
        img = prepare(self, content, label)
        return img * np.float32(1e30) if Path(content).name == "c.jpg" else img  # overflows to inf

    monkeypatch.setattr(batch.BatchStylizer, "prepare", poisoned)
    summary = batch.run_job(folder, STYLE, tmp_path / "out", weights="random", image_size=64, num_iterations=3,
                            output_size="48x64", batch_size=2, style_layers=("relu1_1", "relu2_1", "relu3_1",
                                                                            "relu4_1"), progress=False)
    rows = {Path(r.input).name: r for r in summary.rows}
    assert rows["a.jpg"].status == "ok" and rows["c.jpg"].status == "failed"
    assert "non-finite" in rows["c.jpg"].error and "c.jpg" in rows["c.jpg"].error
    assert summary.exit_code == 1 and not (tmp_path / "out" / "c.png").exists()


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--output-size", "big"], "--output-size"),
    (["--suffix", ".xyz"], "suffix"),
    (["--image-size", "8"], "--image-size must be an integer >= 32"),
    (["--save-every", "5"], "save_every"),
    (["--ray-actors", "2"], "need --ray"),
])
def test_bad_flags_exit_2_without_traceback(extra, message, inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        batch_cli.main(["--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(tmp_path / "o"),
                        "--weights", "random", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_inputs_and_style_exit_2(tmp_path, capsys, inputs):
    for args in (["--style", str(STYLE), "--inputs", str(tmp_path / "nowhere")],
                 ["--style", str(tmp_path / "nope.jpg"), "--inputs", str(inputs)]):
        with pytest.raises(SystemExit) as exc:
            batch_cli.main([*args, "--output-dir", str(tmp_path / "o"), "--weights", "random"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_ray_flags_reach_run_ray_job(monkeypatch, tmp_path, inputs):
    from nst_jax import ray_job

    calls = []

    def fake(inputs_, style, out, settings, **kw):
        calls.append((inputs_, style, out, settings, kw))
        return batch.JobSummary(Path(out), [])

    monkeypatch.setattr(ray_job, "run_ray_job", fake)
    base = ["--style", str(STYLE), "--inputs", str(inputs), "--output-dir", str(tmp_path), "--weights", "random"]
    assert batch_cli.main([*base, "--ray", "auto", "--ray-actors", "3", "--ray-gpus-per-actor", "0.5"]) == 0
    assert batch_cli.main([*base, "--ray"]) == 0
    (_, style, _, settings, kw), (*_, kw2) = calls
    assert style == [str(STYLE)] and settings.weights == "random"
    assert kw["address"] == "auto" and kw["num_actors"] == 3 and kw["num_gpus_per_actor"] == 0.5
    assert kw2["address"] is None and kw2["num_actors"] is None
