"""``fusion="experts"`` on observed features: the heads solved exactly after SVI
(:mod:`pyro_mm.train.expert_heads`) and the mean pool (``experts_pool="mean"``)."""

import numpy as np
import pytest
import torch

import pyro_mm as pm
from pyro_mm.train.expert_heads import head_objective, solve_expert_heads


def _data(n=240, fraction=0.4):
    data = pm.datasets.make_synthetic(num_examples=n, num_clusters=3,
                                      dims={"a": 5, "b": 3, "c": 2}, seed=0)
    return data.mask_at_random(fraction, seed=1)


def _model(data, **kwargs):
    torch.manual_seed(0)
    return pm.MultimodalDPMixture(data.dims, num_classes=3, num_components=4,
                                  representation="observed", fusion="experts", hidden=(),
                                  classifier_prior_scale=0.7, **kwargs)


def _head_rows(model, batch, j):
    x = torch.split(batch.concatenated(model.modalities), model.classifier.sizes, -1)[j]
    seen = batch.masks[:, j]
    return x[seen], batch.labels[seen]


def test_solved_linear_heads_are_sklearns_penalised_logistic_regression():
    """Known answer: a linear head with prior sd ``sigma`` solves scikit-learn's
    ``LogisticRegression(C=sigma^2)`` (multinomial, bias unpenalised) on the rows where
    its modality is present."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    data = _data()
    model = _model(data)
    model.fit_standardization(data)
    batch = model.prepare(data)
    finals = solve_expert_heads(model, batch)
    assert len(finals) == 3 and all(np.isfinite(finals))
    for j, head in enumerate(model.classifier.heads):
        x, y = _head_rows(model, batch, j)
        reference = sklearn.LogisticRegression(C=0.7 ** 2, tol=1e-10, max_iter=10000).fit(
            x.numpy(), y.numpy())
        ours = torch.softmax(head(x), -1).detach().numpy()  # float32 against float64
        np.testing.assert_allclose(ours, reference.predict_proba(x.numpy()), atol=1e-3)
        # Stationarity: the objective's gradient vanishes at the solution.
        loss = head_objective(head, x, y, 0.7)
        grads = torch.autograd.grad(loss, list(head.parameters()))
        assert max(float(g.abs().max()) for g in grads) < 1e-2  # float32 sums


def test_fit_ends_with_the_heads_at_their_map():
    data = _data()
    model = _model(data)
    result = pm.fit(model, data, num_epochs=1, batch_size=64, progress=False, device="cpu")
    batch = result.model.prepare(data)
    for j, head in enumerate(result.model.classifier.heads):
        x, y = _head_rows(result.model, batch, j)
        grads = torch.autograd.grad(head_objective(head, x, y, 0.7), list(head.parameters()))
        assert max(float(g.abs().max()) for g in grads) < 1e-2  # float32 sums


def test_solve_refuses_a_model_whose_heads_are_not_separable():
    data = _data()
    latent = pm.MultimodalDPMixture(data.dims, num_classes=3, num_components=4,
                                    fusion="experts", hidden=(4,))
    with pytest.raises(ValueError, match="observed"):
        solve_expert_heads(latent, None)


def test_mean_pool_is_the_average_of_the_present_heads_log_probabilities():
    """Known answer: ``log pi + mean_{m in S} [log q_m - log pi] = mean_{m in S} log q_m``,
    so one present modality gives its head's own prediction, as the product does."""
    data = _data()
    mean, product = _model(data, experts_pool="mean"), _model(data)
    for model in (mean, product):
        model.fit_standardization(data)
    product.load_state_dict(mean.state_dict())
    batch = mean.prepare(data)
    x = batch.concatenated(mean.modalities)
    terms = mean.classifier.terms(x)                                    # (N, 3, C)
    present = batch.masks.to(terms.dtype)
    expected = (terms * present[..., None]).sum(1) / present.sum(1, keepdim=True)
    params = mean.sample_globals()
    torch.testing.assert_close(mean.class_logits(x, params, batch.masks), expected,
                               rtol=0, atol=1e-5)
    one = batch.masks.sum(1) == 1
    assert one.any()
    torch.testing.assert_close(
        torch.log_softmax(mean.class_logits(x, params, batch.masks)[one], -1),
        torch.log_softmax(product.class_logits(x, params, batch.masks)[one], -1),
        rtol=0, atol=1e-5)
    copy = pm.MultimodalDPMixture.from_config(mean.config())
    assert copy.classifier.pool == "mean"
    with pytest.raises(ValueError, match="experts_pool"):
        _model(data, experts_pool="median")
