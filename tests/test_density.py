"""The mixture as a density: the inverse-gamma prior on the component variances (known
answers), configs from before it, and clustering with ``pm.cluster``."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

import pyro_mm as pm
from pyro_mm.predictive.metrics import adjusted_rand_index


def _map_variance(model, x: torch.Tensor) -> float:
    """``sigma^2`` maximising ``log p(sigma) + sum_i log N(x_i; 0, sigma)`` under the
    model's scale prior, found numerically (bounded 1-d search on ``log sigma``)."""
    from scipy.optimize import minimize_scalar

    prior = model.scale_prior_distribution()

    def loss(log_sigma):
        sigma = torch.tensor(np.exp(log_sigma), dtype=torch.float32)
        return -float(prior.log_prob(sigma)
                      + torch.distributions.Normal(0.0, sigma).log_prob(x).sum())

    found = minimize_scalar(loss, bounds=(-8.0, 3.0), method="bounded",
                            options={"xatol": 1e-7})
    return float(np.exp(2 * found.x))


@pytest.mark.parametrize("nu0", [1.0, 2.0, 8.0])
def test_the_variance_prior_mode_matches_the_closed_form(nu0):
    """Posterior mode of sigma^2: (nu0 s^2 + S) / (nu0 + n + 1) (s^2 = 1 standardised)."""
    model = pm.MultimodalDPMixture({"a": 1}, representation="observed",
                                   scale_pseudo_count=nu0)
    big = torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 0.3
    S = float(big.pow(2).sum())
    expected = (nu0 + S) / (nu0 + 2000 + 1)
    assert _map_variance(model, big) == pytest.approx(expected, rel=1e-3)
    # A large component keeps (nearly) its own spread ...
    assert expected == pytest.approx(S / 2000, rel=0.05)
    # ... a one-member component (S = 0) is held at the data's spread, not at 0.
    one = _map_variance(model, torch.zeros(1))
    assert one == pytest.approx(nu0 / (nu0 + 2.0), rel=1e-3)
    assert one > 0.3


def test_latent_prior_is_centred_on_the_prior_scale():
    model = pm.MultimodalDPMixture({"a": 3}, latent_dim=2, prior_scale=0.5,
                                   scale_prior="inverse_gamma", scale_pseudo_count=2.0)
    assert _map_variance(model, torch.zeros(1)) == pytest.approx(0.25 * 2 / 4, rel=1e-3)


def test_a_config_without_the_prior_keeps_the_lognormal_and_its_floor():
    config = pm.MultimodalDPMixture({"a": 3}, representation="observed").config()
    for key in ("scale_prior", "scale_pseudo_count"):
        config.pop(key)
    config["scale_floor"] = 0.05
    old = pm.MultimodalDPMixture.from_config(config)
    assert old.scale_prior == "lognormal"
    assert isinstance(old.scale_prior_distribution(), torch.distributions.LogNormal)
    assert float(old.scale_floors()[0][0]) == pytest.approx(0.05)
    new = pm.MultimodalDPMixture({"a": 3}, representation="observed")
    assert new.config()["scale_prior"] == "inverse_gamma"
    assert float(new.scale_floors()[0].abs().max()) == 0.0


@pytest.mark.parametrize("bad", [0.0, -1.0, "two", True])
def test_a_bad_pseudo_count_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="scale_pseudo_count"):
        pm.MultimodalDPMixture({"a": 3}, scale_pseudo_count=bad)
    with pytest.raises(ValueError, match="scale_prior"):
        pm.MultimodalDPMixture({"a": 3}, scale_prior="gamma")


def test_resolution_is_added_for_integer_features_by_default():
    rng = np.random.default_rng(0)
    data = pm.MultimodalData({"a": rng.integers(0, 5, (200, 2)).astype(float),
                              "b": rng.normal(size=(200, 2))})
    model = pm.MultimodalDPMixture(data.dims, representation="observed")
    model.fit_standardization(data)
    floor_a, floor_b = model.scale_floors()
    sd = data.features["a"].std(0)
    np.testing.assert_allclose(floor_a.numpy(), 1.0 / sd / np.sqrt(12), rtol=1e-5)
    assert float(floor_b.max()) < 1e-3


def _clusters(seed=0, missing=0.0):
    data = pm.datasets.make_synthetic(num_examples=300, num_clusters=4,
                                      dims={"a": 4, "b": 3}, signal=5.0, seed=seed)
    return data.mask_at_random(missing, seed=seed) if missing else data


@pytest.mark.parametrize("representation", ["observed", "latent"])
def test_cluster_finds_the_clusters_without_being_told_k(representation):
    data = _clusters()
    gaps = data.mask_at_random(0.3, seed=1)
    # A latent fit's clusters depend on its SVI path (ARI 0.3-0.99 over seeds on these
    # data): judge the median of three seeds, not one lucky or unlucky path.
    aris = []
    for seed in [0] if representation == "observed" else [0, 1, 2]:
        pyro.clear_param_store()
        # the conjugate prior for both (latent models default to the lognormal one)
        model = pm.MultimodalDPMixture(data.dims, representation=representation,
                                       latent_dim=3, num_components=10,
                                       scale_prior="inverse_gamma")
        result = pm.fit(model, data, num_epochs=40, batch_size=100, device="cpu",
                        progress=False, learning_rate=0.02, seed=seed)
        out = pm.cluster(result, gaps)
        aris.append(adjusted_rand_index(data.labels, out.assignments))
    assert out.assignments.shape == (300,) and out.probabilities.shape == (300, 10)
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-6)
    assert out.num_occupied == int(out.occupied.sum()) == len(np.unique(out.assignments))
    assert np.median(aris) > (0.7 if representation == "observed" else 0.6), aris
    if representation == "observed":
        assert out.num_occupied == 4
    strict = pm.cluster(result, data, min_members=30)
    assert strict.num_occupied <= pm.cluster(result, data).num_occupied
    with pytest.raises(ValueError, match="min_members"):
        pm.cluster(result, data, min_members=0)
