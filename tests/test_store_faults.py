"""Stores that cannot lie: a damaged or unfinished Zarr store is an error naming the
modality, the chunk and the rows (in the store's own numbering), from Python and from
the command line, never features read as the fill value or as changed bytes."""

import os
import select
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

from pyro_mm.cli.main import main
from pyro_mm.data.container import MultimodalData
from pyro_mm.data.store import StoreWriter
from pyro_mm.errors import DataValidationError

N, CHUNK = 400, 100


@pytest.fixture
def data():
    """400 examples in 4 chunks of 100: ``image`` (4 features), ``text`` (3), labels."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    features = {"image": rng.normal(size=(N, 4)) + labels[:, None],
                "text": rng.normal(size=(N, 3))}
    return MultimodalData(features, labels=labels, num_classes=2)


def _chunk_file(path, name, chunk):
    return path / "features" / name / "c" / str(chunk) / "0"


def _write(data, path, **kw):
    data.to_zarr(path, chunk_rows=CHUNK, **kw)
    return path


def test_a_deleted_chunk_is_found_on_opening_and_when_read(data, tmp_path):
    path = _write(data, tmp_path / "s.zarr")
    store = MultimodalData.open_zarr(path)          # complete: opens
    _chunk_file(path, "image", 3).unlink()
    message = (r"modality 'image', chunk 3 \(rows 300-399, file features/image/c/3/0\) "
               r"is missing")
    with pytest.raises(DataValidationError, match=message):
        MultimodalData.open_zarr(path)
    # Opened before the deletion: the chunk reads as the NaN fill, never as data.
    np.testing.assert_array_equal(store.read_rows(np.arange(300))["image"],
                                  data.features["image"][:300])
    with pytest.raises(DataValidationError, match=message):
        store.read_rows(np.arange(N))
    with pytest.raises(DataValidationError, match=message):
        store.subset(np.arange(250, 400)).read_rows([0, 120])


def test_a_deleted_mask_or_label_chunk_is_found_on_opening(data, tmp_path):
    """Masks equal to their fill (every row observed) and labels are written all the
    same, so deleting them is damage, never "every row observed" or "no label"."""
    for key in ("masks/image", "labels"):
        path = _write(data, tmp_path / f"{key.replace('/', '_')}.zarr")
        assert MultimodalData.open_zarr(path).masks["image"].all()
        (path / key / "c" / "0").unlink()
        with pytest.raises(DataValidationError,
                           match=rf"{key} \(rows 0-399, file {key}/c/0\) is missing"):
            MultimodalData.open_zarr(path)


def test_a_garbage_chunk_names_modality_chunk_and_rows(data, tmp_path):
    for checksums, problem in ((False, "cannot be decoded"), (True, "fails its checksum")):
        path = _write(data, tmp_path / f"s{checksums}.zarr", checksums=checksums)
        _chunk_file(path, "text", 1).write_bytes(b"not a chunk" * 20)
        store = MultimodalData.open_zarr(path)      # no feature chunk read yet
        with pytest.raises(DataValidationError,
                           match=rf"modality 'text', chunk 1 \(rows 100-199.*{problem}"):
            store.read_rows(np.arange(50, 250, 7))
        np.testing.assert_array_equal(store.read_rows([0, 399])["text"],
                                      data.features["text"][[0, 399]])


def _flip_a_value(path):
    """Change one float of chunk 2 of ``image`` in place (an uncompressed chunk: the
    bytes still decode)."""
    chunk = _chunk_file(path, "image", 2)
    raw = bytearray(chunk.read_bytes())
    raw[9] ^= 0x40
    chunk.write_bytes(bytes(raw))


def _write_uncompressed(data, path, checksums):
    with StoreWriter(path, data.dims, N, chunk_rows=CHUNK, compress=False,
                     checksums=checksums) as writer:
        writer.write(0, data.features)
    return path


def test_changed_bytes_that_still_decode_fail_the_checksum(data, tmp_path):
    # Without checksums, the change is read as data: what the checksums are for.
    plain = _write_uncompressed(data, tmp_path / "plain.zarr", checksums=False)
    _flip_a_value(plain)
    read = MultimodalData.open_zarr(plain).read_rows(np.arange(200, 300))["image"]
    assert np.isfinite(read).all() and not np.array_equal(read, data.features["image"][200:300])
    summed = _write_uncompressed(data, tmp_path / "summed.zarr", checksums=True)
    _flip_a_value(summed)
    store = MultimodalData.open_zarr(summed)
    with pytest.raises(DataValidationError, match=r"modality 'image', chunk 2 \(rows "
                       r"200-299, file features/image/c/2/0\) fails its checksum"):
        store.read_rows([250])
    np.testing.assert_array_equal(store.read_rows([150])["image"],
                                  data.features["image"][[150]])


def _store_with_nan_rows(data, tmp_path):
    """A store with NaN in observed rows 350 and 351 of ``image`` (written through
    zarr, as an outside tool would: the checksums follow)."""
    path = _write(data, tmp_path / "nan.zarr")
    zarr.open_group(str(path), mode="r+")["features/image"][[350, 351], 1] = np.nan
    return path


def test_nan_rows_are_named_in_the_store_numbering_for_a_subset(data, tmp_path):
    store = MultimodalData.open_zarr(_store_with_nan_rows(data, tmp_path))
    message = r"modality 'image'.*2 observed example\(s\).*first rows \[350, 351\]"
    part = store.subset(np.arange(300, 400)[::-1])   # rows 49 and 48 of the subset
    with pytest.raises(DataValidationError, match=message):
        part.read_rows(np.arange(len(part)))
    with pytest.raises(DataValidationError, match=message):  # a subset of a subset
        part.subset(np.arange(40, 60)).to_tensors()


def test_the_command_line_exits_2_naming_the_fault(data, tmp_path, capsys):
    train = ["train", "--epochs", "1", "--latent-dim", "2", "--components", "3",
             "--num-workers", "0", "--quiet"]
    path = _write(data, tmp_path / "s.zarr")
    _chunk_file(path, "image", 3).unlink()
    assert main([*train, "--data", str(path), "--out", str(tmp_path / "r1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-mm: error: data store") and "chunk 3 (rows 300-399" in err
    assert "Traceback" not in err
    nan = _store_with_nan_rows(data, tmp_path)
    # The command line trains on a split: the rows named are still the store's.
    assert main([*train, "--data", str(nan), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "modality 'image'" in err and "first rows [350, 351]" in err


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pyro_mm.data import store
    from pyro_mm.data.container import MultimodalData

    write = store.StoreWriter.write
    def write_then_stall(self, start, *args, **kw):
        write(self, start, *args, **kw)
        if start >= 200:            # half the rows written: stall until killed
            print("half", flush=True)
            time.sleep(120)
    store.StoreWriter.write = write_then_stall
    rng = np.random.default_rng(0)
    MultimodalData({"image": rng.normal(size=(400, 4))}).to_zarr(sys.argv[1], chunk_rows=100)
""")


def test_a_write_killed_midway_is_recognised_as_interrupted(tmp_path):
    path = tmp_path / "s.zarr"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=root,
                             stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready and child.stdout.readline().strip() == "half"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdout.close()
    assert not path.exists()
    (temp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.tmp-")]
    with pytest.raises(DataValidationError, match=r"does not exist: its writing was "
                       rf"interrupted; the incomplete store '{temp.name}'"):
        MultimodalData.open_zarr(path)
    with pytest.raises(DataValidationError, match="its writing was interrupted"):
        MultimodalData.load(str(path))          # what the command line's --data does
    with pytest.raises(DataValidationError, match="incomplete: its writing was "
                       "interrupted before it finished"):
        MultimodalData.open_zarr(temp)


def test_a_replacement_killed_between_its_renames_points_to_the_old_store(data, tmp_path):
    path = _write(data, tmp_path / "s.zarr")
    os.replace(path, tmp_path / ".s.zarr.old-1234abcd")  # where StoreWriter moves it
    with pytest.raises(DataValidationError, match="the store it was replacing is in "
                       "'.s.zarr.old-1234abcd'"):
        MultimodalData.open_zarr(path)


def test_rows_never_written_are_zero_not_the_fill(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2)).astype(np.float32)
    with StoreWriter(tmp_path / "s.zarr", {"a": 2}, 130, chunk_rows=32) as writer:
        writer.write(0, {"a": x[:20]})
        writer.write(70, {"a": x[20:]})
    read = MultimodalData.open_zarr(tmp_path / "s.zarr").read_rows(np.arange(130))["a"]
    np.testing.assert_array_equal(read[:20], x[:20])
    np.testing.assert_array_equal(read[70:100], x[20:])
    np.testing.assert_array_equal(read[20:70], 0.0)
    np.testing.assert_array_equal(read[100:], 0.0)


def test_a_store_of_the_previous_version_still_opens(data, tmp_path):
    """Layout version 1: zero fill value, an all-zero chunk never written, no
    checksums, no completion marker."""
    path = tmp_path / "v1.zarr"
    group = zarr.open_group(str(path), mode="w-")
    group.attrs.update({"format": "pyro_mm.multimodal", "version": 1,
                        "modalities": ["image"], "num_examples": N, "num_classes": 2,
                        "metadata": {}})
    x = data.features["image"].copy()
    x[100:200] = 0.0
    group.create_array("features/image", shape=(N, 4), chunks=(CHUNK, 4),
                       dtype="float32", fill_value=0.0)[...] = x
    group.create_array("masks/image", shape=(N,), chunks=(N,), dtype="bool",
                       fill_value=True)
    group.create_array("labels", shape=(N,), chunks=(N,), dtype="int64",
                       fill_value=-1)[...] = data.labels
    assert not _chunk_file(path, "image", 1).exists()
    store = MultimodalData.open_zarr(path)
    np.testing.assert_array_equal(store.read_rows(np.arange(N))["image"], x)
    np.testing.assert_array_equal(store.labels, data.labels)


def test_a_loader_worker_hands_back_the_error_without_its_traceback(data, tmp_path):
    import torch

    from pyro_mm.data.loader import RowLoader

    path = _write(data, tmp_path / "s.zarr")
    store = MultimodalData.open_zarr(path)
    loader = RowLoader(store, store.modalities, torch.device("cpu"), num_workers=1)
    _chunk_file(path, "text", 2).unlink()              # after opening: found when read
    with pytest.raises(DataValidationError) as caught:
        list(loader.epoch([torch.tensor([5, 250])]))
    assert str(caught.value).startswith(f"data store {str(path)!r}: modality 'text', "
                                        "chunk 2 (rows 200-299")
    assert "Traceback" not in str(caught.value)
