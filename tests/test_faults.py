"""Faults: NaN/inf losses, SIGKILL and rerun, bad inputs, a full disk, two jobs on one output folder.

The job tests run real ``nst-jax batch`` processes (random weights, 32 px, a few iterations) where a
fault is a process being killed; scripts/fault_batch.py is the long version (``--kills 10``).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nst_jax
from nst_jax import batch, batch_cli, images, jobfiles, optim
from nst_jax.objective import Terms

ROOT = Path(__file__).resolve().parents[1]
STYLE = ROOT / "examples" / "starry_night.jpg"

_spec = importlib.util.spec_from_file_location("fault_batch", ROOT / "scripts" / "fault_batch.py")
fault_batch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fault_batch)

#: In-process jobs: the settings of scripts/fault_batch.py's subprocess jobs, fewer iterations.
JOB = dict(weights="random", image_size=32, num_iterations=2, style_layers=("relu1_1", "relu2_1"),
           content_layers=("relu2_1",), output_size="32x32", batch_size=2, progress=False)
JOB_FLAGS = ["--weights", "random", "--image-size", "32", "--num-iterations", "2", "--style-layers",
             "relu1_1,relu2_1", "--content-layers", "relu2_1", "--output-size", "32x32", "--batch-size", "2",
             "--quiet"]


# --------------------------------------------------------------------------------------------------
# NaN/inf inside the compiled loop


@dataclass(frozen=True)
class ExpObjective:
    """``loss = -rate * sum(x)``, ``rate`` a (per-image) target: unbounded below. Its gradient is constant, so
    neural-style's L-BFGS stores no curvature pair and steps by ``lr * rate`` per pixel (after a first step
    of ``lr / npixels``): the loss grows by ``npixels * lr * rate**2`` per iteration and overflows float32
    (3.4e38) after a few iterations with ``rate`` 1e17 and ``lr`` 100, never with ``rate`` 1e16."""

    layers: tuple = ()

    def prepare(self, params):
        return params

    def loss(self, params, x, targets):
        v = -jnp.sum(targets["content"]["rate"] * x)
        zero = jnp.zeros((), x.dtype)
        return Terms(v, v, zero, zero)

    def value_and_grad(self, params, x, targets):
        def total(z):
            t = self.loss(params, z, targets)
            return t.total, t

        (_, terms), grad = jax.value_and_grad(total, has_aux=True)(x)
        return terms, grad


EXP = ExpObjective()
SPEC = optim.SolverSpec(learning_rate=100.0, history=5)
FAILS, HEALTHY = 1e17, 1e16
X0 = jnp.zeros((4, 4, 3), jnp.float32)


def _single(rate: float, n: int, loop: str, stops=None) -> optim.State:
    targets = {"content": {"rate": jnp.float32(rate)}, "style": {}}
    return optim.run(optim.single_image_stepper(EXP, SPEC, None, targets, loop), X0, n, stops=stops)


@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_nonfinite_loss_stops_at_the_last_finite_iteration(loop):
    # Checked at iterations 5, 10, 15, 20 only; with "chunk" the loss overflows inside a compiled chunk.
    with pytest.raises(optim.NonFiniteLossError) as info:
        _single(FAILS, 20, loop, stops=[5, 10, 15, 20])
    e = info.value
    k = e.iteration
    assert 2 <= k < 20 and e.last_good_iteration == k - 1
    assert f"at iteration {k}" in str(e) and f"iteration {k - 1}" in str(e)
    good = _single(FAILS, k - 1, loop)  # exactly the state before the overflowing iteration
    assert int(good.iteration) == k - 1 and np.isfinite(float(good.terms.total))
    np.testing.assert_array_equal(e.last_good, np.asarray(good.x))
    with pytest.raises(optim.NonFiniteLossError) as again:
        _single(FAILS, k, loop)
    assert again.value.iteration == k


@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_nonfinite_member_of_a_batch_fails_alone_at_its_iteration(loop):
    with pytest.raises(optim.NonFiniteLossError) as info:
        _single(FAILS, 20, loop)
    k = info.value.iteration
    rates = jnp.asarray([HEALTHY, FAILS, HEALTHY, HEALTHY], jnp.float32)
    x0 = jnp.stack([X0 + 0.1 * i for i in range(4)])
    run = batch.optimize_batch(EXP, SPEC, None, x0, {"content": {"rate": rates}, "style": {}}, num_iterations=20,
                               print_every=5, loop=loop, labels=["a", "b", "c", "d"])
    assert [e is None for e in run.errors] == [True, False, True, True]
    e = run.errors[1]
    assert isinstance(e, optim.NonFiniteLossError) and e.iteration == k and str(e).startswith("b:")
    assert [h[-1].iteration for h in run.histories] == [20, k - 1, 20, 20]
    np.testing.assert_array_equal(run.images()[1], info.value.last_good)  # frozen at its last finite state
    for i in (0, 2, 3):  # the others went on exactly as alone
        targets = {"content": {"rate": jnp.float32(HEALTHY)}, "style": {}}
        alone = optim.run(optim.single_image_stepper(EXP, SPEC, None, targets, loop), x0[i], 20)
        np.testing.assert_array_equal(run.images()[i], np.asarray(alone.x))


@pytest.mark.parametrize("loop", ["step", "chunk"])
def test_stylize_error_names_the_iteration_and_carries_the_last_good_image(loop, tmp_path):
    # neural-style's L-BFGS with step size 1e4 overflows after a few iterations (at 32 px, random weights).
    rng = np.random.default_rng(0)
    content, style = rng.random((32, 32, 3), np.float32), rng.random((32, 32, 3), np.float32)
    kw = dict(weights="random", image_size=32, learning_rate=1e4, style_layers=("relu1_1", "relu2_1"),
              content_layers=("relu2_1",), progress=False, loop=loop)
    with pytest.raises(nst_jax.NonFiniteLossError) as info:
        nst_jax.stylize(content, style, num_iterations=30, output=tmp_path / "out.png", **kw)
    e = info.value
    assert e.iteration >= 2 and e.last_good_iteration == e.iteration - 1
    assert f"at iteration {e.iteration}" in str(e) and str(e.partial) in str(e)
    assert e.last_good.shape == (32, 32, 3) and e.last_good.dtype == np.float32
    assert 0.0 <= e.last_good.min() and e.last_good.max() <= 1.0
    before = nst_jax.stylize(content, style, num_iterations=e.last_good_iteration, **kw)
    np.testing.assert_array_equal(e.last_good, before.array)  # what stylize would have returned then
    # No output; the last finite image as a partial file, named so it is not taken for a result.
    assert sorted(tmp_path.iterdir()) == [tmp_path / f"out.partial-{e.last_good_iteration}.png"] == [e.partial]
    np.testing.assert_array_equal(images.to_uint8(images.load_image(e.partial)), images.to_uint8(e.last_good))


# --------------------------------------------------------------------------------------------------
# Jobs: bad inputs, a full disk


def _good_inputs(folder: Path, n: int) -> list[Path]:
    return fault_batch.make_inputs(folder, n, seed=1)


def _leftovers(out: Path) -> list[str]:
    """Files in an output folder that are not outputs, the summary or the journal."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_a_bad_input_never_stops_the_job(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    good = _good_inputs(folder, 3)
    data = good[1].read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not a picture\n")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "crashes.png")
    load = images.load_image

    def load_image(path, *a, **k):  # a decoder failing in a way nobody anticipated
        if Path(path).name == "crashes.png":
            raise RuntimeError("decoder crashed")
        return load(path, *a, **k)

    monkeypatch.setattr(images, "load_image", load_image)
    summary = batch.run_job(folder, STYLE, tmp_path / "out", **JOB)
    rows = {Path(r.input).name: r for r in summary.rows}
    assert {n for n, r in rows.items() if r.status == "ok"} == {p.name for p in good}
    assert {n for n, r in rows.items() if r.status == "failed"} == {"truncated.png", "empty.jpg", "text.png",
                                                                    "crashes.png"}
    assert "RuntimeError" in rows["crashes.png"].error and "decoder crashed" in rows["crashes.png"].error
    assert summary.exit_code == 1


def test_disk_full_stops_the_job_and_says_so(tmp_path, monkeypatch, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    _good_inputs(folder, 6)
    atomic_write = images.write._atomic_write
    attempts = []

    def full_at_second(path, write):
        if path.suffix == ".png":
            attempts.append(path.name)
            if len(attempts) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return atomic_write(path, write)

    monkeypatch.setattr(images.write, "_atomic_write", full_at_second)
    rc = batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(out), *JOB_FLAGS])
    err = capsys.readouterr().err
    assert rc == 3
    assert attempts[1] in err and "free disk space" in err and "No space left" in err
    assert len(attempts) == 2  # stopped: no attempt on the other images
    summary = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert attempts[1] in summary["stopped"] and "free disk space" in summary["stopped"]
    rows = {Path(r["input"]).stem + ".png": r for r in summary["images"]}
    assert rows[attempts[0]]["status"] == "ok"
    assert rows[attempts[1]]["status"] == "failed" and "free disk space" in rows[attempts[1]]["error"]
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "pending", "pending", "pending",
                                                          "pending"]
    assert sorted(p.name for p in out.glob("*.png")) == [attempts[0]] and _leftovers(out) == []
    # space freed: the same command finishes the job
    monkeypatch.setattr(images.write, "_atomic_write", atomic_write)
    assert batch_cli.main(["--style", str(STYLE), "--inputs", str(folder), "--output-dir", str(out),
                           *JOB_FLAGS]) == 0
    assert len(list(out.glob("*.png"))) == 6 and _leftovers(out) == []
    assert "stopped" not in json.loads((out / batch.SUMMARY_NAME).read_text()) or \
        json.loads((out / batch.SUMMARY_NAME).read_text())["stopped"] is None


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_on_a_real_small_filesystem(tmp_path, small_tmpfs):
    folder = tmp_path / "in"
    _good_inputs(folder, 8)
    out = small_tmpfs / "out"
    out.mkdir()
    st = os.statvfs(small_tmpfs)
    filler = st.f_bavail * st.f_frsize - 28 * 1024  # leave 28 KiB: the summary, the journal, a few outputs
    (small_tmpfs / "filler").write_bytes(b"\0" * filler)
    with pytest.raises(batch.DiskFullError) as info:
        batch.run_job(folder, STYLE, out, **JOB)
    e = info.value
    assert e.errno == errno.ENOSPC and "free disk space" in str(e)
    if e.summary_written:
        summary = json.loads((out / batch.SUMMARY_NAME).read_text())
        assert "free disk space" in summary["stopped"]
        assert summary["totals"]["ok"] < 8 and summary["totals"]["pending"] >= 1
    else:
        assert "could not be written" in str(e)
    assert _leftovers(out) == []
    for p in out.glob("*.png"):  # every output there is complete
        assert images.load_image(p).shape == (32, 32, 3)


# --------------------------------------------------------------------------------------------------
# Jobs killed with SIGKILL, and two jobs on one folder


def _cmd(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nst_jax", "batch", "--style", str(STYLE), "--inputs", str(folder),
            "--output-dir", str(out), *JOB_FLAGS]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_while_writing_leaves_nothing_behind_after_a_rerun(when, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _good_inputs(folder, 4)
    # The job kills itself (SIGKILL) when its second output's temp file is complete: before its rename (a temp
    # file left), or right after it (an output written but not yet recorded in the journal).
    hook = textwrap.dedent("""
        import os, signal, sys
        real, seen, when = os.replace, [], sys.argv.pop(1)
        def replace(src, dst, *a, **k):
            if str(dst).endswith(".png"):
                seen.append(dst)
                if len(seen) == 2 and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
            result = real(src, dst, *a, **k)
            if len(seen) == 2 and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        os.replace = replace
        from nst_jax.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    killed = subprocess.run([sys.executable, "-c", hook, when, *_cmd(folder, out)[3:]], env=_env(),
                            capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(out.glob("[!.]*.png"))) == (1 if when == "before" else 2)
    assert any(n.endswith(".tmp") for n in _leftovers(out)) == (when == "before")
    assert len(fault_batch.journal_counts(out)) == 1  # the second output is not recorded yet
    rerun = subprocess.run(_cmd(folder, out), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _leftovers(out) == []
    counts = fault_batch.journal_counts(out)
    assert sorted(counts) == sorted(p.name for p in folder.iterdir()) and set(counts.values()) == {1}


def test_stale_temp_and_claim_files_are_removed(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    paths = _good_inputs(folder, 2)
    out.mkdir()
    stale = [f".{paths[0].stem}.png.0123abcd.tmp", f".{batch.SUMMARY_NAME}.k2j4_x9q.tmp",
             f".{paths[1].stem}.png.lock"]
    for name in stale:
        (out / name).write_bytes(b"partial")
    (out / ".notes.txt.0123abcd.tmp").write_bytes(b"not ours")  # not a name this job writes: kept
    summary = batch.run_job(folder, STYLE, out, **JOB)
    assert summary.exit_code == 0
    assert _leftovers(out) == [".notes.txt.0123abcd.tmp"]


def test_random_sigkills_and_reruns(tmp_path):
    figures = fault_batch.fault_run(tmp_path, kills=2, n_images=4, seed=3)
    print(fault_batch.table(figures))
    assert figures["kills_that_hit"] >= 1
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unrecorded"] == 0
    assert figures["leftover_files"] == 0 and figures["unreadable"] == 0
    assert figures["same_names_as_clean_run"] and figures["max_pixel_diff"] <= fault_batch.PIXEL_TOLERANCE
    assert figures["final_returncode"] == 0 and figures["summary_pending"] == 0 and figures["ok"]


def test_two_jobs_on_one_folder_do_each_image_once(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    paths = _good_inputs(folder, 6)
    procs = [subprocess.Popen(_cmd(folder, out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    counts = fault_batch.journal_counts(out)
    assert counts == {p.name: 1 for p in paths}  # every image stylized once, across both jobs
    summary = json.loads((out / batch.SUMMARY_NAME).read_text())
    assert sorted(Path(r["input"]).name for r in summary["images"]) == sorted(p.name for p in paths)
    assert [r["status"] for r in summary["images"]] == ["ok"] * 6  # merged: each row from the job that did it
    assert summary["totals"]["ok"] == 6 and _leftovers(out) == []


def test_summary_is_merged_not_overwritten(tmp_path):
    row = lambda name, status: batch.ImageStatus(name, f"{name}.png", status)  # noqa: E731
    first = batch.JobSummary(tmp_path, [row("a", "ok"), row("b", "ok"), row("c", "pending")])
    first.write()
    # A second job on the folder: a written by the first while it ran, b not reached, c its own.
    second = batch.JobSummary(tmp_path, [row("a", "skipped"), row("b", "pending"), row("c", "ok")],
                              done_by_others={"a"})
    second.write()
    rows = json.loads((tmp_path / batch.SUMMARY_NAME).read_text())["images"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    assert [r["status"] for r in second.as_dict()["images"]] == ["skipped", "pending", "ok"]  # its own view
    # A rerun that skips what earlier runs did says so (those rows are its own).
    batch.JobSummary(tmp_path, [row("a", "skipped"), row("b", "skipped"), row("c", "skipped")]).write()
    rows = json.loads((tmp_path / batch.SUMMARY_NAME).read_text())["images"]
    assert [r["status"] for r in rows] == ["skipped"] * 3


def test_summary_is_written_under_the_folder_lock(tmp_path):
    held = jobfiles.Claim.take(tmp_path / batch.SUMMARY_NAME, wait=False)  # as a job writing it would
    code = textwrap.dedent("""
        import sys
        from nst_jax import batch
        s = batch.JobSummary(sys.argv[1], [batch.ImageStatus("a", "a.png", "ok")])
        print("writing", flush=True)
        s.write()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(1.0)
        assert proc.poll() is None and not (tmp_path / batch.SUMMARY_NAME).exists()  # waits for the lock
    finally:
        held.release()
    assert proc.wait(timeout=60) == 0
    assert json.loads((tmp_path / batch.SUMMARY_NAME).read_text())["images"][0]["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == [batch.SUMMARY_NAME]  # no lock file left
