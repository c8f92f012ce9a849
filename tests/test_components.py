"""Component scales that do not collapse (the scale floor) and Student-t components:
brute-force densities, the floor fitted from data, held-out likelihood on features that
are constant within a cluster in training, recovery, configuration round trips."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, StudentT

import pyro_mm as pm
from pyro_mm.model.distributions import (MultimodalMixture, effective_scale,
                                         studentt_component_log_density)
from pyro_mm.model.scale_floors import recording_resolution

DT = torch.float64


def _random_mixture(K=3, d=(2, 3), B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=DT) + 0.1
    locs = [torch.randn(K, dm, generator=g, dtype=DT) for dm in d]
    scales = [0.5 + torch.rand(K, dm, generator=g, dtype=DT) for dm in d]
    xs = [3.0 * torch.randn(B, dm, generator=g, dtype=DT) for dm in d]
    return weights / weights.sum(), locs, scales, xs


def _studentt_brute_force(weights, locs, scales, dfs, xs, b, mixture):
    """``log p(x_b)`` by explicit sums over components, torch's univariate StudentT."""
    def comp(m, k):
        return float(StudentT(dfs[m], locs[m][k], scales[m][k]).log_prob(xs[m][b]).sum())

    K, M = len(weights), len(xs)
    if mixture == "joint":
        return math.log(sum(weights[k] * math.exp(sum(comp(m, k) for m in range(M)))
                            for k in range(K)))
    return sum(math.log(sum(weights[k] * math.exp(comp(m, k)) for k in range(K)))
               for m in range(M))


# ---------------------------------------------------------------- Student-t densities
def test_studentt_component_log_density_matches_torch_studentt():
    _, locs, scales, xs = _random_mixture()
    df = torch.tensor(3.5, dtype=DT)
    got = studentt_component_log_density(xs[1], locs[1], scales[1], df)
    expected = StudentT(df, locs[1], scales[1]).log_prob(xs[1].unsqueeze(1)).sum(-1)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_studentt_mixture_log_prob_matches_brute_force_sum_over_components(mixture):
    weights, locs, scales, xs = _random_mixture()
    dfs = [2.5, 7.0]
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, batch_size=5,
                            stacked=False, component="studentt", df=dfs)
    got = mix.log_prob(torch.cat(xs, dim=-1))
    expected = torch.tensor([_studentt_brute_force(weights, locs, scales, dfs, xs, b,
                                                   mixture) for b in range(5)], dtype=DT)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_studentt_with_huge_df_agrees_with_gaussian(mixture):
    weights, locs, scales, xs = _random_mixture()
    x = torch.cat(xs, dim=-1)
    normal = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, batch_size=5,
                               stacked=False)
    heavy = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, batch_size=5,
                              stacked=False, component="studentt", df=[1e8, 1e8])
    # the difference is O(z^4 / nu): ~1e-5 nats on values ~50 nats here
    torch.testing.assert_close(heavy.log_prob(x), normal.log_prob(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(heavy.responsibilities(x), normal.responsibilities(x),
                               rtol=0, atol=1e-6)


def test_studentt_outlier_costs_log_distance_not_square():
    one = [torch.zeros(1, 1, dtype=DT)]
    mix = MultimodalMixture(torch.zeros(1, dtype=DT), one, [torch.ones(1, 1, dtype=DT)],
                            batch_size=1, component="studentt", df=[4.0], stacked=False)
    far = mix.log_prob(torch.tensor([[1e3]], dtype=DT))
    farther = mix.log_prob(torch.tensor([[1e4]], dtype=DT))
    # (nu + 1) log(10) per decade of distance, not a factor 100 in cost
    assert float(far - farther) == pytest.approx(5 * math.log(10), rel=1e-4)


def test_studentt_samples_have_the_component_spread():
    locs, scales = [torch.tensor([[5.0]])], [torch.tensor([[2.0]])]
    mix = MultimodalMixture(torch.zeros(1), locs, scales, batch_size=20000, stacked=False,
                            component="studentt", df=[6.0])
    x = mix.sample()
    assert abs(float(x.median()) - 5.0) < 0.1
    # variance of a t with nu = 6 is scale^2 * 6 / 4 = 6
    assert float(x.var()) == pytest.approx(6.0, rel=0.15)
    assert float(mix.component_variances()[0]) == pytest.approx(6.0)


def test_studentt_needs_one_df_per_modality():
    with pytest.raises(ValueError, match="df"):
        MultimodalMixture(torch.zeros(2), [torch.zeros(2, 2)], [torch.ones(2, 2)],
                          component="studentt")


# ---------------------------------------------------------------- the scale floor
def test_effective_scale_adds_the_floor_in_quadrature():
    s = torch.tensor([0.0, 3.0, 1e-4])
    torch.testing.assert_close(effective_scale(s, 4.0),
                               torch.tensor([4.0, 5.0, math.sqrt(16 + 1e-8)]))
    assert effective_scale(s, None) is s


def test_recording_resolution_finds_the_quantisation_step():
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 17, 500).astype(float),       # pixels: step 1
                  np.round(rng.normal(size=500), 2),             # two decimals
                  np.full(500, 3.0),                             # constant
                  0.1 * rng.integers(0, 5, 500)], axis=1)        # 0.1 * k, float noise
    np.testing.assert_allclose(recording_resolution(x), [1.0, 0.01, 0.0, 0.1], rtol=1e-6)


def test_fit_standardization_fits_the_floor_from_std_and_resolution():
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 4, (300, 2)).astype(float)
    data = pm.MultimodalData({"a": ints, "b": rng.normal(size=(300, 3))})
    model = pm.MultimodalDPMixture(data.dims, representation="observed", scale_floor=0.1,
                                   resolution_floor=True)
    model.fit_standardization(data)
    expected = np.sqrt(0.1**2 + (1.0 / ints.std(0)) ** 2 / 12)
    floor_a, floor_b = model.scale_floors()
    np.testing.assert_allclose(floor_a.numpy(), expected, rtol=1e-6)
    # continuous features: the resolution is negligible, the floor is the fraction
    np.testing.assert_allclose(floor_b.numpy(), 0.1, atol=1e-3)
    off = pm.MultimodalDPMixture(data.dims, representation="observed", scale_floor=0.0,
                                 resolution_floor=False)
    off.fit_standardization(data)
    assert all(float(f.abs().max()) == 0.0 for f in off.scale_floors())


def test_latent_floor_is_relative_to_the_prior_component_scale():
    model = pm.MultimodalDPMixture({"a": 3}, latent_dim=4, scale_floor=0.2, prior_scale=0.5)
    torch.testing.assert_close(model.scale_floors()[0], torch.full((4,), 0.1))


def test_every_density_uses_the_effective_scale(tiny_data):
    """Model site, params from the guide's sites and the mixture agree on sqrt(s^2+f^2)."""
    model = pm.MultimodalDPMixture(tiny_data.dims, num_components=4,
                                   representation="observed", scale_floor=0.5)
    result = pm.fit(model, tiny_data, num_epochs=2, progress=False, seed=0)
    params = result.model.params_from_sites(result.guide.point_estimate())
    raw = result.guide.point_estimate()
    for j, (m, floor) in enumerate(zip(model.modalities, model.scale_floors())):
        expected = (raw[f"component_scale_{m}"].pow(2) + floor.pow(2)).sqrt()
        torch.testing.assert_close(params.mixture("joint", stacked=False).scales[j], expected)
        assert float(params.mixture("joint", stacked=False).scales[j].min()) >= 0.5


def test_guide_fills_a_missing_modality_from_the_floored_components(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3,
                                   scale_floor=2.0)
    result = pm.fit(model, tiny_data, num_epochs=1, progress=False, seed=0)
    guide = result.guide
    batch = model.prepare(tiny_data)
    batch.masks[:, 1] = False
    with torch.no_grad():
        globals_ = guide.point_estimate()
        loc, scale = guide.encode(batch, globals_)
        present, _ = guide.encode_present(batch)
    # brute force: responsibilities from modality a, moments of the floored mixture of b
    locs = [globals_[f"component_loc_{m}"] for m in model.modalities]
    scales = [(globals_[f"component_scale_{m}"].pow(2) + 2.0**2).sqrt()
              for m in model.modalities]
    log_w = pm.model.distributions.stick_breaking_log_weights(globals_["sticks"])
    comp = Normal(locs[0], scales[0]).log_prob(present[:, 0].unsqueeze(1)).sum(-1)
    resp = torch.softmax(log_w + comp, -1)
    mean = resp @ locs[1]
    var = resp @ (scales[1].pow(2) + locs[1].pow(2)) - mean.pow(2)
    torch.testing.assert_close(loc[:, 1], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scale[:, 1], var.sqrt(), rtol=1e-4, atol=1e-5)
    assert float(scale[:, 1].min()) >= 2.0 - 1e-5


# ---------------------------------------------------------------- held-out known answer
def _constant_within_cluster(n, seed, perturb):
    """3 well-separated clusters in 2 x 4 features; in cluster k, features k (of a) and
    k (of b) are exactly the cluster centre in training, and off by N(0, 0.1^2) (about
    0.025 feature standard deviations) at test time."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(0.0, 4.0, (3, 8))
    labels = rng.integers(3, size=n)
    x = centers[labels] + rng.normal(0.0, 1.0, (n, 8))
    for k in range(3):
        rows, cols = labels == k, [k, 4 + k]
        x[np.ix_(rows, cols)] = centers[k, cols]
        if perturb:
            x[np.ix_(rows, cols)] += rng.normal(0.0, 0.1, (int(rows.sum()), 2))
    return pm.MultimodalData({"a": x[:, :4], "b": x[:, 4:]}, labels=labels)


@pytest.fixture(scope="module")
def constant_features():
    train = _constant_within_cluster(400, 0, perturb=False)
    test = _constant_within_cluster(400, 1, perturb=True)
    from sklearn.mixture import BayesianGaussianMixture

    stack = lambda d: np.concatenate([d.features[m] for m in d.modalities], 1)  # noqa: E731
    reference = BayesianGaussianMixture(
        n_components=10, covariance_type="diag", max_iter=500, random_state=0,
        weight_concentration_prior_type="dirichlet_process").fit(stack(train))
    return train, test, float(reference.score(stack(test)))


def _held_out(train, test, **kwargs):
    model = pm.MultimodalDPMixture(train.dims, num_components=10, representation="observed",
                                   **kwargs)
    result = pm.fit(model, train, num_epochs=150, batch_size=100, learning_rate=0.05,
                    progress=False, seed=0, device="cpu")
    ll = pm.log_likelihood(result.model, result.guide, result.model.prepare(test)).numpy()
    return ll, pm.evaluate(result, test)


@pytest.mark.parametrize("component", ["normal", "studentt"])
def test_perturbed_constant_features_cost_little_with_the_floor(constant_features,
                                                                component):
    """Known answer: with the default floor f = 0.05 sd, a perturbation of 0.025 sd on
    each of two constant features costs about 2 * 0.5^2 / 2 = 0.25 nats; the mean stays
    within 1 nat of the median and is no worse than scikit-learn's
    BayesianGaussianMixture."""
    train, test, sklearn_mean = constant_features
    ll, metrics = _held_out(train, test, component=component, scale_prior="lognormal",
                            scale_floor=0.05, resolution_floor=False)
    assert abs(ll.mean() - np.median(ll)) <= 1.0
    assert ll.mean() >= sklearn_mean
    assert metrics["ari"] >= 0.95


def test_without_the_floor_the_same_data_collapses(constant_features):
    """The previous behaviour (no floor) on the same data: near-zero scales, and a mean
    held-out log-likelihood well below scikit-learn's (what the floor fixes)."""
    train, test, sklearn_mean = constant_features
    ll, _ = _held_out(train, test, scale_prior="lognormal", scale_floor=0.0,
                      resolution_floor=False)
    assert ll.mean() < sklearn_mean - 5.0


# ---------------------------------------------------------------- recovery and config
@pytest.mark.parametrize("representation", ["observed", "latent"])
def test_studentt_recovers_well_separated_clusters(representation):
    """The same data, settings and ARI thresholds as the Gaussian recovery tests."""
    data = pm.datasets.make_synthetic(num_examples=1000, num_clusters=4,
                                      dims={"a": 6, "b": 6}, signal=3.0, noise=0.5, seed=1)
    train, test = data.split(0.25, seed=0)
    model = pm.MultimodalDPMixture(train.dims, latent_dim=4, num_components=20,
                                   representation=representation, component="studentt")
    result = pm.fit(model, train, num_epochs=80, batch_size=128, learning_rate=0.02,
                    progress=False, seed=0)
    assert pm.evaluate(result, test)["ari"] >= (0.9 if representation == "observed" else 0.8)
    df = result.guide.point_estimate()["component_df_a"]
    assert 0 < float(df) < math.inf


def test_new_arguments_round_trip_through_config_and_save(tmp_path, tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=4, component="studentt", df=7.5,
                                   scale_floor=0.3, resolution_floor=False)
    config = model.config()
    assert (config["component"], config["df"], config["scale_floor"],
            config["resolution_floor"]) == ("studentt", 7.5, 0.3, False)
    assert pm.MultimodalDPMixture.from_config(config).config() == config
    result = pm.fit(model, tiny_data, num_epochs=2, progress=False, seed=0)
    result.save(tmp_path / "run")
    loaded = pm.load(tmp_path / "run")
    assert loaded.model.config() == config
    np.testing.assert_allclose(pm.predict(loaded, tiny_data)["responsibilities"],
                               pm.predict(result, tiny_data)["responsibilities"],
                               rtol=1e-6, atol=1e-6)


def test_a_config_and_state_from_before_the_floor_load_without_it(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, representation="observed")
    model.fit_standardization(tiny_data)
    old_config = {k: v for k, v in model.config().items()
                  if k not in ("scale_floor", "resolution_floor", "component", "df")}
    # the layout of then: every entry flat on the model (legacy_names)
    flat = {k.split(".", 1)[1] if k.startswith(("standardization.", "label_head.")) else k: v
            for k, v in model.state_dict().items()}
    old_state = {k: v for k, v in flat.items() if not k.startswith("component_")}
    old_state.pop("df_prior")
    rebuilt = pm.MultimodalDPMixture.from_config(old_config)
    rebuilt.load_state_dict(old_state)
    assert all(float(f.abs().max()) == 0.0 for f in rebuilt.scale_floors())
    assert rebuilt.component == "normal"


def test_datatree_and_summary_use_learned_studentt_components(tiny_data):
    """The export stores the learned df, the floors, and pointwise log-likelihoods equal
    to the t mixture recomputed from the stored draws (as the Gaussian test does)."""
    from pyro_mm import diagnostics as dx
    from pyro_mm.model.params import MixtureParams

    model = pm.MultimodalDPMixture(tiny_data.dims, num_components=4,
                                   representation="observed", component="studentt")
    result = pm.fit(model, tiny_data, num_epochs=3, progress=False, seed=0)
    tree = dx.to_datatree(result, tiny_data, num_samples=4, progress=False, seed=0)
    post, const = tree["posterior"], tree["constant_data"]
    assert post["component_df"].shape == (1, 4, 2)
    batch = model.prepare(tiny_data)
    x = torch.cat([batch.features[m] for m in model.modalities], dim=-1)
    draw = post.isel(chain=0, draw=2)
    values = {"sticks": torch.as_tensor(draw["sticks"].values)}
    for j, m in enumerate(model.modalities):
        for what in ("loc", "scale"):
            values[f"component_{what}_{m}"] = torch.as_tensor(
                draw[f"component_{what}_{m}"].values)
        values[f"component_df_{m}"] = torch.as_tensor(draw["component_df"].values[j])
    floors = [torch.as_tensor(const[f"component_scale_floor_{m}"].values)
              for m in model.modalities]
    params = MixtureParams.from_sites(model.modalities, values, floors=floors,
                                      component="studentt")
    with torch.no_grad():
        direct = (params.mixture("joint", mask=batch.masks, batch_size=batch.size,
                                 stacked=False).log_prob(x)
                  + model.feature_log_jacobian(batch.masks))
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0, 2], direct.numpy(),
                               rtol=1e-5, atol=1e-4)
    text = str(dx.summary(result, tiny_data, num_samples=20, tree=tree, progress=False))
    assert "Student-t components" in text
