"""Checkpoint files: round trips, refusal of foreign or malicious files, atomic
writes and the RNG state."""

import os
import pathlib
import pickle
import random

import numpy as np
import pytest
import torch

from pyro_mm import CheckpointError
from pyro_mm.runs.checkpoint import (_atomic_write, load_checkpoint, rng_state,
                                     save_checkpoint, set_rng_state)


class _TouchOnUnpickle:
    """Unpickling this object would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _tmp_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_save_load_round_trip(tmp_path):
    payload = {"weights": torch.arange(6.0).reshape(2, 3), "epoch": 3, "name": "run",
               "nested": {"steps": [1, 2, 3], "loss": 0.5}}
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["weights"], payload["weights"])
    assert loaded["epoch"] == 3 and loaded["name"] == "run"
    assert loaded["nested"] == payload["nested"]
    assert loaded["format"] == "pyro_mm.checkpoint"


def test_load_from_run_folder_reads_its_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 7})
    assert load_checkpoint(tmp_path)["epoch"] == 7


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_torch_file_without_format_tag_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a pyro_mm checkpoint"):
        load_checkpoint(path)


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(path)


def test_unsupported_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "pyro_mm.checkpoint", "version": 999}, path)
    with pytest.raises(CheckpointError, match="version 999"):
        load_checkpoint(path)


def test_malicious_torch_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_mm.checkpoint", "version": 1,
                "payload": _TouchOnUnpickle(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_plain_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    pickle.loads(pickle.dumps(_TouchOnUnpickle(tmp_path / "control")))  # sanity check:
    assert (tmp_path / "control").exists()  # the payload does act when unpickled
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_save_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 1})
    save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 2})
    assert _tmp_leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_failed_atomic_write_keeps_previous_content_and_no_temp_file(tmp_path):
    path = tmp_path / "file.bin"
    _atomic_write(path, lambda h: h.write(b"old content"))

    def broken(handle):
        handle.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _atomic_write(path, broken)
    assert path.read_bytes() == b"old content"
    assert _tmp_leftovers(tmp_path) == []


def test_failed_save_checkpoint_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"epoch": 2, "bad": lambda: None})  # unpicklable
    assert load_checkpoint(path)["epoch"] == 1
    assert _tmp_leftovers(tmp_path) == []


def _draws():
    return (torch.rand(3).tolist(), [random.random() for _ in range(3)],
            np.random.rand(3).tolist(), np.random.randn())


def test_rng_state_round_trip_reproduces_draws():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = rng_state()
    first = _draws()
    assert _draws() != first
    set_rng_state(state)
    assert _draws() == first


def test_rng_state_survives_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    random.seed(2)
    np.random.seed(2)
    random.gauss(0.0, 1.0)  # python's cached gauss_next is part of the state
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"rng": rng_state()})
    first = _draws()
    _draws()
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == first
