"""Data larger than memory: Zarr stores, streaming statistics, training, prediction,
evaluation and imputation from disk, the DataLoader, the command line and bad stores."""

import json
import os

import numpy as np
import pyro
import pytest
import torch
import zarr

import pyro_mm
from pyro_mm.cli.main import main
from pyro_mm.data.batch import StoreBatch
from pyro_mm.data.container import MultimodalData
from pyro_mm.data.loader import RowLoader
from pyro_mm.data.stats import feature_moments, merge_moments
from pyro_mm.errors import DataValidationError


@pytest.fixture
def data():
    """300 examples, two modalities with a fifth of the cells missing, labels with
    some missing, metadata."""
    d = pyro_mm.datasets.make_synthetic(num_examples=300, num_clusters=3,
                                        dims={"a": 5, "b": 3}, seed=1).mask_at_random(0.2)
    labels = d.labels
    labels[::7] = -1
    return MultimodalData(d.features, labels=labels, masks=d.masks, num_classes=3,
                          metadata={"source": "test", "weights": [0.5, 0.5]})


@pytest.fixture
def store(data, tmp_path):
    path = tmp_path / "data.zarr"
    data.to_zarr(path, chunk_rows=64)
    return MultimodalData.open_zarr(path)


def test_round_trip_keeps_features_masks_labels_and_metadata(data, store, tmp_path):
    assert store.on_disk and not data.on_disk
    assert store.dims == data.dims and store.num_classes == 3 and len(store) == 300
    for m in data.modalities:
        np.testing.assert_array_equal(store.masks[m], data.masks[m])
        np.testing.assert_array_equal(store.features[m][...], data.features[m])
    np.testing.assert_array_equal(store.labels, data.labels)
    assert store.metadata == {"source": "test", "weights": [0.5, 0.5]}
    rows = np.array([250, 3, 3, 64, 0])
    for m, block in store.read_rows(rows).items():
        np.testing.assert_array_equal(block, data.features[m][rows])
    # Nothing half-written is left beside the store.
    assert os.listdir(tmp_path) == ["data.zarr"]


def test_open_zarr_reads_no_feature_chunk(data, tmp_path):
    path = tmp_path / "s.zarr"
    data.to_zarr(path, chunk_rows=64)
    # Garbage in every feature chunk: opening (and the statistics of masks and labels)
    # must not notice; the first read of a row must.
    chunks = [p for p in (path / "features").rglob("*") if p.is_file()
              and p.name != "zarr.json"]
    assert len(chunks) == 2 * 5
    for chunk in chunks:
        chunk.write_bytes(b"not a chunk")
    store = MultimodalData.open_zarr(path)
    assert store.has_labels and store.masks["a"].sum() == data.masks["a"].sum()
    assert all(isinstance(x, zarr.Array) for x in store.features.values())
    with pytest.raises(Exception):
        store.read_rows([0])


def test_subsets_and_splits_stay_on_disk(data, store):
    train, test = store.split(0.25, seed=3)
    mem_train, mem_test = data.split(0.25, seed=3)
    assert train.on_disk and test.on_disk
    np.testing.assert_array_equal(test.labels, mem_test.labels)
    np.testing.assert_array_equal(test.read_rows(np.arange(len(test)))["b"],
                                  mem_test.features["b"])
    selected = store.select(["b"])
    assert selected.modalities == ("b",) and selected.on_disk


def test_a_failed_write_leaves_nothing_and_overwrite_is_explicit(data, tmp_path):
    path = tmp_path / "s.zarr"
    data.to_zarr(path)
    with pytest.raises(FileExistsError):
        data.to_zarr(path)
    with pytest.raises(ZeroDivisionError):
        with pyro_mm.data.store.StoreWriter(tmp_path / "t.zarr", {"a": 2}, 4):
            1 / 0
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]
    data.subset(np.arange(10)).to_zarr(path, overwrite=True)
    assert len(MultimodalData.open_zarr(path)) == 10


def test_streaming_standardisation_equals_in_memory(data, store):
    # resolution_floor=False: the recording resolution needs every distinct value, which
    # a streamed pass does not keep (data on disk skip it, with a warning)
    models = [pyro_mm.MultimodalDPMixture(data.dims, num_classes=3, representation="observed",
                                          num_components=4, resolution_floor=False)
              for _ in range(2)]
    models[0].fit_standardization(data)
    models[1].fit_standardization(store)
    stats = [n for n, _ in models[0].named_buffers() if n.startswith(
        ("standardization.feature_", "standardization.component_scale_floor_",
         "label_head.class_freq"))]
    assert len(stats) == 7
    buffers = [dict(m.named_buffers()) for m in models]
    for name in stats:
        torch.testing.assert_close(buffers[1][name], buffers[0][name], rtol=1e-12, atol=0)


def test_chan_merge_matches_two_pass_on_shifted_data():
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(size=(1000, 3))  # a large offset: where naive sums fail
    parts = [x[:17], x[17:500], x[500:]]
    running = (0, np.zeros(3), np.zeros(3))
    for p in parts:
        running = merge_moments(running, (len(p), p.mean(0), ((p - p.mean(0)) ** 2).sum(0)))
    np.testing.assert_allclose(running[1], x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(running[2] / len(x), x.var(0), rtol=1e-9)
    d = MultimodalData({"a": x[:, :2].astype(np.float32)})
    n, mean, var = feature_moments(d, block_rows=64)["a"]
    x32 = x[:, :2].astype(np.float32).astype(np.float64)
    assert n == 1000
    np.testing.assert_allclose(var, x32.var(0), rtol=1e-6)


def _fit(d, **kw):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = pyro_mm.MultimodalDPMixture(d.dims, num_classes=3, latent_dim=2,
                                        num_components=4, hidden=(8,))
    options = dict(num_epochs=2, batch_size=64, device="cpu", progress=False)
    return pyro_mm.fit(model, d, **{**options, **kw})


def test_training_from_a_store_equals_training_in_memory(data, store):
    a, b = _fit(data), _fit(store, num_workers=2)
    for name, value in a.guide.state_dict().items():
        torch.testing.assert_close(b.guide.state_dict()[name], value)
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value)
    assert [r["loss"] for r in a.history.steps] == pytest.approx(
        [r["loss"] for r in b.history.steps])


def test_predict_evaluate_impute_from_a_store_equal_in_memory(data, store):
    result = _fit(data, num_workers=0)
    for key, value in pyro_mm.predict(result, data).items():
        np.testing.assert_allclose(pyro_mm.predict(result, store)[key], value, rtol=1e-6)
    assert pyro_mm.evaluate(result, store) == pytest.approx(pyro_mm.evaluate(result, data))
    mem = pyro_mm.impute(result, data, num_samples=5, seed=0)
    disk = pyro_mm.impute(result, store, num_samples=5, seed=0)
    for name in mem.data_vars:
        np.testing.assert_allclose(disk[name].values, mem[name].values, rtol=1e-6)


def test_store_batch_reads_only_what_is_indexed(data, store):
    model = pyro_mm.MultimodalDPMixture(data.dims, num_classes=3, num_components=4)
    model.fit_standardization(data)
    batch = model.prepare(store)
    assert isinstance(batch, StoreBatch) and batch.size == 300
    idx = torch.tensor([7, 2, 299])
    expected = model.prepare(data).index(idx)
    got = batch.index(idx)
    for m in data.modalities:
        torch.testing.assert_close(got.features[m], expected.features[m])
    torch.testing.assert_close(got.masks, expected.masks)


def test_a_dataloader_with_two_workers_reads_minibatches_in_order(data, store):
    loader = RowLoader(store, store.modalities, torch.device("cpu"), num_workers=2)
    batches = [torch.tensor([5, 1, 200]), torch.tensor([299, 0])]
    for _ in range(2):  # two epochs through the same persistent workers
        got = list(loader.epoch(batches))
        assert len(got) == 2
        for idx, rows in got:
            for m in data.modalities:
                np.testing.assert_array_equal(rows.features[m].numpy(),
                                              data.features[m][idx.numpy()])


def test_cli_trains_from_a_store_and_records_it(data, tmp_path, capsys):
    path = tmp_path / "tiny.zarr"
    data.to_zarr(path)
    run = tmp_path / "run"
    assert main(["train", "--data", str(path), "--epochs", "1", "--latent-dim", "2",
                 "--components", "3", "--num-workers", "1", "--out", str(run),
                 "--quiet"]) == 0
    spec = json.loads((run / "data.json").read_text())
    assert spec["data"] == str(path.resolve()) and spec["data_format"] == "zarr"
    assert main(["evaluate", str(run), "--json"]) == 0  # reopens the store's split
    assert "accuracy" in capsys.readouterr().out


def test_bad_stores_give_clear_errors(data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="not a Zarr store"):
        MultimodalData.open_zarr(tmp_path / "empty")
    path = tmp_path / "s.zarr"
    data.to_zarr(path)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["modalities"] = ["a", "b", "c"]
    with pytest.raises(DataValidationError, match="modality 'c'.*missing"):
        MultimodalData.open_zarr(path)
    group.attrs["modalities"] = ["a", "b"]
    del group["features/b"]
    group.create_array("features/b", shape=(300, 3), dtype="float64")
    with pytest.raises(DataValidationError, match="'b' has dtype float64"):
        MultimodalData.open_zarr(path)
    del group["features/b"]
    group.create_array("features/b", shape=(299, 3), dtype="float32")
    with pytest.raises(DataValidationError, match=r"'b' has shape \(299, 3\)"):
        MultimodalData.open_zarr(path)
    group.attrs["format"] = "something else"
    with pytest.raises(DataValidationError, match="not written by pyro_mm"):
        MultimodalData.open_zarr(path)


def test_nan_in_an_observed_stored_row_is_named_when_read(data, tmp_path):
    path = tmp_path / "s.zarr"
    data.to_zarr(path)
    row = int(np.flatnonzero(data.masks["a"])[3])
    zarr.open_group(str(path), mode="r+")["features/a"][row, 1] = np.nan
    store = MultimodalData.open_zarr(path)
    with pytest.raises(DataValidationError, match=f"modality 'a'.*first rows \\[{row}\\]"):
        store.read_rows(np.arange(300))
    model = pyro_mm.MultimodalDPMixture(data.dims, num_classes=3, num_components=4)
    with pytest.raises(DataValidationError, match="modality 'a'"):
        model.fit_standardization(store)


def test_chunk_local_order_keeps_every_draw_and_reads_few_chunks():
    chunk_of = torch.arange(4096) // 64                      # 64 chunks of 64 examples
    generator = torch.Generator().manual_seed(0)
    for order in (torch.randperm(4096, generator=generator),
                  torch.multinomial(torch.rand(4096), 4096, replacement=True,
                                    generator=generator)):   # a weighted draw
        out = pyro_mm.data.loader.chunk_local(order, chunk_of, 4, generator)
        assert torch.equal(out.sort().values, order.sort().values)
        touched = [len(chunk_of[b].unique()) for b in out.split(128)]
        # Within one window (4 chunks) or straddling two, never all 64; shuffled.
        assert max(touched) <= 8 and min(touched) >= 2
        assert not torch.equal(out, order.sort().values)


def test_training_from_a_store_in_chunk_order(data, tmp_path):
    path = tmp_path / "s.zarr"
    data.to_zarr(path, chunk_rows=16)
    result = _fit(MultimodalData.open_zarr(path), num_workers=1, disk_order="chunks")
    assert len(result.history.steps) == 2 * 5
    assert all(np.isfinite(r["loss"]) for r in result.history.steps)
    with pytest.raises(ValueError, match="disk_order"):
        _fit(data, disk_order="sorted")


def test_from_xarray_lazy_reads_rows_of_a_lazily_opened_dataset(data, tmp_path):
    xr = pytest.importorskip("xarray")
    path = tmp_path / "x.zarr"
    data.to_xarray().to_zarr(path, encoding={"a": {"chunks": (64, 5)},
                                             "b": {"chunks": (64, 3)}})
    lazy = MultimodalData.from_xarray(xr.open_zarr(path, chunks=None), label="labels",
                                      num_classes=3, lazy=True)
    assert lazy.on_disk and lazy.store_chunks().max() == 299 // 64
    assert not isinstance(lazy.features["a"], np.ndarray)  # a lazy DataArray
    rows = np.array([299, 0, 64])
    for m, block in lazy.read_rows(rows).items():
        np.testing.assert_array_equal(block, data.features[m][rows])
    np.testing.assert_array_equal(lazy.masks["b"], data.masks["b"])
    np.testing.assert_array_equal(lazy.labels, data.labels)


def test_a_resumed_run_from_a_store_matches_an_uninterrupted_one(store, tmp_path):
    whole = _fit(store, num_workers=0, run_dir=tmp_path / "whole")
    _fit(store, num_workers=0, run_dir=tmp_path / "cut", num_epochs=1)
    resumed = _fit(store, num_workers=0, run_dir=tmp_path / "cut",
                   resume_from=tmp_path / "cut")
    for name, value in whole.guide.state_dict().items():
        torch.testing.assert_close(resumed.guide.state_dict()[name], value)
