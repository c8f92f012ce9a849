"""The check that fails a test run which leaves files in the checkout
(``pytest_sessionfinish`` in ``conftest.py``): ``untracked_files`` sees new files, and only
those, and the hook fails a session that leaves one, naming it."""

import functools
import subprocess

import conftest
from conftest import untracked_files

pytest_plugins = ["pytester"]


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


def _session(pytester, monkeypatch, body: str):
    """The hook itself on a small pytest session (in this process) in a throwaway git
    repository: the session's plugin is this suite's own conftest module, its
    ``untracked_files`` pointed at that repository; ``body``: the session's one test."""
    subprocess.run(["git", "init", "-q", str(pytester.path)], check=True)
    (pytester.path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    monkeypatch.setattr(conftest, "untracked_files",
                        functools.partial(conftest.untracked_files, pytester.path))
    pytester.makepyfile(test_throwaway=body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[conftest])


def test_a_session_that_leaves_a_file_in_the_checkout_fails_and_names_it(pytester,
                                                                          monkeypatch):
    result = _session(pytester, monkeypatch, """
        from pathlib import Path

        def test_leaves_a_file():
            Path("left-behind.npz").write_bytes(b"oops")
        """)
    result.assert_outcomes(passed=1)
    assert result.ret == 1
    assert "tests left files in the checkout: ['left-behind.npz']" in result.stderr.str()


def test_a_session_that_leaves_nothing_passes(pytester, monkeypatch, tmp_path_factory):
    result = _session(pytester, monkeypatch, f"""
        from pathlib import Path

        def test_writes_elsewhere():
            Path({str(tmp_path_factory.mktemp("elsewhere"))!r}, "kept.npz").write_bytes(b"ok")
        """)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert "left files" not in result.stderr.str()
