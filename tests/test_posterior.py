"""Any posterior (pyro_mm.model.posterior): the library's guide, any Pyro guide (an
autoguide, AutoGuideList, a plain function, with a local guide for latent models),
posterior samples and pyro.infer.MCMC, through every consumer; NUTS on a tiny observed
model; and the SVI-against-MCMC comparison with its label matching."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_value

import pyro_mm as pm
from pyro_mm import diagnostics as dx
from pyro_mm.diagnostics.compare import _site_rows
from pyro_mm.errors import DataValidationError
from pyro_mm.factors import modality_contributions
from pyro_mm.model.posterior import (POINT_DRAWS, GuidePosterior, SamplesPosterior,
                                     as_posterior)

torch.set_num_threads(1)


def _observed(n=60, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = pm.datasets.make_synthetic(num_examples=n, num_clusters=3, dims={"a": 2, "b": 2},
                                      signal=4.0, noise=0.5, seed=seed)
    model = pm.MultimodalDPMixture(data.dims, num_components=3, representation="observed")
    model.fit_standardization(data)
    return data, model, model.prepare(data)


def _svi(model, guide, batch, steps=150, lr=0.05):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(steps):
        svi.step(batch)
    return guide


@pytest.fixture(scope="module")
def observed_autonormal():
    data, model, batch = _observed()
    guide = _svi(model, AutoNormal(model), batch)
    return data, model, guide


def _samples_from(posterior, batch, chains=2, draws=20):
    """A samples dict ``site -> (chain, draw, ...)`` of a guide's draws."""
    values = [d.values for d in posterior.draws(batch, chains * draws, seed=1)]
    return {s: torch.stack([v[s] for v in values]).reshape(chains, draws, *values[0][s].shape)
            for s in posterior.global_sites}


def _every_consumer(source, data, samples=False):
    """Every entry point takes ``source``; returns what they gave."""
    pred = pm.predict(source, data)
    assert pred["responsibilities"].shape == (len(data), 3)
    assert np.isfinite(pred["responsibilities"]).all()
    bma = pm.predict(source, data, num_samples=4)
    assert np.isfinite(bma["responsibilities_sd"]).all()
    metrics = pm.evaluate(source, data)
    assert np.isfinite(metrics["log_likelihood"])
    posterior = as_posterior(source)
    ll = pm.log_likelihood(posterior.model, posterior, posterior.model.prepare(data))
    assert ll.shape == (len(data),) and bool(torch.isfinite(ll).all())
    tree = pm.to_datatree(source, data, num_samples=None if samples else 20,
                          progress=False, seed=0)
    assert "x" in tree["log_likelihood"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = pm.summary(source, data, tree=tree)
    if samples:
        assert report.pareto_k is None and "log_q" not in tree["sample_stats"]
        with pytest.raises(TypeError, match="no density q"):
            dx.pareto_k(source, data, num_samples=10)
        with pytest.raises(TypeError, match="no density q"):
            dx.pareto_k(tree)
    else:
        assert report.pareto_k is not None
        assert dx.pareto_k(source, data, num_samples=20, progress=False).num_samples == 20
    assert "Mixture" in str(report)
    return metrics, tree


def test_an_autonormal_guide_is_a_posterior(observed_autonormal):
    data, model, guide = observed_autonormal
    posterior = as_posterior((model, guide))
    assert isinstance(posterior, GuidePosterior) and posterior.kind == "guide"
    point = posterior.point_estimate()
    median = guide.median()
    for site in posterior.global_sites:  # an autoguide's point estimate is its median
        assert torch.equal(point[site], median[site])
    metrics, _ = _every_consumer((model, guide), data)
    assert metrics["ari"] > 0.9


def test_autodelta_and_autoguidelist_are_posteriors():
    data, model, batch = _observed(seed=1)
    delta = _svi(model, AutoDelta(model), batch, steps=60)
    _every_consumer((model, delta), data)
    pyro.clear_param_store()
    guides = AutoGuideList(model)
    guides.append(AutoNormal(poutine.block(model, expose=["sticks"])))
    guides.append(AutoDelta(poutine.block(model, hide=["sticks"])))
    _svi(model, guides, batch, steps=60)
    posterior = as_posterior((model, guides))
    assert set(posterior.point_estimate()) == set(posterior.global_sites)
    _every_consumer((model, guides), data)


def _function_guide(model):
    """A hand-written mean-field guide of the global sites."""
    K, sizes = model.num_components, model.site_sizes

    def guide(batch, subsample=None, kl_weight=1.0):
        a = pyro.param("q_sticks_a", torch.ones(K - 1), constraint=dist.constraints.positive)
        b = pyro.param("q_sticks_b", torch.ones(K - 1), constraint=dist.constraints.positive)
        pyro.sample("sticks", dist.Beta(a, b).to_event(1))
        for m, d in sizes.items():
            loc = pyro.param(f"q_loc_{m}", lambda d=d: torch.randn(K, d))
            pyro.sample(f"component_loc_{m}", dist.Normal(loc, 0.1).to_event(2))
            log_scale = pyro.param(f"q_scale_{m}", torch.zeros(K, d))
            pyro.sample(f"component_scale_{m}",
                        dist.LogNormal(log_scale, 0.1).to_event(2))
    return guide


def test_a_function_guide_is_a_posterior_summarised_by_the_median_of_seeded_draws():
    data, model, batch = _observed(seed=2)
    guide = _svi(model, _function_guide(model), batch, steps=100)
    state = torch.get_rng_state()
    first = as_posterior((model, guide)).point_estimate(batch)
    second = as_posterior((model, guide)).point_estimate(batch)
    assert torch.equal(state, torch.get_rng_state())  # seeded, caller's state kept
    for site in first:
        assert torch.equal(first[site], second[site])
    # the rule: the per-site median of POINT_DRAWS draws with the fixed seed
    draws = [d.values for d in as_posterior((model, guide)).draws(batch, POINT_DRAWS,
                                                                   seed=0)]
    median = torch.stack([d["sticks"] for d in draws]).median(0).values  # odd count
    assert torch.allclose(first["sticks"], median)
    _every_consumer((model, guide), data)


def test_samples_and_their_chains_are_kept_in_the_tree(observed_autonormal):
    data, model, guide = observed_autonormal
    batch = model.prepare(data)
    samples = _samples_from(as_posterior((model, guide)), batch, chains=2, draws=20)
    posterior = as_posterior((model, samples))
    assert isinstance(posterior, SamplesPosterior) and posterior.num_chains == 2
    for site, value in posterior.point_estimate().items():  # per-site median
        assert torch.allclose(value, torch.quantile(samples[site].flatten(0, 1), 0.5, 0))
    _, tree = _every_consumer((model, samples), data, samples=True)
    assert tree["posterior"].sizes["chain"] == 2 and tree["posterior"].sizes["draw"] == 20
    np.testing.assert_allclose(tree["posterior"]["component_loc_a"].values,
                               samples["component_loc_a"].numpy(), rtol=1e-6)
    import arviz as az
    rhat, ess = az.rhat(tree), az.ess(tree)
    assert np.isfinite(float(rhat["weights"].max())) and float(ess["weights"].min()) > 0
    # one leading axis is one chain; thinning picks evenly spaced draws per chain
    flat = {s: v[0] for s, v in samples.items()}
    assert as_posterior((model, flat)).num_chains == 1
    assert len(list(posterior.draws(batch, 10))) == 10
    with pytest.raises(ValueError, match="multiple of 2"):
        list(posterior.draws(batch, 7))


def test_bad_sources_and_samples_are_refused(observed_autonormal):
    data, model, guide = observed_autonormal
    for bad in (3, "guide", (model,), [model, guide]):
        with pytest.raises(TypeError, match="expected a FitResult"):
            pm.predict(bad, data)
    with pytest.raises(TypeError, match="MultimodalDPMixture"):
        as_posterior(guide)  # a guide alone has no model
    batch = model.prepare(data)
    samples = _samples_from(as_posterior((model, guide)), batch, chains=1, draws=5)
    missing = {k: v for k, v in samples.items() if k != "sticks"}
    with pytest.raises(DataValidationError, match="sticks"):
        as_posterior((model, missing))
    wrong = dict(samples, sticks=samples["sticks"][..., :1])
    with pytest.raises(DataValidationError, match="expected shape"):
        as_posterior((model, wrong))
    nan = dict(samples, sticks=samples["sticks"].clone().fill_(float("nan")))
    with pytest.raises(DataValidationError, match="NaN"):
        as_posterior((model, nan))
    stray = AutoNormal(poutine.block(model, hide=["sticks"]))
    stray(batch)  # a guide that leaves a global site out
    with pytest.raises(DataValidationError, match="sticks"):
        pm.predict((model, stray), data)


def _labelled_latent(n, seed, missing_rate):
    """A small latent model with a classifier and its data, views missing at
    ``missing_rate``; the param store cleared and the seed set."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = pm.datasets.make_synthetic(num_examples=n, num_clusters=2, dims={"a": 3, "b": 2},
                                      missing_rate=missing_rate, seed=seed)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,))
    return data, model


def test_a_latent_model_takes_a_global_guide_with_the_librarys_encoders():
    data, model = _labelled_latent(60, seed=3, missing_rate=0.2)
    result = pm.fit(model, data, num_epochs=2, batch_size=30, seed=0, device="cpu",
                    progress=False)
    batch = model.prepare(data)
    with pytest.raises(TypeError, match="local guide"):
        as_posterior((model, AutoNormal(poutine.block(model, expose=list(
            result.guide.global_sites)))))
    # a custom global guide (here the fitted one's draws, as samples) + the encoders
    samples = _samples_from(as_posterior(result), batch, chains=1, draws=12)
    source = (model, samples, result.guide)
    pred = pm.predict(source, data)
    assert pred["latent_mean"].shape == (60, 2, 2)
    tree = pm.to_datatree(source, data, progress=False, seed=0)
    assert "y" in tree["log_likelihood"] and tree["posterior"].sizes["draw"] == 12
    imputed = pm.impute(source, data, num_samples=12)
    assert np.isfinite(imputed["a_mean"].values[imputed["a_missing"].values]).all()
    assert np.isfinite(modality_contributions(source, data).phi_mi)
    # a function as the local guide gives the same as the guide's encode
    same = pm.predict((model, samples, result.guide.encode), data)
    np.testing.assert_allclose(same["probs"], pred["probs"])
    plain = pm.predict(result, data)
    assert plain["probs"].shape == pred["probs"].shape


def _permuted(samples, perm):
    """The same posterior with its components relabelled by ``perm`` (the sticks
    recomputed from the permuted weights)."""
    out = {k: v[..., perm, :] if k.startswith("component_") else v
           for k, v in samples.items()}
    sticks = samples["sticks"]
    log_w = pm.model.distributions.stick_breaking_log_weights(sticks)
    w = log_w.exp()[..., perm]
    remaining = 1 - torch.cumsum(w, -1) + w
    out["sticks"] = (w / remaining)[..., :-1].clamp(1e-6, 1 - 1e-6)
    return out


def test_compare_sees_a_permuted_posterior_as_the_same(observed_autonormal):
    data, model, guide = observed_autonormal
    batch = model.prepare(data)
    samples = _samples_from(as_posterior((model, guide)), batch, chains=2, draws=30)
    perm = [2, 0, 1]
    permuted = _permuted(samples, perm)
    report = dx.compare((model, samples), (model, permuted), data, names=("a", "b"))
    assert report.max_abs_z < 1e-3
    low, high = report.sd_ratio_range
    assert abs(low - 1) < 1e-3 and abs(high - 1) < 1e-3
    assert abs(report.elpd_loo["a"]["x"][0] - report.elpd_loo["b"]["x"][0]) < 1e-3
    # a's component perm[k] is b's component k
    assert report.permutations["a"].tolist() == [perm, perm]
    assert "weights" in str(report)
    # unmatched, the same draws differ by many sds: the matching is what makes them equal
    trees = [report.trees[n]["posterior"].to_dataset() for n in ("a", "b")]
    assert max(row.max_abs_z for row in _site_rows(*trees)) > 3


def test_compare_flags_a_different_posterior(observed_autonormal):
    data, model, guide = observed_autonormal
    batch = model.prepare(data)
    samples = _samples_from(as_posterior((model, guide)), batch, chains=1, draws=40)
    shifted = dict(samples, component_loc_a=samples["component_loc_a"] + 1.0)
    report = dx.compare((model, shifted), (model, samples), data)
    row = {s.site: s for s in report.sites}
    assert row["component_loc_a"].max_abs_z > 3
    assert row["component_loc_b"].max_abs_z < 1e-3


def _nuts(model, batch, warmup, draws, seed, init=None, jit=True, max_tree_depth=10):
    """One NUTS chain, started at ``init``; JIT-compiled unless ``jit=False`` (a model
    with a classifier needs that: its compiled potential fails with ``RuntimeError:
    Unsupported value kind: Tensor``)."""
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, jit_compile=jit, ignore_jit_warnings=True,
                  max_tree_depth=max_tree_depth,
                  init_strategy=init_to_value(values=init) if init else init_to_median)
    mcmc = MCMC(kernel, warmup_steps=warmup, num_samples=draws, disable_progbar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation
        mcmc.run(batch)
    return mcmc


def test_nuts_on_the_observed_model_feeds_every_consumer_and_arviz():
    data, model, batch = _observed(n=40, seed=4)
    mcmc = _nuts(model, batch, warmup=15, draws=15, seed=0)
    posterior = as_posterior(mcmc)  # the kernel's model
    assert posterior.model is model and posterior.num_chains == 1
    _, tree = _every_consumer(mcmc, data, samples=True)
    assert tree["posterior"].sizes["chain"] == 1 and tree["posterior"].sizes["draw"] == 15
    import arviz as az
    assert float(az.ess(tree)["weights"].min()) > 0


@pytest.mark.slow
def test_nuts_agrees_with_svi_on_the_observed_model():
    """Two chains of 100 + 100 on 100 examples (K 3, 4 features, 26 parameters) against
    AutoNormal SVI, labels matched: the posterior means within two NUTS sds (a run on
    200 examples measured 1.76 at most, 0.18 for the weights)."""
    data, model, batch = _observed(n=100, seed=5)
    guide = _svi(model, AutoNormal(model), batch, steps=1500, lr=0.02)
    start = {k: v.detach() for k, v in guide.median().items()}
    runs = [_nuts(model, batch, 100, 100, seed, init=start) for seed in (0, 1)]
    assert all(not r.diagnostics()["divergences"]["chain 0"] for r in runs)
    chains = [r.get_samples() for r in runs]
    samples = {s: torch.stack([c[s] for c in chains]) for s in chains[0]}
    tree = pm.to_datatree((model, samples), data, progress=False)
    import arviz as az
    assert tree["posterior"].sizes["chain"] == 2
    assert float(az.rhat(tree)["weights"].max()) < 1.1
    report = dx.compare((model, guide), (model, samples), data, num_samples=400)
    assert report.max_abs_z < 2.0
    low, high = report.sd_ratio_range
    assert 0.4 < low and high < 2.5
    assert abs(report.elpd_loo["svi"]["x"][0] - report.elpd_loo["mcmc"]["x"][0]) < 10


# ------------------------------------------- impute and modality_contributions, any posterior
def _labelled_observed(n=60, seed=6):
    """An observed model with a classifier (so both impute and modality_contributions
    apply: an observed model imputes from its components, no decoder needed)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = pm.datasets.make_synthetic(num_examples=n, num_clusters=3, dims={"a": 2, "b": 2},
                                      signal=4.0, noise=0.5, seed=seed)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, num_components=3,
                                   representation="observed")
    model.fit_standardization(data)
    return data, model, model.prepare(data)


@pytest.fixture(scope="module")
def labelled_autonormal():
    data, model, batch = _labelled_observed()
    guide = _svi(model, AutoNormal(model), batch, steps=100)
    return data, model, guide


def _imputes(source, data, num_samples=8):
    """``pm.impute`` of ``source`` on ``data`` with 30 % of its cells hidden: values
    (and ordered quantiles) exactly where a cell is hidden, closer to the hidden truth
    than the features' means; returns the Dataset."""
    masked = data.mask_at_random(0.3, seed=1)
    imputed = pm.impute(source, masked, num_samples=num_samples, quantiles=(0.1, 0.9))
    for m in ("a", "b"):
        hidden = imputed[f"{m}_missing"].values
        assert hidden.any() and (hidden == ~masked.masks[m]).all()
        mean, (low, high) = imputed[f"{m}_mean"].values, imputed[f"{m}_quantiles"].values
        assert np.isfinite(mean[hidden]).all() and np.isnan(mean[~hidden]).all()
        assert (low[hidden] < high[hidden]).all()
        truth = data.features[m][hidden]
        error = np.sqrt(np.mean((mean[hidden] - truth) ** 2))
        baseline = np.sqrt(np.mean((truth - data.features[m].mean(0)) ** 2))
        assert error < baseline, (m, error, baseline)
    return imputed


def _contributions(source, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an estimate's plausibility is not tested here
        report = modality_contributions(source, data)
    assert set(report) == {"a", "b"} and all(np.isfinite(report[m]) for m in report)
    assert np.isfinite(report.phi_mi) and report.phi_mi <= report.label_entropy + 1e-9
    return report


def _same_contributions(first, second):
    for m in first:
        assert first[m] == pytest.approx(second[m], rel=1e-6, abs=1e-9)
    assert first.phi_mi == pytest.approx(second.phi_mi, rel=1e-6, abs=1e-9)


def _point_as_samples(posterior, batch):
    """The posterior's point estimate as a single draw of samples (whose median is
    that draw)."""
    return {s: v.detach()[None] for s, v in posterior.point_estimate(batch).items()}


def test_impute_and_contributions_take_an_autonormal_guide(labelled_autonormal):
    data, model, guide = labelled_autonormal
    batch = model.prepare(data)
    _imputes((model, guide), data)
    report = _contributions((model, guide), data)
    # read at the guide's point estimate, its median
    at_median = _contributions((model, _point_as_samples(as_posterior((model, guide)),
                                                          batch)), data)
    _same_contributions(report, at_median)


def test_impute_and_contributions_take_a_function_guide():
    data, model, batch = _labelled_observed(seed=7)
    guide = _svi(model, _function_guide(model), batch, steps=100)
    _imputes((model, guide), data)
    report = _contributions((model, guide), data)
    # read at the point estimate: the median of POINT_DRAWS seeded draws
    point = _point_as_samples(as_posterior((model, guide)), batch)
    _same_contributions(report, _contributions((model, point), data))


@pytest.mark.filterwarnings("ignore:.*not registered in the param store")
def test_impute_and_contributions_take_mcmc_samples_and_the_mcmc_object(labelled_autonormal):
    data, model, guide = labelled_autonormal
    batch = model.prepare(data)
    start = {k: v.detach() for k, v in guide.median().items()}
    mcmc = _nuts(model, batch, warmup=10, draws=12, seed=0, init=start, jit=False,
                 max_tree_depth=4)  # a few seconds, not a good sampler
    samples = mcmc.get_samples(group_by_chain=True)
    from_object = _imputes(mcmc, data, num_samples=6)
    from_samples = _imputes((model, samples), data, num_samples=6)
    for name in from_object.data_vars:  # the same draws, the same seed
        np.testing.assert_allclose(from_object[name].values, from_samples[name].values)
    report = _contributions(mcmc, data)
    _same_contributions(report, _contributions((model, samples), data))
    median = {s: torch.quantile(v.flatten(0, 1), 0.5, 0)[None] for s, v in samples.items()}
    _same_contributions(report, _contributions((model, median), data))


def test_impute_and_contributions_take_an_autonormal_guide_with_encoders_on_a_latent_model(
        guide_with_library_encoders):
    data, model = _labelled_latent(40, seed=8, missing_rate=0.25)
    model.fit_standardization(data)
    batch = model.prepare(data)
    library = pm.MultimodalGuide(model)
    library.initialize(model, batch)
    global_guide, guide = guide_with_library_encoders(model, library)

    _svi(model, guide, batch, steps=5)
    source = (model, global_guide, library)
    imputed = pm.impute(source, data, num_samples=4, quantiles=(0.1, 0.9))
    for m in ("a", "b"):
        hidden = imputed[f"{m}_missing"].values
        assert hidden.any() and np.isfinite(imputed[f"{m}_mean"].values[hidden]).all()
    report = _contributions(source, data)
    _same_contributions(report, _contributions(
        (model, _point_as_samples(as_posterior(source), batch), library), data))


def test_consumers_other_than_predict_name_what_they_accept(observed_autonormal):
    data, model, guide = observed_autonormal
    accepted = (r"expected a FitResult, \(model, MultimodalGuide\), \(model, pyro guide"
                r"\[, local guide\]\), \(model, samples dict\[, local guide\]\), a "
                r"pyro.infer.MCMC object, or a Posterior")
    for call in (lambda bad: pm.impute(bad, data, num_samples=2),
                 lambda bad: pm.to_datatree(bad, data, num_samples=2, progress=False),
                 lambda bad: modality_contributions(bad, data),
                 lambda bad: pm.evaluate(bad, data)):
        for bad in (3, [model, guide], (model,)):
            with pytest.raises(TypeError, match=accepted):
                call(bad)
