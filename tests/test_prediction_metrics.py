"""What evaluate reports for a model with a classifier: the label log-likelihood
``log p(y | x_obs)`` (at most 0, against a computation by hand) and the ECE; the
warnings and errors about training labels."""

import math
import warnings

import numpy as np
import pytest
import torch

import pyro_mm as pm
from pyro_mm.errors import DataValidationError
from pyro_mm.predictive.metrics import expected_calibration_error


def _fit(model, data, **kwargs):
    kwargs.setdefault("num_epochs", 3)
    return pm.fit(model, data, progress=False, seed=0, device="cpu", batch_size=60,
                  **kwargs)


def _by_hand_observed(model, data):
    """``log softmax(classifier((x - loc) / scale))[y]`` from the raw arrays."""
    parts = []
    for m in model.modalities:
        loc, scale = model.standardization.statistics(m)
        parts.append((torch.tensor(np.array(data.features[m]), dtype=loc.dtype) - loc) / scale)
    with torch.no_grad():
        logits = model.classifier(torch.cat(parts, -1))
    return torch.log_softmax(logits, -1)[torch.arange(len(data)),
                                         torch.as_tensor(data.labels)]


def test_observed_label_log_likelihood_is_log_p_y_given_x(tiny_data):
    """It was log p(x) (+ a positive density) for an observed model with a classifier."""
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, num_components=3,
                                   representation="observed")
    result = _fit(model, tiny_data)
    metrics = pm.evaluate(result, tiny_data)
    expected = _by_hand_observed(result.model, tiny_data)
    assert metrics["log_likelihood"] == pytest.approx(float(expected.mean()), rel=1e-5)
    per_example = pm.log_likelihood(result.model, result.guide,
                                    result.model.prepare(tiny_data))
    np.testing.assert_allclose(per_example.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert metrics["log_likelihood"] <= 0


def test_latent_label_log_likelihood_by_hand(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3, modality_dropout=0.0)
    result = _fit(model, tiny_data)
    batch = result.model.prepare(tiny_data)
    with torch.no_grad():
        loc = torch.stack([result.guide.encoders[m](batch.features[m])[0]
                           for m in model.modalities], -2)
        logits = result.model.classifier(loc.flatten(-2))
    expected = torch.log_softmax(logits, -1)[torch.arange(len(tiny_data)), batch.labels]
    assert pm.evaluate(result, tiny_data)["log_likelihood"] == pytest.approx(
        float(expected.mean()), rel=1e-5)


@pytest.mark.parametrize("representation", ["observed", "latent"])
def test_label_log_likelihood_with_views_missing_is_the_predicted_probability(
        representation):
    data = pm.datasets.make_synthetic(num_examples=90, num_clusters=3, dims={"a": 4, "b": 3},
                                      missing_rate=0.4, seed=2)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=2, num_components=3,
                                   representation=representation)
    result = _fit(model, data)
    probs = pm.predict(result, data)["probs"]
    by_hand = np.log(probs[np.arange(len(data)), data.labels]).mean()
    value = pm.evaluate(result, data)["log_likelihood"]
    assert value == pytest.approx(by_hand, rel=1e-4)
    assert value <= 0


def _observed_density(result, batch):
    """``(N,)`` ``log p(x_obs)`` of an observed model's mixture at its point estimate,
    on the original scale, computed from the mixture itself."""
    model = result.model
    params = model.params_from_sites(result.guide.point_estimate())
    with torch.no_grad():
        density = params.mixture("joint", mask=batch.masks, batch_size=batch.size,
                                 stacked=False).log_prob(batch.concatenated(model.modalities))
    return density + model.feature_log_jacobian(batch.masks)


def test_without_classifier_log_likelihood_stays_the_feature_density(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_components=3,
                                   representation="observed")
    result = _fit(model, tiny_data)
    density = _observed_density(result, result.model.prepare(tiny_data))
    metrics = pm.evaluate(result, tiny_data)
    assert metrics["log_likelihood"] == pytest.approx(float(density.mean()), rel=1e-5)
    assert "ece" not in metrics


def test_a_classifier_model_on_unlabelled_data_reports_the_feature_density(tiny_data):
    """It was nan (every label -1: nothing to score, and nothing said)."""
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, num_components=3,
                                   representation="observed")
    result = _fit(model, tiny_data)
    unlabelled = pm.MultimodalData(tiny_data.features, labels=np.full(len(tiny_data), -1),
                                   masks=tiny_data.masks, num_classes=3)
    batch = result.model.prepare(unlabelled)
    density = _observed_density(result, batch)
    metrics = pm.evaluate(result, unlabelled)
    assert metrics["log_likelihood"] == pytest.approx(float(density.mean()), rel=1e-5)
    per_example = pm.log_likelihood(result.model, result.guide, batch, chunk_size=7)
    np.testing.assert_allclose(per_example.numpy(), density.numpy(), rtol=1e-5, atol=1e-5)
    assert "accuracy" not in metrics


def test_ece_by_hand():
    # top probabilities 0.9 (right), 0.9 (wrong), 0.6 (right), 1.0 (right)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    # bins (13/15, 14/15] holds both 0.9s: |0.5 - 0.9| * 2/4; (8/15, 9/15] the 0.6:
    # |1 - 0.6| / 4; (14/15, 1] the 1.0: 0
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2 + 0.1)
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels[:3])


def test_evaluate_reports_ece_of_its_probabilities(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    result = _fit(model, tiny_data)
    probs = torch.as_tensor(pm.predict(result, tiny_data)["probs"])
    expected = expected_calibration_error(probs, torch.as_tensor(tiny_data.labels))
    assert pm.evaluate(result, tiny_data)["ece"] == pytest.approx(expected)


def _messages(record):
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_no_label_at_all_trains_the_mixture_and_says_so_once(tiny_data):
    unlabelled = pm.MultimodalData(tiny_data.features, labels=np.full(len(tiny_data), -1),
                                   num_classes=3)
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = _fit(model, unlabelled)
    said = [m for m in _messages(record) if "no training example is labelled" in m]
    assert len(said) == 1
    assert all(math.isfinite(r["loss"]) for r in result.history.steps)
    for k, v in result.model.classifier.state_dict().items():  # no gradient reached it
        torch.testing.assert_close(v, before[k])


def test_a_class_without_labelled_example_is_named(tiny_data):
    labels = tiny_data.labels.copy()
    labels[labels == 2] = -1
    data = pm.MultimodalData(tiny_data.features, labels=labels, num_classes=3)
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(model, data, num_epochs=1)
    said = [m for m in _messages(record) if "no labelled training example" in m]
    assert len(said) == 1 and "class [2]" in said[0]


def test_too_few_classes_names_the_label_and_num_classes(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=2, latent_dim=2,
                                   num_components=3)
    with pytest.raises(DataValidationError, match=r"largest label is 2.*num_classes=2"):
        _fit(model, tiny_data, num_epochs=1)
