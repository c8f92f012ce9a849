"""Opening a run folder for writing: :func:`open_run_folder` holds its lock
(:mod:`pyro_mm.runs.lock`) and makes sure every file in it will belong to this run.

A folder *holds a run* when any of :data:`RUN_FILES` is in it. The run is *finished*
when its ``config.json`` records ``epochs_run``, which :func:`~pyro_mm.train.fit.fit`
writes with its last checkpoint, once training ended (all epochs, or early stopping);
otherwise it is *interrupted* (killed, diverged, or still being written by a process
that is gone). A new run is refused in a folder that holds a run, finished or not,
unless it resumes that run (the folder is its ``resume_from``) or is told to
``overwrite``, which deletes the old run's :data:`RUN_FILES` (and any temporary file a
crash left) before anything is written; other files in the folder are left alone.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointError
from .lock import run_lock

#: The files a run writes into its folder (see :mod:`pyro_mm.runs.checkpoint`).
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.json", "history.json", "data.json")


def run_status(run_dir: str | Path) -> str | None:
    """``"finished"``, ``"interrupted"`` or ``None`` (no run files) for ``run_dir``
    (see the module docstring). Reads only."""
    folder = Path(run_dir)
    if not any((folder / name).exists() for name in RUN_FILES):
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
        finished = "epochs_run" in config["fit"]
    except (OSError, ValueError, KeyError, TypeError):
        finished = False
    return "finished" if finished else "interrupted"


def _refuse(folder: Path, status: str) -> CheckpointError:
    present = [name for name in RUN_FILES if (folder / name).exists()]
    return CheckpointError(
        f"{folder}: holds {'an' if status == 'interrupted' else 'a'} {status} run ({', '.join(present)}); continue it with "
        "resume_from (pyro-mm train --resume), or replace it with overwrite=True "
        "(pyro-mm train --overwrite), or write into another folder")


def _clear(folder: Path) -> None:
    leftovers = [folder / name for name in RUN_FILES]
    leftovers += [p for name in RUN_FILES for p in folder.glob(f".{name}.*.tmp")]
    for path in leftovers:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise CheckpointError(f"overwrite: could not remove {path} "
                                  f"({exc.strerror or type(exc).__name__})") from exc


@contextlib.contextmanager
def open_run_folder(run_dir: str | Path, *, resuming: bool = False,
                    overwrite: bool = False) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block, after checking that this run
    may write there: the folder is empty of run files, or ``resuming`` (this run
    continues the one in it), or ``overwrite`` (the old run's files are deleted first).

    Raises:
        CheckpointError: another process is writing the folder, or it holds a run and
            neither ``resuming`` nor ``overwrite`` was given.
    """
    with run_lock(run_dir) as folder:
        status = run_status(folder)
        if status is not None and not resuming:
            if not overwrite:
                raise _refuse(folder, status)
            _clear(folder)
        yield folder


__all__ = ["RUN_FILES", "open_run_folder", "run_status"]
