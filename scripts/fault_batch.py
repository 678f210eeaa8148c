#!/usr/bin/env python
"""Kills a real batch job with SIGKILL at random moments, reruns it, and checks what is left.

Makes ``--images`` small content images (32-48 px crops of the bundled example photos), runs
``nst-jax batch`` on them once undisturbed (the reference), then, in a fresh output folder, starts the
same command ``--kills`` times and kills it with SIGKILL at a random moment of each run (seeded: in
start-up, while the job works, or right after some of its outputs appeared; see ``run_with_kills``),
and finally runs it to completion.
It then compares the two folders and prints a table:

* lost: good inputs without an output after the final run;
* duplicated: inputs stylized more than once over all the runs (counted from the per-image journal,
  ``<output-dir>/nst_jax_journal.jsonl``, one line per image written or failed; a job killed between
  writing an output and recording it leaves that line to the next run, marked ``recovered``);
* leftover: files in the output folder other than the outputs, the summary and the journal (temporary
  files, claim files);
* pixels: outputs bit-identical to the reference's, and the largest difference in 8-bit levels (an
  image may be batched with different neighbours after a kill, and XLA may round a batch of another
  size differently: the tolerance is 1 level).

Usage::

    .venv/bin/python scripts/fault_batch.py --kills 10 --images 10 --seed 0

Exit code 0 when nothing is lost, duplicated or left over and the pixels are within the tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STYLE = EXAMPLES / "starry_night.jpg"
SUMMARY_NAME = "nst_jax_summary.json"
JOURNAL_NAME = "nst_jax_journal.jsonl"
#: Largest accepted difference between an output and the reference's, in 8-bit levels.
PIXEL_TOLERANCE = 1
#: Settings of the job: random weights, tiny images, few iterations (a run takes a few seconds).
JOB_FLAGS = ["--weights", "random", "--image-size", "32", "--num-iterations", "8", "--print-every", "4",
             "--style-layers", "relu1_1,relu2_1,relu3_1", "--content-layers", "relu2_1", "--output-size", "32x32",
             "--batch-size", "2", "--quiet"]


def make_inputs(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` content images of 32-48 px (random crops of the example photos), PNG and JPEG."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        side = rng.randint(120, min(src.size))
        left, top = rng.randint(0, src.width - side), rng.randint(0, src.height - side)
        w, h = rng.choice([(32, 32), (48, 32), (32, 48), (40, 40)])
        img = src.crop((left, top, left + side, top + side)).resize((w, h), Image.BILINEAR)
        path = folder / f"img{i:03d}{'.png' if i % 2 else '.jpg'}"
        img.save(path)
        paths.append(path)
    return paths


def batch_command(inputs: Path, output_dir: Path, flags=JOB_FLAGS) -> list[str]:
    return [sys.executable, "-m", "nst_jax", "batch", "--style", str(STYLE), "--inputs", str(inputs),
            "--output-dir", str(output_dir), *flags]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_to_completion(cmd: list[str]) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
    return proc.returncode, time.perf_counter() - t0


def _started(output_dir: Path, since: float) -> bool:
    """The job has written its first summary (start-up is over): its mtime is after ``since``."""
    try:
        return (output_dir / SUMMARY_NAME).stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _outputs(output_dir: Path) -> int:
    return len(list(output_dir.glob("[!.]*.png"))) if output_dir.exists() else 0


def run_with_kills(cmd: list[str], output_dir: Path, kills: int, rng: random.Random, *, startup_s: float,
                   work_s: float, expected: int) -> list[dict]:
    """Starts ``cmd`` ``kills`` times, each killed (SIGKILL) at a random moment; returns one record per start.

    Each kill lands, with probability 0.2, in start-up (a random time before the job's first summary
    could be written); 0.4, at a random time after the start-up within the time the remaining images
    should take (``work_s`` for all of them); 0.4, 0-20 ms after 1-3 new outputs have appeared (so
    that some kills hit a batch while its outputs are being written). A run that ends before its kill
    is recorded as finished.
    """
    records = []
    for _ in range(kills):
        before = _outputs(output_dir)
        left = max(1, expected - before)
        u = rng.random()
        phase = "start-up" if u < 0.2 else ("work" if u < 0.6 else "writes")
        delay = (rng.uniform(0.0, startup_s) if phase == "start-up" else
                 rng.uniform(0.0, work_s * left / expected) if phase == "work" else rng.uniform(0.0, 0.02))
        wanted = before + rng.randint(1, max(1, min(3, left - 1)))
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if phase == "work":  # wait for the start-up to end (or the process to exit)
            while proc.poll() is None and not _started(output_dir, t0):
                time.sleep(0.01)
        elif phase == "writes":
            while proc.poll() is None and _outputs(output_dir) < wanted:
                time.sleep(0.002)
        deadline = time.time() + delay
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left_behind = sorted(p.name for p in output_dir.glob(".*")) if output_dir.exists() else []
        records.append({"phase": phase, "after_s": round(time.time() - t0, 3), "killed": killed,
                        "returncode": proc.returncode, "outputs_after": _outputs(output_dir),
                        "left_behind": left_behind})
    return records


def journal_counts(output_dir: Path) -> dict[str, int]:
    """Per input, how many times an output was written for it (journal lines with status "ok")."""
    counts: dict[str, int] = {}
    path = output_dir / JOURNAL_NAME
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("status") == "ok":
            counts[Path(rec["input"]).name] = counts.get(Path(rec["input"]).name, 0) + 1
    return counts


def journal_recovered(output_dir: Path) -> int:
    """Journal lines written by a rerun for an output whose job was killed before recording it."""
    path = output_dir / JOURNAL_NAME
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(bool(json.loads(line).get("recovered")) for line in lines if line.strip())


def compare(inputs: list[Path], reference: Path, faulted: Path) -> dict:
    """The figures of the table: lost, duplicated, leftover files, pixel differences, summary state."""
    expected = {p.stem + ".png" for p in inputs}
    ref_names = {p.name for p in reference.iterdir() if p.suffix == ".png" and not p.name.startswith(".")}
    names = {p.name for p in faulted.iterdir() if p.suffix == ".png" and not p.name.startswith(".")}
    leftover = sorted(p.name for p in faulted.iterdir()
                      if p.name not in expected | {SUMMARY_NAME, JOURNAL_NAME})
    counts = journal_counts(faulted)
    identical, max_diff, unreadable = 0, 0, []
    for name in sorted(names & ref_names):
        try:
            a = np.asarray(Image.open(faulted / name).convert("RGB"), np.int16)
        except OSError:
            unreadable.append(name)
            continue
        b = np.asarray(Image.open(reference / name).convert("RGB"), np.int16)
        diff = int(np.abs(a - b).max()) if a.shape == b.shape else 255
        identical += diff == 0
        max_diff = max(max_diff, diff)
    summary = json.loads((faulted / SUMMARY_NAME).read_text()) if (faulted / SUMMARY_NAME).exists() else {}
    statuses = [r["status"] for r in summary.get("images", [])]
    return {
        "images": len(inputs),
        "outputs": len(names),
        "same_names_as_clean_run": names == ref_names == expected,
        "lost": len(expected - names),
        "duplicated": sum(1 for c in counts.values() if c > 1),
        "unrecorded": len(names - {Path(n).stem + ".png" for n in counts}),
        "recovered": journal_recovered(faulted),
        "leftover_files": len(leftover),
        "leftover_names": leftover,
        "unreadable": len(unreadable),
        "bit_identical": identical,
        "max_pixel_diff": max_diff,
        "summary_rows": len(statuses),
        "summary_pending": statuses.count("pending"),
    }


def fault_run(work: Path, *, kills: int, n_images: int, seed: int, flags=JOB_FLAGS) -> dict:
    """The whole experiment in ``work``: inputs, reference run, killed runs, final run, comparison."""
    rng = random.Random(seed)
    inputs = make_inputs(work / "inputs", n_images, seed)
    reference, faulted = work / "reference", work / "faulted"
    t0 = time.perf_counter()
    rc, clean_s = run_to_completion(batch_command(work / "inputs", reference, flags))
    if rc != 0:
        raise RuntimeError(f"the reference run failed with exit code {rc}")
    job_s = json.loads((reference / SUMMARY_NAME).read_text())["totals"]["seconds"]
    startup_s = max(0.1, clean_s - job_s)
    records = run_with_kills(batch_command(work / "inputs", faulted, flags), faulted, kills, rng,
                             startup_s=startup_s, work_s=job_s, expected=n_images)
    final_rc, _ = run_to_completion(batch_command(work / "inputs", faulted, flags))
    figures = compare(inputs, reference, faulted)
    figures.update(kills=kills, kills_that_hit=sum(r["killed"] for r in records),
                   left_by_kills=len({n for r in records for n in r["left_behind"]}),
                   temps_by_kills=len({n for r in records for n in r["left_behind"] if n.endswith(".tmp")}),
                   kills_in_startup=sum(r["killed"] and r["phase"] == "start-up" for r in records),
                   final_returncode=final_rc, clean_run_s=round(clean_s, 2), runs=records,
                   seconds=round(time.perf_counter() - t0, 1))
    figures["ok"] = (final_rc == 0 and figures["lost"] == 0 and figures["duplicated"] == 0
                     and figures["leftover_files"] == 0 and figures["unreadable"] == 0
                     and figures["same_names_as_clean_run"] and figures["max_pixel_diff"] <= PIXEL_TOLERANCE
                     and figures["summary_pending"] == 0 and figures["summary_rows"] == n_images)
    return figures


def table(f: dict) -> str:
    rows = [
        ("kills (SIGKILL) / hit a running job / in start-up", f"{f['kills']} / {f['kills_that_hit']} / "
                                                              f"{f['kills_in_startup']}"),
        ("images", f["images"]),
        ("outputs (same names as the clean run)",
         f"{f['outputs']} ({'yes' if f['same_names_as_clean_run'] else 'NO'})"),
        ("lost", f["lost"]),
        ("duplicated (stylized more than once)", f["duplicated"]),
        ("written but not in the journal", f["unrecorded"]),
        ("journal lines added by a rerun (killed before recording)", f["recovered"]),
        ("files left by the killed runs (distinct; of them .tmp)", f"{f['left_by_kills']} ({f['temps_by_kills']})"),
        ("leftover temp/claim files after the final run", f["leftover_files"] if not f["leftover_names"]
         else f"{f['leftover_files']} {f['leftover_names']}"),
        ("unreadable outputs", f["unreadable"]),
        ("bit-identical to the clean run", f"{f['bit_identical']} of {f['outputs']}"),
        ("largest pixel difference (8-bit levels)", f"{f['max_pixel_diff']} (tolerance {PIXEL_TOLERANCE})"),
        ("summary rows / pending", f"{f['summary_rows']} / {f['summary_pending']}"),
        ("final run exit code", f["final_returncode"]),
        ("result", "PASS" if f["ok"] else "FAIL"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'figure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="Runs killed with SIGKILL before the final run.")
    p.add_argument("--images", type=int, default=10, help="Content images (32-48 px).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the images and of the kill times.")
    p.add_argument("--work-dir", help="Where to put inputs and outputs (default: a temporary folder, removed).")
    p.add_argument("--json", help="Also write the figures as JSON here.")
    args = p.parse_args(argv)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="nst_jax_faults_"))
    try:
        figures = fault_run(work, kills=args.kills, n_images=args.images, seed=args.seed)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    for i, r in enumerate(figures["runs"], 1):
        state = f"killed after {r['after_s']:.2f} s ({r['phase']})" if r["killed"] else \
            f"finished before its kill (exit {r['returncode']})"
        print(f"run {i:2d}: {state}; outputs after it: {r['outputs_after']}"
              + (f"; left behind: {' '.join(r['left_behind'])}" if r["left_behind"] else ""))
    print(f"\ncommand: {' '.join(sys.argv)}  ({figures['seconds']} s; one clean run {figures['clean_run_s']} s)\n")
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
