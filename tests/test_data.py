"""Validation and behaviour of :class:`pyro_mm.data.container.MultimodalData`.

Every malformed input must raise :class:`pyro_mm.DataValidationError` (a ValueError)
whose message names the offending modality or argument; valid data must be copied,
never mutated, and survive the xarray / .npz / .nc round trips.
"""

import numpy as np
import pytest
import torch

import pyro_mm
from pyro_mm import DataValidationError
from pyro_mm.data.container import MultimodalData


def _netcdf_engine():
    """h5netcdf needs h5py to write; fall back to scipy (netCDF3), which
    ``MultimodalData.load`` reads back through xarray's engine detection."""
    try:
        import h5py  # noqa: F401

        return "h5netcdf"
    except ImportError:
        pytest.importorskip("scipy")
        return "scipy"


def _features(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((n, 3)), "b": rng.standard_normal((n, 2))}


def _masked_example():
    """Six examples; modality ``b`` is missing (and NaN) in rows 1 and 4; labels with
    one missing entry."""
    features = _features()
    features["b"][[1, 4]] = np.nan
    masks = {"b": np.array([True, False, True, True, False, True])}
    labels = np.array([0, 1, 2, -1, 1, 0])
    return features, masks, labels


# ---------------------------------------------------------------- constructor errors
def test_error_class_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)


def test_no_modalities_is_rejected():
    with pytest.raises(DataValidationError, match="features"):
        MultimodalData({})


def test_zero_examples_is_rejected():
    with pytest.raises(DataValidationError, match="no examples"):
        MultimodalData({"a": np.zeros((0, 3)), "b": np.zeros((0, 2))})


def test_zero_features_is_rejected_naming_modality():
    with pytest.raises(DataValidationError, match="'b'.*zero features"):
        MultimodalData({"a": np.zeros((4, 3)), "b": np.zeros((4, 0))})


@pytest.mark.parametrize("shape", [(5,), (5, 2, 2)], ids=["1d", "3d"])
def test_wrong_rank_is_rejected_naming_modality(shape):
    with pytest.raises(DataValidationError, match="'b'.*2-D"):
        MultimodalData({"a": np.zeros((5, 3)), "b": np.zeros(shape)})


def test_disagreeing_example_counts_are_rejected():
    with pytest.raises(DataValidationError, match="'b'.*4 examples.*'a'.*5"):
        MultimodalData({"a": np.zeros((5, 3)), "b": np.zeros((4, 2))})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_observed_entry_is_rejected_naming_modality(bad):
    features = _features()
    features["b"][2, 1] = bad
    with pytest.raises(DataValidationError, match="'b'.*NaN/inf.*\\[2\\]"):
        MultimodalData(features)


def test_non_finite_entry_in_masked_row_is_rejected_when_mask_is_elsewhere():
    features = _features()
    features["b"][2, 1] = np.nan
    masks = {"b": np.array([True, False, True, True, True, True])}  # row 2 observed
    with pytest.raises(DataValidationError, match="'b'"):
        MultimodalData(features, masks=masks)


def test_nan_in_masked_out_row_is_accepted_and_stored_as_zero():
    features, masks, _ = _masked_example()
    data = MultimodalData(features, masks=masks)
    stored = data.features["b"]
    assert np.isfinite(stored).all()
    np.testing.assert_array_equal(stored[[1, 4]], 0.0)
    np.testing.assert_allclose(stored[[0, 2, 3, 5]], features["b"][[0, 2, 3, 5]],
                               rtol=1e-6)
    np.testing.assert_array_equal(data.masks["b"], masks["b"])
    assert data.masks["a"].all()


def test_labels_out_of_range_for_num_classes_are_rejected():
    with pytest.raises(DataValidationError, match="labels.*3.*num_classes=3"):
        MultimodalData(_features(), labels=[0, 1, 2, 3, 0, 1], num_classes=3)


@pytest.mark.parametrize("bad", [-2, -7])
def test_negative_label_other_than_missing_is_rejected(bad):
    with pytest.raises(DataValidationError, match="labels.*negative"):
        MultimodalData(_features(), labels=[0, 1, bad, 1, 0, 1])


def test_minus_one_label_is_accepted_as_missing():
    data = MultimodalData(_features(), labels=[0, 1, -1, 1, 0, 1])
    assert data.labels[2] == -1
    assert data.num_classes == 2


@pytest.mark.parametrize("shape", [(5,), (7,), (6, 1)], ids=["short", "long", "2d"])
def test_labels_of_wrong_shape_are_rejected(shape):
    with pytest.raises(DataValidationError, match="labels.*shape"):
        MultimodalData(_features(), labels=np.zeros(shape, dtype=np.int64))


def test_nan_labels_are_treated_as_missing():
    labels = np.array([0.0, np.nan, 2.0, 1.0, np.nan, 0.0])
    data = MultimodalData(_features(), labels=labels)
    np.testing.assert_array_equal(data.labels, [0, -1, 2, 1, -1, 0])
    assert data.labels.dtype == np.int64
    assert data.num_classes == 3
    assert data.has_labels


@pytest.mark.parametrize("shape", [(5,), (6, 1), (7,)], ids=["short", "2d", "long"])
def test_mask_of_wrong_shape_is_rejected_naming_modality(shape):
    with pytest.raises(DataValidationError, match="mask of 'b'.*shape"):
        MultimodalData(_features(), masks={"b": np.ones(shape, dtype=bool)})


def test_mask_for_unknown_modality_is_rejected():
    with pytest.raises(DataValidationError, match="masks.*'c'"):
        MultimodalData(_features(), masks={"c": np.ones(6, dtype=bool)})


def test_example_with_no_observed_modality_is_rejected():
    masks = {"a": np.array([True, True, False, True, True, True]),
             "b": np.array([True, False, False, True, True, True])}
    with pytest.raises(DataValidationError, match="masks.*no observed modality.*\\[2\\]"):
        MultimodalData(_features(), masks=masks)


# ---------------------------------------------------------------- copies, read-only views
def test_caller_arrays_are_not_mutated():
    features, masks, labels = _masked_example()
    originals = {k: v.copy() for k, v in features.items()}
    mask_before, labels_before = masks["b"].copy(), labels.copy()
    MultimodalData(features, labels=labels, masks=masks)
    assert np.isnan(features["b"][[1, 4]]).all()
    for k in features:
        np.testing.assert_array_equal(features[k], originals[k])  # NaN == NaN here
    np.testing.assert_array_equal(masks["b"], mask_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_caller_tensor_is_not_mutated():
    features, masks, _ = _masked_example()
    tensor = torch.as_tensor(features["b"])
    MultimodalData({"a": features["a"], "b": tensor}, masks=masks)
    assert torch.isnan(tensor[[1, 4]]).all()


def test_later_changes_to_caller_arrays_do_not_leak_in():
    features = _features()
    data = MultimodalData(features)
    features["a"][0, 0] = 123.0
    assert data.features["a"][0, 0] != 123.0


def test_features_property_is_read_only():
    data = MultimodalData(_features())
    view = data.features["a"]
    before = view[0, 0]
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 42.0
    assert data.features["a"][0, 0] == before


def test_masks_and_labels_properties_return_copies():
    features, masks, labels = _masked_example()
    data = MultimodalData(features, labels=labels, masks=masks)
    data.masks["b"][:] = True
    data.labels[:] = 0
    np.testing.assert_array_equal(data.masks["b"], masks["b"])
    np.testing.assert_array_equal(data.labels, labels)


# ---------------------------------------------------------------- select / split
def test_select_unknown_modality_is_rejected_naming_it():
    data = MultimodalData(_features())
    with pytest.raises(DataValidationError, match="'c'"):
        data.select(["a", "c"])


def test_select_nothing_is_rejected():
    data = MultimodalData(_features())
    with pytest.raises(DataValidationError, match="modalities"):
        data.select([])


def test_select_keeps_requested_modalities_in_order():
    features, masks, labels = _masked_example()
    data = MultimodalData(features, labels=labels, masks=masks)
    sub = data.select(["b", "a"])
    assert sub.modalities == ("b", "a")
    np.testing.assert_array_equal(sub.masks["b"], masks["b"])
    np.testing.assert_array_equal(sub.labels, labels)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_split_rejects_test_fraction_outside_open_unit_interval(fraction):
    data = MultimodalData(_features(), labels=[0, 1, 0, 1, 0, 1])
    with pytest.raises(DataValidationError, match="test_fraction"):
        data.split(test_fraction=fraction)


def _indexed_unbalanced_data():
    """100 examples with a feature holding the row index; classes 60/30/10."""
    n = 100
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    labels = np.random.default_rng(1).permutation(labels)
    features = {"idx": np.arange(n, dtype=float)[:, None],
                "b": np.random.default_rng(2).standard_normal((n, 2))}
    return MultimodalData(features, labels=labels), labels


def test_split_is_disjoint_and_covers_every_example():
    data, _ = _indexed_unbalanced_data()
    train, test = data.split(test_fraction=0.2, seed=3)
    train_idx = train.features["idx"][:, 0].astype(int)
    test_idx = test.features["idx"][:, 0].astype(int)
    assert not set(train_idx) & set(test_idx)
    assert sorted(np.concatenate([train_idx, test_idx])) == list(range(100))


def test_split_keeps_labels_attached_to_their_examples():
    data, labels = _indexed_unbalanced_data()
    train, test = data.split(test_fraction=0.2, seed=3)
    for part in (train, test):
        idx = part.features["idx"][:, 0].astype(int)
        np.testing.assert_array_equal(part.labels, labels[idx])


def test_split_is_stratified_by_label():
    data, labels = _indexed_unbalanced_data()
    _, test = data.split(test_fraction=0.2, seed=3)
    counts = np.bincount(test.labels, minlength=3)
    np.testing.assert_array_equal(counts, [12, 6, 2])  # 20% of 60/30/10
    assert test.num_classes == data.num_classes


# ---------------------------------------------------------------- xarray and files
def test_to_xarray_from_xarray_round_trip_keeps_features_masks_labels():
    features, masks, labels = _masked_example()
    data = MultimodalData(features, labels=labels, masks=masks, num_classes=3,
                          metadata={"name": "toy"})
    ds = data.to_xarray()
    assert set(ds.data_vars) == {"a", "b", "a_mask", "b_mask", "labels"}
    back = MultimodalData.from_xarray(ds, label="labels", num_classes=3)
    assert back.modalities == data.modalities
    for k in data.modalities:
        np.testing.assert_array_equal(back.features[k], data.features[k])
        np.testing.assert_array_equal(back.masks[k], data.masks[k])
    np.testing.assert_array_equal(back.labels, labels)
    assert back.num_classes == 3
    assert back.metadata["name"] == "toy"


def test_from_xarray_unknown_example_dim_is_rejected():
    ds = MultimodalData(_features()).to_xarray()
    with pytest.raises(DataValidationError, match="example_dim.*'row'"):
        MultimodalData.from_xarray(ds, example_dim="row")


def test_from_xarray_missing_label_variable_is_rejected():
    ds = MultimodalData(_features()).to_xarray()
    with pytest.raises(DataValidationError, match="label.*'y'"):
        MultimodalData.from_xarray(ds, label="y")


def test_from_xarray_unknown_modality_is_rejected_naming_it():
    ds = MultimodalData(_features()).to_xarray()
    with pytest.raises(DataValidationError, match="'c'"):
        MultimodalData.from_xarray(ds, modalities=["a", "c"])


def test_from_xarray_modality_without_feature_dim_is_rejected():
    ds = MultimodalData(_features()).to_xarray()
    with pytest.raises(DataValidationError, match="'a_mask'"):
        MultimodalData.from_xarray(ds, modalities=["a", "a_mask"])


def test_from_xarray_nan_in_observed_entry_is_rejected_naming_modality():
    ds = MultimodalData(_features()).to_xarray()
    ds["b"][0, 0] = np.nan
    with pytest.raises(DataValidationError, match="'b'"):
        MultimodalData.from_xarray(ds)


def test_load_npz_reads_features_masks_and_labels(tmp_path):
    features, masks, labels = _masked_example()
    features["b"] = np.where(np.isnan(features["b"]), 0.0, features["b"])
    path = tmp_path / "toy.npz"
    np.savez(path, a=features["a"], b=features["b"], b_mask=masks["b"], labels=labels)
    data = MultimodalData.load(path)
    assert data.dims == {"a": 3, "b": 2}
    np.testing.assert_allclose(data.features["a"], features["a"], rtol=1e-6)
    np.testing.assert_array_equal(data.masks["b"], masks["b"])
    assert data.masks["a"].all()
    np.testing.assert_array_equal(data.labels, labels)


def test_load_npz_with_nan_in_observed_entry_is_rejected_naming_modality(tmp_path):
    features = _features()
    features["a"][3, 0] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, **features)
    with pytest.raises(DataValidationError, match="'a'"):
        MultimodalData.load(path)


def test_load_netcdf_round_trip(tmp_path):
    features, masks, labels = _masked_example()
    data = MultimodalData(features, labels=labels, masks=masks)
    path = tmp_path / "toy.nc"
    data.to_xarray().to_netcdf(path, engine=_netcdf_engine())
    back = MultimodalData.load(path)
    assert back.modalities == data.modalities
    for k in data.modalities:
        np.testing.assert_array_equal(back.features[k], data.features[k])
        np.testing.assert_array_equal(back.masks[k], data.masks[k])
    np.testing.assert_array_equal(back.labels, labels)


def test_load_netcdf_nan_labels_become_missing(tmp_path):
    ds = MultimodalData(_features()).to_xarray()
    ds["labels"] = ("example", np.array([0.0, np.nan, 1.0, 1.0, np.nan, 0.0]))
    path = tmp_path / "nanlabels.nc"
    ds.to_netcdf(path, engine=_netcdf_engine())
    data = MultimodalData.load(path)
    np.testing.assert_array_equal(data.labels, [0, -1, 1, 1, -1, 0])


def test_load_unknown_extension_is_rejected_naming_file(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text("1,2\n")
    with pytest.raises(DataValidationError, match="toy.csv"):
        MultimodalData.load(path)


# ---------------------------------------------------------------- tensors
def test_to_tensors_shapes_and_dtypes(tiny_data):
    batch = tiny_data.to_tensors()
    assert batch.features["a"].shape == (120, 4)
    assert batch.features["b"].shape == (120, 3)
    assert batch.features["a"].dtype == torch.float32
    assert batch.masks.shape == (120, 2) and batch.masks.dtype == torch.bool
    assert batch.labels.shape == (120,) and batch.labels.dtype == torch.int64
    assert batch.label_mask.shape == (120,) and batch.label_mask.all()
    assert batch.size == 120


def test_to_tensors_missing_labels_become_zero_with_false_label_mask():
    features, masks, labels = _masked_example()
    data = MultimodalData(features, labels=labels, masks=masks)
    batch = data.to_tensors()
    assert batch.labels.tolist() == [0, 1, 2, 0, 1, 0]
    assert batch.label_mask.tolist() == [True, True, True, False, True, True]
    assert batch.masks[:, 1].tolist() == masks["b"].tolist()


def test_to_tensors_without_labels_gives_none():
    batch = MultimodalData(_features()).to_tensors()
    assert batch.labels is None and batch.label_mask is None


# ---------------------------------------------------------------- model-side check
def _small_model(dims):
    return pyro_mm.MultimodalDPMixture(dims, num_classes=3, latent_dim=2,
                                       num_components=3, hidden=(4,))


def test_model_check_data_rejects_wrong_feature_count_naming_modality(tiny_data):
    model = _small_model(tiny_data.dims)
    model.check_data(tiny_data)  # the data it was built for passes
    other = MultimodalData({"a": np.zeros((5, 4)), "b": np.zeros((5, 2))})
    with pytest.raises(DataValidationError, match="'b'.*2 features.*expects 3"):
        model.check_data(other)


def test_model_check_data_rejects_missing_modality_naming_it(tiny_data):
    model = _small_model(tiny_data.dims)
    with pytest.raises(DataValidationError, match="\\['b'\\]"):
        model.check_data(tiny_data.select(["a"]))


def test_mirrored_modality_flips_whole_examples_and_hides_the_label_from_a_linear_probe():
    from sklearn.linear_model import LogisticRegression

    kwargs = dict(num_examples=800, num_clusters=4, dims={"a": 6, "b": 6},
                  signal={"a": 2.0, "b": 2.0}, seed=3)
    plain = pyro_mm.datasets.make_synthetic(**kwargs)
    mirrored = pyro_mm.datasets.make_synthetic(mirrored=["b"], **kwargs)
    np.testing.assert_array_equal(mirrored.features["a"], plain.features["a"])
    np.testing.assert_array_equal(mirrored.labels, plain.labels)
    ratio = mirrored.features["b"] / plain.features["b"]
    np.testing.assert_allclose(np.abs(ratio), 1.0)
    assert (ratio == ratio[:, :1]).all()  # one sign per example
    assert 0.3 < (ratio[:, 0] < 0).mean() < 0.7
    assert mirrored.metadata["mirrored"] == ["b"]

    def probe(data):
        x, y = data.features["b"], data.labels
        return LogisticRegression(max_iter=2000).fit(x[:600], y[:600]).score(x[600:], y[600:])

    assert probe(plain) > 0.9
    assert probe(mirrored) < 0.45  # 4 balanced classes: chance is 0.25


def test_mirrored_names_an_unknown_modality():
    with pytest.raises(DataValidationError, match=r"mirrored.*\['c'\]"):
        pyro_mm.datasets.make_synthetic(dims={"a": 2, "b": 2}, mirrored="c")
