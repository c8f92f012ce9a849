"""The check that fails a test run which leaves files in the checkout
(``pytest_sessionfinish`` in ``conftest.py``) sees new files, and only those."""

import subprocess

from conftest import untracked_files


def test_untracked_files_sees_a_new_file_but_not_an_ignored_or_tracked_one(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "kept.txt").write_text("tracked")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    assert untracked_files(tmp_path) == set()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ignored.json").write_text("{}")
    (tmp_path / "mine.npz").write_bytes(b"left behind")
    assert untracked_files(tmp_path) == {"mine.npz"}


def test_outside_a_checkout_there_is_nothing_to_check(tmp_path):
    assert untracked_files(tmp_path / "not-a-repository") is None
