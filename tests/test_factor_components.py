"""Factor (low-rank-plus-diagonal) components: log-densities and conditionals against
``MultivariateNormal`` by brute force over components, draws with the right moments, the
loadings' start, and a fitted model end to end (imputation of a view that is a linear
map of another, predictions, clusters, DataTree, a saved run)."""

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyro_mm as pm
from pyro_mm.model.distributions import MultimodalMixture
from pyro_mm.model.factor_analysis import initial_loadings

DT = torch.float64
SIZES = (3, 4)
MASK = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0]], dtype=torch.bool)


def _parameters(K=3, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_w = torch.log_softmax(torch.randn(K, generator=g, dtype=DT), -1)
    locs = [torch.randn(K, d, generator=g, dtype=DT) for d in SIZES]
    scales = [0.5 + torch.rand(K, d, generator=g, dtype=DT) for d in SIZES]
    loadings = [torch.randn(K, d, rank, generator=g, dtype=DT) for d in SIZES]
    x = torch.randn(MASK.shape[0], sum(SIZES), generator=g, dtype=DT)
    return log_w, locs, scales, loadings, x


def _full(locs, scales, loadings):
    """Each component's mean and full covariance over all features ``(K, D), (K, D, D)``."""
    w = torch.cat(loadings, -2)
    return (torch.cat(locs, -1),
            w @ w.mT + torch.diag_embed(torch.cat(scales, -1).pow(2)))


def _columns(present):
    return torch.cat([present[j].expand(d) for j, d in enumerate(SIZES)])


def _mixture(params, mixture="joint", mask=MASK):
    log_w, locs, scales, loadings, _ = params
    return MultimodalMixture(log_w, locs, scales, mixture=mixture, mask=mask,
                             batch_size=MASK.shape[0], stacked=False, component="factor",
                             loadings=loadings)


def test_joint_log_prob_is_the_mixture_of_the_present_features_marginal_gaussians():
    params = _parameters()
    log_w, *_, x = params
    mu, cov = _full(*params[1:4])
    got = _mixture(params).log_prob(x)
    for b in range(x.shape[0]):
        o = _columns(MASK[b])
        comps = torch.stack([MultivariateNormal(mu[k][o], cov[k][o][:, o]).log_prob(x[b][o])
                             for k in range(len(log_w))])
        torch.testing.assert_close(got[b], torch.logsumexp(log_w + comps, 0))


def test_independent_log_prob_sums_each_present_views_own_mixture():
    params = _parameters()
    log_w, *_, x = params
    mu, cov = _full(*params[1:4])
    got = _mixture(params, "independent").log_prob(x)
    starts = np.cumsum((0,) + SIZES)
    for b in range(x.shape[0]):
        expected = 0.0
        for j in range(len(SIZES)):
            if MASK[b, j]:
                s = slice(starts[j], starts[j + 1])
                comps = torch.stack([MultivariateNormal(mu[k][s], cov[k][s, s])
                                     .log_prob(x[b][s]) for k in range(len(log_w))])
                expected = expected + torch.logsumexp(log_w + comps, 0)
        torch.testing.assert_close(got[b], torch.as_tensor(expected, dtype=DT))


def test_conditional_moments_are_the_gaussian_mixtures_conditional_given_present_views():
    params = _parameters()
    log_w, *_, x = params
    mu, cov = _full(*params[1:4])
    means, variances = _mixture(params).conditional_moments(x, MASK)
    mean, var = torch.cat(means, -1), torch.cat(variances, -1)
    for b in range(x.shape[0]):
        o = _columns(MASK[b])
        resp = torch.softmax(log_w + torch.stack([
            MultivariateNormal(mu[k][o], cov[k][o][:, o]).log_prob(x[b][o])
            for k in range(len(log_w))]), 0)
        gain = torch.stack([cov[k][:, o] @ torch.linalg.inv(cov[k][o][:, o])
                            for k in range(len(log_w))])
        m_k = mu + (gain @ (x[b][o] - mu[:, o]).unsqueeze(-1)).squeeze(-1)
        v_k = torch.diagonal(cov - gain @ cov[:, o], dim1=-2, dim2=-1)
        expected_mean = resp @ m_k
        expected_var = resp @ (v_k + m_k.pow(2)) - expected_mean.pow(2)
        torch.testing.assert_close(mean[b][~o], expected_mean[~o])
        torch.testing.assert_close(var[b][~o], expected_var[~o])


def test_draw_dims_give_one_density_per_draw():
    params = _parameters()
    log_w, locs, scales, loadings, x = params
    S = 3
    batched = MultimodalMixture(
        log_w.expand(S, -1), [v.expand(S, *v.shape) for v in locs],
        [v.expand(S, *v.shape) for v in scales], mask=MASK, batch_size=MASK.shape[0],
        stacked=False, component="factor", loadings=[v.expand(S, *v.shape) for v in loadings])
    got = batched.log_prob(x)
    assert got.shape == (S, MASK.shape[0])
    torch.testing.assert_close(got, _mixture(params).log_prob(x).expand(S, -1))


@pytest.mark.parametrize("draws", [False, True])
def test_samples_have_the_mixtures_mean_and_covariance(draws):
    log_w, locs, scales, loadings, _ = _parameters()
    mu, cov = _full(locs, scales, loadings)
    w = log_w.exp()
    mean = w @ mu
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    n = 100_000
    if draws:  # two draws of the same parameters
        log_w, locs, scales, loadings = (
            [v.expand(2, *v.shape) for v in t] if isinstance(t, list)
            else t.expand(2, *t.shape) for t in (log_w, locs, scales, loadings))
    torch.manual_seed(0)
    x = MultimodalMixture(log_w, locs, scales, batch_size=n, stacked=False,
                          component="factor", loadings=loadings).sample()
    x = x.reshape(-1, x.shape[-1])
    torch.testing.assert_close(x.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), second - torch.outer(mean, mean),
                               atol=0.12, rtol=0.03)


def test_initial_loadings_span_the_components_factor_subspace():
    g = torch.Generator().manual_seed(1)
    D, rank, n = 12, 2, 4000
    true = torch.randn(D, rank, generator=g, dtype=DT)
    x = torch.randn(n, rank, generator=g, dtype=DT) @ true.T \
        + 0.3 * torch.randn(n, D, generator=g, dtype=DT)
    variances = x.var(0).unsqueeze(0)
    loadings, noise = initial_loadings(x, torch.ones_like(x), torch.ones(n, 1, dtype=DT),
                                       x.mean(0, keepdim=True), variances, rank)
    # The true columns lie in the span of the start's: projecting them loses little.
    basis, _ = torch.linalg.qr(loadings[0])
    residual = true - basis @ (basis.T @ true)
    assert float(residual.norm() / true.norm()) < 0.05
    # Explained plus noise keeps each feature's variance.
    torch.testing.assert_close(loadings[0].pow(2).sum(-1) + noise[0], variances[0],
                               rtol=0.05, atol=0.0)


# ---------------------------------------------------------------- the fitted model
def _linear_views(n=500, noise=0.2, seed=0):
    """View ``b`` is a known linear map of view ``a`` plus noise of sd ``noise``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 3))
    lift = rng.normal(size=(3, 4))
    b = a @ lift + noise * rng.normal(size=(n, 4))
    return a, b


def _without_b(a, b):
    return pm.MultimodalData({"a": a, "b": np.zeros_like(b)},
                             masks={"b": np.zeros(len(b), dtype=bool)})


@pytest.fixture
def linear_fit():
    a, b = _linear_views()
    data = pm.MultimodalData({"a": a[:400], "b": b[:400]})
    model = pm.MultimodalDPMixture(data.dims, representation="observed",
                                   component="factor", rank=3, num_components=5)
    return pm.fit(model, data, num_epochs=30, batch_size=100, seed=0, progress=False)


def test_a_view_that_is_a_linear_map_of_another_is_imputed_to_its_noise_level(linear_fit):
    a, b = _linear_views()
    noise = 0.2
    test = _without_b(a[400:], b[400:])
    imputed = pm.impute(linear_fit, test, quantiles=(0.05, 0.95))
    error = imputed["b_mean"].values - b[400:]
    rmse = float(np.sqrt(np.mean(error ** 2)))
    assert rmse < 1.2 * noise, rmse
    low, high = imputed["b_quantiles"].values
    coverage = float(np.mean((b[400:] >= low) & (b[400:] <= high)))
    # At this sample size the variance prior (2 pseudo-observations of variance 1 on
    # the standardised scale) still widens the intervals: over-covering, never under.
    assert coverage > 0.85, coverage


def test_a_diagonal_mixture_cannot_do_that(linear_fit):
    """The same data under the default diagonal components: the regression inside a
    component is what the factors add (a control for the test above)."""
    a, b = _linear_views()
    data = pm.MultimodalData({"a": a[:400], "b": b[:400]})
    model = pm.MultimodalDPMixture(data.dims, representation="observed", num_components=5)
    result = pm.fit(model, data, num_epochs=30, batch_size=100, seed=0, progress=False)
    test = _without_b(a[400:], b[400:])
    rmse = float(np.sqrt(np.mean((pm.impute(result, test)["b_mean"].values
                                  - b[400:]) ** 2)))
    assert rmse > 2 * 0.2, rmse


def test_a_fitted_factor_model_predicts_clusters_describes_and_reloads(tmp_path):
    data = pm.datasets.make_synthetic(num_examples=120, num_clusters=3,
                                      dims={"a": 4, "b": 3}, seed=0, missing_rate=0.3)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, representation="observed",
                                   component="factor", rank=2, private_rank=1,
                                   num_components=6)
    result = pm.fit(model, data, num_epochs=3, batch_size=40, seed=0, progress=False)
    probs = pm.predict(result, data)["probs"]
    assert np.allclose(np.asarray(probs).sum(-1), 1.0)
    clusters = pm.cluster(result, data)
    assert clusters.probabilities.shape == (120, 6)
    tree = pm.to_datatree(result, data, num_samples=4)
    loadings = tree["posterior"]["component_loadings_a"]
    assert loadings.dims[-3:] == ("component", "a_feature", "factor")
    assert loadings.shape[-3:] == (6, 4, 3)        # 2 shared factors, 1 of a's own
    saved = result.save(tmp_path / "run")
    again = pm.load(saved)
    assert again.model.component == "factor" and again.model.rank == 2
    assert again.model.private_rank == 1
    torch.testing.assert_close(
        again.guide.point_estimate()["component_loadings_b"],
        result.guide.point_estimate()["component_loadings_b"])


@pytest.mark.parametrize("bad", [
    dict(component="factor"),                                  # latent representation
    dict(component="factor", representation="observed", rank=0),
    dict(component="factor", representation="observed", rank=2.5),
    dict(component="factor", representation="observed", private_rank=-1),
])
def test_factor_arguments_that_cannot_work_are_named(bad):
    with pytest.raises(ValueError, match="component|rank|private_rank"):
        pm.MultimodalDPMixture({"a": 3, "b": 2}, **bad)


def _from_the_model(n, seed=0):
    """``n`` draws of a known three-component mixture of factor analysers over views of
    10, 8 and 6 features (rank 3)."""
    rng = np.random.default_rng(seed)
    K, dims, rank = 3, {"a": 10, "b": 8, "c": 6}, 3
    D = sum(dims.values())
    locs = rng.normal(0, 2, (K, D))
    loadings = rng.normal(0, 0.7, (K, D, rank))
    noise = rng.uniform(0.2, 1.0, (K, D))
    k = rng.integers(K, size=n)
    x = (locs[k] + np.einsum("ndr,nr->nd", loadings[k], rng.normal(size=(n, rank)))
         + np.sqrt(noise[k]) * rng.normal(size=(n, D)))
    cuts = np.cumsum([0, *dims.values()])
    return pm.MultimodalData({m: x[:, cuts[i]:cuts[i + 1]] for i, m in enumerate(dims)})


def test_intervals_cover_hidden_views_of_data_drawn_from_the_model():
    data = _from_the_model(700)
    train = data.subset(np.arange(400)).mask_at_random(0.3, seed=1)
    test = data.subset(np.arange(400, 700))
    hidden = test.mask_at_random(0.5, seed=2)
    model = pm.MultimodalDPMixture(train.dims, representation="observed",
                                   component="factor", rank=3, num_components=8)
    result = pm.fit(model, train, num_epochs=300, batch_size=400, seed=0, progress=False)
    imputed = pm.impute(result, hidden, quantiles=(0.05, 0.95))
    inside = []
    for m in data.modalities:
        rows = ~hidden.masks[m]
        low, high = imputed[f"{m}_quantiles"].values[:, rows]
        truth = test.features[m][rows]
        inside.append(((truth >= low) & (truth <= high)).ravel())
    coverage = float(np.concatenate(inside).mean())
    assert 0.85 <= coverage <= 0.96, coverage


def test_private_factors_carry_nothing_across_views():
    """With only view-private factors (no shared ones) the views are independent given
    the component: a hidden view's conditional moments in each component are its own
    marginal ones, whatever the present views hold."""
    from pyro_mm.model.factor_analysis import embed_private

    log_w, locs, scales, loadings, x = _parameters(rank=2)
    private = embed_private(loadings, shared=0)
    assert [w.shape[-1] for w in private] == [4, 4]
    mix = MultimodalMixture(log_w, locs, scales, mask=MASK, batch_size=MASK.shape[0],
                            stacked=False, component="factor", loadings=private)
    _, means, variances = mix.component_conditionals(x, MASK)
    b = 1  # view b is hidden in example 1
    torch.testing.assert_close(means[1][b], locs[1])
    torch.testing.assert_close(variances[1][b],
                               scales[1].pow(2) + loadings[1].pow(2).sum(-1))
    mu, cov = _full(locs, scales, private)
    o = _columns(MASK[0])
    expected = torch.logsumexp(log_w + torch.stack([
        MultivariateNormal(mu[k][o], cov[k][o][:, o]).log_prob(x[0][o])
        for k in range(len(log_w))]), 0)
    torch.testing.assert_close(mix.log_prob(x)[0], expected)
