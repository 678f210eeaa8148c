"""nst_jax.lockfile: the lock-file protocol shared by the weights download and the batch jobs' claims."""

from __future__ import annotations

import os

import pytest

from nst_jax.lockfile import LockFile

pytestmark = pytest.mark.skipif(os.name == "nt", reason="flock semantics (POSIX)")


def test_one_holder_at_a_time_and_the_file_goes_with_the_release(tmp_path):
    path = tmp_path / "x.lock"
    held = LockFile.acquire(path, wait=False)
    assert held is not None and held.exclusive and not held.abandoned and path.exists()
    assert LockFile.acquire(path, wait=False) is None  # flock: another open file description is excluded
    held.release()
    held.release()  # idempotent
    assert not path.exists()
    again = LockFile.acquire(path, wait=False)
    assert again is not None and not again.abandoned
    again.release()


def test_a_file_left_by_a_dead_holder_is_abandoned(tmp_path):
    path = tmp_path / "x.lock"
    path.write_bytes(b"")  # what a killed holder leaves: the file, no lock
    held = LockFile.acquire(path, wait=False)
    assert held is not None and held.exclusive and held.abandoned
    held.release()


def test_a_missing_folder_is_an_error_not_a_loop(tmp_path):
    with pytest.raises(FileNotFoundError):
        LockFile.acquire(tmp_path / "missing" / "x.lock", wait=True)
