"""The closed-form variational posterior of the conjugate observed mixture
(:mod:`pyro_mm.model.conjugate`): its ELBO against a Monte Carlo estimate from the Pyro
model's own densities, its monotone ascent, the guide's start from it, and ``fit``
taking it as the whole fit exactly where the model is the conjugate one."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import pyro_mm as pm
from pyro_mm.model.conjugate import (ConjugatePrior, conjugate_start, fit_conjugate_mixture,
                                     unconstrained_moments)
from pyro_mm.model.distributions import inverse_gamma_scale_prior
from pyro_mm.train.fit import closed_form_is_the_fit

torch.set_num_threads(1)


def _data(n=60, missing_rate=0.0, seed=0, **kwargs):
    return pm.datasets.make_synthetic(num_examples=n, num_clusters=3, dims={"a": 2, "b": 2},
                                      missing_rate=missing_rate, seed=seed, **kwargs)


def _model(data, **kwargs):
    pyro.clear_param_store()
    model = pm.MultimodalDPMixture(data.dims, num_components=4, representation="observed",
                                   **kwargs)
    model.fit_standardization(data)
    return model


def _fitted(model, data, seed=0):
    """``(x, seen, q, prior)`` of the closed form from random soft responsibilities."""
    batch = model.prepare(data)
    guide = pm.MultimodalGuide(model)
    x, seen = guide._cells(model, batch)
    x, seen = x.double(), seen.double()
    nu0, spread = (float(v) for v in model.variance_prior)
    prior = ConjugatePrior(float(model.alpha), float(model.prior_loc_scale), nu0 / 2,
                           nu0 * spread / 2)
    resp = torch.softmax(torch.randn(len(x), model.num_components, dtype=x.dtype,
                                     generator=torch.Generator().manual_seed(seed)), -1)
    return x, seen, fit_conjugate_mixture(x, seen, resp, prior, max_iter=300, tol=0), prior


@pytest.mark.parametrize("missing_rate", [0.0, 0.3])
def test_the_elbo_is_a_monte_carlo_average_of_the_pyro_models_log_densities(missing_rate):
    """``E_q[log p(x, c, theta) - log q(c, theta)]`` estimated from 4,000 draws of
    ``theta ~ q``, scored by the model's own prior sites (a trace of
    ``sample_globals``) and its own component densities, equals the closed-form ELBO:
    the priors, the updates' expectations and the KL terms agree with the model."""
    data = _data(missing_rate=missing_rate)
    model = _model(data, resolution_floor=False).double()  # no floor: exactly conjugate
    x, seen, q, _ = _fitted(model, data)
    S, K = 4000, model.num_components
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        sticks = torch.distributions.Beta(q.stick_a, q.stick_b).sample((S,))
        locs = q.loc_mean + q.loc_var.sqrt() * torch.randn((S,) + q.loc_mean.shape,
                                                          dtype=x.dtype, generator=gen)
        scale_q = inverse_gamma_scale_prior(2 * q.var_shape, q.var_rate / q.var_shape)
        scales = scale_q.sample((S,))
    sizes = [model.dims[m] for m in model.modalities]
    values = {"sticks": sticks[:, None]}
    for m, loc, scale in zip(model.modalities, locs.split(sizes, -1), scales.split(sizes, -1)):
        values[f"component_loc_{m}"], values[f"component_scale_{m}"] = loc[:, None], scale[:, None]
    trace = poutine.trace(poutine.condition(model.sample_globals, data=values)).get_trace()
    log_prior = sum(site["fn"].log_prob(site["value"]).reshape(S, -1).sum(-1)
                    for site in trace.nodes.values() if site["type"] == "sample")
    log_q = (torch.distributions.Beta(q.stick_a, q.stick_b).log_prob(sticks).sum(-1)
             + torch.distributions.Normal(q.loc_mean, q.loc_var.sqrt()).log_prob(locs).sum((-1, -2))
             + scale_q.log_prob(scales).sum((-1, -2)))
    params = model.params_from_sites({k: v[:, 0] for k, v in values.items()})
    masks = model.prepare(data).masks
    mixture = params.mixture("joint", mask=masks, batch_size=len(x), stacked=False)
    per_component = mixture.component_log_density(x.float().double()).sum(-2)  # (S, N, K)
    joint = (q.resp * (per_component + params.log_weights[:, None, :])).sum((-1, -2))
    entropy = -torch.xlogy(q.resp, q.resp).sum()
    estimate = joint + entropy + log_prior - log_q
    mean, se = float(estimate.mean()), float(estimate.std() / S ** 0.5)
    assert all(float(f.max()) == 0 for f in model.scale_floors())
    assert abs(mean - q.elbo[-1]) < 4 * se + 1e-6 * abs(mean), (mean, se, q.elbo[-1])


def test_coordinate_ascent_never_lowers_the_elbo():
    data = _data(n=80, missing_rate=0.3, seed=2)
    x, seen, q, _ = _fitted(_model(data).double(), data, seed=3)
    gains = np.diff(q.elbo)
    assert len(q.elbo) > 5 and gains.min() > -1e-9 * abs(q.elbo[-1])


def test_the_guides_start_has_the_closed_forms_moments_in_unconstrained_space():
    """logit of a Beta and log sigma of an inverse-gamma variance: the moments
    :func:`unconstrained_moments` gives against samples."""
    data = _data()
    _, _, q, _ = _fitted(_model(data).double(), data)
    moments = unconstrained_moments(q)
    S = 200_000
    v = torch.distributions.Beta(q.stick_a, q.stick_b).sample((S,))
    logit = torch.log(v) - torch.log1p(-v)
    tau = torch.distributions.Gamma(q.var_shape, q.var_rate).sample((S,))
    log_sigma = -0.5 * tau.log()
    for (loc, scale), draws in ((moments["sticks"], logit),
                                (moments["component_scale"], log_sigma)):
        torch.testing.assert_close(draws.mean(0), loc, atol=0.02, rtol=0.01)
        torch.testing.assert_close(draws.std(0), scale, atol=0.02, rtol=0.02)


def test_fit_takes_the_closed_form_as_the_fit_only_where_the_model_is_conjugate():
    data = _data(n=200)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_components=6, representation="observed")
    result = pm.fit(model, data, seed=0, progress=False)
    assert result.config["epochs_run"] == 0 and not result.history.steps
    assert result.config["closed_form"]["iterations"] >= 2
    # the statistics fit decided on are the model's, as prepare would have fitted them
    fresh = pm.MultimodalDPMixture(data.dims, num_components=6, representation="observed")
    fresh.fit_standardization(data)
    for name, value in fresh.standardization.state_dict().items():
        torch.testing.assert_close(model.standardization.state_dict()[name], value)
    # the guide holds the closed form: its median is the Normal factor's mean
    assert pm.evaluate(result, data)["effective_components"] < 4.5  # 3 clusters
    labelled = pm.MultimodalDPMixture(data.dims, num_components=6, representation="observed",
                                      num_classes=3)
    assert conjugate_start(labelled) and not closed_form_is_the_fit(labelled, data)
    studentt = pm.MultimodalDPMixture(data.dims, num_components=6, component="studentt",
                                      representation="observed")
    assert not conjugate_start(studentt)
    integers = pm.MultimodalData({m: np.round(4 * x) for m, x in data.features.items()})
    assert not closed_form_is_the_fit(model.__class__(
        data.dims, num_components=6, representation="observed"), integers)
    for guide in (pm.MultimodalGuide(model, init="kmeans"),
                  pm.MultimodalGuide(model, global_guide="map")):
        assert not closed_form_is_the_fit(model, data, guide=guide)


def test_a_model_with_a_classifier_starts_svi_from_the_closed_form():
    data = _data(n=120)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_components=6, representation="observed",
                                   num_classes=3)
    result = pm.fit(model, data, num_epochs=2, batch_size=64, seed=0, progress=False)
    assert result.config["epochs_run"] == 2 and result.config["closed_form"]["iterations"] >= 2


def test_a_bad_init_is_refused_by_name():
    data = _data()
    with pytest.raises(ValueError, match="init: expected 'auto' or 'kmeans'"):
        pm.MultimodalGuide(_model(data), init="cavi")


def test_a_closed_form_fit_is_saved_loaded_and_resumed_with_svi(tmp_path):
    data = _data(n=150)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_components=5, representation="observed")
    result = pm.fit(model, data, run_dir=tmp_path / "run", seed=0, progress=False)
    assert result.config["epochs_run"] == 0
    back = pm.load(tmp_path / "run")
    assert pm.evaluate(back, data)["log_likelihood"] == pytest.approx(
        pm.evaluate(result, data)["log_likelihood"], rel=1e-6)
    more = pm.fit(back.model, data, resume_from=tmp_path / "run", num_epochs=2,
                  batch_size=50, progress=False)
    assert more.config["epochs_run"] == 2 and len(more.history.epochs) == 2
    from pyro_mm.diagnostics.plots import plot_history
    with pytest.raises(ValueError, match="no SVI steps"):
        plot_history(result)


@pytest.mark.parametrize("features", [{"a": np.zeros((10, 2)), "b": np.zeros((10, 2))},
                                      {"c": np.zeros((10, 2))}])
def test_data_that_does_not_fit_the_conjugate_model_is_named_before_the_closed_form(features):
    from pyro_mm.errors import DataValidationError
    model = pm.MultimodalDPMixture({"a": 3, "b": 2}, num_components=4,
                                   representation="observed")
    with pytest.raises(DataValidationError):
        pm.fit(model, pm.MultimodalData(features), progress=False)
