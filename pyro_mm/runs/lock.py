"""One writer per run folder: :func:`run_lock`, an advisory lock held for the life of
a run.

The lock is ``fcntl.flock`` on the file :data:`LOCK_NAME` in the run folder, which
holds the holder's PID, host, start time and command line as JSON. The kernel drops an
``flock`` when its process ends, however it ends (crash, ``kill -9``, out of memory),
so a lock file that is still there but not locked was left by a run that is gone: it is
*stale*, and the next run takes it over, with a warning naming the old holder. The
holder removes the file when its run ends, so a folder with no run in progress has no
lock file. Loading a run folder never takes the lock.

The lock is re-entrant within one process (``pyro-mm train`` and the :func:`fit` it
calls both hold it), and advisory: it keeps pyro_mm runs apart, not other programs.
On a platform without ``fcntl`` (Windows) it is not enforced, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: The lock file inside a run folder.
LOCK_NAME = ".pyro-mm.lock"


@dataclasses.dataclass
class _Held:
    fd: int
    depth: int = 1


_held: dict[Path, _Held] = {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if missing) for the ``with`` block;
    yields the folder.

    Raises:
        CheckpointError: another live process holds it; the message names that
            process (PID, host, start time, command).
    """
    folder = Path(run_dir)
    path = folder.resolve() / LOCK_NAME
    if path in _held:  # this process holds it already
        _held[path].depth += 1
        try:
            yield folder
        finally:
            _held[path].depth -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        warnings.warn(f"{folder}: no file locking on this platform; nothing stops a "
                      "second run from writing into this folder", stacklevel=3)
        yield folder
        return
    created = not folder.exists()
    _held[path] = _Held(_acquire(folder, path))
    try:
        yield folder
    finally:
        held = _held.pop(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still locked here: a waiting run sees the inode change
        os.close(held.fd)
        if created:  # a run that failed before writing anything leaves no folder
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(folder: Path, path: Path) -> int:
    """Lock ``path``; a file that its last holder unlinked meanwhile is opened again."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"could not create the run folder {folder} "
                              f"({exc.strerror or type(exc).__name__})") from exc
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(f"could not open {path} to lock the run folder "
                                  f"({exc.strerror or type(exc).__name__})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise CheckpointError(
                f"{folder}: another run is writing into this folder ({holder}); wait "
                "for it to end, or write this run into another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read(fd)
    if previous:
        warnings.warn(f"{folder}: took over the lock left by a run that is gone "
                      f"({_describe(previous)})", stacklevel=4)
    _write(fd)
    return fd


def _read(fd: int) -> dict | None:
    """The holder a lock file names (``None``: empty, e.g. its holder is just starting)."""
    try:
        text = os.pread(fd, 65536, 0).decode(errors="replace")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return {"unreadable": True}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that is starting; its PID is not written yet"
    if holder.get("unreadable"):
        return "a process whose lock file could not be read"
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}: {holder.get('command')}")


def _write(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


__all__ = ["LOCK_NAME", "run_lock"]
