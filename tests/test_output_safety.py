"""Outputs never destroy inputs or other files: same-file refusal, ``overwrite``, directory creation, batch name
collisions, and the partial image written on Ctrl-C / SIGTERM (64 px, random weights)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import api, batch, batch_cli, cli, images

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONTENT = EXAMPLES / "tubingen.jpg"
STYLE = EXAMPLES / "starry_night.jpg"
# test_api.py's shallow layers: its compiled functions are shared within a pytest session
FAST = dict(weights="random", image_size=64, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"),
            progress=False)
FAST_FLAGS = ["--weights", "random", "--image-size", "64", "--content-layers", "relu2_1",
              "--style-layers", "relu1_1,relu2_1", "--quiet"]
BATCH_FLAGS = ["--weights", "random", "--image-size", "64", "--num-iterations", "2", "--style-layers",
               "relu1_1,relu2_1,relu3_1,relu4_1", "--output-size", "48x64", "--batch-size", "2", "--quiet"]


@pytest.fixture
def photo(tmp_path) -> Path:
    """A user's photo (a JPEG nst_jax did not write) in its own folder."""
    path = tmp_path / "x.jpg"
    Image.open(CONTENT).resize((64, 48)).save(path)
    return path


def _cli_fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("nst-jax: error: ") and "Traceback" not in err
    return err


# --------------------------------------------------------------------------------------------------
# 1. The output is never an input, and never a file nst_jax did not write (unless overwrite)


def _spellings(photo: Path) -> dict[str, Path]:
    """The photo's path as given, through a symlink, through '..', and a hard link to it."""
    (photo.parent / "sub").mkdir()
    link = photo.parent / "link.jpg"
    link.symlink_to(photo)
    hard = photo.parent / "hard.jpg"
    os.link(photo, hard)
    return {"same": photo, "symlink": link, "dotdot": photo.parent / "sub" / ".." / photo.name, "hardlink": hard}


@pytest.mark.parametrize("role", ["content", "style", "init"])
def test_cli_refuses_output_equal_to_an_input(photo, role, capsys):
    before = photo.read_bytes()
    for how, out in _spellings(photo).items():
        argv = ["--content", CONTENT, "--style", STYLE, *FAST_FLAGS, "--num-iterations", "1", "--output", out]
        if role == "content":
            argv[1] = photo
        elif role == "style":
            argv[3] = photo
        else:
            argv += ["--init", "image", "--init-image", photo]
        for extra in ([], ["--overwrite"]):  # not even --overwrite replaces an input
            err = _cli_fails(argv + extra, capsys)
            assert f"{role} image" in err and "is also" in err, (how, err)
            assert str(out) in err, (how, err)
            assert photo.read_bytes() == before, how


def test_library_refuses_output_equal_to_content_or_style(photo):
    (photo.parent / "sub").mkdir()
    for kw in (dict(content=photo), dict(style=[STYLE, photo])):
        args = {"content": CONTENT, "style": STYLE, **kw}
        for overwrite in ({}, {"overwrite": True}):
            with pytest.raises(images.ImageError, match="would replace an input"):
                nst_jax.stylize(args["content"], args["style"], output=photo.parent / "sub" / ".." / photo.name,
                                num_iterations=1, **overwrite, **FAST)
    assert images.load_image(photo).shape == (48, 64, 3)


def test_existing_file_not_written_by_nst_jax_needs_overwrite(photo, tmp_path, capsys):
    out = tmp_path / "result.jpg"
    shutil.copy(photo, out)  # some other program's file at the output path
    before = out.read_bytes()
    err = _cli_fails(["--content", CONTENT, "--style", STYLE, *FAST_FLAGS, "--num-iterations", "1", "--output", out],
                     capsys)
    assert str(out) in err and "--overwrite" in err and "not written by nst_jax" in err
    assert out.read_bytes() == before
    with pytest.raises(images.ImageError, match="overwrite=True"):
        nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=1, **FAST)
    assert out.read_bytes() == before
    # with --overwrite it is replaced
    assert cli.main([str(a) for a in ["--content", CONTENT, "--style", STYLE, *FAST_FLAGS, "--num-iterations", "1",
                                      "--output", out, "--overwrite"]]) == 0
    assert images.is_own_output(out) and out.read_bytes() != before


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_previous_output_is_replaced_without_overwrite(tmp_path, suffix):
    out = tmp_path / f"result{suffix}"
    first = nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=1, **FAST)
    assert first.output == out and images.is_own_output(out)
    again = nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=2, **FAST)
    assert images.read_metadata(again.output)["iterations"] == 2


def test_unreadable_or_foreign_png_is_not_ours(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (20, 20)).save(plain)
    assert not images.is_own_output(notes) and not images.is_own_output(plain)
    assert not images.is_own_output(tmp_path / "missing.png")
    assert images.is_own_output(images.save_image(np.zeros((20, 20, 3)), tmp_path / "ours.png"))


def test_snapshot_over_a_foreign_file_is_refused_before_the_run(tmp_path, photo):
    out = tmp_path / "out.png"
    foreign = tmp_path / "out_2.png"
    Image.open(photo).save(foreign)
    before = foreign.read_bytes()
    calls = []
    with pytest.raises(images.ImageError, match=r"out_2\.png.*overwrite"):
        nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=4, save_every=2, callback=calls.append, **FAST)
    assert calls == [] and not out.exists() and foreign.read_bytes() == before
    r = nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=4, save_every=2, overwrite=True, **FAST)
    assert [p.name for p in r.snapshots] == ["out_2.png"] and images.is_own_output(foreign)


# --------------------------------------------------------------------------------------------------
# 2. Batch: an input is never taken for an output; name collisions are reported


def _two_photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tub = Image.open(CONTENT)
    tub.resize((64, 48)).save(folder / "photo.jpg")
    tub.crop((100, 0, 500, 400)).resize((50, 50)).save(folder / "photo.png")
    return folder


def test_batch_into_the_input_folder_reports_the_collision(tmp_path, capsys):
    folder = _two_photos(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    rc = batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(folder), *BATCH_FLAGS])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    rows = {Path(r["input"]).name: r for r in json.loads((folder / batch.SUMMARY_NAME).read_text())["images"]}
    assert rows["photo.jpg"]["status"] == "failed", rows  # not "skipped (already done)"
    assert "photo.png" in rows["photo.jpg"]["error"] and "input" in rows["photo.jpg"]["error"]
    assert rows["photo.png"]["status"] == "failed"
    assert "0 skipped" in captured.out and "failed: " in captured.err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before


def test_batch_two_inputs_with_one_output_name_are_both_reported(tmp_path):
    folder = _two_photos(tmp_path / "in")
    out = tmp_path / "out"
    summary = batch.run_job(folder, STYLE, out, weights="random", image_size=64, num_iterations=2,
                            output_size="48x64", batch_size=2, style_layers=("relu1_1", "relu2_1", "relu3_1",
                                                                            "relu4_1"), progress=False)
    rows = {Path(r.input).name: r for r in summary.rows}
    assert rows["photo.jpg"].status == rows["photo.png"].status == "failed", rows
    for name, other in (("photo.jpg", "photo.png"), ("photo.png", "photo.jpg")):
        assert other in rows[name].error and "photo.png" in rows[name].error
    assert summary.exit_code == 1 and not (out / "photo.png").exists()


def test_batch_existing_foreign_output_is_not_taken_as_done(tmp_path, photo):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo, folder / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    Image.open(photo).save(out / "a.png")  # some other program's a.png
    job = batch.BatchJob(None, out)
    row = job.precheck(folder / "a.jpg")
    assert row is not None and row.status == "failed" and "overwrite" in row.error and "a.png" in row.error
    assert batch.BatchJob(None, out, overwrite=True).precheck(folder / "a.jpg") is None
    images.save_image(np.zeros((20, 20, 3)), out / "a.png")  # ours: a finished output
    assert job.precheck(folder / "a.jpg").status == "skipped"


# --------------------------------------------------------------------------------------------------
# 3. Only the last level of a missing output directory is created, and the CLI says so


def test_cli_does_not_create_a_directory_tree(tmp_path, capsys):
    out = tmp_path / "typo" / "deeper" / "out.png"
    err = _cli_fails(["--content", CONTENT, "--style", STYLE, *FAST_FLAGS, "--num-iterations", "1", "--output", out],
                     capsys)
    assert str(out.parent) in err and "does not exist" in err and str(tmp_path) in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(images.ImageError, match="does not exist"):
        images.save_image(np.zeros((20, 20, 3)), out)
    assert list(tmp_path.iterdir()) == []


def test_cli_creates_the_last_level_and_says_so(tmp_path, capsys):
    out = tmp_path / "new" / "out.png"
    assert cli.main([str(a) for a in ["--content", CONTENT, "--style", STYLE, *FAST_FLAGS, "--num-iterations", "1",
                                      "--output", out]]) == 0
    captured = capsys.readouterr()
    assert out.is_file() and f"created directory {out.parent}{os.sep}" in captured.out + captured.err


def test_batch_output_dir_rules(tmp_path, photo, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo, folder / "a.jpg")
    deep = tmp_path / "typo" / "out"
    with pytest.raises(SystemExit) as e:
        batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(deep), *BATCH_FLAGS])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not exist" in err and str(deep) in err
    assert not (tmp_path / "typo").exists()
    new = tmp_path / "out"
    assert batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(new),
                           *BATCH_FLAGS]) == 0
    captured = capsys.readouterr()
    assert (new / "a.png").is_file() and f"created directory {new}{os.sep}" in captured.out + captured.err


# --------------------------------------------------------------------------------------------------
# 4. Ctrl-C / SIGTERM: the latest image is kept as a partial file, never under the output's name


def test_interrupt_saves_the_latest_iterate_as_a_partial_file(tmp_path):
    out = tmp_path / "out.png"

    def stop_at_3(record):
        if record.iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        nst_jax.stylize(CONTENT, STYLE, output=out, num_iterations=50, print_every=1, callback=stop_at_3, **FAST)
    assert isinstance(e.value, api.Interrupted)
    partial = tmp_path / "out.partial-3.png"
    assert e.value.partial == partial and e.value.iteration == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial-3.png"]  # no out.png, no temp files
    assert images.load_image(partial).shape == (48, 64, 3)
    meta = images.read_metadata(partial)
    assert meta["iteration"] == 3 and meta["partial"] is True
    # the same run to 3 iterations gives that image: it is the iterate after the last completed step
    full = nst_jax.stylize(CONTENT, STYLE, num_iterations=3, **FAST)
    np.testing.assert_allclose(images.load_image(partial), full.array, atol=1 / 255 + 1e-6)


def test_interrupt_without_output_carries_the_image(tmp_path):
    def stop_at_2(record):
        if record.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(api.Interrupted) as e:
        nst_jax.stylize(CONTENT, STYLE, num_iterations=50, print_every=1, callback=stop_at_2, **FAST)
    assert e.value.partial is None and e.value.iteration == 2 and e.value.array.shape == (48, 64, 3)


_RUN_CLI = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
           "from nst_jax import cli; sys.exit(cli.main())"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_writes_a_partial_file_and_exits_nonzero(tmp_path, sig, code):
    out = tmp_path / "out.png"
    # SIGINT is ignored in background jobs: the child restores Python's Ctrl-C handler itself.
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_CLI, "--content", str(CONTENT), "--style", str(STYLE), "--output", str(out),
         "--weights", "random", "--image-size", "32", "--content-layers", "relu2_1", "--style-layers",
         "relu1_1,relu2_1", "--num-iterations", "100000", "--print-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    seen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the progress bar shows a finished iteration
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        if any(int(n) >= 2 for n in re.findall(rb"\| *(\d+)/100000", seen)):
            break
    else:
        proc.kill()
        pytest.fail(f"no progress within the time limit: {seen[-2000:]!r}")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    err = (seen + stderr).decode(errors="replace")
    assert proc.returncode == code, err
    partials = sorted(tmp_path.glob("out.partial-*.png"))
    assert len(partials) == 1, (sorted(p.name for p in tmp_path.iterdir()), err)
    assert str(partials[0]) in err and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [partials[0].name]  # no temp files
    assert images.load_image(partials[0]).shape == (24, 32, 3)
    iteration = int(partials[0].stem.rsplit("-", 1)[1])
    assert iteration >= 2 and images.read_metadata(partials[0])["iteration"] == iteration
