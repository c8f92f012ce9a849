"""Run folders and checkpoints: written atomically, read without unpickling objects.

A run folder holds::

    config.json      model, guide and training configuration
    metrics.json     final metrics (held-out when validation data was given)
    history.json     loss and every logged value per step, metrics per epoch
    checkpoint.pt    model, guide and optimiser state, RNG states, epoch, step, the
                     fingerprint of the training data and its data.json record
    data.json        how to rebuild the data and split (pyro-mm train), written with
                     every checkpoint
    .pyro-mm.lock    present while a run writes the folder (pyro_mm.runs.lock)

``checkpoint.pt`` contains only tensors, numbers, strings, lists and dicts, and is read
with ``torch.load(weights_only=True)``: a crafted file cannot run code. Every file is
written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written file; a write the operating system refuses (a full disk) is a
:class:`~pyro_mm.errors.CheckpointError` naming the file. Which run may write a folder:
:mod:`pyro_mm.runs.folder`.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "pyro_mm.checkpoint"  # the tag checkpoints carry: never changes with the layout
VERSION = 1
CHECKPOINT = "checkpoint.pt"


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file of the same folder,
    then rename it into place: the old file stays whole until the new one is.

    Raises:
        CheckpointError: the operating system refused (a full disk, no permission);
            its ``path`` attribute is the file that could not be written.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            error = CheckpointError(f"could not write {path} "
                                    f"({exc.strerror or type(exc).__name__})")
            error.path = path
            raise error from exc
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default)
    _atomic_write(Path(path), lambda h: h.write(text.encode() + b"\n"))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` (plus format tags) to ``path`` atomically.

    Raises:
        CheckpointError: the file could not be written (the OS error named); the
            previous file at ``path``, if any, is intact.
    """
    payload = {"format": FORMAT, "version": VERSION, **payload}
    # Serialised in memory first: torch.save straight into a file on a full disk fails
    # with an opaque "unexpected pos" RuntimeError instead of the OSError it hit.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    _atomic_write(Path(path), lambda h: h.write(data))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, is not a pyro_mm checkpoint, or holds
            anything other than tensors and plain containers (a pickle that would run
            code is refused, never executed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused to load ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "checkpoints hold only tensors and plain containers"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pyro_mm checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} is not supported "
            f"(this pyro_mm reads version {VERSION})"
        )
    return payload


def rng_state() -> dict[str, Any]:
    """Every random state training uses, as weights-only-safe values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
