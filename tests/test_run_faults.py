"""Run folders under the mishaps of a careful user: two writers on one folder, a lock
left by a crash, a finished folder reused, a resume with other data or another model,
an old checkpoint, a full disk. Each case asserts its error and that nothing was
written where it should not be."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest

import pyro_mm as pm
from pyro_mm.cli.main import main
from pyro_mm.runs import checkpoint as ckpt
from pyro_mm.runs.lock import LOCK_NAME
from pyro_mm.runtime.distributed import Group, lost_rank_message

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "data" / "run-0.1.0-latent_dp_factors"
#: A process that holds a run folder's lock (the folder: argv[1]) until it is killed.
HOLDER = ("import sys, time\nfrom pyro_mm.runs.lock import run_lock\n"
          "with run_lock(sys.argv[1]):\n    time.sleep(120)\n")
CLI = ["--dataset", "synthetic", "--epochs", "1", "--latent-dim", "2", "--components",
       "3", "--batch-size", "512", "--quiet"]


def _model(data, **options):
    pyro.set_rng_seed(0)
    options = {"latent_dim": 2, "hidden": (8,), **options}
    return pm.MultimodalDPMixture(data.dims, num_classes=3, num_components=3, **options)


def _fit(model, data, **options):
    return pm.fit(model, data, **{"num_epochs": 1, "batch_size": 64, "device": "cpu",
                                  "progress": False, **options})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() \
        else {}


@pytest.fixture
def holder(tmp_path):
    """Start a child process holding the lock of a folder; yields (folder, process);
    the child is killed afterwards, whatever happened."""
    processes = []

    def start(folder: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], env=env,
                                   cwd=tmp_path)
        processes.append(process)
        deadline = time.monotonic() + 60
        lock = folder / LOCK_NAME
        while not (lock.is_file() and lock.read_text().strip()):
            assert process.poll() is None, "the lock holder exited"
            assert time.monotonic() < deadline, "the lock holder did not lock in 60 s"
            time.sleep(0.05)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


# ------------------------------------------------------------------ one writer
def test_a_second_writer_is_refused_naming_the_running_process(tmp_path, tiny_data,
                                                                holder, capsys):
    run = tmp_path / "run"
    process = holder(run)
    before = _snapshot(run)
    with pytest.raises(pm.CheckpointError, match="another run is writing") as info:
        _fit(_model(tiny_data), tiny_data, run_dir=run)
    assert f"PID {process.pid}" in str(info.value)
    assert main(["train", *CLI, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "another run is writing" in err and f"PID {process.pid}" in err
    assert _snapshot(run) == before  # the lock file only, untouched


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, tiny_data, holder):
    run = tmp_path / "run"
    process = holder(run)
    process.send_signal(signal.SIGKILL)  # a crash: no clean-up, the lock file stays
    process.wait(timeout=30)
    assert (run / LOCK_NAME).is_file()
    with pytest.warns(UserWarning, match=f"took over the lock .*PID {process.pid}"):
        _fit(_model(tiny_data), tiny_data, run_dir=run)
    assert not (run / LOCK_NAME).exists()  # released when the run ended
    assert pm.load(run).state["epoch"] == 1


def test_the_lock_is_held_for_the_whole_fit_and_reentrant(tmp_path, tiny_data):
    from pyro_mm.runs.lock import run_lock

    run = tmp_path / "run"
    with run_lock(run):  # pyro-mm train's own process holding it does not block fit
        _fit(_model(tiny_data), tiny_data, run_dir=run)
        assert (run / LOCK_NAME).is_file()
    assert not (run / LOCK_NAME).exists()


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, tiny_data):
    other = pm.datasets.make_synthetic(num_examples=50, num_clusters=3,
                                       dims={"a": 5, "b": 3}, seed=1)
    with pytest.raises(ValueError):
        _fit(_model(tiny_data), other, run_dir=tmp_path / "run")  # wrong sizes
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ finished folders
def test_a_finished_folder_is_refused_unless_overwrite(tmp_path, tiny_data):
    run = tmp_path / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    before = _snapshot(run)
    with pytest.raises(pm.CheckpointError, match="holds a finished run"):
        _fit(_model(tiny_data), tiny_data, run_dir=run, num_epochs=2)
    assert _snapshot(run) == before
    (run / "notes.txt").write_text("mine")
    result = _fit(_model(tiny_data), tiny_data, run_dir=run, num_epochs=2, overwrite=True)
    assert pm.load(run).state["epoch"] == 2 == len(result.history.epochs)
    assert (run / "notes.txt").read_text() == "mine"  # not a run file: left alone


def test_an_interrupted_folder_is_refused_too(tmp_path, tiny_data):
    run = tmp_path / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    config = json.loads((run / "config.json").read_text())
    del config["fit"]["epochs_run"]  # as a run killed before its last save leaves it
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(pm.CheckpointError, match="holds an interrupted run"):
        _fit(_model(tiny_data), tiny_data, run_dir=run)


def test_cli_second_run_into_one_folder_is_refused_and_overwrite_is_consistent(
        tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *CLI, "--out", str(run)]) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", *CLI, "--out", str(run), "--test-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--overwrite" in err
    assert _snapshot(run) == before
    assert main(["train", *CLI, "--out", str(run), "--test-fraction", "0.5",
                 "--overwrite"]) == 0
    # Every file is the second run's: data.json, and the checkpoint's record of it.
    assert json.loads((run / "data.json").read_text())["test_fraction"] == 0.5
    assert ckpt.load_checkpoint(run)["data_source"]["test_fraction"] == 0.5
    recorded = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert measured["accuracy"] == pytest.approx(recorded["accuracy"])
    assert measured["num_examples"] == 1000


# ------------------------------------------------------------------ resume checks
def test_resume_with_other_data_is_refused_naming_the_differences(tmp_path, tiny_data):
    run = tmp_path / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    before = _snapshot(run)
    features = tiny_data.features
    shifted = pm.MultimodalData({"a": features["a"] + 1.0, "b": features["b"]},
                                labels=tiny_data.labels)
    with pytest.raises(pm.CheckpointError, match="the same sizes but other rows"):
        _fit(_model(tiny_data), shifted, run_dir=run, resume_from=run, num_epochs=2)
    fewer = tiny_data.subset(np.arange(100))
    with pytest.raises(pm.CheckpointError, match="num_examples: the run's 120, given 100"):
        _fit(_model(tiny_data), fewer, run_dir=run, resume_from=run, num_epochs=2)
    assert _snapshot(run) == before
    # On purpose: the checkpoints then record the new data.
    _fit(_model(tiny_data), shifted, run_dir=run, resume_from=run, num_epochs=2,
         new_data=True)
    saved = ckpt.load_checkpoint(run)
    assert saved["epoch"] == 2
    assert saved["data_fingerprint"] == pm.runs.fingerprint.data_fingerprint(shifted)


def test_resume_with_another_model_lists_the_differences(tmp_path, tiny_data):
    run = tmp_path / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    before = _snapshot(run)
    other = tiny_data.select(["a"])
    with pytest.raises(pm.CheckpointError) as info:
        _fit(_model(other, latent_dim=8), other, run_dir=run, resume_from=run,
             num_epochs=2)
    message = str(info.value)
    assert "model.dims: the run's {'a': 4, 'b': 3}, given {'a': 4}" in message
    assert "model.latent_dim: the run's 2, given 8" in message
    assert "data: modalities" in message and "size mismatch" not in message
    assert len(message) < 800
    assert _snapshot(run) == before


def test_resume_with_other_settings_warns_naming_them(tmp_path, tiny_data):
    run = tmp_path / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    with pytest.warns(UserWarning, match="not an exact resume") as caught:
        _fit(_model(tiny_data), tiny_data, run_dir=run, resume_from=run, num_epochs=2,
             batch_size=32, learning_rate=0.05)
    message = " ".join(str(w.message) for w in caught)
    assert "batch_size: the run's 64, given 32" in message
    assert "learning_rate: the run's 0.01, given 0.05" in message
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*exact resume")
        _fit(_model(tiny_data), tiny_data, run_dir=run, resume_from=run, num_epochs=3,
             batch_size=32, learning_rate=0.05)      # the run's settings now


def test_cli_resume_with_other_data_or_options_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *CLI, "--out", str(run)]) == 0
    before = _snapshot(run)
    other = pm.datasets.make_synthetic(num_examples=200, num_clusters=4,
                                       dims={"a": 10, "b": 8}, seed=3)
    np.savez(tmp_path / "other.npz", labels=other.labels, **other.features)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet",
                 "--data", str(tmp_path / "other.npz")]) == 2
    err = capsys.readouterr().err
    assert "features of 'a': the run's 16, given 10" in err
    assert "num_examples: the run's 1600, given 160" in err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet",
                 "--latent-dim", "8", "--components", "10"]) == 2
    err = capsys.readouterr().err
    assert "--latent-dim 8: the run's is 2" in err and "--components 10: the run's is 3" in err
    assert main(["train", "--resume", str(run), "--new-data", "--quiet"]) == 2
    assert "--new-data: name the new data" in capsys.readouterr().err
    assert _snapshot(run) == before
    # The run's own data, named again, is accepted.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet",
                 "--dataset", "synthetic"]) == 0
    assert ckpt.load_checkpoint(run)["epoch"] == 2


def test_an_old_checkpoint_resumes_with_one_warning(tmp_path):
    run = shutil.copytree(OLD_RUN, tmp_path / "old")
    config = json.loads((run / "config.json").read_text())
    train, _ = pm.runs.run_data.run_splits(run)
    model = pm.MultimodalDPMixture.from_config(config["model"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit(model, train, run_dir=run, resume_from=run, num_epochs=3,
                      batch_size=128)
    messages = [str(w.message) for w in caught if "fingerprint" in str(w.message)]
    assert len(messages) == 1 and "cannot be checked" in messages[0]
    assert len(result.history.epochs) == 3
    assert "data_fingerprint" in ckpt.load_checkpoint(run)  # from now on it is checked


# ------------------------------------------------------------------ write failures
def _failing_fsync(monkeypatch, after: int):
    """``os.fsync`` of the checkpoint module fails with ENOSPC after ``after`` calls."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync)


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_is_a_clear_error_and_the_last_checkpoint_is_intact(
        tmp_path, tiny_data, monkeypatch, capsys):
    run = tmp_path / "run"
    _failing_fsync(monkeypatch, after=4)  # epoch 1: checkpoint and its three JSON files
    with pytest.raises(pm.CheckpointError) as info:
        _fit(_model(tiny_data), tiny_data, run_dir=run, num_epochs=3)
    assert str(info.value) == (f"could not write {run / 'checkpoint.pt'} (No space left "
                               "on device); the checkpoint of epoch 1 is intact")
    assert pm.load(run).state["epoch"] == 1 and _no_temporaries(run)
    assert not (run / LOCK_NAME).exists()


def test_cli_full_disk_message(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _failing_fsync(monkeypatch, after=0)
    assert main(["train", *CLI, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"pyro-mm: error: could not write {run / 'checkpoint.pt'} (No "
                       f"space left on device); no checkpoint of this run is in {run}")
    assert not run.exists()  # nothing was written: no folder either


def test_a_failed_write_of_data_json_leaves_a_run_that_evaluates_and_resumes(
        tmp_path, monkeypatch, capsys):
    """The split is read from the checkpoint, so a write that failed after it (at
    ``data.json``) cannot leave a run that names no data, or another run's."""
    run = tmp_path / "run"
    _failing_fsync(monkeypatch, after=4)  # checkpoint, config, metrics, history
    assert main(["train", *CLI, "--out", str(run)]) == 2
    assert "could not write" in capsys.readouterr().err
    assert not (run / "data.json").exists() and (run / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert main(["evaluate", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert ckpt.load_checkpoint(run)["epoch"] == 2 and (run / "data.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/disk`` (root only); skipped where it cannot be
    mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_really_full_disk(small_disk, tiny_data):
    run = small_disk / "run"
    _fit(_model(tiny_data), tiny_data, run_dir=run)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * max(free - 4096, 0))
    with pytest.raises(pm.CheckpointError, match="No space left on device") as info:
        _fit(_model(tiny_data), tiny_data, run_dir=run, resume_from=run, num_epochs=2)
    assert "the checkpoint of epoch 1 is intact" in str(info.value)
    assert pm.load(run).state["epoch"] == 1 and _no_temporaries(run)


# ------------------------------------------------------------------ a lost rank
def test_a_lost_rank_is_one_line_naming_it_and_the_cause():
    gloo = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
            "peer [127.0.0.1]:41233\nException raised from ... GLHF!")
    message = lost_rank_message(Group(0, 2, 0), gloo)
    assert message.startswith("rank 0 of 2: lost rank 1, which closed its connection")
    assert "\n" not in message and "gloo" not in message and "GLHF" not in message
    timeout = lost_rank_message(Group(2, 4, 2), "Timed out waiting 30000ms for recv")
    assert "another of the 4 ranks" in timeout and "timeout" in timeout
