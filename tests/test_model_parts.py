"""The model's composed parts on their own: the label head and the standardisation take
their configuration in their constructors and own their state; the model delegates to
them; states of the flat 0.1.0 layout load into them; evaluation_mode restores modes."""

import numpy as np
import pytest
import torch
from torch import nn

import pyro_mm as pm
from pyro_mm.errors import DataValidationError
from pyro_mm.model.label_head import LabelHead
from pyro_mm.model.standardization import Standardization
from pyro_mm.runtime.modes import evaluation_mode


def _model(**kwargs):
    torch.manual_seed(0)
    return pm.MultimodalDPMixture({"a": 3, "b": 2}, num_classes=3, latent_dim=2,
                                  num_components=3, hidden=(4,), **kwargs)


def test_a_label_head_built_alone_predicts_as_the_models():
    model = _model(fusion="dp")
    head = LabelHead(("a", "b"), [2, 2], 3, latent=True, mixture="joint", fusion="dp",
                     hidden=(4,), modality_dropout=0.2)
    head.load_state_dict(model.label_head.state_dict())
    params = model.sample_globals()
    z = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True], [True, False], [False, True], [True, True],
                         [True, False]])
    torch.testing.assert_close(head.class_logits(z, params, mask),
                               model.class_logits(z, params, mask), rtol=0, atol=0)
    labels = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(head.label_log_prob(z, params, labels, mask, drop=0),
                               model.label_log_prob(z, params, labels, mask, drop=0))


def test_the_model_delegates_to_its_label_head():
    model = _model(modality_dropout=0.3, classifier_prior_scale=2.0, fusion="experts")
    head = model.label_head
    assert model.classifier is head.classifier
    assert model.class_frequencies is head.class_frequencies
    assert (model.fusion_name, model.modality_dropout, model.classifier_prior_scale) == (
        "experts", 0.3, 2.0)
    model.modality_weights = torch.tensor([0.5, 1.5])
    assert torch.equal(head.modality_weights, torch.tensor([0.5, 1.5]))
    assert "label_head.modality_weights" in model.state_dict()


@pytest.mark.parametrize("bad", [torch.ones(3), torch.ones(2, 1), [1.0, 1.0]])
def test_modality_weights_of_the_wrong_shape_are_refused(bad):
    model = _model()
    with pytest.raises(ValueError, match=r"modality_weights: expected a tensor of shape \(2,\)"):
        model.modality_weights = bad
    assert torch.equal(model.modality_weights, torch.ones(2))


def test_class_frequencies_ignore_unlabelled_rows_and_keep_without_labels():
    head = LabelHead(("a",), [2], 3)
    head.fit_class_frequencies(np.array([0, 0, 2, -1, -1]))
    torch.testing.assert_close(head.class_frequencies, torch.tensor([2 / 3, 0.0, 1 / 3]))
    head.fit_class_frequencies(np.array([-1, -1]))  # nothing observed: unchanged, no NaN
    torch.testing.assert_close(head.class_frequencies, torch.tensor([2 / 3, 0.0, 1 / 3]))
    assert torch.isfinite(head.log_class_prior()).all()


def test_a_standardization_built_alone_fits_and_standardises():
    rng = np.random.default_rng(0)
    data = pm.MultimodalData({"a": rng.normal(3.0, 2.0, (50, 3)), "b": np.ones((50, 2))},
                             masks={"a": np.arange(50) % 5 != 0, "b": np.ones(50, bool)})
    part = Standardization(data.dims, scale_floor=0.1)
    assert not part.fitted
    part.fit(data)
    assert part.fitted
    loc, scale = part.statistics("a")
    seen = data.features["a"][data.masks["a"]]
    np.testing.assert_allclose(loc.numpy(), seen.mean(0), rtol=1e-5)
    np.testing.assert_allclose(scale.numpy(), seen.std(0), rtol=1e-5)
    assert torch.equal(part.statistics("b")[1], torch.ones(2))  # constant: scale 1
    assert [tuple(f.shape) for f in part.scale_floors()] == [(3,), (2,)]
    raw = data.to_tensors(torch.device("cpu"))
    out = part.standardize(raw.features, raw.masks)
    assert torch.equal(out["a"][~raw.masks[:, 0]], torch.zeros(10, 3))
    torch.testing.assert_close(part.feature_log_jacobian(raw.masks[:2]),
                               -torch.stack([scale.log().sum()] * 2)
                               * raw.masks[:2, 0].float())


def test_latent_floors_are_fixed_and_not_refitted(tiny_data):
    part = Standardization(tiny_data.dims, scale_floor=0.2, latent_dim=5, prior_scale=0.5)
    part.fit(tiny_data)
    assert all(torch.equal(f, torch.full((5,), 0.1)) for f in part.scale_floors())


def test_no_buffer_of_the_parts_is_left_on_the_model():
    own = {name for name, _ in _model().named_buffers(recurse=False)}
    assert own == {"alpha", "alpha_prior", "prior_loc_scale", "prior_log_scale",
                   "prior_scale_spread", "component_df", "df_prior",
                   "variance_prior"}


def _flat(state):
    """A state in the 0.1.0 layout: the parts' entries flat on the model."""
    return {k.split(".", 1)[1] if k.startswith(("standardization.", "label_head.")) else k:
            v for k, v in state.items()}


def test_a_flat_state_loads_into_the_parts_without_touching_the_callers_dict(tiny_data):
    model = _model(factors=[pm.factors.ARM()])
    model.fit_standardization(pm.datasets.make_synthetic(
        40, num_clusters=3, dims={"a": 3, "b": 2}, seed=0))
    model.modality_weights = torch.tensor([0.7, 1.3])
    flat = _flat(model.state_dict())
    assert "feature_loc_a" in flat and "classifier.0.weight" in flat
    keys = list(flat)
    fresh = _model(factors=[pm.factors.ARM()])
    fresh.load_state_dict(flat)
    assert list(flat) == keys  # the caller's dict is unchanged
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    # nested (as inside an ELBO module or a wrapper): the prefix is kept
    outer = nn.ModuleDict({"model": _model(factors=[pm.factors.ARM()])})
    outer.load_state_dict({f"model.{k}": v for k, v in flat.items()})
    assert torch.equal(outer["model"].modality_weights, torch.tensor([0.7, 1.3]))


def test_an_unknown_flat_entry_is_still_reported():
    flat = _flat(_model().state_dict())
    flat["feature_loc_c"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match="feature_loc_c"):
        _model().load_state_dict(flat)


def test_prepare_before_fitting_and_a_streamed_resolution_floor_are_refused(tmp_path,
                                                                             tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, representation="observed",
                                   resolution_floor=True)
    with pytest.raises(ValueError, match="fit_standardization"):
        model.prepare(tiny_data)
    tiny_data.to_zarr(tmp_path / "s.zarr")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataValidationError, match="resolution_floor"):
        model.fit_standardization(pm.MultimodalData.open_zarr(tmp_path / "s.zarr"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_evaluation_mode_restores_each_modules_mode_even_on_an_error():
    training, evaluating = nn.Linear(1, 1), nn.Linear(1, 1).eval()
    with pytest.raises(KeyError):
        with evaluation_mode(training, evaluating):
            assert not training.training and not evaluating.training
            raise KeyError("inside")
    assert training.training and not evaluating.training
